"""The idx reader (MNIST / Fashion-MNIST): files written here, the real files in ../shared/data, corrupt inputs."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from glowflow.data import load_dataset
from glowflow.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx, read_idx_pair
from glowflow.errors import DataError
from tests.data.data_helpers import (
    IDX_NAMES,
    MNIST_5K_DIR,
    MNIST_DIR,
    idx_bytes,
    make_mnist_like,
    write_file,
    write_mnist,
)


@pytest.mark.parametrize("gz", [True, False])
def test_reads_what_it_was_given(tmp_path: Path, gz: bool) -> None:
    written = write_mnist(tmp_path, n_train=12, n_test=7, gz=gz)
    for split, n in (("train", 12), ("test", 7)):
        ds = load_dataset("mnist", tmp_path, split=split)
        images, labels = written[split]
        assert (ds.name, ds.split, len(ds), ds.shape, ds.num_bins) == ("mnist", split, n, (1, 28, 28), 256)
        assert ds.data.dtype == torch.uint8 and ds.labels.dtype == torch.long
        assert torch.equal(ds.data, torch.from_numpy(images)[:, None])  # levels as stored, never scaled
        assert torch.equal(ds.labels, torch.from_numpy(labels).long())
        assert ds.class_names == [str(i) for i in range(10)] and ds.num_classes == 10 and ds.is_image


def test_read_idx_returns_header_shape(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    path = write_file(tmp_path / "x-idx3-ubyte.gz", idx_bytes(images))
    out = read_idx(path, IMAGES_MAGIC)
    assert out.shape == (2, 3, 5) and out.dtype == np.uint8 and np.array_equal(out, images)
    assert out.flags.writeable  # torch.from_numpy must not warn about read-only memory
    labels = read_idx(write_file(tmp_path / "y-idx1-ubyte", idx_bytes(np.array([3, 1], np.uint8))), LABELS_MAGIC)
    assert labels.tolist() == [3, 1]


def test_gz_name_with_plain_content_is_read(tmp_path: Path) -> None:
    # Browsers sometimes decompress on the fly and keep the .gz name: content is sniffed, not the name.
    images, labels = make_mnist_like(4, 0)
    write_file(tmp_path / "train-images-idx3-ubyte.gz", idx_bytes(images), gz=False)
    write_file(tmp_path / "train-labels-idx1-ubyte.gz", idx_bytes(labels), gz=False)
    assert torch.equal(load_dataset("mnist", tmp_path).data[:, 0], torch.from_numpy(images))


def test_named_subfolder_is_found_and_preferred(tmp_path: Path) -> None:
    mnist = write_mnist(tmp_path, n_train=5, seed=0)  # MNIST directly in data_dir ...
    fashion = write_mnist(tmp_path / "fashion-mnist", n_train=6, seed=10)  # ... Fashion-MNIST in its own folder
    f = load_dataset("fashion-mnist", tmp_path)
    assert len(f) == 6 and torch.equal(f.data[:, 0], torch.from_numpy(fashion["train"][0]))
    assert f.class_names[0] == "T-shirt/top" and f.class_names[9] == "Ankle boot"
    m = load_dataset("mnist", tmp_path)
    assert torch.equal(m.data[:, 0], torch.from_numpy(mnist["train"][0]))


def test_missing_file_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_dataset("mnist", tmp_path, split="test")
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte.gz not found" in msg and str(tmp_path) in msg
    assert "--download" in msg and "glowflow train --data mnist --download" in msg
    assert "https://" in msg and str(tmp_path / "mnist") in msg
    write_file(tmp_path / "t10k-images-idx3-ubyte.gz", idx_bytes(make_mnist_like(3, 0)[0]))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz not found"):
        load_dataset("mnist", tmp_path, split="test")


def _pair(tmp_path: Path, images: bytes, labels: bytes, gz: bool = True) -> tuple[Path, Path]:
    suffix = ".gz" if gz else ""
    return (
        write_file(tmp_path / f"train-images-idx3-ubyte{suffix}", images, gz=gz),
        write_file(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, gz=gz),
    )


IMAGES, LABELS = make_mnist_like(5, 0)
GOOD_IMAGES, GOOD_LABELS = idx_bytes(IMAGES), idx_bytes(LABELS)


@pytest.mark.parametrize(
    "images, labels, bad_file, needle",
    [
        (idx_bytes(IMAGES, magic=2049), GOOD_LABELS, "train-images", "magic number 2049"),
        (GOOD_IMAGES, idx_bytes(LABELS, magic=2051), "train-labels", "magic number 2051"),
        (GOOD_IMAGES[:-10], GOOD_LABELS, "train-images", "truncated"),
        (GOOD_IMAGES + b"\0", GOOD_LABELS, "train-images", "trailing bytes"),
        (GOOD_IMAGES[:10], GOOD_LABELS, "train-images", "shorter than its 16-byte idx header"),
        (b"\0\0", GOOD_LABELS, "train-images", "too short for an idx header"),
        # header says 6 images, the body holds 5
        ((6).to_bytes(4, "big").join([GOOD_IMAGES[:4], GOOD_IMAGES[8:]]), GOOD_LABELS, "train-images", "6 x 28 x 28"),
        (GOOD_IMAGES, idx_bytes(LABELS[:4]), "train-images", "5 images but"),
        (idx_bytes(np.zeros((5, 27, 27), np.uint8)), GOOD_LABELS, "train-images", "27x27 images"),
        (GOOD_IMAGES, idx_bytes(np.full(5, 10, np.uint8)), "train-labels", "0..9"),
    ],
)
def test_corrupt_files_raise_with_the_file_name(
    tmp_path: Path, images: bytes, labels: bytes, bad_file: str, needle: str
) -> None:
    _pair(tmp_path, images, labels)
    with pytest.raises(DataError, match=needle) as e:
        load_dataset("mnist", tmp_path)
    assert bad_file in str(e.value) and str(tmp_path) in str(e.value)


def test_garbage_with_gz_name(tmp_path: Path) -> None:
    images, _ = _pair(tmp_path, b"<html>404 Not Found</html>" * 10, GOOD_LABELS, gz=True)
    images.write_bytes(b"<html>404 Not Found</html>" * 10)  # not compressed, despite the name
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is not an idx image file") as e:
        load_dataset("mnist", tmp_path)
    assert "not gzip data either" in str(e.value)


def test_truncated_gzip(tmp_path: Path) -> None:
    images, _ = _pair(tmp_path, GOOD_IMAGES, GOOD_LABELS)
    raw = images.read_bytes()
    images.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is a corrupt or truncated gzip file"):
        load_dataset("mnist", tmp_path)


def test_read_idx_pair_count_mismatch_names_both_files(tmp_path: Path) -> None:
    images, labels = _pair(tmp_path, GOOD_IMAGES, idx_bytes(LABELS[:3]), gz=False)
    with pytest.raises(DataError) as e:
        read_idx_pair(images, labels)
    assert images.name in str(e.value) and labels.name in str(e.value) and "3 labels" in str(e.value)


def _require(folder: Path) -> None:
    if not all((folder / (n + ".gz")).is_file() for names in IDX_NAMES.values() for n in names):
        pytest.skip(f"real MNIST files not available in {folder.resolve()} (../shared/data beside the repository)")


def test_real_mnist_5k() -> None:
    _require(MNIST_5K_DIR)
    for split, n in (("train", 4000), ("test", 1000)):
        ds = load_dataset("mnist", MNIST_5K_DIR, split=split)
        assert len(ds) == n and ds.shape == (1, 28, 28) and ds.data.dtype == torch.uint8
        assert torch.equal(torch.bincount(ds.labels, minlength=10), torch.full((10,), n // 10))
        assert ds.data.min() == 0 and ds.data.max() == 255
        # real digits: mostly black background, a bright centre
        assert ds.data[:, :, :2].float().mean() < 1 and ds.data[:, :, 10:18, 10:18].float().mean() > 60


def test_real_full_mnist_counts() -> None:
    _require(MNIST_DIR)
    train_labels = read_idx(MNIST_DIR / "train-labels-idx1-ubyte.gz", LABELS_MAGIC)
    counts = np.bincount(train_labels, minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    with gzip.open(MNIST_DIR / "train-images-idx3-ubyte.gz") as f:  # header only: the count, 28 x 28
        header = f.read(16)
    assert [int.from_bytes(header[i : i + 4], "big") for i in range(0, 16, 4)] == [2051, 60000, 28, 28]
    test = load_dataset("mnist", MNIST_DIR.parent, split="test")  # found in the mnist/ sub-folder
    assert len(test) == 10000 and test.shape == (1, 28, 28) and test.num_classes == 10
