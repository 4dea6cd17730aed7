"""Two-dimensional toy densities, generated in code (no files), for fitting and visualising flows in 2-D.

The definitions follow the ones common in the flow literature (FFJORD's ``toy_data``), written with torch so that a
``torch.Generator`` makes them reproducible. Every sampler returns ``float32`` of shape ``(n, 2)``; all of them live
roughly inside [-4, 4]^2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from glowflow.data.base import Dataset
from glowflow.data.registry import Loader

TOY_DENSITIES: tuple[str, ...] = ("moons", "circles", "checkerboard", "8gaussians", "pinwheel", "2spirals")

TOY_DESCRIPTIONS: dict[str, str] = {
    "moons": "2-D toy: two interleaving half circles (scaled x2, noise 0.2)",
    "circles": "2-D toy: two concentric circles of radius 3 and 1.5 (noise 0.24)",
    "checkerboard": "2-D toy: uniform on the 8 black squares of a 4x4 checkerboard on [-4, 4]^2",
    "8gaussians": "2-D toy: 8 Gaussians (std 0.35) centred on a circle of radius 2.83",
    "pinwheel": "2-D toy: pinwheel with 5 curved arms",
    "2spirals": "2-D toy: two interleaved spirals (1.5 turns each)",
}

# Parameters, shared with the tests' sanity checks.
CIRCLE_RADII = (3.0, 1.5)
EIGHT_GAUSSIANS_RADIUS = 4.0 / math.sqrt(2.0)
EIGHT_GAUSSIANS_STD = 0.5 / math.sqrt(2.0)
PINWHEEL_ARMS = 5
PINWHEEL_RATE = 0.25


def eight_gaussians_centres() -> Tensor:
    """The 8 centres, float32 (8, 2): angles k * pi / 4 on the circle of radius ``EIGHT_GAUSSIANS_RADIUS``."""
    angles = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    return (EIGHT_GAUSSIANS_RADIUS * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)).float()


def _rand(n: int, g: torch.Generator | None, *shape: int) -> Tensor:
    return torch.rand(n, *shape, generator=g, dtype=torch.float64)


def _randn(n: int, g: torch.Generator | None, *shape: int) -> Tensor:
    return torch.randn(n, *shape, generator=g, dtype=torch.float64)


def _coin(n: int, g: torch.Generator | None) -> Tensor:
    """n fair coin flips as a bool tensor."""
    return torch.randint(0, 2, (n,), generator=g) == 1


def _moons(n: int, g: torch.Generator | None) -> Tensor:
    # scikit-learn's make_moons(noise=0.1), then * 2 - (1, 0.2) to centre it.
    t = math.pi * _rand(n, g)
    upper = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    lower = torch.stack([1.0 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
    x = torch.where(_coin(n, g)[:, None], lower, upper) + 0.1 * _randn(n, g, 2)
    return 2.0 * x - torch.tensor([1.0, 0.2], dtype=torch.float64)


def _circles(n: int, g: torch.Generator | None) -> Tensor:
    radius = torch.where(_coin(n, g), CIRCLE_RADII[1], CIRCLE_RADII[0]).to(torch.float64)
    t = 2 * math.pi * _rand(n, g)
    x = radius[:, None] * torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    return x + 0.24 * _randn(n, g, 2)


def _checkerboard(n: int, g: torch.Generator | None) -> Tensor:
    # Squares of side 2; a point (x1, x2) is on a black square iff floor(x1 / 2) + floor(x2 / 2) is even.
    x1 = 8.0 * _rand(n, g) - 4.0
    x2 = 2.0 * _rand(n, g) - 4.0 + 4.0 * torch.randint(0, 2, (n,), generator=g).to(torch.float64)
    x2 = x2 + 2.0 * (torch.floor(x1 / 2.0) % 2)
    return torch.stack([x1, x2], dim=1)


def _eight_gaussians(n: int, g: torch.Generator | None) -> Tensor:
    centres = eight_gaussians_centres().double()
    which = torch.randint(0, 8, (n,), generator=g)
    return centres[which] + EIGHT_GAUSSIANS_STD * _randn(n, g, 2)


def _pinwheel(n: int, g: torch.Generator | None) -> Tensor:
    # FFJORD's pinwheel: radial std 0.3, tangential std 0.1, 5 arms twisted by rate * exp(radius).
    arm = torch.randint(0, PINWHEEL_ARMS, (n,), generator=g)
    features = _randn(n, g, 2) * torch.tensor([0.3, 0.1], dtype=torch.float64)
    features[:, 0] += 1.0
    angles = arm * (2 * math.pi / PINWHEEL_ARMS) + PINWHEEL_RATE * torch.exp(features[:, 0])
    c, s = torch.cos(angles), torch.sin(angles)
    x = torch.stack([features[:, 0] * c - features[:, 1] * s, features[:, 0] * s + features[:, 1] * c], dim=1)
    return 2.0 * x


def _two_spirals(n: int, g: torch.Generator | None) -> Tensor:
    # t in [0, 3 pi] with density ~ t, spiral 1 at (-t cos t, t sin t) / 3, spiral 2 its point reflection.
    t = torch.sqrt(_rand(n, g)) * (3 * math.pi)
    x = torch.stack([-torch.cos(t) * t, torch.sin(t) * t], dim=1) + 0.5 * _rand(n, g, 2)
    x = torch.where(_coin(n, g)[:, None], -x, x) / 3.0
    return x + 0.1 * _randn(n, g, 2)


_SAMPLERS: dict[str, Callable[[int, torch.Generator | None], Tensor]] = {
    "moons": _moons,
    "circles": _circles,
    "checkerboard": _checkerboard,
    "8gaussians": _eight_gaussians,
    "pinwheel": _pinwheel,
    "2spirals": _two_spirals,
}


def sample_toy(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``n`` points from the 2-D toy density ``name`` (one of :data:`TOY_DENSITIES`).

    Returns float32 of shape ``(n, 2)``. With a (CPU) ``generator`` the result is a deterministic function of the
    generator's state; without one, torch's global generator is used. Raises ``ValueError`` for an unknown name
    or a negative ``n``.
    """
    if name not in _SAMPLERS:
        raise ValueError(f"unknown toy density {name!r}; choose one of {', '.join(TOY_DENSITIES)}")
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return _SAMPLERS[name](int(n), generator).to(torch.float32)


TOY_SIZES = {"train": 20_000, "test": 5_000}


def load_toy(name: str, split: str, seed: int) -> Dataset:
    """A split of toy density ``name``: 20,000 train / 5,000 test points, drawn with seed ``seed`` (train) or
    ``seed + 1`` (test)."""
    g = torch.Generator().manual_seed(seed if split == "train" else seed + 1)
    return Dataset(name, split, sample_toy(name, TOY_SIZES[split], g), None, None, None)


def loader(name: str) -> Loader:
    """The data set table's reader of toy density ``name`` (``data_dir`` and ``download`` are not used)."""

    def load(data_dir: Path | None, split: str, download: bool, seed: int) -> Dataset:
        return load_toy(name, split, seed)

    return load
