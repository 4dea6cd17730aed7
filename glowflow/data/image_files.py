"""Encoded images (PNG / JPEG) decoded batch by batch: a folder of image files as a batch source, and the decoding,
fitting and skip-on-error rules it shares with the tar shards of ``glowflow/data/shards.py``.

:class:`ImageFolderSource` lists a folder once (names only: no file is opened, so a folder of millions of images
is ready in the time of a directory listing) and decodes the images of each batch when it is asked for them, in
the loader's worker processes. Layouts of ``root`` (one split), as for ``glowflow/data/folder.py``: images directly
in ``root`` (no labels), or in class sub-folders ``root/<class>/`` (labels: indices of the sorted sub-folder
names). Hidden files and folders are skipped; images are sorted by name, sub-folder by sub-folder.

Every image becomes uint8 ``(C, H, W)`` levels 0..255 at the source's size ``(H, W)``:

- ``channels``: 1 (Pillow mode L) or 3 (RGB; alpha is dropped, palettes expanded). Default: the first image's
  (1 if it is greyscale, else 3).
- ``size``: default the first image's. ``fit`` says what happens to an image of another size: ``"exact"``
  (the default) refuses it, naming the file; ``"center-crop"`` takes the largest centred box of the target's
  aspect ratio and resizes it; ``"resize"`` resizes the whole image (the aspect ratio may change). Resizing uses
  Pillow's box filter (the area average) when shrinking and bicubic interpolation when enlarging; a JPEG is
  decoded at the smallest of Pillow's DCT scales (1/2, 1/4, 1/8) that still covers the box (draft mode).

An unreadable image (corrupt, truncated, not an image) raises one DataError naming the file
(``on_error="raise"``, the default), or with ``on_error="skip"`` is replaced by the next readable example in index
order (``i + 1``, ``i + 2``, ... wrapping around, with that example's label), reported as a message of the batch
and counted by the loaders; a batch keeps its size and the replacement depends only on the files, so every path
and every resumed run sees the same examples. :data:`MAX_SUBSTITUTES` unreadable examples in a row are an error.
"""

from __future__ import annotations

import io
import os
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from glowflow.data.sources import ON_ERROR, BatchSource, SourceBatch, check_labels
from glowflow.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
GREY_MODES = ("L", "1")
FITS = ("exact", "center-crop", "resize")
MAX_SUBSTITUTES = 64


def pillow() -> ModuleType:
    """``PIL.Image``, imported on first use."""
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("reading PNG / JPEG images needs Pillow: pip install Pillow") from e
    return Image


class PackedNames:
    """Many strings in two numpy arrays (utf-8 bytes and their offsets) rather than a list of Python strings,
    whose reference counts would make every forked loader worker copy the pages holding them."""

    def __init__(self, names: Sequence[str]) -> None:
        encoded = [n.encode("utf-8") for n in names]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8")


def _target_box(size: tuple[int, int], target: tuple[int, int], fit: str) -> tuple[float, float, float, float] | None:
    """The region ``(left, top, right, bottom)`` of an image of ``size`` (width, height) that becomes the target,
    or None to keep the whole image."""
    (w, h), (tw, th) = size, target
    if fit != "center-crop":
        return None
    scale = min(w / tw, h / th)
    cw, ch = tw * scale, th * scale
    return ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)


def decode_image(
    data: bytes | str | os.PathLike,
    what: str,
    channels: int,
    size: tuple[int, int],
    fit: str = "exact",
) -> np.ndarray:
    """Decode one PNG / JPEG (its bytes, or a path) into uint8 ``(channels, H, W)`` with ``size = (H, W)``, fitted
    as ``fit`` says (see the module docstring). DataError naming ``what`` if it cannot be read or has the wrong
    size under ``fit="exact"``."""
    image = pillow()
    mode = "L" if channels == 1 else "RGB"
    target = (size[1], size[0])  # Pillow: (width, height)
    try:
        with image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            if im.size != target:
                if fit == "exact":
                    raise DataError(
                        f"image {what} is {im.size[0]}x{im.size[1]}, not {target[0]}x{target[1]} (width x height); "
                        "pass fit='center-crop' or fit='resize' to fit images of other sizes"
                    )
                box = _target_box(im.size, target, fit)
                if im.format == "JPEG":
                    full = im.size
                    covers = target if box is None else (target[0] * full[0] / (box[2] - box[0]),
                                                         target[1] * full[1] / (box[3] - box[1]))  # fmt: skip
                    im.draft(mode, (int(np.ceil(covers[0])), int(np.ceil(covers[1]))))
                    if box is not None:  # the box in the drafted image's pixels
                        sx, sy = im.size[0] / full[0], im.size[1] / full[1]
                        box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
                region = im.size if box is None else (box[2] - box[0], box[3] - box[1])
                shrink = region[0] >= target[0] and region[1] >= target[1]
                resample = image.Resampling.BOX if shrink else image.Resampling.BICUBIC
                im = im.convert(mode).resize(target, resample, box=box)
            else:
                im = im.convert(mode)
            arr = np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - a decoder fed arbitrary bytes raises many types; each means "unreadable"
        raise DataError(f"cannot decode image {what}: {type(e).__name__}: {e}") from None
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def probe_image(data: bytes | str | os.PathLike, what: str) -> tuple[tuple[int, int], int]:
    """``((H, W), channels)`` of one image from its header: 1 channel if greyscale, else 3."""
    image = pillow()
    try:
        with image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            return (im.size[1], im.size[0]), 1 if im.mode in GREY_MODES else 3
    except Exception as e:  # noqa: BLE001 - see decode_image
        raise DataError(f"cannot read image {what}: {type(e).__name__}: {e}") from None


