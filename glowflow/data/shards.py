"""Tar shards in the WebDataset layout, read at random through an index of member offsets.

A shard is an uncompressed POSIX tar file; a *sample* is the set of members whose names share a *key*, the member
path up to the first dot of its file name (WebDataset's convention): ``n01440764/000123.png`` and
``n01440764/000123.cls`` form sample ``n01440764/000123``. Its image is the member ending in ``.png``, ``.jpg`` or
``.jpeg``; an optional ``.cls`` member holds its class label as decimal text (every sample has one, or none does).
Other members are ignored. Samples are numbered shard by shard (in the order given, or sorted by name for a
folder), in the order their keys first appear in each shard. The images are decoded, fitted and, with
``on_error="skip"``, replaced as ``glowflow/data/image_files.py`` describes.

Why random access rather than sequential streaming (the ``webdataset`` library): the training loop draws every
step's batch uniformly at random, with replacement, from the whole data set (``glowflow/data/streaming.py``), and
a run read from shards must see exactly the batches it would see in memory, resume exactly from a checkpoint and
split each batch between processes. A sequential reader shuffles within a buffer and can give none of the three;
an index of offsets gives all of them, at one ``pread`` per image. The price: shards must be on a file system
that reads at random (local disk, NFS, a parallel file system), not an HTTP object store, and they must not be
compressed (a gzip'd shard is refused with that advice; images inside are compressed already). The files are the
standard layout, so shards written for WebDataset (``tar --sort=name -cf shard-000000.tar ...``) are read as they
are.

The index is built when the source is made, from the tar headers alone (one read per member; ``.cls`` labels are
read too): 1.28 M members take seconds to tens of seconds depending on the disk. A shard that is cut short, or a
member whose data runs past the end of its file, is one DataError naming the shard, then or, if the file shrinks
later, when the batch that needs it is read.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from glowflow.data.image_files import IMAGE_EXTENSIONS, EncodedImages, PackedNames
from glowflow.data.sources import ReadOnlyFile
from glowflow.errors import DataError

MAX_OPEN_SHARDS = 64  # open file descriptors per process; the least recently read shard is closed beyond that
_KEY = re.compile(r"^((?:.*/)?[^./][^/]*?)\.([^/]+)$")  # (key, extension): the file name splits at its first dot
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
_IMAGE_EXTS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)


def shard_paths(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The shard files of ``shards``: a ``.tar`` file, a folder (its ``*.tar`` files, sorted by name) or a list."""
    if isinstance(shards, (str, os.PathLike)):
        path = Path(shards).expanduser()
        if path.is_dir():
            paths = sorted(p for p in path.iterdir() if p.suffix == ".tar" and not p.name.startswith("."))
            if not paths:
                raise DataError(f"no .tar shards found in {path}")
            return paths
        paths = [path]
    else:
        paths = [Path(p).expanduser() for p in shards]
    if not paths:
        raise DataError("no tar shards given")
    for p in paths:
        if not p.is_file():
            raise DataError(f"tar shard {p} not found")
    return paths


