"""The data set table's batch-by-batch readers (``open``): image folders, tar shards and ImageNet 32 / 64, on small
files written here in the exact formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from glowflow.data import DATASETS, ReadOptions, load_dataset, open_dataset
from glowflow.data.image_files import ImageFolderSource
from glowflow.data.sources import TensorSource
from glowflow.errors import DataError
from tests.data.stream_helpers import chrabaszcz_batch, random_images, write_chrabaszcz, write_png_folder, write_shards


def _all(source) -> torch.Tensor:
    return source.get(torch.arange(len(source)))[0]


def test_a_folder_opens_as_the_examples_load_folder_reads(tmp_path: Path):
    """Same examples, same order, same labels as the whole-folder reader: a run gives the same batches either way."""
    x = random_images(30, 3, 6, seed=1)
    write_png_folder(tmp_path / "classes", x, labels=np.arange(30) % 4)
    train, test = open_dataset("folder", tmp_path / "classes", seed=0)
    for split, source in (("train", train), ("test", test)):
        loaded = load_dataset("folder", tmp_path / "classes", split)
        assert len(source) == len(loaded) and source.class_names == loaded.class_names == [f"class_{k}" for k in
                                                                                            range(4)]  # fmt: skip
        assert torch.equal(_all(source), loaded.data) and torch.equal(source.labels, loaded.labels)
    assert (len(train), len(test)) == (27, 3)


def test_train_and_test_folders_share_the_class_index(tmp_path: Path):
    x = random_images(9, 1, 4, seed=2)
    write_png_folder(tmp_path / "train", x[:6], labels=np.array([0, 0, 1, 1, 2, 2]))
    write_png_folder(tmp_path / "test", x[6:], labels=np.array([2, 2, 1]))  # the test split lacks class_0
    train, test = open_dataset("folder", tmp_path)
    assert train.class_names == test.class_names == ["class_0", "class_1", "class_2"]
    assert test.labels.tolist() == [1, 2, 2] and torch.equal(_all(test), torch.from_numpy(x[[8, 6, 7]]))
    loaded = load_dataset("folder", tmp_path, "test")
    assert torch.equal(loaded.data, _all(test)) and torch.equal(loaded.labels, test.labels)
    write_png_folder(tmp_path / "mixed" / "train", x[:2], labels=np.array([0, 1]))
    write_png_folder(tmp_path / "mixed" / "test", x[2:4])  # no class sub-folders
    with pytest.raises(DataError, match="must both use class sub-folders, or neither"):
        open_dataset("folder", tmp_path / "mixed")
    (tmp_path / "mixed" / "test").rename(tmp_path / "elsewhere")
    with pytest.raises(DataError, match="has a train/ folder but no test/ folder"):
        open_dataset("folder", tmp_path / "mixed")


def test_folder_images_are_fitted_as_the_options_say(tmp_path: Path):
    from PIL import Image

    rng = np.random.default_rng(3)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    options = ReadOptions((4, 4), "center-crop", "raise")
    train, _ = open_dataset("folder", tmp_path, options=options)
    direct = ImageFolderSource(tmp_path, size=(4, 4), fit="center-crop")
    assert train.shape == (3, 4, 4) and torch.equal(_all(train), direct.get(train.indices)[0])
    with pytest.raises(DataError, match=r"is 12x8, not 4x4"):
        _all(open_dataset("folder", tmp_path, options=ReadOptions((4, 4)))[0])


def test_shards_from_a_glob_a_folder_or_split_folders(tmp_path: Path):
    x, y = random_images(20, 3, 4, seed=4), np.arange(20) % 3
    write_shards(tmp_path / "all", x, y, per_shard=6)
    (tmp_path / "all" / "notes.txt").write_text("not a shard")
    whole = [open_dataset("shards", p) for p in (tmp_path / "all", tmp_path / "all" / "shard-*.tar")]
    for train, test in whole:
        assert (len(train), len(test)) == (18, 2) and torch.equal(train.labels, torch.from_numpy(y)[train.indices])
        assert torch.equal(_all(train), torch.from_numpy(x)[train.indices])
    assert torch.equal(whole[0][1].indices, whole[1][1].indices)  # the same 90/10 split
    with pytest.raises(DataError, match="no tar shards match"):
        open_dataset("shards", tmp_path / "all" / "nothing-*.tar")
    write_shards(tmp_path / "split" / "train", x[:15], y[:15], per_shard=8)
    write_shards(tmp_path / "split" / "test", x[15:], y[15:], per_shard=8)
    train, test = open_dataset("shards", tmp_path / "split")
    assert torch.equal(_all(test), torch.from_numpy(x[15:])) and test.labels.tolist() == y[15:].tolist()
    write_shards(tmp_path / "mixed" / "train", x[:5], y[:5])
    write_shards(tmp_path / "mixed" / "test", x[5:10])
    with pytest.raises(DataError, match="must both have .cls labels, or neither"):
        open_dataset("shards", tmp_path / "mixed")
    loaded = load_dataset("shards", tmp_path / "split", "test")  # the table's whole-split reader
    assert loaded.name == "shards" and torch.equal(loaded.data, torch.from_numpy(x[15:]))


def test_imagenet_entries_name_the_version_and_check_the_resolution(tmp_path: Path):
    x = random_images(24, 3, 32, seed=5)
    labels0 = np.arange(24) % 1000
    write_chrabaszcz(tmp_path, x[:20], labels0[:20], n_files=2)
    np.savez(tmp_path / "val_data.npz", **chrabaszcz_batch(x[20:], labels0[20:] + 1, with_mean=False))
    with pytest.warns(UserWarning, match="not comparable with published numbers"):
        train, test = open_dataset("imagenet32", tmp_path)
    assert train.name == "ImageNet 32x32 train (chrabaszcz2017)" and test.name == "ImageNet 32x32 test (chrabaszcz2017)"
    assert train.origin.startswith("ImageNet 32x32 train, Chrabaszcz et al. 2017") and "detected from" in train.origin
    assert torch.equal(_all(test), torch.from_numpy(x[20:])) and test.labels.tolist() == labels0[20:].tolist()
    with pytest.warns(UserWarning), pytest.raises(DataError, match="holds 32x32 ImageNet images, not 64x64: use "
                                                                   "--data imagenet32"):  # fmt: skip
        open_dataset("imagenet64", tmp_path)
    with pytest.warns(UserWarning):
        loaded = load_dataset("imagenet32", tmp_path, "test")
    assert loaded.name == "imagenet32" and torch.equal(loaded.labels, test.labels)


def test_options_apply_only_where_they_can(tmp_path: Path):
    with pytest.raises(ValueError, match="the 'digits' data set is loaded whole"):
        open_dataset("digits", options=ReadOptions(on_error="skip"))
    with pytest.raises(ValueError, match="'imagenet32' images have one size"):
        open_dataset("imagenet32", tmp_path, options=ReadOptions((32, 32)))
    with pytest.raises(ValueError, match="needs data_dir"):
        open_dataset("shards")
    with pytest.raises(ValueError, match="fit must be one of exact, center-crop, resize"):
        ReadOptions(fit="stretch")
    train, test = open_dataset("digits")  # loaded whole, as tensors
    assert isinstance(train, TensorSource) and (len(train), len(test)) == (1500, 297)
    opened = [n for n in DATASETS.names() if DATASETS.get(n).open]
    assert opened == ["folder", "array", "shards", "imagenet32", "imagenet64"]
