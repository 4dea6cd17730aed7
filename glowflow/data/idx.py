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
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from glowflow.data.base import Dataset, default_data_dir, labels_tensor
from glowflow.data.downloader import download, missing_message
from glowflow.data.registry import DownloadEntry, Loader
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


SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_FILES: tuple[str, ...] = tuple(f"{stem}.gz" for split in ("train", "test") for stem in SPLIT_FILES[split])
MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}

DOWNLOADS: dict[str, DownloadEntry] = {
    "mnist": DownloadEntry(
        files={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        decompressed_md5={
            "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
        },
    ),
    "fashion-mnist": DownloadEntry(
        files={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    ),
}


def identify(raw: bytes, content: bytes) -> str | None:
    """The idx data set whose published file ``raw`` (as stored) or ``content`` (decompressed) is, by MD5; None
    for a file that is none of them (a subset, a re-export, another data set in the same format)."""
    digests = {hashlib.md5(raw, usedforsecurity=False).hexdigest()}
    if content is not raw:
        digests.add(hashlib.md5(content, usedforsecurity=False).hexdigest())
    for name, entry in DOWNLOADS.items():
        if digests & (set(entry.files.values()) | set(entry.decompressed_md5.values())):
            return name
    return None


def _find_files(dirs: list[Path], stems: tuple[str, ...]) -> list[Path] | None:
    """The first folder of ``dirs`` holding every file of ``stems`` (as ``<stem>.gz``, or gunzipped ``<stem>``)."""
    for d in dirs:
        found = []
        for stem in stems:
            hit = next((d / f for f in (stem + ".gz", stem) if (d / f).is_file()), None)
            if hit is None:
                break
            found.append(hit)
        else:
            return found
    return None


def _check_identity(name: str, path: Path) -> None:
    """Refuse a file that is, by its checksum, the other idx data set's (Fashion-MNIST files read as MNIST)."""
    raw = path.read_bytes()
    content = read_bytes(path) if raw[:2] == _GZIP_MAGIC else raw
    found = identify(raw, content)
    if found is not None and found != name:
        raise DataError(
            f"{path} is {TITLES[found]}'s file (by its MD5), not {TITLES[name]}'s: --data {name} needs the "
            f"{TITLES[name]} files; point --data-dir at them, or train with --data {found}"
        )


def load_idx_dataset(name: str, data_dir: Path | None, split: str, download_missing: bool) -> Dataset:
    """MNIST or Fashion-MNIST (``name``): the ``split``'s idx files from ``data_dir/<name>/`` or ``data_dir``,
    downloaded if asked. A file that is, by its checksum, the other data set's is refused."""
    root = data_dir if data_dir is not None else default_data_dir()
    stems = SPLIT_FILES[split]
    dirs = [root / name, root]
    files = _find_files(dirs, stems)
    if files is None and download_missing:
        download(name, root)
        files = _find_files(dirs, stems)
    if files is None:
        missing = next(
            (s for s in stems if _find_files(dirs, (s,)) is None),
            stems[0],  # each file exists, in different folders: report the images, which need their labels beside
        )
        raise DataError(missing_message(name, missing + ".gz", dirs, root))
    for f in files:
        _check_identity(name, f)
    images, labels = read_idx_pair(*files)
    if labels.size and labels.max() > 9:
        raise DataError(f"{files[1]}: labels must lie in 0..9, found {labels.max()}")
    classes = MNIST_CLASSES if name == "mnist" else FASHION_MNIST_CLASSES
    return Dataset(name, split, torch.from_numpy(images[:, None]), labels_tensor(labels), 256, list(classes))


def loader(name: str) -> Loader:
    """The data set table's reader of ``name`` (``"mnist"`` or ``"fashion-mnist"``)."""

    def load(data_dir: Path | None, split: str, download_missing: bool, seed: int) -> Dataset:
        return load_idx_dataset(name, data_dir, split, download_missing)

    return load
