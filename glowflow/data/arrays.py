"""Arrays on disk read batch by batch: ``.npy`` files and the stored members of ``.npz`` files, never loaded.

:class:`ArraySource` reads the rows a batch needs with ``os.pread`` at their offsets into fresh buffers (see
:class:`glowflow.data.sources.ReadOnlyFile`): resident memory stays at one batch whatever the array's size,
where indexing an ``np.memmap`` would count every page a batch ever touched in the process's resident memory
(random batches over a 4 GB array grow it towards 4 GB). Runs of consecutive rows are read with one call.

Layouts (``N`` examples):

- images, uint8 levels: ``(N, C, H, W)`` (``layout="chw"``), ``(N, H, W, C)`` (``"hwc"``; e.g. arrays written
  from PIL or TensorFlow), ``(N, H, W)`` (grey), or flattened ``(N, K)`` with ``image_shape=(C, H, W)`` and
  ``layout`` saying the order of a row: ``"hwc"`` (the default: pixel by pixel, channels interleaved) or
  ``"chw"`` (plane by plane, as CIFAR-10 and the Chrabaszcz et al. ImageNet batches store them). A 4-D array's
  layout is read from its shape when only one of axis 1 and axis 3 has 1 or 3 entries; otherwise pass ``layout``.
- tables: ``(N, D)`` of any other numeric dtype, returned as float32.

``.npz`` files are zip archives of ``.npy`` members. A member *stored* without compression (``np.savez``) sits at
a fixed offset and is read like a ``.npy`` file; a *deflated* one (``np.savez_compressed``) cannot be read at
random without decompressing everything before it, so :func:`locate_array` refuses it and names the one-time
conversion, which rewrites the file with stored members (streaming, the array is never in memory)::

    python -m glowflow.data.arrays uncompress train_data_batch_*.npz            # in place
    python -m glowflow.data.arrays uncompress data.npz --out /fast/disk/        # beside the original
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import struct
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

from glowflow.data.sources import BatchSource, ReadOnlyFile, SourceBatch, check_example_layout, check_labels
from glowflow.errors import DataError

LAYOUTS = ("chw", "hwc")
MAX_RUN_BYTES = 64 * 2**20  # longest single read of consecutive rows


@dataclass(frozen=True)
class ArrayInfo:
    """Where an array's data lies: ``offset`` bytes into ``path`` (C order), its ``shape`` and ``dtype``;
    ``member`` is the ``.npz`` member name (None for a ``.npy`` file); ``stored``: readable at random."""

    path: Path
    member: str | None
    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    stored: bool = True

    @property
    def where(self) -> str:
        return str(self.path) if self.member is None else f"{self.path}:{self.member}"

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _read_npy_header(f: BinaryIO, where: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:  # 2.0 widens the header length; 3.0 only allows utf-8 in it, which read_array_header_2_0 also parses
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError, SyntaxError, zipfile.BadZipFile) as e:
        raise DataError(f"{where} is not a readable .npy array: {e}") from None
    if dtype.hasobject:
        raise DataError(f"{where} holds Python objects (dtype {dtype}); glowflow reads only numeric arrays")
    return tuple(int(s) for s in shape), dtype, bool(fortran)


def _local_header_end(f: BinaryIO, info: zipfile.ZipInfo, where: str) -> int:
    """Offset of a zip member's data: after its local header, whose extra field may differ from the central
    directory's copy."""
    f.seek(info.header_offset)
    header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise DataError(f"{where}: corrupt zip archive (no local header at offset {info.header_offset})")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def npz_members(path: str | os.PathLike) -> dict[str, ArrayInfo]:
    """Every array of an ``.npz`` file (keys without ``.npy``), from the headers alone: stored members with their
    data offset, deflated ones marked ``stored=False`` (offset -1)."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise DataError(f"{path} not found") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path} is not a readable .npz (zip) file: {e}") from None
    out = {}
    with zf, open(path, "rb") as raw:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[: -len(".npy")]
            where = f"{path}:{key}"
            if info.compress_type == zipfile.ZIP_STORED:
                start = _local_header_end(raw, info, where)
                raw.seek(start)
                shape, dtype, fortran = _read_npy_header(raw, where)
                offset = raw.tell()
                info_out = ArrayInfo(path, key, offset, shape, dtype, fortran, True)
                if offset - start + info_out.nbytes > info.file_size:
                    raise DataError(f"{where} is truncated: its header promises more data than the member holds")
            else:
                with zf.open(info) as member:
                    shape, dtype, fortran = _read_npy_header(member, where)
                info_out = ArrayInfo(path, key, -1, shape, dtype, fortran, False)
            out[key] = info_out
    return out


def locate_array(path: str | os.PathLike, key: str | None = None) -> ArrayInfo:
    """Where the array of a ``.npy`` file (``key=None``) or member ``key`` of an ``.npz`` file lies. DataError for a
    missing file or member, a deflated member (with the conversion command), or a file shorter than its header
    says."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"array file {path} not found")
    if zipfile.is_zipfile(path):
        members = npz_members(path)
        if key is None:
            if len(members) != 1:
                raise DataError(f"{path} holds several arrays ({', '.join(members)}): name one with key=")
            key = next(iter(members))
        if key not in members:
            raise DataError(f"{path} has no array {key!r}; it holds {', '.join(members) or 'none'}")
        info = members[key]
        if not info.stored:
            raise DataError(
                f"{info.where} is compressed (deflated), so its rows cannot be read at random without decompressing "
                f"the whole member; convert the file once (it is rewritten with uncompressed members, "
                f"{info.nbytes / 2**20:.0f} MiB for this one): python -m glowflow.data.arrays uncompress {path}"
            )
        return info
    if key is not None:
        raise DataError(f"{path} is a .npy file, which holds one array: drop key={key!r}")
    with open(path, "rb") as f:
        shape, dtype, fortran = _read_npy_header(f, str(path))
        info = ArrayInfo(path, None, f.tell(), shape, dtype, fortran, True)
    size = path.stat().st_size
    if info.offset + info.nbytes > size:
        raise DataError(
            f"{path} is truncated: its header promises {info.offset + info.nbytes} bytes ({info.shape} "
            f"{info.dtype}), the file holds {size}"
        )
    return info


