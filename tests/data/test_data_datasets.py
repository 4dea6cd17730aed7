"""load_dataset's front door, the bundled digits, the Dataset container, pad_images and default_data_dir."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import glowflow.data as gd
from glowflow.data import DATASETS, TOY_DENSITIES, Dataset, default_data_dir, load_dataset, pad_images
from glowflow.errors import DataError


def test_public_api() -> None:
    assert set(gd.__all__) == {
        "DATASETS",
        "TOY_DENSITIES",
        "Dataset",
        "DatasetSpec",
        "DownloadEntry",
        "ReadOptions",
        "default_data_dir",
        "download",
        "load_dataset",
        "open_dataset",
        "pad_images",
        "sample_toy",
    }
    assert TOY_DENSITIES == ("moons", "circles", "checkerboard", "8gaussians", "pinwheel", "2spirals")
    assert list(DATASETS)[:6] == ["digits", "mnist", "fashion-mnist", "cifar10", "folder", "tabular"]
    assert set(TOY_DENSITIES) <= set(DATASETS) and len(DATASETS) == 16 and DATASETS.get("array").kind == "image"
    descriptions = [DATASETS.get(name).description for name in DATASETS]
    assert all(isinstance(d, str) and d and "\n" not in d for d in descriptions)
    kinds = {name: DATASETS.get(name).kind for name in DATASETS}
    assert kinds["mnist"] == "image" and kinds["tabular"] == "tabular" and kinds["moons"] == "toy"


def test_digits() -> None:
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    assert (len(train), len(test)) == (1500, 297)
    for ds in (train, test):
        assert ds.shape == (1, 8, 8) and ds.data.dtype == torch.uint8 and ds.num_bins == 17
        assert ds.data.min() == 0 and ds.data.max() == 16
        assert ds.labels.dtype == torch.long and ds.num_classes == 10 and ds.class_names[3] == "3" and ds.is_image
    # the fixed split: default_rng(0) permutation, first 1,500 train, last 297 test
    bunch = load_digits()
    perm = np.random.default_rng(0).permutation(1797)
    assert np.array_equal(test.data[:, 0].numpy(), bunch.images[perm[1500:]].astype(np.uint8))
    assert np.array_equal(train.labels.numpy(), bunch.target[perm[:1500]])
    assert torch.equal(load_dataset("digits", split="test", seed=7, data_dir="/nonexistent").data, test.data)


def test_unknown_name_and_split() -> None:
    with pytest.raises(ValueError, match="unknown data set 'imagenet'.*digits.*mnist.*cifar10.*2spirals"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_dataset("digits", split="valid")


def test_dataset_container() -> None:
    ds = Dataset("x", "train", torch.zeros(4, 3, 2, 2, dtype=torch.uint8), torch.tensor([0, 2, 1, 2]), 256, None)
    assert ds.shape == (3, 2, 2) and len(ds) == 4 and ds.is_image and ds.num_classes == 3
    assert repr(ds) == (
        "Dataset(name='x', split='train', n=4, shape=(3, 2, 2), dtype=torch.uint8, num_bins=256, num_classes=3)"
    )
    assert ds == ds and ds != Dataset("x", "train", ds.data, ds.labels, 256, None)  # identity, not tensor equality
    tab = Dataset("t", "test", torch.zeros(5, 7), None, None, None)
    assert tab.shape == (7,) and not tab.is_image and tab.num_classes is None
    with pytest.raises(ValueError, match="uint8"):
        Dataset("x", "train", torch.zeros(2, 1, 2, 2), None, 256, None)
    with pytest.raises(ValueError, match="labels"):
        Dataset("x", "train", torch.zeros(2, 3), torch.zeros(3, dtype=torch.long), None, None)
    with pytest.raises(ValueError, match=r"\(N, D\) float"):
        Dataset("x", "train", torch.zeros(2, 3, 4), None, None, None)


def test_pad_images() -> None:
    x = torch.randint(1, 256, (2, 1, 28, 28), dtype=torch.uint8)
    y = pad_images(x, 32)
    assert y.shape == (2, 1, 32, 32) and y.dtype == torch.uint8
    assert torch.equal(y[:, :, 2:30, 2:30], x)
    assert y.sum() == x.sum() and (y[:, :, :2] == 0).all() and (y[:, :, :, 30:] == 0).all()
    odd = pad_images(torch.ones(1, 3, 5, 4), 8)  # odd remainder: extra row at the bottom
    assert torch.equal(odd[0, 0].nonzero().min(0).values, torch.tensor([1, 2]))
    assert torch.equal(odd[0, 0].nonzero().max(0).values, torch.tensor([5, 5]))
    assert torch.equal(pad_images(x, 28), x)
    with pytest.raises(ValueError, match="larger"):
        pad_images(x, 27)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        pad_images(x[0], 32)


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GLOWFLOW_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.setenv("GLOWFLOW_DATA", "~/somewhere")
    assert default_data_dir() == Path.home() / "somewhere"
    monkeypatch.delenv("GLOWFLOW_DATA")
    assert default_data_dir() == Path.home() / ".cache" / "glowflow"


def test_data_dir_defaults_to_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GLOWFLOW_DATA", str(tmp_path))
    with pytest.raises(DataError, match=str(tmp_path / "fashion-mnist")):
        load_dataset("fashion-mnist")


def test_folder_without_pillow_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"not read")
    (tmp_path / "b.png").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import Image` fail as if not installed
    with pytest.raises(ImportError, match="pip install Pillow"):
        load_dataset("folder", tmp_path)
