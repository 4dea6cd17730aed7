"""Reader for the idx format of MNIST and Fashion-MNIST, written with numpy.

Layout (all header integers big-endian uint32):

- images: magic 2051 (``0x00000803``: unsigned bytes, 3 dimensions), count, rows, cols, then ``count * rows * cols``
  uint8 pixels, row-major;
- labels: magic 2049 (``0x00000801``: unsigned bytes, 1 dimension), count, then ``count`` uint8 labels.

Files may be gzip-compressed (as distributed, ``*.gz``) or plain; the content is sniffed, not the name, so a file
that a browser already decompressed but left named ``.gz`` is still read. Every inconsistency raises
:class:`~glowflow.errors.DataError` naming the file.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from glowflow.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | os.PathLike) -> bytes:
    """The content of ``path``, decompressed if it is gzip data. DataError if the gzip stream is corrupt."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a truncated stream raises EOFError
        raise DataError(f"{path} is a corrupt or truncated gzip file ({e}); delete it and fetch it again") from e


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Read an unsigned-byte idx file whose magic number must be ``magic`` (2051 images, 2049 labels).

    Returns a uint8 array of the header's shape: ``(count, rows, cols)`` for images, ``(count,)`` for labels.
    Raises DataError if the file is not gzip/idx, the magic is wrong, or the byte length disagrees with the header.
    """
    path = Path(path)
    ndim = {IMAGES_MAGIC: 3, LABELS_MAGIC: 1}.get(magic)
    if ndim is None:
        raise ValueError(f"unsupported idx magic {magic}: expected {IMAGES_MAGIC} (images) or {LABELS_MAGIC} (labels)")
    kind = "image" if magic == IMAGES_MAGIC else "label"
    raw = read_bytes(path)
    header_len = 4 * (1 + ndim)
    if len(raw) < 4:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, too short for an idx header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        hint = ""
        if path.suffix == ".gz" and not raw.startswith(_GZIP_MAGIC):
            hint = " (the file is named .gz but is not gzip data either)"
        raise DataError(
            f"{path} is not an idx {kind} file: magic number {found} (0x{found:08x}), expected {magic}{hint}"
        )
    if len(raw) < header_len:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, shorter than its {header_len}-byte idx header")
    dims = tuple(int.from_bytes(raw[4 * i : 4 * i + 4], "big") for i in range(1, 1 + ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    body = len(raw) - header_len
    if body != expected:
        what = "truncated" if body < expected else "has trailing bytes"
        shape = " x ".join(str(d) for d in dims)
        raise DataError(
            f"{path} is corrupt ({what}): its header says {shape} = {expected} bytes of data, the file holds {body}"
        )
    return np.frombuffer(bytearray(raw[header_len:]), dtype=np.uint8).reshape(dims)


def read_idx_pair(
    images_path: str | os.PathLike, labels_path: str | os.PathLike, image_size: tuple[int, int] | None = (28, 28)
) -> tuple[np.ndarray, np.ndarray]:
    """Read an image file and its label file; check that the counts agree and, if ``image_size`` is given, that
    the images are ``(rows, cols) == image_size``. Returns ``(images uint8 (N, rows, cols), labels uint8 (N,))``."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if image_size is not None and images.shape[1:] != tuple(image_size):
        raise DataError(
            f"{images_path} holds {images.shape[1]}x{images.shape[2]} images, expected {image_size[0]}x{image_size[1]}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
            "the two files must come from the same split and release"
        )
    return images, labels
