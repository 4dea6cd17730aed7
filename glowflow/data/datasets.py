"""The :class:`Dataset` container and :func:`load_dataset`, the one entry point for every data set glowflow reads.

Images come back as their discrete levels (uint8, ``0..num_bins-1``), never scaled: turning them into the flow's
continuous input is the dequantizer's job (``glowflow/layers/dequantization.py``). Tabular and toy data are
continuous float32 and have ``num_bins=None``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from glowflow.data import cifar, folder, idx, tabular
from glowflow.data.downloader import download as _download
from glowflow.data.downloader import missing_message
from glowflow.data.toy import TOY_DENSITIES, TOY_DESCRIPTIONS, sample_toy
from glowflow.errors import DataError

SPLITS = ("train", "test")

DATASETS: dict[str, str] = {
    "digits": "scikit-learn's bundled 8x8 digits: 1,500 train / 297 test, 17 grey levels, 10 classes (offline)",
    "mnist": "MNIST handwritten digits: 60,000 train / 10,000 test, 28x28 grey, 10 classes (idx files)",
    "fashion-mnist": "Fashion-MNIST clothing: 60,000 train / 10,000 test, 28x28 grey, 10 classes (idx files)",
    "cifar10": "CIFAR-10: 50,000 train / 10,000 test, 32x32 RGB, 10 classes (python pickle batches)",
    "folder": "a folder of PNG/JPEG images of one size; class sub-folders give labels; train/ and test/ give splits",
    "tabular": "a .csv or .npy file of numbers (N, D), or a folder with train/test .csv or .npy files",
    **TOY_DESCRIPTIONS,
}

DIGITS_TEST_SIZE = 297
TOY_SIZES = {"train": 20_000, "test": 5_000}
TEST_FRACTION = 0.1

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_IDX_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(eq=False)
class Dataset:
    """One split of a data set, fully in memory.

    - ``data``: images as torch.uint8 ``(N, C, H, W)`` holding integer levels ``0..num_bins-1``; tabular and
      toy data as torch.float32 ``(N, D)``.
    - ``labels``: torch.long ``(N,)`` class indices, or None.
    - ``num_bins``: discrete levels per dimension (256 for 8-bit images, 17 for the sklearn digits); None for
      continuous data.
    - ``class_names``: one name per class index, or None.
    """

    name: str
    split: str
    data: Tensor
    labels: Tensor | None
    num_bins: int | None
    class_names: list[str] | None

    def __post_init__(self) -> None:
        if self.data.dim() == 4:
            if self.data.dtype != torch.uint8 or self.num_bins is None:
                raise ValueError(f"image data must be uint8 with num_bins set, got {self.data.dtype}")
        elif self.data.dim() != 2 or not self.data.is_floating_point():
            raise ValueError(f"data must be (N, C, H, W) uint8 or (N, D) float, got {self.data.dtype} {self.shape}")
        if self.labels is not None:
            if self.labels.dtype != torch.long or self.labels.shape != (len(self.data),):
                raise ValueError(
                    f"labels must be torch.long of shape ({len(self.data)},), "
                    f"got {self.labels.dtype} {tuple(self.labels.shape)}"
                )

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one example: ``(C, H, W)`` for images, ``(D,)`` for tabular / toy data."""
        return tuple(self.data.shape[1:])

    @property
    def num_classes(self) -> int | None:
        """Number of classes (from ``class_names``, else from the largest label), or None without labels."""
        if self.class_names is not None:
            return len(self.class_names)
        if self.labels is None or len(self.labels) == 0:
            return None
        return int(self.labels.max()) + 1

    @property
    def is_image(self) -> bool:
        """True for ``(N, C, H, W)`` image data."""
        return self.data.dim() == 4

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, split={self.split!r}, n={len(self)}, shape={self.shape}, "
            f"dtype={self.data.dtype}, num_bins={self.num_bins}, num_classes={self.num_classes})"
        )


def default_data_dir() -> Path:
    """``$GLOWFLOW_DATA`` if set (and non-empty), else ``~/.cache/glowflow``."""
    env = os.environ.get("GLOWFLOW_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "glowflow"


def pad_images(x: Tensor, size: int) -> Tensor:
    """Zero-pad images ``(B, C, H, W)`` to ``(B, C, size, size)``, centred (an odd remainder goes to the bottom /
    right), keeping the dtype: e.g. MNIST 28x28 -> 32x32 with 2 pixels of level 0 on every side. ValueError if
    ``H`` or ``W`` exceeds ``size`` or ``x`` is not 4-D."""
    if x.dim() != 4:
        raise ValueError(f"pad_images expects (B, C, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}: they are larger")
    top, left = (size - h) // 2, (size - w) // 2
    out = x.new_zeros((*x.shape[:2], size, size))
    out[:, :, top : top + h, left : left + w] = x
    return out


def _split_indices(n: int, split: str, seed: int, what: str) -> np.ndarray:
    """Deterministic 90/10 split of ``n`` items (at least 1 test item): a ``default_rng(seed)`` permutation,
    train = its first part, test = its last ``max(1, round(0.1 n))``."""
    if n < 2:
        raise DataError(f"{what} holds {n} item(s); at least 2 are needed to split it into train and test")
    n_test = max(1, round(TEST_FRACTION * n))
    perm = np.random.default_rng(seed).permutation(n)
    return perm[: n - n_test] if split == "train" else perm[n - n_test :]


def _labels(y: np.ndarray) -> Tensor:
    return torch.from_numpy(np.asarray(y, dtype=np.int64))


def _load_digits(split: str) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8), values 0..16
    perm = np.random.default_rng(0).permutation(len(images))
    n_train = len(images) - DIGITS_TEST_SIZE
    chosen = perm[:n_train] if split == "train" else perm[n_train:]
    return Dataset(
        "digits",
        split,
        torch.from_numpy(np.ascontiguousarray(images[chosen])),
        _labels(bunch.target[chosen]),
        17,
        [str(i) for i in range(10)],
    )


