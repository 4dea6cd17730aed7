"""The CIFAR-10 reader on batches pickled here like the real ones, and the restricted unpickler."""

from __future__ import annotations

import builtins
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from glowflow.data import load_dataset
from glowflow.data.cifar import CLASS_NAMES, safe_load
from glowflow.errors import DataError
from tests.data.data_helpers import CIFAR_NAMES, cifar_batch, dump_py2_style, write_cifar


@pytest.mark.parametrize("inside", ["cifar-10-batches-py", "."])
def test_reads_batches(tmp_path: Path, inside: str) -> None:
    written = write_cifar(tmp_path / inside, n_train=2, n_test=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. numpy's DeprecationWarning for numpy.core: resolved without it
        train = load_dataset("cifar10", tmp_path, split="train")
        test = load_dataset("cifar10", tmp_path, split="test")
    assert (len(train), len(test)) == (10, 3)
    for ds, split in ((train, "train"), (test, "test")):
        raw, labels = written[split]
        assert ds.shape == (3, 32, 32) and ds.data.dtype == torch.uint8 and ds.num_bins == 256
        assert ds.labels.tolist() == labels and ds.labels.dtype == torch.long
        assert ds.class_names == CLASS_NAMES and ds.num_classes == 10
        # R, G, B planes of 32x32, row-major: pixel (c, y, x) of image i is raw[i, c * 1024 + y * 32 + x]
        i, c, y, x = 1, 2, 5, 7
        assert ds.data[i, c, y, x].item() == raw[i, c * 1024 + y * 32 + x]
        assert torch.equal(ds.data.reshape(len(ds), -1), torch.from_numpy(raw))


def test_numpy2_style_pickles_and_meta_names(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    batch, raw, labels = cifar_batch(4, 0)
    dump_py2_style(batch, folder / "test_batch", legacy_numpy_name=False)
    names = [n.upper() for n in CIFAR_NAMES]
    dump_py2_style({b"label_names": names}, folder / "batches.meta")
    ds = load_dataset("cifar10", tmp_path, split="test")
    assert torch.equal(ds.data.reshape(4, -1), torch.from_numpy(raw)) and ds.labels.tolist() == labels
    assert ds.class_names == [n.decode().upper() for n in CIFAR_NAMES]


def test_without_meta_uses_the_official_names(tmp_path: Path) -> None:
    dump_py2_style(cifar_batch(2, 0)[0], tmp_path / "test_batch")
    assert load_dataset("cifar10", tmp_path, split="test").class_names == CLASS_NAMES


class _Exploit:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


class _Eval:
    def __reduce__(self) -> tuple:
        return (builtins.eval, ("1 + 1",))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    path = folder / "test_batch"
    payload = {b"data": _Exploit(f"touch {marker}"), b"labels": []}
    for write in (lambda: path.write_bytes(pickle.dumps(payload)), lambda: dump_py2_style(payload, path)):
        write()
        with pytest.raises(DataError, match=r"refusing to unpickle (posix|nt|os)\.system from .*test_batch"):
            load_dataset("cifar10", tmp_path, split="test")
        assert not marker.exists()
    path.write_bytes(pickle.dumps(_Eval()))
    with pytest.raises(DataError, match="refusing to unpickle builtins.eval"):
        safe_load(path)


def test_plain_pickle_needs_no_globals(tmp_path: Path) -> None:
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({b"a": [1, 2, b"x"], b"b": 3}))
    assert safe_load(path) == {b"a": [1, 2, b"x"], b"b": 3}


@pytest.mark.parametrize(
    "content, needle",
    [
        ({b"data": np.zeros((2, 3072), np.uint8)}, "expected a dict with b'data' and b'labels'"),
        ([1, 2, 3], "expected a dict"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"shape \(N, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "must be a uint8 array"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1 labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "0..9"),
    ],
)
def test_malformed_batches(tmp_path: Path, content: object, needle: str) -> None:
    dump_py2_style(content, tmp_path / "test_batch")
    with pytest.raises(DataError, match=needle) as e:
        load_dataset("cifar10", tmp_path, split="test")
    assert "test_batch" in str(e.value)


def test_truncated_and_garbage_pickles(tmp_path: Path) -> None:
    dump_py2_style(cifar_batch(3, 0)[0], tmp_path / "test_batch")
    raw = (tmp_path / "test_batch").read_bytes()
    (tmp_path / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="test_batch is not a valid CIFAR-10 pickle"):
        load_dataset("cifar10", tmp_path, split="test")
    (tmp_path / "test_batch").write_bytes(b"<html>not a pickle</html>")
    with pytest.raises(DataError, match="test_batch is not a valid CIFAR-10 pickle"):
        load_dataset("cifar10", tmp_path, split="test")


def test_bad_meta(tmp_path: Path) -> None:
    dump_py2_style(cifar_batch(2, 0)[0], tmp_path / "test_batch")
    dump_py2_style({b"label_names": [b"a", b"b"]}, tmp_path / "batches.meta")
    with pytest.raises(DataError, match="batches.meta"):
        load_dataset("cifar10", tmp_path, split="test")


def test_missing_batches_say_how_to_get_them(tmp_path: Path) -> None:
    for i in range(1, 5):  # data_batch_5 missing
        dump_py2_style(cifar_batch(1, i)[0], tmp_path / f"data_batch_{i}")
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", tmp_path, split="train")
    msg = str(e.value)
    assert "data_batch_5 not found" in msg and "--download" in msg and "cifar-10-python.tar.gz" in msg
