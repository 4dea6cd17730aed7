"""The ``open`` readers of the data set table: both splits of a data set as batch sources that read their examples
from the files batch by batch (see :data:`glowflow.data.registry.Opener`), and the ``load`` reader derived from one.

- ``folder``: an image folder (:class:`~glowflow.data.image_files.ImageFolderSource`): ``data_dir/train/`` and
  ``data_dir/test/`` when both exist (class sub-folders get one class index over both), else a deterministic 90/10
  split of all of ``data_dir``'s images - the examples ``glowflow.data.folder.load_folder`` reads, in its order.
- ``shards``: WebDataset-style ``.tar`` shards (:class:`~glowflow.data.shards.TarShardSource`): ``data_dir`` is a
  folder holding ``train/`` and ``test/`` folders of shards, or one shard, a folder of shards or a glob pattern
  (``~/shards/part-*.tar``), whose samples are split 90/10.
- ``array``: a ``.npy`` / ``.npz`` file of images (:func:`glowflow.data.npy.array_source`), split 90/10.
- ``imagenet32`` / ``imagenet64``: downsampled ImageNet of either published version
  (:func:`~glowflow.data.imagenet.open_imagenet`, which names the version it found), train and validation split.

A 90/10 split is :func:`glowflow.data.base.split_indices` of the whole set (seeded by ``seed``), as for every data
set that comes as one set of files.
"""

from __future__ import annotations

import glob
from pathlib import Path

import torch

from glowflow.data.base import SPLITS, Dataset, split_indices
from glowflow.data.image_files import ImageFolderSource, class_folder_names
from glowflow.data.imagenet import open_imagenet
from glowflow.data.npy import array_source
from glowflow.data.registry import Loader, Opener, ReadOptions
from glowflow.data.shards import TarShardSource, shard_paths
from glowflow.data.sources import BatchSource, SubsetSource, to_memory
from glowflow.errors import DataError

GLOB_CHARACTERS = "*?["


def split_of(source: BatchSource, seed: int, what: str) -> tuple[BatchSource, BatchSource]:
    """``(train, test)``: the deterministic 90/10 split of one set (:func:`~glowflow.data.base.split_indices`)."""
    train, test = (torch.from_numpy(split_indices(len(source), s, seed, what)) for s in SPLITS)
    return SubsetSource(source, train, f"{source.name} (train)"), SubsetSource(source, test, f"{source.name} (test)")


def _split_folders(root: Path, what: str) -> dict[str, Path] | None:
    """``root/train`` and ``root/test`` when both exist, None when neither does; a DataError for one alone."""
    have = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if len(have) == 1:
        (only,) = have
        raise DataError(
            f"{root} has a {only}/ folder but no {'test' if only == 'train' else 'train'}/ folder; provide both (they "
            f"become the splits) or neither (a 10% test split is drawn from all the {what})"
        )
    return have or None


def open_folder(data_dir: Path | None, seed: int, options: ReadOptions) -> tuple[BatchSource, BatchSource]:
    """Both splits of an image folder (see the module docstring): listed, no image opened but the first."""
    if data_dir is None:
        raise ValueError("the 'folder' data set needs data_dir: a folder of images")
    root = data_dir
    if root.is_file():
        raise DataError(f"{root} is a file, not a folder: --data folder takes a folder of PNG/JPEG images")
    if not root.is_dir():
        raise DataError(f"image folder {root} not found")
    read = dict(size=options.size, fit=options.fit, on_error=options.on_error)
    dirs = _split_folders(root, "images")
    if dirs is None:
        return split_of(ImageFolderSource(root, **read), seed, f"image folder {root}")
    classes = {s: class_folder_names(d) for s, d in dirs.items()}
    if bool(classes["train"]) != bool(classes["test"]):
        raise DataError(f"{dirs['train']} and {dirs['test']} must both use class sub-folders, or neither")
    union = sorted(set(classes["train"]) | set(classes["test"])) or None
    train, test = (ImageFolderSource(dirs[s], class_names=union, name=f"{root.name}/{s}", **read) for s in SPLITS)
    return train, test


def _shard_files(path: Path) -> list[Path]:
    """The shards a path names: a ``.tar`` file, a folder of them, or a glob pattern."""
    if any(c in str(path) for c in GLOB_CHARACTERS) and not path.exists():
        matches = sorted(Path(p) for p in glob.glob(str(path)))
        if not matches:
            raise DataError(f"no tar shards match {path}")
        return matches
    return shard_paths(path)


def open_shards(data_dir: Path | None, seed: int, options: ReadOptions) -> tuple[BatchSource, BatchSource]:
    """Both splits of a set of tar shards (see the module docstring); every shard's index is built here."""
    if data_dir is None:
        raise ValueError("the 'shards' data set needs data_dir: a .tar shard, a folder of shards or a glob pattern")
    read = dict(size=options.size, fit=options.fit, on_error=options.on_error)
    dirs = _split_folders(data_dir, "shards' samples") if data_dir.is_dir() else None
    if dirs is None:
        shards = _shard_files(data_dir)
        return split_of(TarShardSource(shards, **read), seed, f"the tar shards {data_dir}")
    train, test = (TarShardSource(shard_paths(dirs[s]), name=f"{data_dir.name}/{s}", **read) for s in SPLITS)
    if (train.labels is None) != (test.labels is None):
        raise DataError(f"the shards in {dirs['train']} and {dirs['test']} must both have .cls labels, or neither")
    return train, test


def open_array(data_dir: Path | None, seed: int, options: ReadOptions) -> tuple[BatchSource, BatchSource]:
    """Both splits of the images in a ``.npy`` / ``.npz`` file (see the module docstring)."""
    if data_dir is None:
        raise ValueError("the 'array' data set needs data_dir: a .npy or .npz file of images")
    return split_of(array_source(data_dir), seed, f"array file {data_dir}")


def imagenet_opener(resolution: int) -> Opener:
    """The opener of ImageNet ``resolution x resolution``: train and validation split of the files in ``data_dir``
    (either version, named in the sources' ``name`` and ``origin``)."""

    def open_splits(data_dir: Path | None, seed: int, options: ReadOptions) -> tuple[BatchSource, BatchSource]:
        if data_dir is None:
            raise ValueError(f"the 'imagenet{resolution}' data set needs data_dir: the folder of its files")
        train, test = (open_imagenet(data_dir, s, on_error=options.on_error) for s in SPLITS)
        for source in (train, test):
            if source.shape[1:] != (resolution, resolution):
                other = source.shape[1]
                raise DataError(f"{data_dir} holds {other}x{other} ImageNet images, not {resolution}x{resolution}: "
                                f"use --data imagenet{other}")  # fmt: skip
        return train, test

    return open_splits


def loader_of(name: str, opener: Opener) -> Loader:
    """A ``load`` reader for an ``open`` one: the split read whole into a :class:`~glowflow.data.base.Dataset`."""

    def load(data_dir: Path | None, split: str, download: bool, seed: int) -> Dataset:
        source = to_memory(opener(data_dir, seed, ReadOptions())[SPLITS.index(split)])
        return Dataset(name, split, source.x, source.labels, source.num_bins, source.class_names)

    return load
