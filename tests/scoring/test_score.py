"""glowflow.score: per-level terms, agreement with the model's own bits/dim, every INPUT kind, fitting images to
the model, labels, and the summary and CSV."""

from __future__ import annotations

import csv
import gzip
import io
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import glowflow
from glowflow import Glow
from glowflow.data import load_dataset
from glowflow.errors import DataError
from glowflow.preprocessing import ImagePreprocessing
from glowflow.runs import open_run
from glowflow.scoring import InputSet, read_input, score
from glowflow.scoring.inputs import convert_levels, fit_images, to_grayscale
from glowflow.scoring.score import csv_text
from glowflow.training.evaluate import isolated_rng
from tests.helpers import randomize_
from tests.scoring.scoring_helpers import MNIST_5K, needs_mnist_5k


def test_level_log_probs_sum_to_log_prob():
    model = Glow((2, 8, 8), levels=3, steps=2, hidden=8).double()
    x = torch.rand(4, 2, 8, 8, dtype=torch.float64) - 0.5
    model.log_prob(x)  # ActNorm initialisation
    randomize_(model, 0.05)
    terms = model.level_log_probs(x)
    assert terms.shape == (4, 3)
    assert torch.allclose(terms.sum(1), model.log_prob(x), rtol=0, atol=1e-10)  # float64: summation order only
    assert terms.std(0).min() > 0  # every level's term depends on the example


def test_scores_match_the_models_bits_per_dim(digits_run: Path):
    run = open_run(digits_run, "cpu")
    k = load_dataset("digits", split="test").data
    s = score(run, "digits:test", seed=5)
    with isolated_rng(5, torch.device("cpu")):
        expected = run.model.bits_per_dim(k).detach().double().numpy()
    assert s.bpd.shape == (297,) and np.abs(s.bpd - expected).max() < 1e-5  # float32, another summation order
    assert np.allclose(s.level_bpd.sum(1) + s.dequantization_bpd, s.bpd, rtol=0, atol=1e-9)
    assert np.allclose(s.dequantization_bpd, math.log2(17))  # uniform noise: log2 N bits per dimension
    assert np.allclose(s.nll, s.bpd * 64 * math.log(2))
    assert s.labels[:3] == [str(int(v)) for v in load_dataset("digits", split="test").labels[:3]]
    assert s.sources[2] == "digits:test[2]" and s.noise_std is None
    again = score(run, "digits:test", seed=5, batch_size=50)
    assert np.array_equal(score(run, "digits:test", seed=5).bpd, s.bpd)  # the same call: the same noise
    assert np.abs(again.bpd - s.bpd).max() < 0.05  # other batches draw other noise, within its spread
    four = score(run, "digits:test", n_samples=4)
    assert four.noise_std.shape == (297,) and 0 < four.noise_std.mean() < 0.05
    assert abs(four.bpd.mean() - s.bpd.mean()) < 0.01


def test_summary_and_csv(digits_run: Path):
    s = glowflow.score(digits_run, ["digits:test", "digits:train[:40]"])
    summary = s.summary()
    assert summary["score"] == "bpd" and set(summary["sets"]) == {"digits:test", "digits:train[:40]"}
    entry = summary["sets"]["digits:train[:40]"]
    assert entry["examples"] == 40 and entry["q05"] <= entry["q50"] <= entry["q95"] <= entry["max"]
    assert entry["mean"] == pytest.approx(s.of_set("digits:train[:40]").bpd.mean())
    assert len(entry["mean_bpd_per_level"]) == 2 and summary["step"] == 30 and summary["examples_per_s"] > 0
    rows = list(csv.DictReader(io.StringIO(csv_text(s, sort=True))))
    assert len(rows) == 337 and rows[0]["set"] in s.set_names
    values = [float(r["bpd"]) for r in rows]
    assert values == sorted(values, reverse=True)  # least likely first
    assert set(rows[0]) == {"set", "source", "label", "bpd", "nll_nats", "bpd_level_1", "bpd_level_2",
                            "bpd_dequantization"}  # fmt: skip


def _write_idx(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    path = folder / "x-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(struct.pack(">IIII", 2051, *images.shape) + images.tobytes()))
    (folder / "x-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">II", 2049, len(labels))
                                                                  + labels.tobytes()))  # fmt: skip
    return path


def test_every_input_kind(digits_run: Path, tmp_path: Path):
    ds = load_dataset("digits", split="test")
    k = ds.data[:12].numpy()
    shown = np.round(k.astype(np.int64) * 255 / 16).astype(
        np.uint8
    )  # display levels, as glowflow writes PNGs of 17-level images
    folder = tmp_path / "folder"
    for i, im in enumerate(shown):
        (folder / str(int(ds.labels[i]))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im[0]).save(folder / str(int(ds.labels[i])) / f"{i}.png")
    np.save(tmp_path / "levels.npy", k)
    np.savez(tmp_path / "shown.npz", images=shown, labels=ds.labels[:12].numpy())
    idx = _write_idx(tmp_path, shown[:, 0], ds.labels[:12].numpy().astype(np.uint8))
    reference = score(digits_run, k, seed=0).bpd  # an array at the model's levels
    by_source = {}
    for spec in (folder, folder / "0" / "0.png", tmp_path / "levels.npy", idx):
        s = score(digits_run, str(spec), seed=0)
        by_source[spec] = s
    assert np.allclose(score(digits_run, tmp_path / "levels.npy", seed=0).bpd, reference)
    s = score(digits_run, tmp_path / "shown.npz", levels=256, seed=0)  # 8-bit arrays say so
    assert np.allclose(s.bpd, reference) and s.labels == [str(int(v)) for v in ds.labels[:12]]
    assert np.allclose(by_source[idx].bpd, reference) and by_source[idx].labels == s.labels
    f = by_source[folder]
    assert len(f) == 12 and f.sources[0].endswith(".png") and set(f.labels) <= {str(i) for i in range(10)}
    one = by_source[folder / "0" / "0.png"]
    assert len(one) == 1 and one.bpd.shape == (1,)
    assert np.allclose(read_input("digits:test[3:7]").data.numpy(), ds.data[3:7].numpy())
    with pytest.raises(DataError, match=r"levels reach 255, but arrays are read at 17 levels .* --levels"):
        score(digits_run, tmp_path / "shown.npz")
    with pytest.raises(FileNotFoundError, match="no such file or folder, and not a data set"):
        score(digits_run, tmp_path / "nothing")
    with pytest.raises(ValueError, match="say which split"):
        score(digits_run, "digits")


