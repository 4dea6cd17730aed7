"""Downsampled ImageNet (32x32 and 64x64) from the files of either published version, naming which one it is.

Two different data sets go by the name, and their likelihoods are not comparable (a model scores markedly lower
bits/dim on the second; see DenseFlow issue #7, Efficient-VDVAE issue #6 and DLF issue #2 on GitHub):

- ``oord2016``, van den Oord et al. 2016 (PixelRNN): the version of the density-estimation literature (PixelRNN /
  PixelCNN, Real NVP, Glow's 4.09 / 3.81 bits/dim at 32 / 64, VDVAE). Published as ``train_32x32.tar``,
  ``valid_32x32.tar``, ``train_64x64.tar``, ``valid_64x64.tar`` of PNG files (image-net.org/small, now offline):
  1,281,149 train / 49,999 validation images, no labels.
- ``chrabaszcz2017``, Chrabaszcz et al. 2017 ("A downsampled variant of ImageNet as an alternative to the CIFAR
  datasets"), made for classification: box-filtered (anti-aliased) resizing, 1,281,167 train / 50,000 validation
  images with labels 1..1000 (read here as 0..999). Published as ``Imagenet32_train_npz.zip`` /
  ``Imagenet64_train_npz.zip`` etc. holding ``train_data_batch_1.npz`` ... ``train_data_batch_10.npz`` and
  ``val_data.npz``: arrays ``data`` uint8 (N, 3 r^2), each row the R, G and B planes (as CIFAR-10), ``labels``,
  and in the train batches ``mean``.

The Glow paper's ImageNet numbers are on ``oord2016``. Recognised files, for one split (``train``, or ``test`` =
the validation set) in a folder, or given as the file itself:

- ``chrabaszcz2017``: ``train_data_batch_<k>.npz`` (all of them, in the order of ``k``) / ``val_data.npz``: npz
  files with ``data`` and ``labels`` arrays, a format only that version was published in. Their members must be
  stored uncompressed to be read at random; ``python -m glowflow.data.arrays uncompress FILE.npz`` converts them.
- ``oord2016``: ``train_<r>x<r>.tar`` / ``valid_<r>x<r>.tar`` (read in place, through an index of the tar's
  members: ``glowflow/data/shards.py``), the folders they unpack to (``train_<r>x<r>/``, ``valid_<r>x<r>/``), and
  VDVAE's conversion of them to arrays ``imagenet<r>-train.npy`` / ``imagenet<r>-valid.npy``, uint8 (N, r, r, 3).
- any other ``.npy`` (N, r, r, 3) / (N, 3, r, r) array or ``.tar`` of PNGs: the version is read from the number of
  examples when it is exactly one of the published counts.

When the evidence names no version, or names two (e.g. a file named like one version holding the other's count),
the reader refuses with a DataError; ``version=`` then says which one it is (and is checked against the format:
labelled npz batches cannot be ``oord2016``). A split with another number of examples than its version's published
count is read with a warning: it is a part of the set, and its bits/dim are not comparable with published ones.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from glowflow.data.arrays import ArraySource, load_member, locate_array, npz_members
from glowflow.data.image_files import ImageFolderSource
from glowflow.data.shards import TarShardSource
from glowflow.data.sources import BatchSource, ConcatSource
from glowflow.errors import DataError

OORD, CHRABASZCZ = "oord2016", "chrabaszcz2017"
VERSIONS = {
    OORD: "van den Oord et al. 2016 (PixelRNN; the version of the Glow paper's and the density-estimation literature's "
    "numbers)",
    CHRABASZCZ: "Chrabaszcz et al. 2017 ('A downsampled variant of ImageNet'; box-resized, labelled; lower bits/dim "
    "than the van den Oord version)",
}
COUNTS = {OORD: {"train": 1_281_149, "test": 49_999}, CHRABASZCZ: {"train": 1_281_167, "test": 50_000}}
SPLITS = ("train", "test")
CHRABASZCZ_RESOLUTIONS = (8, 16, 32, 64)

_BATCH = re.compile(r"^train_data_batch_(\d+)\.npz$")
_OORD_TAR = re.compile(r"^(train|valid)_(32|64)x\2\.tar$")
_OORD_DIR = re.compile(r"^(train|valid)_(32|64)x\2$")
_VDVAE_NPY = re.compile(r"^imagenet(32|64)-(train|valid)\.npy$")
_SPLIT_WORD = {"train": "train", "test": "valid"}


@dataclass
class ImagenetFiles:
    """The files of one split, what they are and why: ``version`` (a key of :data:`VERSIONS`), ``resolution`` r,
    ``kind`` (``npz-batches``, ``png-tar``, ``png-folder`` or ``npy``), ``files`` and the ``evidence``."""

    version: str
    resolution: int
    split: str
    kind: str
    files: list[Path]
    evidence: list[str] = field(default_factory=list)

    def describe(self) -> str:
        where = self.files[0] if len(self.files) == 1 else f"{len(self.files)} files in {self.files[0].parent}"
        return (f"ImageNet {self.resolution}x{self.resolution} {self.split}, {VERSIONS[self.version]}: {where} "
                f"(detected from {'; '.join(self.evidence)})")  # fmt: skip


def _candidates(folder: Path, split: str) -> dict[str, list[Path]]:
    """The recognised files of ``split`` in ``folder``, by kind."""
    word = _SPLIT_WORD[split]
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        name = p.name
        if split == "train" and _BATCH.match(name) or split == "test" and name == "val_data.npz":
            found.setdefault("npz-batches", []).append(p)
        elif (m := _OORD_TAR.match(name)) and m.group(1) == word and p.is_file():
            found.setdefault("png-tar", []).append(p)
        elif (m := _OORD_DIR.match(name)) and m.group(1) == word and p.is_dir():
            found.setdefault("png-folder", []).append(p)
        elif (m := _VDVAE_NPY.match(name)) and m.group(2) == word:
            found.setdefault("npy", []).append(p)
    if "npz-batches" in found:
        found["npz-batches"].sort(key=lambda p: int(_BATCH.match(p.name).group(1)) if _BATCH.match(p.name) else 0)
    return found


def _kind_of_file(path: Path) -> str:
    if path.is_dir():  # a folder named like valid_32x32/
        return "png-folder"
    kinds = {".npz": "npz-batches", ".tar": "png-tar", ".npy": "npy"}
    if path.suffix not in kinds:
        raise DataError(f"{path}: ImageNet is read from .npz batches, .tar files, .npy arrays or PNG folders")
    return kinds[path.suffix]


def _by_count(n: int, split: str) -> str | None:
    for version, counts in COUNTS.items():
        if counts[split] == n:
            return version
    return None


def _chrabaszcz_batches(files: list[Path]) -> tuple[int, int, list[str]]:
    """(resolution, examples, evidence) of npz batches, checking that they are in Chrabaszcz et al.'s format."""
    total, resolution = 0, None
    for f in files:
        members = npz_members(f)
        if "data" not in members or "labels" not in members:
            raise DataError(
                f"{f} holds {', '.join(members) or 'no arrays'}, not the 'data' and 'labels' arrays of an ImageNet "
                "npz batch; read another array with glowflow.data.arrays.ArraySource(path, key=...)"
            )
        data = members["data"]
        r = round((data.shape[1] / 3) ** 0.5) if len(data.shape) == 2 else 0
        if (
            data.dtype != np.uint8
            or len(data.shape) != 2
            or 3 * r * r != data.shape[1]
            or r not in CHRABASZCZ_RESOLUTIONS
        ):
            raise DataError(f"{f}:data is {data.dtype} {data.shape}, not uint8 rows of 3 x r x r (r = 8, 16, 32, 64)")
        if resolution is not None and r != resolution:
            raise DataError(f"{f} holds {r}x{r} images, {files[0]} {resolution}x{resolution}: one resolution per split")
        resolution = r
        total += data.shape[0]
    names = "names train_data_batch_<k>.npz" if _BATCH.match(files[0].name) else f"name {files[0].name}"
    return resolution, total, [f"npz arrays 'data' (N, {3 * resolution**2}) uint8 and 'labels', and the {names}"]


