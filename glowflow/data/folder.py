"""Reader for a folder of PNG / JPEG images of one size (Pillow, imported only when a folder is read).

Layouts of ``root`` (one split) accepted:

- images directly in ``root``: no labels;
- images in class sub-folders ``root/<class>/``: labels are the indices of the sorted sub-folder names.

Images in both places at once are ambiguous and rejected. Only one level of sub-folders is read; hidden files and
folders (names starting with ``.``) are skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from glowflow.data.base import SPLITS, Dataset, labels_tensor, split_indices
from glowflow.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
GREY_MODES = ("L", "1")


@dataclass
class ImageList:
    """The image files of one split: ``files`` (paths), ``labels`` (class index per file, or None) and
    ``class_names`` (sorted sub-folder names, or None)."""

    files: list[Path]
    labels: list[int] | None
    class_names: list[str] | None


def _pillow() -> ModuleType:
    """``PIL.Image``, imported on first use: only the folder data set needs Pillow."""
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("the 'folder' data set reads images with Pillow: pip install Pillow") from e
    return Image


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def _images_in(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)


def class_folders(root: Path) -> dict[str, list[Path]]:
    """``{sub-folder name: sorted image files}`` for the sub-folders of ``root`` that hold images."""
    out = {}
    for sub in sorted(root.iterdir(), key=lambda p: p.name):
        if sub.is_dir() and not sub.name.startswith("."):
            files = _images_in(sub)
            if files:
                out[sub.name] = files
    return out


def list_images(root: str | os.PathLike, class_names: list[str] | None = None) -> ImageList:
    """List the images of one split folder. ``class_names`` fixes the label of each class sub-folder (so that
    train and test agree); by default they are the sorted names of ``root``'s class sub-folders."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    loose = _images_in(root)
    classes = class_folders(root)
    if loose and classes:
        raise DataError(
            f"{root} holds images both directly ({loose[0].name}, ...) and in class sub-folders "
            f"({', '.join(list(classes)[:3])}, ...); put all of them in sub-folders (labelled) or none (unlabelled)"
        )
    if loose:
        return ImageList(loose, None, None)
    if not classes:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {root} or its sub-folders")
    names = sorted(classes) if class_names is None else list(class_names)
    index = {n: i for i, n in enumerate(names)}
    files, labels = [], []
    for name, paths in classes.items():
        if name not in index:
            raise ValueError(f"class folder {root / name} is not among the class names {names}")
        files.extend(paths)
        labels.extend([index[name]] * len(paths))
    return ImageList(files, labels, names)


def scan(files: list[Path]) -> tuple[tuple[int, int], int]:
    """Check that all ``files`` open as images of one size (only headers are read). Returns ``((height, width),
    channels)``: 1 if every image is greyscale (mode L or 1), otherwise 3 (everything is converted to RGB)."""
    if not files:
        raise DataError("no images to read")
    image = _pillow()
    first: tuple[Path, tuple[int, int]] | None = None
    grey = True
    for f in files:
        try:
            with image.open(f) as im:
                size, mode = im.size, im.mode
        except (image.UnidentifiedImageError, OSError) as e:
            raise DataError(f"cannot read image {f}: {e}") from e
        if first is None:
            first = (f, size)
        elif size != first[1]:
            (w0, h0), (w1, h1) = first[1], size
            raise DataError(
                f"images differ in size: {first[0]} is {w0}x{h0} but {f} is {w1}x{h1} (width x height); "
                "all images of a folder data set must have one size"
            )
        grey = grey and mode in GREY_MODES
    assert first is not None
    width, height = first[1]
    return (height, width), 1 if grey else 3


def read_images(files: list[Path], size: tuple[int, int], channels: int) -> np.ndarray:
    """Decode ``files`` into a uint8 array of shape ``(N, channels, height, width)`` (values 0..255)."""
    out = np.empty((len(files), channels, *size), dtype=np.uint8)
    image = _pillow()
    mode = "L" if channels == 1 else "RGB"
    for i, f in enumerate(files):
        try:
            with image.open(f) as im:
                arr = np.asarray(im.convert(mode), dtype=np.uint8)
        except (image.UnidentifiedImageError, OSError) as e:
            raise DataError(f"cannot decode image {f}: {e}") from e
        if arr.shape[:2] != size:
            raise DataError(f"{f} decoded to {arr.shape[1]}x{arr.shape[0]}, expected {size[1]}x{size[0]}")
        out[i] = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    return out


def load_folder(data_dir: Path | None, split: str, download: bool, seed: int) -> Dataset:
    """The ``split`` of an image folder: ``data_dir/train/`` and ``data_dir/test/`` when both exist, else a
    deterministic 90/10 split (seeded by ``seed``) of all of ``data_dir``'s images."""
    if data_dir is None:
        raise ValueError("the 'folder' data set needs data_dir: a folder of images")
    root = data_dir
    if root.is_file():
        raise DataError(f"{root} is a file, not a folder: --data folder takes a folder of PNG/JPEG images")
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
        union = sorted(set(class_folders(split_dirs["train"])) | set(class_folders(split_dirs["test"])))
        lists = {s: list_images(split_dirs[s], class_names=union or None) for s in SPLITS}
        if (lists["train"].labels is None) != (lists["test"].labels is None):
            raise DataError(
                f"{split_dirs['train']} and {split_dirs['test']} must both use class sub-folders, or neither"
            )
        size, channels = scan(lists["train"].files + lists["test"].files)
        chosen = lists[split]
        files, labels, class_names = chosen.files, chosen.labels, chosen.class_names
    else:
        everything = list_images(root)
        size, channels = scan(everything.files)
        keep = split_indices(len(everything.files), split, seed, f"image folder {root}")
        files = [everything.files[i] for i in keep]
        labels = None if everything.labels is None else [everything.labels[i] for i in keep]
        class_names = everything.class_names
    return Dataset(
        "folder",
        split,
        torch.from_numpy(read_images(files, size, channels)),
        None if labels is None else labels_tensor(np.asarray(labels)),
        256,
        class_names,
    )
