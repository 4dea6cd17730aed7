"""Reader for CIFAR-10's "python version" batches, with a restricted unpickler.

Each batch file (``data_batch_1`` ... ``data_batch_5``: train, ``test_batch``: test) is a pickled dict with
``b'data'``, a uint8 array (N, 3072) holding the R, G, B planes of each 32x32 image in row-major order, and
``b'labels'``, a list of N ints in 0..9; ``batches.meta`` holds ``b'label_names'``. The files were written by
Python 2, so they are read with ``encoding="bytes"``.

Unpickling runs code named by the file, so :class:`SafeUnpickler` resolves only the few numpy globals that a
pickled array needs and refuses everything else before anything is called.
"""

from __future__ import annotations

import importlib
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from glowflow.data.base import Dataset, default_data_dir
from glowflow.data.downloader import download, missing_message
from glowflow.data.registry import DownloadEntry
from glowflow.errors import DataError

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
FOLDER = "cifar-10-batches-py"
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ARCHIVE = "cifar-10-python.tar.gz"
_COPY_CHUNK = 1 << 20


def _numpy_multiarray() -> Any:
    try:  # numpy >= 2 (numpy.core still exists there, but warns on use)
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:  # pragma: no cover - numpy 1.x
        return importlib.import_module("numpy.core.multiarray")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_multiarray()._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_multiarray()._reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild dicts, lists, bytes, ints and numpy arrays, and nothing else: any other
    global (``os.system``, ``builtins.eval``, ...) raises DataError before it is looked up or called."""

    def __init__(self, file: Any, source: str | os.PathLike) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        resolver = _ALLOWED.get((module, name))
        if resolver is None:
            raise DataError(f"refusing to unpickle {module}.{name} from {self.source}")
        return resolver()


def safe_load(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler`. DataError if the file is unreadable, not a pickle,
    truncated, or names a forbidden global."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return SafeUnpickler(f, path).load()
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    except Exception as e:  # UnpicklingError, EOFError, ValueError, TypeError... from a corrupt stream
        raise DataError(f"{path} is not a valid CIFAR-10 pickle ({type(e).__name__}: {e})") from e


def read_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file. Returns ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``."""
    obj = safe_load(path)
    if not isinstance(obj, dict) or b"data" not in obj or b"labels" not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"{path} is not a CIFAR-10 batch: expected a dict with b'data' and b'labels', got {keys}")
    data, labels = obj[b"data"], obj[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: b'data' must be a uint8 array of shape (N, 3072), got {desc}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: b'labels' must be a list of ints ({e})") from e
    if labels.shape != (len(data),):
        raise DataError(f"{path} holds {len(data)} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise DataError(f"{path}: labels must lie in 0..9, got {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels


def read_label_names(path: str | os.PathLike) -> list[str]:
    """The ten class names from ``batches.meta``."""
    obj = safe_load(path)
    names = obj.get(b"label_names") if isinstance(obj, dict) else None
    if not isinstance(names, list) or len(names) != len(CLASS_NAMES):
        raise DataError(f"{path} is not CIFAR-10's batches.meta: expected b'label_names', a list of 10 names")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def batch_files(data_dir: Path) -> list[Path]:
    """The seven files the reader uses, as extracted into ``data_dir``: five train batches, the test batch, meta."""
    return [data_dir / FOLDER / f for f in (*TRAIN_FILES, *TEST_FILES, META_FILE)]


def extract_archive(archive: Path, data_dir: Path) -> list[Path]:
    """Extract the batch files of ``archive`` into ``data_dir/cifar-10-batches-py/`` (each file atomically).
    Only regular files directly inside ``cifar-10-batches-py/`` are taken; links, devices, absolute or ``..``
    paths are refused. Returns the paths of the extracted files."""
    folder = data_dir / FOLDER
    needed = (*TRAIN_FILES, *TEST_FILES, META_FILE)
    staging = Path(tempfile.mkdtemp(prefix=".cifar-10-extract-", dir=data_dir))
    try:
        extracted: dict[str, Path] = {}
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar:
                    parts = PurePosixPath(member.name).parts
                    if parts[:1] == (".",):
                        parts = parts[1:]
                    if member.isdir() and parts == (FOLDER,):
                        continue
                    if not member.isfile() or len(parts) != 2 or parts[0] != FOLDER or parts[1] == "..":
                        raise DataError(f"{archive}: unexpected member {member.name!r}; refusing to extract it")
                    source = tar.extractfile(member)
                    assert source is not None  # regular files always have a stream
                    with source, (staging / parts[1]).open("wb") as out:
                        shutil.copyfileobj(source, out, _COPY_CHUNK)
                    extracted[parts[1]] = staging / parts[1]
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise DataError(f"{archive} is not a readable tar.gz archive ({e}); delete it and download again") from e
        missing = [f for f in needed if f not in extracted]
        if missing:
            raise DataError(f"{archive} lacks {', '.join(missing)} under {FOLDER}/; it is not CIFAR-10")
        folder.mkdir(parents=True, exist_ok=True)
        for fname, path in extracted.items():
            os.replace(path, folder / fname)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [folder / f for f in needed]


DOWNLOAD = DownloadEntry(
    files={ARCHIVE: "c58f30108f718f92721af3b95e74349a"},
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    subfolder=False,
    unpack=extract_archive,
    unpacked=batch_files,
)


def load_cifar10(data_dir: Path | None, split: str, download_missing: bool, seed: int) -> Dataset:
    """CIFAR-10's ``split`` from ``data_dir/cifar-10-batches-py/`` (or ``data_dir``), downloading it if asked."""
    root = data_dir if data_dir is not None else default_data_dir()
    names = TRAIN_FILES if split == "train" else TEST_FILES
    dirs = [root / FOLDER, root]

    def find() -> Path | None:
        return next((d for d in dirs if all((d / f).is_file() for f in names)), None)

    where = find()
    if where is None and download_missing:
        download("cifar10", root)
        where = find()
    if where is None:
        missing = next(f for f in names if not any((d / f).is_file() for d in dirs))
        raise DataError(missing_message("cifar10", missing, dirs, root))
    batches = [read_batch(where / f) for f in names]
    meta = where / META_FILE
    class_names = read_label_names(meta) if meta.is_file() else list(CLASS_NAMES)
    return Dataset(
        "cifar10",
        split,
        torch.from_numpy(np.concatenate([b[0] for b in batches])),
        torch.from_numpy(np.concatenate([b[1] for b in batches])),
        256,
        class_names,
    )
