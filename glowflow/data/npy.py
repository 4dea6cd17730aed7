"""Reader for images in a NumPy file: ``--data array --data-dir x.npy`` (or ``x.npz``, read batch by batch when
it can be: :func:`array_source`), and the arrays that ``glowflow score`` / ``encode`` read.

- ``.npy``: one array of 8-bit images;
- ``.npz``: the images under ``images``, ``x`` or ``data`` (or its only array), optional labels under ``labels`` or
  ``y`` (integers ``(N,)``), optional class names under ``class_names`` (strings).

Images may be laid out ``(N, C, H, W)``, ``(N, H, W)`` (one channel) or ``(N, H, W, C)`` (channels last), with
``C`` 1 or 3; they must hold integer levels 0..255 (uint8, or another integer dtype within that range). Nothing is
unpickled (``allow_pickle=False``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from glowflow.data.arrays import ArraySource, load_member, locate_array, npz_members
from glowflow.data.base import labels_tensor
from glowflow.data.sources import BatchSource, TensorSource
from glowflow.errors import DataError

IMAGE_KEYS = ("images", "x", "data")
LABEL_KEYS = ("labels", "y")
CHANNELS = (1, 3)


def image_layout(shape: tuple[int, ...], what: str) -> str:
    """The layout of an image array of ``shape``: ``"chw"`` (N, C, H, W), ``"hw"`` (N, H, W) or ``"hwc"``
    (N, H, W, C), with C 1 or 3 (axis 1 first when both could be channels). DataError naming ``what`` otherwise."""
    if len(shape) == 3:
        return "hw"
    if len(shape) == 4 and shape[1] in CHANNELS:
        return "chw"
    if len(shape) == 4 and shape[3] in CHANNELS:
        return "hwc"
    raise DataError(f"{what}: expected images (N, C, H, W), (N, H, W) or (N, H, W, C) with C = 1 or 3, got shape "
                    f"{tuple(shape)}")  # fmt: skip


def as_image_array(array: np.ndarray, what: str) -> np.ndarray:
    """8-bit images in any of the layouts of the module docstring -> uint8 ``(N, C, H, W)``. DataError naming
    ``what`` otherwise."""
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.integer):
        dtype = getattr(array, "dtype", type(array).__name__)
        raise DataError(f"{what}: images must hold integer levels 0..255 (uint8), got dtype {dtype}")
    layout = image_layout(array.shape, what)
    if layout == "hw":
        array = array[:, None]
    elif layout == "hwc":
        array = array.transpose(0, 3, 1, 2)
    if array.size == 0:
        raise DataError(f"{what}: no images (shape {array.shape})")
    lo, hi = int(array.min()), int(array.max())
    if lo < 0 or hi > 255:
        raise DataError(f"{what}: pixel levels must lie in 0..255, got {lo}..{hi}")
    return np.ascontiguousarray(array.astype(np.uint8, copy=False))


def _keys(keys: list[str], path: Path) -> tuple[str, str | None]:
    """The image key and the label key (or None) among the arrays ``keys`` of an ``.npz`` file."""
    image_key = next((k for k in IMAGE_KEYS if k in keys), None)
    others = [k for k in keys if k not in LABEL_KEYS and k != "class_names"]
    if image_key is None and len(others) == 1:
        image_key = others[0]
    if image_key is None:
        raise DataError(f"{path}: expected the images under one of {', '.join(IMAGE_KEYS)} (or a single array); "
                        f"found keys {', '.join(keys) or 'none'}")  # fmt: skip
    return image_key, next((k for k in LABEL_KEYS if k in keys), None)


def _check_labels(labels: np.ndarray, n: int, names: list[str] | None, path: Path, key: str) -> None:
    if labels.ndim != 1 or len(labels) != n or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels '{key}' must be integers of shape ({n},), got {labels.dtype} "
                        f"{labels.shape}")  # fmt: skip
    if len(labels) and labels.min() < 0:
        raise DataError(f"{path}: labels must be class indices >= 0, got {labels.min()}")
    if names is not None and len(labels) and labels.max() >= len(names):
        raise DataError(f"{path}: labels reach {labels.max()} but only {len(names)} class names are given")


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
        image_key, label_key = _keys(keys, path)
        try:
            array = loaded[image_key]
            labels = None if label_key is None else loaded[label_key]
            names = [str(n) for n in loaded["class_names"]] if "class_names" in keys else None
        except ValueError as e:  # an object array needs pickle
            raise DataError(f"{path}: cannot read it without unpickling ({e})") from None
    if labels is not None:
        _check_labels(labels, len(array), names, path, label_key)
    return array, labels, names


def array_source(path: Path) -> BatchSource:
    """The images of a ``.npy`` / ``.npz`` file (keys and layouts as in the module docstring) as a batch source,
    256 levels: uint8 images in C order that can be read at random (a ``.npy`` file, a stored ``.npz`` member)
    are an :class:`~glowflow.data.arrays.ArraySource`, which reads only the rows a batch needs; others (a
    compressed member, another integer dtype) are read whole and checked into a
    :class:`~glowflow.data.sources.TensorSource`. Labels and class names are read whole."""
    if path.suffix.lower() not in (".npy", ".npz"):
        raise DataError(f"{path}: the 'array' data set reads a .npy or .npz file")
    if not path.is_file():
        raise DataError(f"array file {path} not found")
    if zipfile.is_zipfile(path):
        members = npz_members(path)
        image_key, label_key = _keys(list(members), path)
        info = members[image_key]
    else:
        members, image_key, label_key = {}, None, None
        info = locate_array(path)
    if info.stored and info.dtype == np.uint8 and not info.fortran_order:
        layout = image_layout(info.shape, str(path))
        if info.shape[0] == 0:
            raise DataError(f"{path}: no images (shape {info.shape})")
        names = [str(n) for n in load_member(path, "class_names")] if "class_names" in members else None
        labels = None if label_key is None else load_member(path, label_key)
        if labels is not None:
            _check_labels(labels, info.shape[0], names, path, label_key)
        return ArraySource(path, image_key, layout=None if layout == "hw" else layout, labels=labels,
                           class_names=names, name=path.name)  # fmt: skip
    array, labels, names = read_array_file(path)
    images = torch.from_numpy(as_image_array(array, str(path)))
    return TensorSource(images, None if labels is None else labels_tensor(labels), 256, names, path.name)
