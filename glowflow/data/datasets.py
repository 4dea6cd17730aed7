"""The table of every data set glowflow reads (:data:`~glowflow.data.registry.DATASETS`) and
:func:`load_dataset`, the one entry point to them.

Each entry names its reader, its kind (image / tabular / toy), the training preset made for it and how to download
it. To add a data set, write a reader ``load(data_dir, split, download, seed) -> Dataset`` and add one entry here.
"""

from __future__ import annotations

import os
from pathlib import Path

from glowflow.data import cifar, folder, idx, npy, tabular, toy
from glowflow.data.base import SPLITS, Dataset
from glowflow.data.digits import load_digits
from glowflow.data.registry import DATASETS, DatasetSpec

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
        "a folder of PNG/JPEG images of one size; class sub-folders give labels; train/ and test/ give splits",
        "image", folder.load_folder, preset="digits", path_is_data=True),
    "tabular": DatasetSpec(
        "a .csv or .npy file of numbers (N, D), or a folder with train/test .csv or .npy files",
        "tabular", tabular.load_tabular, preset="tabular", path_is_data=True),
    "array": DatasetSpec(
        "8-bit images in a .npy/.npz file, (N, C, H, W), (N, H, W) or (N, H, W, C); labels from the npz key 'labels'",
        "image", npy.load_array, preset="digits", path_is_data=True),
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
      None means :func:`default_data_dir`. For ``"folder"`` it is the image folder, for ``"tabular"`` the
      ``.csv``/``.npy`` file or its folder (both required). Ignored for ``"digits"`` and the toy densities.
    - ``download``: fetch missing MNIST / Fashion-MNIST / CIFAR-10 files first (see :func:`download`); ignored
      for data sets that have nothing to download.
    - ``seed``: seeds the 90/10 split of a folder or single tabular file, and the toy samples (train: ``seed``,
      test: ``seed + 1``). The digits split is fixed (``default_rng(0)``) so that test numbers stay comparable.

    Raises ValueError for an unknown name or split, DataError (a ValueError) for missing or corrupt files.
    """
    spec = DATASETS.get(name)
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if spec.path_is_data and data_dir is None:
        raise ValueError(f"the {name!r} data set needs data_dir: {spec.description}")
    path = None if data_dir is None else Path(data_dir).expanduser()
    return spec.load(path, split, download and spec.download is not None, seed)
