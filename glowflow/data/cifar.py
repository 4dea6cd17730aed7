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
from pathlib import Path
from typing import Any

import numpy as np

from glowflow.errors import DataError

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"
FOLDER = "cifar-10-batches-py"
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


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
