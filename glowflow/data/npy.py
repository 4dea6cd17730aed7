"""Reader for images in a NumPy file: ``--data array --data-dir x.npy`` (or ``x.npz``), and the arrays that
``glowflow score`` / ``encode`` read.

- ``.npy``: one array of 8-bit images;
- ``.npz``: the images under ``images``, ``x`` or ``data`` (or its only array), optional labels under ``labels`` or
  ``y`` (integers ``(N,)``), optional class names under ``class_names`` (strings).

Images may be laid out ``(N, C, H, W)``, ``(N, H, W)`` (one channel) or ``(N, H, W, C)`` (channels last), with
``C`` 1 or 3; they must hold integer levels 0..255 (uint8, or another integer dtype within that range). Nothing is
unpickled (``allow_pickle=False``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from glowflow.data.base import Dataset, labels_tensor, split_indices
from glowflow.errors import DataError

IMAGE_KEYS = ("images", "x", "data")
LABEL_KEYS = ("labels", "y")
CHANNELS = (1, 3)


def as_image_array(array: np.ndarray, what: str) -> np.ndarray:
    """8-bit images in any of the layouts of the module docstring -> uint8 ``(N, C, H, W)``. DataError naming
    ``what`` otherwise."""
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.integer):
        dtype = getattr(array, "dtype", type(array).__name__)
        raise DataError(f"{what}: images must hold integer levels 0..255 (uint8), got dtype {dtype}")
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[1] not in CHANNELS and array.shape[3] in CHANNELS:
        array = array.transpose(0, 3, 1, 2)
    if array.ndim != 4 or array.shape[1] not in CHANNELS:
        raise DataError(f"{what}: expected images (N, C, H, W), (N, H, W) or (N, H, W, C) with C = 1 or 3, got "
                        f"shape {array.shape}")  # fmt: skip
    if array.size == 0:
        raise DataError(f"{what}: no images (shape {array.shape})")
    lo, hi = int(array.min()), int(array.max())
    if lo < 0 or hi > 255:
        raise DataError(f"{what}: pixel levels must lie in 0..255, got {lo}..{hi}")
    return np.ascontiguousarray(array.astype(np.uint8, copy=False))


def read_array_file(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """The array, labels (or None) and class names (or None) of a ``.npy`` / ``.npz`` file, as stored (see the
    module docstring for the keys). DataError for a missing, unreadable or pickled file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"array file {path} not found")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read {path} as a NumPy .npy/.npz file (pickled objects are refused): {e}") from None
    if isinstance(loaded, np.ndarray):
        return loaded, None, None
    with loaded:
        keys = list(loaded.files)
        image_key = next((k for k in IMAGE_KEYS if k in keys), None)
        others = [k for k in keys if k not in LABEL_KEYS and k != "class_names"]
        if image_key is None and len(others) == 1:
            image_key = others[0]
        if image_key is None:
            raise DataError(f"{path}: expected the images under one of {', '.join(IMAGE_KEYS)} (or a single array); "
                            f"found keys {', '.join(keys) or 'none'}")  # fmt: skip
        label_key = next((k for k in LABEL_KEYS if k in keys), None)
        try:
            array = loaded[image_key]
            labels = None if label_key is None else loaded[label_key]
            names = [str(n) for n in loaded["class_names"]] if "class_names" in keys else None
        except ValueError as e:  # an object array needs pickle
            raise DataError(f"{path}: cannot read it without unpickling ({e})") from None
    if labels is not None:
        if labels.ndim != 1 or len(labels) != len(array) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}: labels '{label_key}' must be integers of shape ({len(array)},), got "
                            f"{labels.dtype} {labels.shape}")  # fmt: skip
        if len(labels) and labels.min() < 0:
            raise DataError(f"{path}: labels must be class indices >= 0, got {labels.min()}")
        if names is not None and len(labels) and labels.max() >= len(names):
            raise DataError(f"{path}: labels reach {labels.max()} but only {len(names)} class names are given")
    return array, labels, names


def load_array(data_dir: Path | None, split: str, download: bool, seed: int) -> Dataset:
    """The ``split`` of the images in ``data_dir`` (a ``.npy`` / ``.npz`` file): a deterministic 90/10 split
    seeded by ``seed``; 256 levels per channel."""
    if data_dir is None:
        raise ValueError("the 'array' data set needs data_dir: a .npy or .npz file of images")
    if data_dir.suffix.lower() not in (".npy", ".npz"):
        raise DataError(f"{data_dir}: the 'array' data set reads a .npy or .npz file")
    array, labels, names = read_array_file(data_dir)
    images = as_image_array(array, str(data_dir))
    keep = split_indices(len(images), split, seed, f"array file {data_dir}")
    return Dataset(
        "array",
        split,
        torch.from_numpy(np.ascontiguousarray(images[keep])),
        None if labels is None else labels_tensor(labels[keep]),
        256,
        names,
    )