def _check_uncompressed(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            raise DataError(
                f"tar shard {path} is {kind}-compressed, which cannot be read at random; decompress it once "
                f"(e.g. {'gunzip -k' if kind == 'gzip' else kind + ' -dk'} {path}) and read the .tar"
            )


def index_shard(path: Path) -> tuple[list[str], list[int], list[int], list[int] | None]:
    """Member names, data offsets and sizes of the images of one shard, and their labels (or None), in sample
    order. DataError naming the shard if it is truncated, not a tar file, or inconsistent."""
    _check_uncompressed(path)
    file_size = path.stat().st_size
    keys: dict[str, None] = {}  # the samples' keys in order of first appearance
    images: dict[str, tuple[str, int, int]] = {}
    labels: dict[str, int] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                m = _KEY.match(member.name) if member.isfile() else None
                if m is None:
                    continue
                if member.offset_data + member.size > file_size:
                    raise DataError(
                        f"tar shard {path} is truncated: member {member.name} needs bytes up to "
                        f"{member.offset_data + member.size}, the file holds {file_size}"
                    )
                key, ext = m.group(1), m.group(2).lower()
                if ext in _IMAGE_EXTS:
                    if key in images:
                        raise DataError(
                            f"tar shard {path}: sample {key} has two images ({images[key][0]}, {member.name})"
                        )
                    images[key] = (member.name, member.offset_data, member.size)
                elif ext == "cls":
                    f = tar.extractfile(member)
                    text = f.read() if f is not None else b""
                    try:
                        labels[key] = int(text.strip())
                    except ValueError:
                        raise DataError(
                            f"tar shard {path}: {member.name} holds {text[:20]!r}, not a class number"
                        ) from None
                else:
                    continue
                keys.setdefault(key)
            # tarfile ends its iteration quietly at a header that is cut short or garbled: only a zero block
            # (the end-of-archive marker) where the next header would be says the shard is whole
            tar.fileobj.seek(tar.offset)
            if tar.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
                raise DataError(
                    f"tar shard {path} is truncated or corrupt: no member header and no end-of-archive marker at "
                    f"offset {tar.offset} (the file holds {file_size} bytes)"
                )
    except tarfile.TarError as e:
        raise DataError(f"tar shard {path} is truncated or not a tar file: {e}") from None
    except OSError as e:
        raise DataError(f"cannot read tar shard {path}: {e}") from None
    missing = [k for k in keys if k not in images]
    if missing:
        raise DataError(f"tar shard {path}: sample {missing[0]} has no image ({', '.join(IMAGE_EXTENSIONS)})")
    if labels and len(labels) != len(keys):
        unlabelled = next(k for k in keys if k not in labels)
        raise DataError(f"tar shard {path}: sample {unlabelled} has no .cls label, others have; label all or none")
    names = [images[k][0] for k in keys]
    offsets = [images[k][1] for k in keys]
    sizes = [images[k][2] for k in keys]
    return names, offsets, sizes, ([labels[k] for k in keys] if labels else None)


class TarShardSource(EncodedImages):
    """Images (and ``.cls`` labels) of tar shards, read at random through their index; see the module docstring.
    ``size``, ``channels``, ``fit`` and ``on_error`` as for :class:`glowflow.data.image_files.ImageFolderSource`."""

    def __init__(
        self,
        shards: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        size: tuple[int, int] | None = None,
        channels: int | None = None,
        fit: str = "exact",
        on_error: str = "raise",
        class_names: list[str] | None = None,
        name: str | None = None,
    ) -> None:
        paths = shard_paths(shards)
        names: list[str] = []
        shard_of, offsets, sizes = [], [], []
        label_parts: list[list[int] | None] = []
        for s, path in enumerate(paths):
            n_names, n_offsets, n_sizes, n_labels = index_shard(path)
            names += n_names
            offsets += n_offsets
            sizes += n_sizes
            shard_of.append(np.full(len(n_names), s, dtype=np.int32))
            label_parts.append(n_labels)
        labelled = [part is not None for part, count in zip(label_parts, shard_of, strict=True) if len(count)]
        if any(labelled) and not all(labelled):
            raise DataError(f"some of the shards in {paths[0].parent} have .cls labels and some do not")
        labels = np.concatenate([p for p in label_parts if p is not None]) if any(labelled) else None
        self.shards = [str(p) for p in paths]
        self.shard_of = np.concatenate(shard_of)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.members = PackedNames(names)
        self._open: OrderedDict[int, ReadOnlyFile] = OrderedDict()
        default = paths[0].name if len(paths) == 1 else f"{len(paths)} shards in {paths[0].parent}"
        self._setup(len(names), size, channels, fit, on_error, labels, class_names, name or default)

    def _file(self, shard: int) -> ReadOnlyFile:
        f = self._open.pop(shard, None)
        if f is None:
            f = ReadOnlyFile(self.shards[shard])
            if len(self._open) >= MAX_OPEN_SHARDS:
                self._open.popitem(last=False)[1].close()
        self._open[shard] = f
        return f

    def encoded(self, i: int) -> bytes:
        shard = int(self.shard_of[i])
        try:
            return self._file(shard).pread(int(self.sizes[i]), int(self.offsets[i]))
        except DataError as e:
            raise DataError(f"tar shard {self.shards[shard]}, member {self.members[i]}: {e}") from None

    def example_name(self, i: int) -> str:
        return f"{self.shards[int(self.shard_of[i])]}:{self.members[i]}"