def load_member(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """A small array (labels, a mean) read whole from a ``.npy`` file or an ``.npz`` member, stored or deflated,
    without unpickling anything."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with np.load(path, allow_pickle=False) as z:
                if key not in z.files:
                    raise DataError(f"{path} has no array {key!r}; it holds {', '.join(z.files)}")
                return z[key]
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read {path}{'' if key is None else ':' + key}: {e}") from None


def _image_layout(
    info: ArrayInfo, layout: str | None, image_shape: tuple[int, int, int] | None
) -> tuple[tuple[int, int, int], str]:
    """The example shape ``(C, H, W)`` and the row layout of a uint8 image array."""
    shape = info.shape
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if len(shape) == 4:
        if image_shape is not None:
            raise ValueError(f"{info.where} is 4-D {shape}: its shape gives the image shape, drop image_shape")
        if layout is None:
            chw, hwc = shape[1] in (1, 3), shape[3] in (1, 3)
            if chw == hwc:
                raise DataError(
                    f"{info.where} has shape {shape}: cannot tell (N, C, H, W) from (N, H, W, C); pass layout='chw' "
                    "or layout='hwc'"
                )
            layout = "chw" if chw else "hwc"
        c, h, w = shape[1:] if layout == "chw" else (shape[3], shape[1], shape[2])
        return (c, h, w), layout
    if len(shape) == 3:
        if image_shape is not None or layout is not None:
            raise ValueError(f"{info.where} is 3-D {shape}: (N, H, W) grey images take no image_shape or layout")
        return (1, shape[1], shape[2]), "hwc"
    if len(shape) == 2:
        if image_shape is None:
            raise DataError(
                f"{info.where} holds uint8 rows of {shape[1]} values: pass image_shape=(C, H, W) (and layout='chw' "
                "if each row stores whole planes one after the other)"
            )
        c, h, w = (int(s) for s in image_shape)
        if c * h * w != shape[1]:
            raise DataError(f"{info.where}: rows of {shape[1]} values do not hold images of shape {(c, h, w)}")
        return (c, h, w), layout or "hwc"
    raise DataError(f"{info.where} has shape {shape}; image arrays are (N, C, H, W), (N, H, W, C), (N, H, W) or (N, K)")


class ArraySource(BatchSource):
    """One array on disk (a ``.npy`` file or a stored ``.npz`` member) as a batch source; see the module docstring
    for the layouts. ``labels``: one class per row (in memory), or None; ``num_bins``: levels of uint8 images."""

    def __init__(
        self,
        path: str | os.PathLike,
        key: str | None = None,
        *,
        layout: str | None = None,
        image_shape: tuple[int, int, int] | None = None,
        labels: Tensor | np.ndarray | Sequence[int] | None = None,
        num_bins: int = 256,
        class_names: list[str] | None = None,
        name: str | None = None,
    ) -> None:
        info = locate_array(path, key)
        if info.fortran_order and len(info.shape) > 1:
            raise DataError(
                f"{info.where} is stored in Fortran (column-major) order, so its rows are not contiguous; rewrite it "
                "in C order once: np.save(out, np.ascontiguousarray(np.load(path, mmap_mode='r')))"
            )
        if len(info.shape) < 2:
            raise DataError(f"{info.where} has shape {info.shape}: expected one row per example")
        self.info = info
        self.name = name or info.path.name + ("" if info.member is None else f":{info.member}")
        if info.dtype == np.uint8:
            self.shape, self.layout = _image_layout(info, layout, image_shape)
            self.num_bins = num_bins
        else:
            if len(info.shape) != 2 or not np.issubdtype(info.dtype, np.number):
                raise DataError(
                    f"{info.where} is {info.dtype} of shape {info.shape}: images must be uint8 levels, tables 2-D "
                    "numbers"
                )
            self.shape, self.layout, self.num_bins = (info.shape[1],), "table", None
        check_example_layout(self.shape, self.num_bins)
        self.labels = check_labels(labels, info.shape[0], self.name)
        self.class_names = class_names
        self.row_bytes = math.prod(info.shape[1:]) * info.dtype.itemsize
        self.file = ReadOnlyFile(info.path)

    def __len__(self) -> int:
        return self.info.shape[0]

    def read_rows(self, indices: np.ndarray) -> np.ndarray:
        """The raw rows at ``indices`` as uint8 ``(B, row_bytes)``: each run of consecutive distinct rows is one
        ``pread`` (at most :data:`MAX_RUN_BYTES`), repeated rows are read once."""
        rows, inverse = np.unique(indices, return_inverse=True)
        out = np.empty((len(rows), self.row_bytes), dtype=np.uint8)
        per_read = max(1, MAX_RUN_BYTES // self.row_bytes)
        start = 0
        while start < len(rows):
            end = start + 1
            while end < len(rows) and end - start < per_read and rows[end] == rows[end - 1] + 1:
                end += 1
            data = self.file.pread((end - start) * self.row_bytes, self.info.offset + int(rows[start]) * self.row_bytes)
            out[start:end] = np.frombuffer(data, dtype=np.uint8).reshape(end - start, self.row_bytes)
            start = end
        return out[inverse.reshape(-1)]

    def read(self, indices: Tensor) -> SourceBatch:
        rows = self.read_rows(indices.numpy())
        b = len(rows)
        if self.layout == "table":
            values = rows.view(self.info.dtype).reshape(b, *self.shape)
            x = torch.from_numpy(values.astype(np.float32))
        elif self.layout == "chw":
            x = torch.from_numpy(rows.reshape(b, *self.shape))
        else:
            c, h, w = self.shape
            x = torch.from_numpy(np.ascontiguousarray(rows.reshape(b, h, w, c).transpose(0, 3, 1, 2)))
        return SourceBatch(x, None if self.labels is None else self.labels[indices])


def uncompress_npz(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Rewrite an ``.npz`` file with every member stored uncompressed, so that :class:`ArraySource` can read it at
    random. ``out``: a folder (the file keeps its name there) or None (replace ``path``). Streams member by member;
    the result is written to a temporary file, synced and renamed into place. Returns the written file."""
    path = Path(path)
    target = path if out is None else (Path(out) / path.name if Path(out).is_dir() else Path(out))
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as dst:
            for info in src.infolist():
                stored = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                with src.open(info) as fin, dst.open(stored, "w", force_zip64=True) as fout:
                    shutil.copyfileobj(fin, fout, 16 * 2**20)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot convert {path}: {e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m glowflow.data.arrays uncompress FILE.npz ... [--out DIR]``: see :func:`uncompress_npz`."""
    parser = argparse.ArgumentParser(
        prog="python -m glowflow.data.arrays",
        description="Rewrite .npz files with uncompressed members, so that glowflow can read their rows at random.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("uncompress", help="rewrite .npz files with stored (uncompressed) members")
    p.add_argument("files", nargs="+", type=Path, help=".npz files")
    p.add_argument(
        "--out", type=Path, default=None, help="write the converted files into this folder (default: in place)"
    )
    args = parser.parse_args(argv)
    if args.out is not None and not args.out.is_dir():
        print(f"error: --out {args.out} is not a folder", file=sys.stderr)
        return 2
    for f in args.files:
        try:
            members = npz_members(f)
            if all(m.stored for m in members.values()):
                print(f"{f}: already uncompressed ({len(members)} arrays)")
                if args.out is None:
                    continue
            written = uncompress_npz(f, args.out)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{written}: {len(members)} arrays, {written.stat().st_size / 2**20:.1f} MiB, uncompressed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