def _load_toy(name: str, split: str, seed: int) -> Dataset:
    g = torch.Generator().manual_seed(seed if split == "train" else seed + 1)
    return Dataset(name, split, sample_toy(name, TOY_SIZES[split], g), None, None, None)


def _find_pair(dirs: list[Path], stems: tuple[str, ...]) -> list[Path] | None:
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


def _load_idx(name: str, root: Path, split: str, download: bool) -> Dataset:
    stems = _IDX_SPLIT_FILES[split]
    dirs = [root / name, root]
    files = _find_pair(dirs, stems)
    if files is None and download:
        _download(name, root)
        files = _find_pair(dirs, stems)
    if files is None:
        missing = next(
            (s for s in stems if _find_pair(dirs, (s,)) is None),
            stems[0],  # each file exists, in different folders: report the images, which need their labels beside
        )
        raise DataError(missing_message(name, missing + ".gz", dirs, root))
    images, labels = idx.read_idx_pair(*files)
    if labels.size and labels.max() > 9:
        raise DataError(f"{files[1]}: labels must lie in 0..9, found {labels.max()}")
    return Dataset(
        name,
        split,
        torch.from_numpy(images[:, None]),
        _labels(labels),
        256,
        list(MNIST_CLASSES if name == "mnist" else FASHION_MNIST_CLASSES),
    )


def _load_cifar(root: Path, split: str, download: bool) -> Dataset:
    names = cifar.TRAIN_FILES if split == "train" else cifar.TEST_FILES
    dirs = [root / cifar.FOLDER, root]

    def find() -> Path | None:
        return next((d for d in dirs if all((d / f).is_file() for f in names)), None)

    where = find()
    if where is None and download:
        _download("cifar10", root)
        where = find()
    if where is None:
        missing = next(f for f in names if not any((d / f).is_file() for d in dirs))
        raise DataError(missing_message("cifar10", missing, dirs, root))
    batches = [cifar.read_batch(where / f) for f in names]
    meta = where / cifar.META_FILE
    class_names = cifar.read_label_names(meta) if meta.is_file() else list(cifar.CLASS_NAMES)
    return Dataset(
        "cifar10",
        split,
        torch.from_numpy(np.concatenate([b[0] for b in batches])),
        torch.from_numpy(np.concatenate([b[1] for b in batches])),
        256,
        class_names,
    )


def _load_folder(root: Path, split: str, seed: int) -> Dataset:
    if not root.is_dir():
        raise DataError(f"image folder {root} not found")
    split_dirs = {s: root / s for s in SPLITS}
    have = [s for s, d in split_dirs.items() if d.is_dir()]
    if len(have) == 1:
        raise DataError(
            f"{root} has a {have[0]}/ folder but no {'test' if have[0] == 'train' else 'train'}/ folder; provide "
            "both (they become the splits) or neither (a 10% test split is drawn from all images)"
        )
    if have:
        union = sorted(set(folder.class_folders(split_dirs["train"])) | set(folder.class_folders(split_dirs["test"])))
        lists = {s: folder.list_images(split_dirs[s], class_names=union or None) for s in SPLITS}
        if (lists["train"].labels is None) != (lists["test"].labels is None):
            raise DataError(
                f"{split_dirs['train']} and {split_dirs['test']} must both use class sub-folders, or neither"
            )
        size, channels = folder.scan(lists["train"].files + lists["test"].files)
        chosen = lists[split]
        files, labels, class_names = chosen.files, chosen.labels, chosen.class_names
    else:
        everything = folder.list_images(root)
        size, channels = folder.scan(everything.files)
        keep = _split_indices(len(everything.files), split, seed, f"image folder {root}")
        files = [everything.files[i] for i in keep]
        labels = None if everything.labels is None else [everything.labels[i] for i in keep]
        class_names = everything.class_names
    return Dataset(
        "folder",
        split,
        torch.from_numpy(folder.read_images(files, size, channels)),
        None if labels is None else _labels(labels),
        256,
        class_names,
    )


def _load_tabular(path: Path, split: str, seed: int) -> Dataset:
    if path.is_dir():
        candidates = [path / f"{split}{ext}" for ext in (".npy", ".csv")]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataError(
                f"neither {split}.npy nor {split}.csv found in {path}; the tabular data set takes a .csv or .npy "
                "file (split 90/10) or a folder holding train.csv and test.csv (or .npy)"
            )
        data = tabular.read_table(found)
    elif path.is_file():
        table = tabular.read_table(path)
        data = table[_split_indices(len(table), split, seed, f"tabular file {path}")]
    else:
        raise DataError(f"tabular data {path} not found (expected a .csv or .npy file, or a folder of them)")
    return Dataset("tabular", split, torch.from_numpy(np.ascontiguousarray(data)), None, None, None)


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
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "digits":
        return _load_digits(split)
    if name in TOY_DENSITIES:
        return _load_toy(name, split, seed)
    if name in ("folder", "tabular"):
        if data_dir is None:
            what = "a folder of images" if name == "folder" else "a .csv/.npy file or a folder of them"
            raise ValueError(f"the {name!r} data set needs data_dir: {what}")
        path = Path(data_dir).expanduser()
        return _load_folder(path, split, seed) if name == "folder" else _load_tabular(path, split, seed)
    root = default_data_dir() if data_dir is None else Path(data_dir).expanduser()
    if name == "cifar10":
        return _load_cifar(root, split, download)
    return _load_idx(name, root, split, download)