def test_fitting_images_to_the_model():
    pre = ImagePreprocessing((1, 28, 28), 256)
    digits = InputSet("d", torch.full((2, 1, 8, 8), 16, dtype=torch.uint8), 17)
    with pytest.raises(ValueError, match=r"the model takes 1x28x28 images; d holds 1x8x8: --resize .* --pad"):
        fit_images(digits, pre)
    up = fit_images(digits, pre, resize=True)
    assert up.shape == (2, 1, 28, 28) and int(up.min()) == int(up.max()) == 255  # 16 of 16 -> 255 of 255
    padded = fit_images(digits, pre, pad=True)
    assert int(padded[0, 0, 10, 10]) == 255 and int(padded[0, 0, 0, 0]) == 0 and int(padded.sum()) == 2 * 64 * 255
    rgb = InputSet("c", torch.tensor([[[[255]], [[0]], [[0]]]], dtype=torch.uint8).expand(1, 3, 28, 28), 256)
    with pytest.raises(ValueError, match=r"holds 3x28x28 \(RGB\): --grayscale"):
        fit_images(rgb, pre)
    assert int(fit_images(rgb, pre, grayscale=True)[0, 0, 0, 0]) == 76  # round(0.299 * 255)
    big = InputSet("b", torch.zeros(1, 1, 32, 32, dtype=torch.uint8), 256)
    with pytest.raises(ValueError, match="larger 1x32x32 images, which --pad cannot fit: use --resize"):
        fit_images(big, pre, pad=True)
    with pytest.raises(ValueError, match="alternatives"):
        fit_images(big, pre, pad=True, resize=True)
    assert torch.equal(convert_levels(torch.arange(17), 17, 256), torch.round(torch.arange(17) * 255 / 16).long())
    assert torch.equal(convert_levels(convert_levels(torch.arange(17), 17, 256), 256, 17), torch.arange(17))
    pixel = np.array([[[10, 200, 30]]], dtype=np.uint8)
    expected = np.asarray(Image.fromarray(pixel).convert("L"))[0, 0]
    got = to_grayscale(torch.from_numpy(pixel.transpose(2, 0, 1))[None])
    assert abs(int(got) - int(expected)) <= 1  # Pillow rounds in integer arithmetic


def test_class_conditional_labels(conditional_run: Path, tmp_path: Path):
    k = load_dataset("digits", split="test").data[:6].numpy()
    np.save(tmp_path / "x.npy", k)
    with pytest.raises(ValueError, match="class-conditional and .* has no labels"):
        score(conditional_run, tmp_path / "x.npy")
    as_three = score(conditional_run, tmp_path / "x.npy", label="3")
    labelled = score(conditional_run, k, labels=np.full(6, 3))
    assert np.allclose(as_three.bpd, labelled.bpd)
    assert not np.allclose(score(conditional_run, k, labels=np.full(6, 5)).bpd, labelled.bpd)
    assert len(score(conditional_run, "digits:test[:6]")) == 6  # the data set's own labels
    with pytest.raises(ValueError, match="label 12 out of range"):
        score(conditional_run, k, label=12)


def test_tabular_scores(moons_run: Path, tmp_path: Path):
    run = open_run(moons_run, "cpu")
    rows = np.array([[0.0, 0.5], [1.0, -0.5], [8.0, 8.0]], dtype=np.float32)
    np.savetxt(tmp_path / "rows.csv", rows, delimiter=",", header="a,b", comments="")
    s = score(run, tmp_path / "rows.csv")
    expected = -run.model.log_prob(torch.from_numpy(rows)).detach().double().numpy()
    assert s.key == "nll" and np.allclose(s.nll, expected, atol=1e-5) and s.level_bpd is None
    assert s.nll[2] > s.nll[0] + 10  # a point far from the moons is far less likely
    assert np.allclose(s.bpd, s.nll / (2 * math.log(2)))
    assert len(score(run, "moons:test")) == len(load_dataset("moons", split="test"))
    with pytest.raises(ValueError, match="takes rows of 2 numbers"):
        score(run, np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="is an image folder, which a tabular model cannot score"):
        score(run, str(tmp_path))


@needs_mnist_5k
def test_real_mnist_with_bits_and_padding(mnist_run: Path):
    """A 5-bit model of zero-padded 32x32 MNIST scores raw 28x28 digits through its own preprocessing."""
    s = score(mnist_run, "mnist:test[:64]")  # the run's data set: found where the run found it
    run = open_run(mnist_run, "cpu")
    k = run.model.preprocess(load_dataset("mnist", MNIST_5K, "test").data[:64])
    with isolated_rng(0, torch.device("cpu")):
        expected = run.model.bits_per_dim(k).detach().double().numpy()
    assert np.abs(s.bpd - expected).max() < 1e-5 and s.inputs.shape == (64, 1, 32, 32)
    assert np.allclose(s.dequantization_bpd, 5.0)  # log2 of 32 levels
