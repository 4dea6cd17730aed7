"""Downsampled ImageNet: both published versions' file formats, generated small, recognised and named."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from glowflow.data.imagenet import CHRABASZCZ, COUNTS, OORD, find_imagenet, open_imagenet
from glowflow.errors import DataError
from tests.data.stream_helpers import chrabaszcz_batch, random_images, write_chrabaszcz, write_png_folder, write_png_tar

PART = "a part of the set"  # the warning for a split smaller than the published one


def test_chrabaszcz_batches_in_numeric_order_with_zero_based_labels(tmp_path: Path):
    images = random_images(23, 3, 8)
    labels = np.arange(23) * 37 % 1000
    write_chrabaszcz(tmp_path, images, labels, n_files=10)  # train_data_batch_1 .. _10: 10 sorts after 9
    with pytest.warns(UserWarning, match=f"23 train images where the {CHRABASZCZ} version has 1,281,167: {PART}"):
        found = find_imagenet(tmp_path)
    assert found.version == CHRABASZCZ and found.resolution == 8 and found.kind == "npz-batches"
    assert [p.name for p in found.files][-2:] == ["train_data_batch_9.npz", "train_data_batch_10.npz"]
    assert "npz arrays 'data' (N, 192) uint8 and 'labels'" in found.evidence[0]
    assert found.describe().startswith("ImageNet 8x8 train, Chrabaszcz et al. 2017")
    with pytest.warns(UserWarning, match=PART):
        src = open_imagenet(tmp_path)
    assert src.name == f"ImageNet 8x8 train ({CHRABASZCZ})" and len(src) == 23 and src.shape == (3, 8, 8)
    idx = torch.tensor([22, 0, 9, 9])
    x, y = src.get(idx)
    assert torch.equal(x, torch.from_numpy(images)[idx])  # each row holds the R, G, B planes
    assert torch.equal(y, torch.from_numpy(labels)[idx])  # stored 1..1000, read 0..999


def test_chrabaszcz_validation_file_and_published_count(tmp_path: Path):
    n = COUNTS[CHRABASZCZ]["test"]
    batch = chrabaszcz_batch(np.zeros((n, 3, 8, 8), dtype=np.uint8), np.ones(n, dtype=np.int64), with_mean=False)
    np.savez(tmp_path / "val_data.npz", **batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the published count: no warning
        found = find_imagenet(tmp_path, "test")
        src = open_imagenet(tmp_path / "val_data.npz", "test")
    assert found.version == CHRABASZCZ and "50,000 test images, the published count of chrabaszcz2017" in found.evidence
    assert len(src) == n and int(src.labels.max()) == 0


def test_deflated_batches_are_named_but_need_the_conversion(tmp_path: Path):
    write_chrabaszcz(tmp_path, random_images(6, 3, 8), np.arange(6), n_files=2, compressed=True)
    with pytest.warns(UserWarning, match=PART):
        assert find_imagenet(tmp_path).version == CHRABASZCZ
        with pytest.raises(DataError, match=re.escape("python -m glowflow.data.arrays uncompress")):
            open_imagenet(tmp_path)


def test_van_den_oord_tar_and_folder(tmp_path: Path):
    images = random_images(5, 3, 32)
    write_png_tar(tmp_path / "train_32x32.tar", images)
    write_png_folder(tmp_path / "valid_32x32", images[:3])
    with pytest.warns(UserWarning, match=f"5 train images where the {OORD} version has 1,281,149: {PART}"):
        found = find_imagenet(tmp_path, "train")
    assert found.version == OORD and found.kind == "png-tar" and found.resolution == 32
    assert found.evidence == ["the name train_32x32.tar of the image-net.org/small downloads"]
    with pytest.warns(UserWarning, match=PART):
        train = open_imagenet(tmp_path, "train")
        test = open_imagenet(tmp_path, "test")
    assert train.name == f"ImageNet 32x32 train ({OORD})" and train.labels is None
    assert torch.equal(train.get([4, 1])[0], torch.from_numpy(images[[4, 1]]))
    assert test.name == f"ImageNet 32x32 test ({OORD})" and torch.equal(test.get([2])[0], torch.from_numpy(images[[2]]))


def test_vdvae_arrays_are_the_van_den_oord_version(tmp_path: Path):
    images = random_images(4, 3, 32)
    np.save(tmp_path / "imagenet32-valid.npy", images.transpose(0, 2, 3, 1))
    with pytest.warns(UserWarning, match=PART):
        src = open_imagenet(tmp_path, "test")
        found = find_imagenet(tmp_path / "imagenet32-valid.npy", "test")
    assert src.name == f"ImageNet 32x32 test ({OORD})" and torch.equal(src.get([3])[0], torch.from_numpy(images[[3]]))
    assert "VDVAE's conversion" in found.evidence[0]


@pytest.mark.parametrize("version", [OORD, CHRABASZCZ])
def test_an_unnamed_array_is_told_by_its_count(tmp_path: Path, version: str):
    path = tmp_path / "my_imagenet_valid.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(COUNTS[version]["test"], 8, 8, 3))
    found = find_imagenet(path, "test")
    assert found.version == version and found.evidence == [
        f"{COUNTS[version]['test']:,} test images, the published count of {version}"
    ]


def test_no_evidence_or_conflicting_evidence_is_refused_unless_the_version_is_given(tmp_path: Path):
    np.save(tmp_path / "mine.npy", np.zeros((7, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=rf"cannot tell which ImageNet version.*7 train images.*pass version='{OORD}'"):
        find_imagenet(tmp_path / "mine.npy")
    with pytest.warns(UserWarning, match=PART):
        assert find_imagenet(tmp_path / "mine.npy", version=OORD).evidence == [f"version='{OORD}' as given"]
    conflict = tmp_path / "imagenet32-valid.npy"  # VDVAE's name, the other version's count
    np.lib.format.open_memmap(conflict, mode="w+", dtype=np.uint8, shape=(COUNTS[CHRABASZCZ]["test"], 32, 32, 3))
    with pytest.raises(DataError, match=f"its format says {OORD} but its 50,000 images are the published count of"):
        find_imagenet(conflict, "test")
    with pytest.warns(UserWarning, match=f"look like {OORD}; read as version='{CHRABASZCZ}'"):
        assert find_imagenet(conflict, "test", version=CHRABASZCZ).version == CHRABASZCZ


def test_format_errors(tmp_path: Path):
    write_chrabaszcz(tmp_path / "c", random_images(4, 3, 8), np.arange(4), n_files=1)
    with pytest.raises(DataError, match="labelled npz batches are the Chrabaszcz"):
        find_imagenet(tmp_path / "c", version=OORD)
    with pytest.raises(DataError, match="no ImageNet test files"):
        find_imagenet(tmp_path / "c", "test")
    write_png_tar(tmp_path / "c" / "train_32x32.tar", random_images(2, 3, 32))
    with pytest.raises(DataError, match="several kinds"):
        find_imagenet(tmp_path / "c")
    np.savez(tmp_path / "data_only.npz", data=np.zeros((2, 192), dtype=np.uint8))
    with pytest.raises(DataError, match="not the 'data' and 'labels' arrays"):
        find_imagenet(tmp_path / "data_only.npz")
    np.savez(tmp_path / "odd.npz", data=np.zeros((2, 100), dtype=np.uint8), labels=np.ones(2))
    with pytest.raises(DataError, match="not uint8 rows of 3 x r x r"):
        find_imagenet(tmp_path / "odd.npz")
    zero_based = tmp_path / "zb"
    zero_based.mkdir()
    np.savez(zero_based / "val_data.npz", data=np.zeros((2, 192), dtype=np.uint8), labels=np.array([0, 999]))
    with pytest.warns(UserWarning, match=PART), pytest.raises(DataError, match="hold 0..999, not the classes 1..1000"):
        open_imagenet(zero_based, "test")
    with pytest.raises(ValueError, match="split must be one of"):
        find_imagenet(tmp_path, "valid")
    with pytest.raises(ValueError, match="version must be one of"):
        find_imagenet(tmp_path, version="2016")
    with pytest.raises(DataError, match="not found"):
        find_imagenet(tmp_path / "nothing")
    (tmp_path / "table.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="ImageNet is read from .npz batches, .tar files, .npy arrays or PNG folders"):
        find_imagenet(tmp_path / "table.csv")
