"""The 2-D toy densities: shapes, determinism, and one geometric property of each."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from glowflow.data import DATASETS, TOY_DENSITIES, load_dataset, sample_toy
from glowflow.data.toy import (
    CIRCLE_RADII,
    EIGHT_GAUSSIANS_STD,
    PINWHEEL_ARMS,
    PINWHEEL_RATE,
    eight_gaussians_centres,
)

N = 20_000


def draw(name: str, seed: int = 0, n: int = N) -> Tensor:
    return sample_toy(name, n, torch.Generator().manual_seed(seed)).double()


@pytest.mark.parametrize("name", TOY_DENSITIES)
def test_shape_dtype_determinism(name: str) -> None:
    x = sample_toy(name, 1000, torch.Generator().manual_seed(3))
    assert x.shape == (1000, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, sample_toy(name, 1000, torch.Generator().manual_seed(3)))
    assert not torch.equal(x, sample_toy(name, 1000, torch.Generator().manual_seed(4)))
    assert x.abs().max() < 5 and x.std(0).min() > 0.5  # spread over the usual [-4, 4]^2 window
    assert sample_toy(name, 0).shape == (0, 2)
    assert name in DATASETS


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="moons"):
        sample_toy("swissroll", 10)
    with pytest.raises(ValueError, match="non-negative"):
        sample_toy("moons", -1)


def test_moons_two_arcs() -> None:
    x = draw("moons")
    # upper arc: radius 2 around (-1, -0.2); lower arc: radius 2 around (1, 0.8) (make_moons scaled by 2)
    d1 = (x - torch.tensor([-1.0, -0.2], dtype=x.dtype)).norm(dim=1)
    d2 = (x - torch.tensor([1.0, 0.8], dtype=x.dtype)).norm(dim=1)
    off = torch.minimum((d1 - 2).abs(), (d2 - 2).abs())
    assert (off < 0.6).float().mean() > 0.99 and off.median() < 0.2


def test_circles_radii() -> None:
    r = draw("circles").norm(dim=1)
    outer = (r - CIRCLE_RADII[0]).abs() < (r - CIRCLE_RADII[1]).abs()
    assert abs(outer.float().mean().item() - 0.5) < 0.02
    assert (r[outer] - 3.0).abs().median() < 0.2 and (r[~outer] - 1.5).abs().median() < 0.2
    assert abs(r[outer].mean().item() - 3.0) < 0.05 and abs(r[~outer].mean().item() - 1.5) < 0.05


def test_checkerboard_black_squares_only() -> None:
    x = draw("checkerboard")
    assert x.min() >= -4 and x.max() < 4
    cells = torch.floor(x / 2).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    counts = torch.bincount((cells[:, 0] + 2) * 4 + (cells[:, 1] + 2), minlength=16)
    assert (counts > 0).sum() == 8 and counts.max() < 1.1 * N / 8  # 8 squares, about equally filled


def test_eight_gaussians_centres() -> None:
    x = draw("8gaussians")
    centres = eight_gaussians_centres().double()
    assert torch.allclose(centres.norm(dim=1), torch.full((8,), 2 * math.sqrt(2), dtype=torch.float64))
    dist, which = torch.cdist(x, centres).min(dim=1)
    assert (dist < 4 * EIGHT_GAUSSIANS_STD).float().mean() > 0.99
    # within-cluster spread: 2-D Gaussian with std s has E|d|^2 = 2 s^2
    assert abs((dist**2).mean().item() / (2 * EIGHT_GAUSSIANS_STD**2) - 1) < 0.05
    freq = torch.bincount(which, minlength=8).double() / N
    assert (freq - 1 / 8).abs().max() < 0.015


def test_pinwheel_arms() -> None:
    x = draw("pinwheel")
    r = x.norm(dim=1) / 2
    untwisted = torch.atan2(x[:, 1], x[:, 0]) - PINWHEEL_RATE * torch.exp(r)
    spacing = 2 * math.pi / PINWHEEL_ARMS
    residual = torch.remainder(untwisted + spacing / 2, spacing) - spacing / 2
    assert (residual.abs() < 0.3).float().mean() > 0.95  # on one of the 5 arms once untwisted
    arm = torch.round(torch.remainder(untwisted, 2 * math.pi) / spacing).long() % PINWHEEL_ARMS
    freq = torch.bincount(arm, minlength=PINWHEEL_ARMS).double() / N
    assert (freq - 1 / PINWHEEL_ARMS).abs().max() < 0.02


def test_two_spirals() -> None:
    x = draw("2spirals")
    r = x.norm(dim=1)
    assert r.max() < 3 * math.pi / 3 + 0.8 and x.mean(0).abs().max() < 0.05  # point-symmetric pair of spirals
    # spiral 1 is (-t cos t, t sin t) / 3 with angle pi - t and radius t / 3, spiral 2 its reflection:
    # angle + 3 r = 0 (mod pi) on both, up to the noise (which 3 r amplifies)
    far = r > 1.5
    residual = torch.remainder(torch.atan2(x[:, 1], x[:, 0]) + 3 * r + math.pi / 2, math.pi) - math.pi / 2
    assert (residual[far].abs() < 0.5).float().mean() > 0.65  # uniform angles would give 0.32


def test_load_dataset_toys() -> None:
    train = load_dataset("moons", seed=5)
    test = load_dataset("moons", split="test", seed=5)
    assert (len(train), len(test)) == (20_000, 5_000)
    assert train.shape == (2,) and train.data.dtype == torch.float32 and train.num_bins is None
    assert train.labels is None and not train.is_image
    assert torch.equal(train.data, sample_toy("moons", 20_000, torch.Generator().manual_seed(5)))
    assert torch.equal(test.data, sample_toy("moons", 5_000, torch.Generator().manual_seed(6)))
