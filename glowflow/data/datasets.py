"""The table of every data set glowflow reads (:data:`~glowflow.data.registry.DATASETS`), and the entry points to
them: :func:`load_dataset` (one split, whole, in memory) and :func:`open_dataset` (both splits as batch sources).

Each entry names its reader, its kind (image / tabular / toy), the training preset made for it and how to download
it. To add a data set, write a reader ``load(data_dir, split, download, seed) -> Dataset`` (or, for data that may
not fit in memory, ``open(data_dir, seed, options) -> (train, test)`` batch sources) and add one entry here.
"""

from __future__ import annotations

import os
from pathlib import Path

from glowflow.checks import SEED
from glowflow.data import cifar, folder, idx, tabular, toy
from glowflow.data.base import SPLITS, Dataset
from glowflow.data.digits import load_digits
from glowflow.data.openers import imagenet_opener, loader_of, open_array, open_folder, open_shards
from glowflow.data.registry import DATASETS, DatasetSpec, ReadOptions
from glowflow.data.sources import BatchSource, TensorSource

TABLE: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        "scikit-learn's bundled 8x8 digits: 1,500 train / 297 test, 17 grey levels, 10 classes (offline)",
        "image", load_digits, preset="digits"),
    "mnist": DatasetSpec(
        "MNIST handwritten digits: 60,000 train / 10,000 test, 28x28 grey, 10 classes (idx files)",
        "image", idx.loader("mnist"), preset="mnist", download=idx.DOWNLOADS["mnist"]),
    "fashion-mnist": DatasetSpec(
        "Fashion-MNIST clothing: 60,000 train / 10,000 test, 28x28 grey, 10 classes (idx files)",
        "image", idx.loader("fashion-mnist"), preset="mnist", download=idx.DOWNLOADS["fashion-mnist"]),
    "cifar10": DatasetSpec(
        "CIFAR-10: 50,000 train / 10,000 test, 32x32 RGB, 10 classes (python pickle batches)",
        "image", cifar.load_cifar10, preset="cifar10", download=cifar.DOWNLOAD),
    "folder": DatasetSpec(
        "a folder of PNG/JPEG images (one size, or fitted by --image-size / --fit); class sub-folders give labels; "
        "train/ and test/ give splits; read batch by batch when large",
        "image", folder.load_folder, preset="digits", path_is_data=True, open=open_folder, decodes_images=True),
    "tabular": DatasetSpec(
        "a .csv or .npy file of numbers (N, D), or a folder with train/test .csv or .npy files",
        "tabular", tabular.load_tabular, preset="tabular", path_is_data=True),
    "array": DatasetSpec(
        "8-bit images in a .npy/.npz file, (N, C, H, W), (N, H, W) or (N, H, W, C); labels from the npz key 'labels'; "
        "read batch by batch when large",
        "image", loader_of("array", open_array), preset="digits", path_is_data=True, open=open_array),
    "shards": DatasetSpec(
        "WebDataset-style .tar shards of PNG/JPEG images (+ .cls labels): a shard, a folder or a glob of them, or "
        "train/ and test/ folders of them; read at random through an index of the members",
        "image", loader_of("shards", open_shards), preset="digits", path_is_data=True, open=open_shards,
        decodes_images=True),
    "imagenet32": DatasetSpec(
        "downsampled ImageNet 32x32, either published version (named when read): Chrabaszcz et al.'s .npz batches "
        "or van den Oord et al.'s train_32x32.tar / valid_32x32.tar; ~1.28 M train / ~50 k test",
        "image", loader_of("imagenet32", imagenet_opener(32)), preset="imagenet32", path_is_data=True,
        open=imagenet_opener(32)),
    "imagenet64": DatasetSpec(
        "downsampled ImageNet 64x64, either published version (named when read): Chrabaszcz et al.'s .npz batches "
        "or van den Oord et al.'s train_64x64.tar / valid_64x64.tar; ~1.28 M train / ~50 k test",
        "image", loader_of("imagenet64", imagenet_opener(64)), preset="imagenet64", path_is_data=True,
        open=imagenet_opener(64)),
    **{name: DatasetSpec(toy.TOY_DESCRIPTIONS[name], "toy", toy.loader(name), preset="toy")
       for name in toy.TOY_DENSITIES},
}  # fmt: skip
for _name, _spec in TABLE.items():
    DATASETS.register(_name, _spec)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    download: bool = False,
    seed: int = 0,
) -> Dataset:
    """Load one split (``"train"`` or ``"test"``) of the data set ``name`` (a key of :data:`DATASETS`).

    - ``data_dir``: where the files are. MNIST / Fashion-MNIST are looked for in ``data_dir/<name>/`` first, then
      in ``data_dir`` (``.gz`` or gunzipped); CIFAR-10 in ``data_dir/cifar-10-batches-py/``, then ``data_dir``.
      None means :func:`default_data_dir`. For ``"folder"`` it is the image folder, for ``"array"`` the ``.npy`` /
      ``.npz`` file, for ``"tabular"`` the ``.csv``/``.npy`` file or its folder (all required). Ignored for
      ``"digits"`` and the toy densities.
    - ``download``: fetch missing MNIST / Fashion-MNIST / CIFAR-10 files first (see :func:`download`); ignored
      for data sets that have nothing to download.
    - ``seed`` (0..2**31-1): seeds the 90/10 split of a folder or single tabular file, and the toy samples (train:
      ``seed``, test: ``seed + 1``). The digits split is fixed (``default_rng(0)``) so that test numbers stay
      comparable.

    Raises ValueError for an unknown name or split, DataError (a ValueError) for missing or corrupt files.
    """
    spec = DATASETS.get(name)
    SEED.check("seed", seed)
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if spec.path_is_data and data_dir is None:
        raise ValueError(f"the {name!r} data set needs data_dir: {spec.description}")
    path = None if data_dir is None else Path(data_dir).expanduser()
    return spec.load(path, split, download and spec.download is not None, seed)


def open_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    options: ReadOptions | None = None,
    download: bool = False,
) -> tuple[BatchSource, BatchSource]:
    """Both splits ``(train, test)`` of the data set ``name`` as batch sources: the entry's ``open`` reader, whose
    sources read the files batch by batch, or else its two splits loaded whole (:func:`load_dataset`) as
    :class:`~glowflow.data.sources.TensorSource`. ``options`` (``size``, ``fit``, ``on_error``) apply to readers of
    files; ``size`` and ``fit`` to those that decode image files. Raises as :func:`load_dataset` does."""
    spec = DATASETS.get(name)
    options = options or ReadOptions()
    if spec.open is None:
        if options != ReadOptions():
            raise ValueError(f"image size, fit and on_error apply to data sets read batch by batch from files; the "
                             f"{name!r} data set is loaded whole")  # fmt: skip
        train, test = (TensorSource.from_dataset(load_dataset(name, data_dir, s, download, seed)) for s in SPLITS)
        return train, test
    if options.fits_images and not spec.decodes_images:
        raise ValueError(f"image size and fit apply to data sets of PNG/JPEG files; {name!r} images have one size")
    if spec.path_is_data and data_dir is None:
        raise ValueError(f"the {name!r} data set needs data_dir: {spec.description}")
    return spec.open(None if data_dir is None else Path(data_dir).expanduser(), seed, options)