def _locate(path: Path, split: str) -> tuple[str, list[Path]]:
    """The kind and files of ``split`` under ``path`` (a folder holding them, or one file / PNG folder)."""
    if not path.exists():
        raise DataError(f"ImageNet data {path} not found")
    if not path.is_dir() or _OORD_DIR.match(path.name):
        return _kind_of_file(path), [path]
    found = _candidates(path, split)
    if not found:
        word = _SPLIT_WORD[split]
        raise DataError(
            f"no ImageNet {split} files in {path}: expected train_data_batch_<k>.npz / val_data.npz (Chrabaszcz et "
            f"al.), or {word}_32x32.tar, {word}_64x64.tar, {word}_<r>x<r>/ or imagenet<r>-{word}.npy (van den Oord "
            "et al.)"
        )
    if len(found) > 1:
        raise DataError(f"{path} holds ImageNet {split} files of several kinds ({', '.join(found)}): point at one")
    kind, files = next(iter(found.items()))
    if kind != "npz-batches" and len(files) > 1:
        raise DataError(f"{path} holds several {split} files ({', '.join(p.name for p in files)}): point at one")
    return kind, files


def _png_source(kind: str, files: list[Path], on_error: str) -> BatchSource:
    """The PNG tar or folder as a source (listing it gives the count); 32x32 / 64x64 from the name, if named."""
    m = (_OORD_TAR if kind == "png-tar" else _OORD_DIR).match(files[0].name)
    size = (int(m.group(2)),) * 2 if m else None
    if kind == "png-tar":
        return TarShardSource(files[0], size=size, channels=3, on_error=on_error)
    return ImageFolderSource(files[0], size=size, channels=3, on_error=on_error)


