"""Exact encode / decode: every pixel level back (noise or bin centres, n-bit and padded models, tabular rows), the
mean latent and scaled latents, and the archive's checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from glowflow.data import load_dataset
from glowflow.preprocessing import reduce_bits
from glowflow.runs import open_run
from glowflow.scoring import codec, decode, encode, load_latents, save_latents
from tests.scoring.scoring_helpers import MNIST_5K, needs_mnist_5k


@pytest.mark.parametrize("deterministic", [False, True])
def test_round_trip_recovers_every_level(digits_run: Path, tmp_path: Path, deterministic: bool):
    k = load_dataset("digits", split="test").data
    latents = encode(digits_run, "digits:test", deterministic=deterministic, batch_size=100)
    assert [z.shape for z in latents.zs] == [(297, 2, 4, 4), (297, 8, 2, 2)]
    assert (latents.noise is None) == deterministic
    if not deterministic:
        assert 0 <= latents.noise.min() and latents.noise.max() < 1 and 0.45 < latents.noise.mean() < 0.55
    path = save_latents(latents, tmp_path / "z.npz")
    back = load_latents(path)
    assert back.labels == latents.labels and back.sources[5] == "digits:test[5]" and back.meta["examples"] == 297
    images = decode(digits_run, back)
    assert images.dtype == torch.uint8 and torch.equal(images, k)  # every level of every image
    # the latents are standard normal under the model: far from N(0, 1) would mean a broken map
    assert 0.3 < float(np.concatenate([z.ravel() for z in back.zs]).std()) < 3.0


def test_noise_is_what_makes_random_dequantization_exact(digits_run: Path):
    """Decoding noisy latents by plain quantisation would put a level wrong wherever ``u`` was within the round-trip
    error of a bin edge; with the archived noise the levels come back exactly whatever the noise."""
    run = open_run(digits_run, "cpu")
    k = load_dataset("digits", split="test").data[:20]
    latents = encode(run, k.numpy(), seed=3)
    latents.noise[:] = np.float32(1 - 2**-20)  # every value a hair below its bin's upper edge
    x = (k.double() + torch.from_numpy(latents.noise).double()) / 17 - 0.5
    zs = run.model.encode(x.float())[0]
    latents.zs = [z.detach().numpy() for z in zs]
    assert torch.equal(decode(run, latents), k)
    latents.noise = None  # plain quantisation of the same latents
    assert (decode(run, latents) != k).float().mean() > 0.1  # measured: 0.25 of the pixels a level off


def test_encode_counts_the_examples_float32_does_not_bring_back(digits_run: Path):
    """The check behind the float64 fallback: exact latents lose nothing; a latent moved far enough to change the
    decoded image is counted once per example."""
    run = open_run(digits_run, "cpu")
    k = run.model.preprocess(load_dataset("digits", split="test").data[:12])
    latents = encode(run, k.numpy())
    assert latents.meta["precision"] == "float32" and latents.meta["lost_in_float32"] == 0
    assert codec._not_recovered(run.model, latents.zs, latents.noise, k, None, 5) == 0
    moved = [z.copy() for z in latents.zs]
    moved[1][[2, 7]] += 5.0  # two examples' coarse latents, five standard deviations off
    assert codec._not_recovered(run.model, moved, latents.noise, k, None, 5) == 2


def test_ill_conditioned_inputs_are_encoded_and_decoded_in_float64(
    digits_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Where float32 cannot invert an input (one of 2,000 MNIST test digits under the MNIST Glow), encode redoes
    the set in float64 and decode follows the archive: the levels come back either way."""
    k = load_dataset("digits", split="test").data[:40]
    monkeypatch.setattr(codec, "_not_recovered", lambda *args: 1)
    latents = encode(digits_run, "digits:test[:40]", batch_size=16)
    assert latents.meta["precision"] == "float64" and latents.meta["lost_in_float32"] == 1
    assert all(z.dtype == np.float64 for z in latents.zs)
    back = load_latents(save_latents(latents, tmp_path / "z.npz"))
    assert all(z.dtype == np.float64 for z in back.zs)
    assert torch.equal(decode(digits_run, back), k)
    run = open_run(digits_run, "cpu")
    assert next(run.model.parameters()).dtype == torch.float32  # decode used a float64 copy


def test_mean_and_scale(digits_run: Path):
    latents = encode(digits_run, "digits:test[:50]")
    mean = encode(digits_run, "digits:test[:50]", mean=True)
    assert len(mean) == 1 and mean.noise is None and mean.sources == ["mean of 50"]
    for z, m in zip(latents.zs, mean.zs, strict=True):
        assert np.allclose(z.mean(0, keepdims=True), m, atol=1e-6)
    assert decode(digits_run, mean).shape == (1, 1, 8, 8)
    cold = decode(digits_run, latents, scale=0.0)  # every latent at 0: the model's mode-like image, 50 times
    assert torch.equal(cold, cold[:1].expand_as(cold))
    with pytest.raises(ValueError, match="--scale must be a finite number"):
        decode(digits_run, latents, scale=float("nan"))


def test_tabular_round_trip(moons_run: Path):
    rows = load_dataset("moons", split="test").data[:64]
    latents = encode(moons_run, rows.numpy())
    assert latents.zs[0].shape == (64, 2) and latents.noise is None
    assert torch.allclose(decode(moons_run, latents), rows, atol=1e-4)  # float32 through a trained flow


def test_class_conditional(conditional_run: Path, tmp_path: Path):
    latents = encode(conditional_run, "digits:test[:30]")
    assert latents.classes.shape == (30,)
    assert torch.equal(decode(conditional_run, latents), load_dataset("digits", split="test").data[:30])
    with pytest.raises(ValueError, match="needs inputs of one class"):
        encode(conditional_run, "digits:test[:30]", mean=True)
    assert encode(conditional_run, "digits:test[:30]", mean=True, label=4).classes.tolist() == [4]


def test_archive_checks(digits_run: Path, moons_run: Path, conditional_run: Path, tmp_path: Path):
    latents = encode(digits_run, "digits:test[:10]")
    with pytest.raises(ValueError, match="come from a Glow, not a TabularGlow"):
        decode(moons_run, latents)
    with pytest.raises(ValueError, match="class-conditional and needs classes; the latents lack them"):
        decode(conditional_run, latents)
    np.savez(tmp_path / "other.npz", z0=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="is not a glowflow latents archive"):
        load_latents(tmp_path / "other.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read .* as a glowflow latents archive"):
        load_latents(tmp_path / "bad.npz")
    latents.zs[1] = latents.zs[1][:5]
    save_latents(latents, tmp_path / "short.npz")
    with pytest.raises(ValueError, match="disagree on the number of examples"):
        load_latents(tmp_path / "short.npz")


@needs_mnist_5k
def test_real_mnist_5_bit_padded(mnist_run: Path):
    """Real digits through n-bit reduction and zero-padding: decode returns the 5-bit levels at 28x28."""
    raw = load_dataset("mnist", MNIST_5K, "test").data[:40]
    images = decode(mnist_run, encode(mnist_run, "mnist:test[:40]"))
    assert images.shape == (40, 1, 28, 28) and torch.equal(images.long(), reduce_bits(raw, 5))