class EncodedImages(BatchSource):
    """Base of sources whose examples are encoded image files: decoding, fitting and the ``on_error`` rule.
    Subclasses implement :meth:`encoded` (the bytes or path of example ``i``) and :meth:`example_name`."""

    def _setup(
        self,
        n: int,
        size: tuple[int, int] | None,
        channels: int | None,
        fit: str,
        on_error: str,
        labels: Tensor | np.ndarray | None,
        class_names: list[str] | None,
        name: str,
    ) -> None:
        if fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        if channels is not None and channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"size must be (height, width) of positive integers, got {size}")
        if n == 0:
            raise DataError(f"{name}: no images")
        self.n, self.fit, self.on_error, self.name, self.class_names = n, fit, on_error, name, class_names
        if size is None or channels is None:
            probed_size, probed_channels = probe_image(self.encoded(0), self.example_name(0))
            size = size or probed_size
            channels = channels or probed_channels
        self.shape = (int(channels), int(size[0]), int(size[1]))
        self.num_bins = 256
        self.labels = check_labels(labels, n, name)

    def __len__(self) -> int:
        return self.n

    @abstractmethod
    def encoded(self, i: int) -> bytes | str:
        """The encoded image of example ``i``: its bytes, or a path to open."""

    @abstractmethod
    def example_name(self, i: int) -> str:
        """What names example ``i`` in messages (its file)."""

    def decode(self, i: int) -> np.ndarray:
        """Example ``i`` as uint8 ``(C, H, W)``; DataError naming its file if it cannot be read."""
        return decode_image(self.encoded(i), self.example_name(i), self.shape[0], self.shape[1:], self.fit)

    def read(self, indices: Tensor) -> SourceBatch:
        out = np.empty((len(indices), *self.shape), dtype=np.uint8)
        used = indices.clone()
        skipped: list[str] = []
        for j, i in enumerate(indices.tolist()):
            k = i
            for _ in range(MAX_SUBSTITUTES + 1):
                try:
                    out[j] = self.decode(k)
                    break
                except DataError as e:
                    if self.on_error == "raise":
                        raise
                    k = (k + 1) % self.n
                    skipped.append(f"{e}; replaced by example {k} ({self.example_name(k)})")
            else:
                raise DataError(
                    f"{self.name}: {MAX_SUBSTITUTES + 1} unreadable images in a row from {self.example_name(i)} on"
                )
            used[j] = k
        y = None if self.labels is None else self.labels[used]
        return SourceBatch(torch.from_numpy(out), y, skipped)


def _visible_images(folder: str) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if _is_visible_image(e))


def _visible_folders(folder: str) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())


def _is_visible_image(entry: os.DirEntry) -> bool:
    return not entry.name.startswith(".") and entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file()


def class_folder_names(root: str | os.PathLike) -> list[str]:
    """The sorted names of ``root``'s class sub-folders: the visible ones holding at least one image (each is read
    only up to its first image, so that a train and a test folder can agree on the classes cheaply)."""
    names = []
    for name in _visible_folders(str(root)):
        with os.scandir(os.path.join(root, name)) as it:
            if any(_is_visible_image(e) for e in it):
                names.append(name)
    return names


class ImageFolderSource(EncodedImages):
    """A folder of PNG / JPEG images (one split) decoded batch by batch; see the module docstring.
    ``class_names`` fixes the label of each class sub-folder (so that a train and a test folder agree)."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        size: tuple[int, int] | None = None,
        channels: int | None = None,
        fit: str = "exact",
        on_error: str = "raise",
        class_names: list[str] | None = None,
        name: str | None = None,
    ) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"image folder {root} does not exist or is not a folder")
        loose = _visible_images(str(root))
        classes = {d: _visible_images(str(root / d)) for d in _visible_folders(str(root))}
        classes = {d: files for d, files in classes.items() if files}
        if loose and classes:
            raise DataError(
                f"{root} holds images both directly ({loose[0]}, ...) and in class sub-folders "
                f"({', '.join(list(classes)[:3])}, ...); put all of them in sub-folders (labelled) or none (unlabelled)"
            )
        if not loose and not classes:
            raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {root} or its sub-folders")
        labels = None
        if loose:
            names, class_names = loose, None
        else:
            class_names = sorted(classes) if class_names is None else list(class_names)
            index = {c: i for i, c in enumerate(class_names)}
            unknown = [d for d in classes if d not in index]
            if unknown:
                raise ValueError(f"class folder {root / unknown[0]} is not among the class names {class_names}")
            names = [f"{d}/{f}" for d, files in classes.items() for f in files]
            labels = np.concatenate([np.full(len(files), index[d], dtype=np.int64) for d, files in classes.items()])
        self.root = str(root)
        self.files = PackedNames(names)
        self._setup(len(names), size, channels, fit, on_error, labels, class_names, name or root.name)

    def encoded(self, i: int) -> str:
        return os.path.join(self.root, self.files[i])

    def example_name(self, i: int) -> str:
        return os.path.join(self.root, self.files[i])