def _identify(
    path: Path, split: str, kind: str, files: list[Path], version: str | None, listed: BatchSource | None
) -> ImagenetFiles:
    """Which version ``files`` are: from their format / names and their number of examples (see the module
    docstring); ``listed``: the PNG source of a tar or folder."""
    named: str | None = None  # the version the format or the names say
    evidence: list[str] = []
    if kind == "npz-batches":
        resolution, count, evidence = _chrabaszcz_batches(files)
        named = CHRABASZCZ
    elif kind == "npy":
        info = locate_array(files[0])
        shape = info.shape
        hwc = len(shape) == 4 and shape[1] == shape[2] and shape[3] == 3
        chw = len(shape) == 4 and shape[1] == 3 and shape[2] == shape[3]
        if info.dtype != np.uint8 or not (hwc or chw):
            raise DataError(f"{files[0]} is {info.dtype} {shape}, not uint8 images (N, r, r, 3) or (N, 3, r, r)")
        resolution, count = (shape[1] if hwc else shape[2]), shape[0]
        if _VDVAE_NPY.match(files[0].name):
            named = OORD
            evidence = [f"the name {files[0].name} of VDVAE's conversion of the image-net.org/small files"]
    else:
        assert listed is not None
        resolution, count = listed.shape[1], len(listed)
        if listed.shape[1] != listed.shape[2]:
            raise DataError(f"{files[0]} holds {listed.shape[2]}x{listed.shape[1]} images, not square ImageNet ones")
        if (_OORD_TAR if kind == "png-tar" else _OORD_DIR).match(files[0].name):
            named = OORD
            evidence = [f"the name {files[0].name} of the image-net.org/small downloads"]
    by_count = _by_count(count, split)
    if by_count is not None:
        evidence.append(f"{count:,} {split} images, the published count of {by_count}")
    if version is None:
        if named is not None and by_count is not None and named != by_count:
            raise DataError(
                f"{path}: cannot tell which ImageNet version this is: its format says {named} but its {count:,} "
                f"images are the published count of {by_count}; pass version='{OORD}' or version='{CHRABASZCZ}'"
            )
        version = named or by_count
        if version is None:
            raise DataError(
                f"{path}: cannot tell which ImageNet version this is ({count:,} {split} images; the published counts "
                f"are {COUNTS[OORD][split]:,} for {OORD} and {COUNTS[CHRABASZCZ][split]:,} for {CHRABASZCZ}); pass "
                f"version='{OORD}' or version='{CHRABASZCZ}'"
            )
    else:
        if kind == "npz-batches" and version == OORD:
            raise DataError(f"{path}: labelled npz batches are the Chrabaszcz et al. format, not version='{OORD}'")
        detected = named or by_count
        if detected is not None and detected != version:
            warnings.warn(f"{path}: the files look like {detected}; read as version='{version}' as asked", stacklevel=3)
        evidence.append(f"version='{version}' as given")
    if count != COUNTS[version][split]:
        warnings.warn(
            f"{path}: {count:,} {split} images where the {version} version has {COUNTS[version][split]:,}: a part of "
            "the set or another conversion, whose bits/dim are not comparable with published numbers",
            stacklevel=3,
        )
    return ImagenetFiles(version, resolution, split, kind, files, evidence)


def _check_args(split: str, version: str | None) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if version is not None and version not in VERSIONS:
        raise ValueError(f"version must be one of {', '.join(VERSIONS)}, got {version!r}")


def find_imagenet(path: str | os.PathLike, split: str = "train", version: str | None = None) -> ImagenetFiles:
    """Find the files of ``split`` (``train`` / ``test``) under ``path`` (a folder or one file) and tell which
    version they are (see the module docstring); ``version`` says it where the files cannot, and is checked.
    A tar or PNG folder is listed to count its images."""
    _check_args(split, version)
    path = Path(path).expanduser()
    kind, files = _locate(path, split)
    listed = _png_source(kind, files, "raise") if kind in ("png-tar", "png-folder") else None
    return _identify(path, split, kind, files, version, listed)


def open_imagenet(
    path: str | os.PathLike, split: str = "train", version: str | None = None, on_error: str = "raise"
) -> BatchSource:
    """The batch source of one ImageNet split under ``path`` (see :func:`find_imagenet`), named with its version
    (e.g. ``ImageNet 32x32 train (oord2016)``; its ``origin`` is :meth:`ImagenetFiles.describe`, the files and the
    evidence). ``on_error`` applies to PNG files (``glowflow/data/image_files.py``)."""
    _check_args(split, version)
    path = Path(path).expanduser()
    kind, files = _locate(path, split)
    listed = _png_source(kind, files, on_error) if kind in ("png-tar", "png-folder") else None
    found = _identify(path, split, kind, files, version, listed)
    r = found.resolution
    source: BatchSource
    if listed is not None:
        source = listed
    elif kind == "npy":
        source = ArraySource(files[0])
    else:
        parts = []
        for f in files:
            labels = load_member(f, "labels").astype(np.int64).reshape(-1)
            if labels.size and (labels.min() < 1 or labels.max() > 1000):
                raise DataError(f"{f}:labels hold {labels.min()}..{labels.max()}, not the classes 1..1000")
            parts.append(ArraySource(f, "data", image_shape=(3, r, r), layout="chw", labels=labels - 1))
        source = ConcatSource(parts)
    source.name = f"ImageNet {r}x{r} {split} ({found.version})"
    source.origin = found.describe()
    return source
