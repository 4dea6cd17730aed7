"""The ``array`` data set: images in a .npy / .npz file in every layout, labels, class names, and bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from glowflow.data import load_dataset, open_dataset
from glowflow.data.arrays import ArraySource
from glowflow.data.npy import array_source, as_image_array, read_array_file
from glowflow.data.sources import TensorSource, to_memory
from glowflow.errors import DataError


def _images(n: int = 30, c: int = 1) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, c, 6, 4), dtype=np.uint8)


@pytest.mark.parametrize("layout", ["nchw", "nhw", "nhwc"])
def test_layouts_give_nchw(layout: str):
    x = _images(5, 1 if layout == "nhw" else 3)
    given = {"nchw": x, "nhw": x[:, 0], "nhwc": x.transpose(0, 2, 3, 1)}[layout]
    assert np.array_equal(as_image_array(given, "t"), x)
    assert np.array_equal(as_image_array(given.astype(np.int64), "t"), x)  # other integer dtypes within 0..255


def test_npy_and_npz_splits_and_labels(tmp_path: Path):
    x = _images(30)
    np.save(tmp_path / "x.npy", x)
    train, test = load_dataset("array", tmp_path / "x.npy"), load_dataset("array", tmp_path / "x.npy", "test")
    assert (len(train), len(test)) == (27, 3) and train.num_bins == 256 and train.labels is None
    both = torch.cat([train.data, test.data]).numpy()
    assert sorted(map(bytes, both)) == sorted(map(bytes, x))  # a partition of the file's images
    y = np.arange(30) % 3
    np.savez(tmp_path / "x.npz", images=x.transpose(0, 2, 3, 1), labels=y, class_names=np.array(["a", "b", "c"]))
    train = load_dataset("array", tmp_path / "x.npz")
    assert train.shape == (1, 6, 4) and train.class_names == ["a", "b", "c"] and train.num_classes == 3
    assert torch.equal(train.labels, torch.from_numpy(y[[int(np.flatnonzero((x == im).all((1, 2, 3)))[0])
                                                          for im in train.data.numpy()]]))  # fmt: skip
    np.savez(tmp_path / "single.npz", pixels=x)
    assert read_array_file(tmp_path / "single.npz")[0].shape == (30, 1, 6, 4)


def test_bad_files(tmp_path: Path):
    with pytest.raises(ValueError, match="needs data_dir"):
        load_dataset("array")
    with pytest.raises(DataError, match="not found"):
        load_dataset("array", tmp_path / "missing.npy")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="reads a .npy or .npz file"):
        load_dataset("array", tmp_path / "x.csv")
    np.save(tmp_path / "f.npy", np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(DataError, match="integer levels 0..255.*float32"):
        load_dataset("array", tmp_path / "f.npy")
    np.save(tmp_path / "big.npy", np.full((4, 1, 8, 8), 300, np.int32))
    with pytest.raises(DataError, match="must lie in 0..255, got 300..300"):
        load_dataset("array", tmp_path / "big.npy")
    np.save(tmp_path / "shape.npy", np.zeros((4, 5, 8, 8), np.uint8))
    with pytest.raises(DataError, match=r"C = 1 or 3, got shape \(4, 5, 8, 8\)"):
        load_dataset("array", tmp_path / "shape.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="holds Python objects"):
        load_dataset("array", tmp_path / "obj.npy")
    np.savez(tmp_path / "two.npz", a=_images(4), b=_images(4))
    with pytest.raises(DataError, match="expected the images under one of images, x, data"):
        load_dataset("array", tmp_path / "two.npz")
    np.savez(tmp_path / "lab.npz", x=_images(4), labels=np.zeros(3, np.int64))
    with pytest.raises(DataError, match=r"labels 'labels' must be integers of shape \(4,\)"):
        load_dataset("array", tmp_path / "lab.npz")


def test_array_files_are_read_batch_by_batch_when_they_can_be(tmp_path: Path):
    """A .npy file or a stored .npz member of uint8 images is read row by row; a compressed member or another
    integer dtype is read whole. Either way both splits hold the examples and labels of load_dataset."""
    x, y = _images(30), np.arange(30) % 3
    np.save(tmp_path / "plain.npy", x)
    np.savez(tmp_path / "stored.npz", images=x, labels=y, class_names=np.array(["a", "b", "c"]))
    np.savez_compressed(tmp_path / "packed.npz", images=x, labels=y)
    np.save(tmp_path / "wide.npy", x.astype(np.int64))
    kinds = {"plain.npy": ArraySource, "stored.npz": ArraySource, "packed.npz": TensorSource, "wide.npy": TensorSource}
    for name, kind in kinds.items():
        path = tmp_path / name
        assert type(array_source(path)) is kind
        for source, split in zip(open_dataset("array", path), ("train", "test"), strict=True):
            whole, read = load_dataset("array", path, split), to_memory(source)
            assert torch.equal(read.x, whole.data) and whole.data.dtype == torch.uint8
            assert (read.labels is None) == name.endswith(".npy")
            if read.labels is not None:
                assert torch.equal(read.labels, whole.labels)
    assert open_dataset("array", tmp_path / "stored.npz")[0].class_names == ["a", "b", "c"]
