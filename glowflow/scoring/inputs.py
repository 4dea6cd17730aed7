"""What ``glowflow score / ood / encode`` read: INPUT specs -> :class:`InputSet`, and images fitted to a model.

An INPUT is one of

- an image folder (PNG / JPEG directly in it, or in class sub-folders, which give labels), or one image file;
- a NumPy ``.npy`` / ``.npz`` file (images as for ``--data array``, see ``glowflow.data.npy``; rows ``(N, D)`` for a
  tabular model), an idx image file (MNIST's ``*-images-idx3-ubyte[.gz]``; the labels file beside it is read too),
  a ``.csv`` table of rows;
- a data set name with its split, ``NAME:SPLIT`` (``mnist:test``, ``digits:train``, ``moons:test``);

optionally followed by a slice ``[a:b]`` (``mnist:test[:5000]``, ``x.npy[100:]``).

Levels: image files and idx files hold 8-bit images (256 levels); data sets say their own (17 for the digits); array
files hold ``levels`` levels (default: the model's raw levels, e.g. 17 for a digits model, so that what ``sample
--npy`` and ``decode --npy`` write reads back as written). :func:`fit_images` converts levels (``round(k (M - 1) /
(N - 1))``: the display mapping of ``glowflow.to_uint8`` and its inverse), and, when asked, channels and size.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from glowflow.data import DATASETS, load_dataset
from glowflow.data.folder import IMAGE_EXTENSIONS, list_images
from glowflow.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from glowflow.data.npy import as_image_array, read_array_file
from glowflow.data.tabular import read_table
from glowflow.errors import DataError
from glowflow.preprocessing import ImagePreprocessing

_SLICE = re.compile(r"^(?P<base>.*)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]$")
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, Pillow's RGB -> L


@dataclass(eq=False)
class InputSet:
    """Examples read from one INPUT.

    - ``data``: images uint8 ``(N, C, H, W)`` / int32 with levels ``0..num_bins-1``, or float32 rows ``(N, D)``;
    - ``labels``: long ``(N,)`` class indices (names in ``class_names``), or None;
    - ``sources``: per example, its file path or ``spec[i]``.
    """

    name: str
    data: Tensor
    num_bins: int | None
    labels: Tensor | None = None
    class_names: list[str] | None = None
    sources: list[str] | None = None

    def __post_init__(self) -> None:
        if self.sources is None:
            self.sources = [f"{self.name}[{i}]" for i in range(len(self.data))]
        if len(self.data) == 0:
            raise DataError(f"{self.name}: no examples")
        if len(self.sources) != len(self.data) or (self.labels is not None and len(self.labels) != len(self.data)):
            raise ValueError(f"{self.name}: data, labels and sources differ in length")

    @property
    def is_image(self) -> bool:
        return self.data.dim() == 4

    def __len__(self) -> int:
        return len(self.data)

    def label_names(self) -> list[str | None]:
        """Per example, its label as text (the class name when known), or None."""
        if self.labels is None:
            return [None] * len(self)
        names = self.class_names
        return [names[i] if names is not None and i < len(names) else str(i) for i in self.labels.tolist()]

    def subset(self, keep: slice | Tensor) -> InputSet:
        """The examples ``keep`` (a slice or index tensor) of this set, under the same name."""
        idx = torch.arange(len(self))[keep]
        if len(idx) == 0:
            raise DataError(f"{self.name}: the selection holds no examples (the input has {len(self)})")
        return replace(
            self,
            data=self.data[idx],
            labels=None if self.labels is None else self.labels[idx],
            sources=[self.sources[i] for i in idx.tolist()],
        )


def read_input(
    spec: str | os.PathLike,
    *,
    image: bool = True,
    levels: int = 256,
    data_dir: str | os.PathLike | None = None,
) -> InputSet:
    """Read one INPUT (see the module docstring) for an image model (``image``) or a tabular one. ``levels``: the
    levels of images in array files; ``data_dir``: where ``NAME:SPLIT`` data sets are. ``DataError`` /
    ``ValueError`` with one clear line for anything else."""
    text = str(spec)
    match = _SLICE.match(text)
    if match and not Path(text).exists():
        start, stop = (int(v) if v else None for v in (match["start"], match["stop"]))
        whole = read_input(match["base"], image=image, levels=levels, data_dir=data_dir)
        return replace(whole.subset(slice(start, stop)), name=text)
    path = Path(text).expanduser()
    if path.is_dir():
        return _read_folder(path) if image else _refuse(text, "an image folder", image)
    if path.is_file():
        return _read_file(path, image, levels)
    name, _, split = text.partition(":")
    if name in DATASETS:
        if split not in ("train", "test"):
            raise ValueError(f"INPUT {text}: say which split of the {name!r} data set: {name}:test or {name}:train")
        spec_ = DATASETS.get(name)
        if spec_.is_image != image:
            return _refuse(text, f"the {spec_.kind} data set {name!r}", image)
        ds = load_dataset(name, data_dir, split)
        return InputSet(text, ds.data, ds.num_bins, ds.labels, ds.class_names)
    raise FileNotFoundError(
        f"INPUT {text}: no such file or folder, and not a data set with a split (NAME:SPLIT, e.g. mnist:test; data "
        f"sets: {', '.join(DATASETS)})"
    )


def _refuse(text: str, what: str, image: bool) -> InputSet:
    model = "an image model" if image else "a tabular model"
    raise ValueError(f"INPUT {text} is {what}, which {model} cannot score")


def _read_file(path: Path, image: bool, levels: int) -> InputSet:
    suffix = path.suffix.lower()
    name = str(path)
    if suffix in IMAGE_EXTENSIONS:
        if not image:
            return _refuse(name, "an image", image)
        return InputSet(name, torch.from_numpy(read_image_files([path])), 256, sources=[name])
    if suffix == ".csv":
        if image:
            return _refuse(name, "a csv table", image)
        return InputSet(name, torch.from_numpy(read_table(path)), None)
    if suffix in (".npy", ".npz"):
        array, labels, names = read_array_file(path)
        if not image:
            if array.ndim != 2 or not (np.issubdtype(array.dtype, np.number) and not np.iscomplexobj(array)):
                raise DataError(f"{path}: a tabular model scores rows (N, D) of numbers, got {array.dtype} "
                                f"{array.shape}")  # fmt: skip
            rows = array.astype(np.float32)
            if not np.isfinite(rows).all():
                row = int(np.argwhere(~np.isfinite(rows))[0, 0])
                raise DataError(f"{path}, row {row} (0-based): NaN, inf or out of float32 range")
            return _labelled(name, torch.from_numpy(np.ascontiguousarray(rows)), None, labels, names)
        images = as_image_array(array, name)
        if int(images.max()) >= levels:
            raise DataError(f"{path}: pixel levels reach {int(images.max())}, but arrays are read at {levels} "
                            f"levels (0..{levels - 1}); give the array's levels with --levels (e.g. --levels "
                            "256)")  # fmt: skip
        return _labelled(name, torch.from_numpy(images), levels, labels, names)
    if "idx" in path.name:
        if not image:
            return _refuse(name, "an idx image file", image)
        images = read_idx(path, IMAGES_MAGIC)[:, None]
        labels_path = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
        labels = read_idx(labels_path, LABELS_MAGIC) if labels_path != path and labels_path.is_file() else None
        if labels is not None and len(labels) != len(images):
            raise DataError(f"{labels_path} holds {len(labels)} labels for the {len(images)} images of {path}")
        return _labelled(name, torch.from_numpy(np.ascontiguousarray(images)), 256, labels, None)
    raise DataError(
        f"INPUT {path}: unknown file type; expected an image ({', '.join(IMAGE_EXTENSIONS)}), .npy, .npz, .csv or an "
        "idx file (*-images-idx3-ubyte[.gz])"
    )


def _labelled(
    name: str, data: Tensor, num_bins: int | None, labels: np.ndarray | None, names: list[str] | None
) -> InputSet:
    y = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return InputSet(name, data, num_bins, y, names)


def _read_folder(root: Path) -> InputSet:
    found = list_images(root)
    return InputSet(
        str(root),
        torch.from_numpy(read_image_files(found.files)),
        256,
        None if found.labels is None else torch.tensor(found.labels, dtype=torch.long),
        found.class_names,
        [str(f) for f in found.files],
    )


def read_image_files(files: list[Path]) -> np.ndarray:
    """Decode image files of one size into uint8 ``(N, C, H, W)``: one channel if every image is greyscale, else
    RGB. DataError naming two files of different sizes, or one that does not decode."""
    from PIL import Image, UnidentifiedImageError

    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                grey = im.mode in ("L", "1", "I;16", "I")
                arrays.append((np.asarray(im.convert("L" if grey else "RGB"), dtype=np.uint8), f))
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"cannot read image {f}: {e}") from None
    sizes = {a.shape[:2] for a, _ in arrays}
    if len(sizes) > 1:
        (a0, f0), other = arrays[0], next((a, f) for a, f in arrays if a.shape[:2] != arrays[0][0].shape[:2])
        raise DataError(f"images differ in size: {f0} is {a0.shape[1]}x{a0.shape[0]} but {other[1]} is "
                        f"{other[0].shape[1]}x{other[0].shape[0]} (width x height); score one size at a "
                        "time")  # fmt: skip
    rgb = any(a.ndim == 3 for a, _ in arrays)
    out = []
    for a, _ in arrays:
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2) if rgb else a[:, :, None]
        out.append(a.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out))


# ---- fitting images to a model ----------------------------------------------------------------------------------
def convert_levels(k: Tensor, from_bins: int, to_bins: int) -> Tensor:
    """Levels ``0..from_bins-1`` -> ``0..to_bins-1`` by ``round(k (to - 1) / (from - 1))`` (long; ``k`` itself
    when the levels agree)."""
    if from_bins == to_bins:
        return k
    return torch.round(k.double() * ((to_bins - 1) / (from_bins - 1))).long().clamp(0, to_bins - 1)


def to_grayscale(k: Tensor) -> Tensor:
    """RGB ``(N, 3, H, W)`` -> ``(N, 1, H, W)``: ``round(0.299 R + 0.587 G + 0.114 B)``, the ITU-R 601-2 luma
    weights that Pillow's ``convert("L")`` uses."""
    w = torch.tensor(LUMA, dtype=torch.float64).view(1, 3, 1, 1)
    return torch.round((k.double() * w).sum(1, keepdim=True)).long()


def resize_images(k: Tensor, size: tuple[int, int], num_bins: int) -> Tensor:
    """Bilinear resampling (antialiased when shrinking) to ``size = (H, W)``, rounded to levels ``0..num_bins-1``."""
    x = F.interpolate(k.double(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return torch.round(x).clamp(0, num_bins - 1).long()


def pad_to(k: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero-pad ``(N, C, h, w)`` to ``(N, C, H, W)``, centred (an odd remainder goes to the bottom / right)."""
    h, w = k.shape[-2:]
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    out = k.new_zeros((*k.shape[:2], *size))
    out[:, :, top : top + h, left : left + w] = k
    return out


def fit_images(
    inputs: InputSet,
    preprocessing: ImagePreprocessing,
    resize: bool = False,
    pad: bool = False,
    grayscale: bool = False,
) -> Tensor:
    """The raw images of ``inputs`` as the model's raw images (``preprocessing.raw_shape`` at ``raw_bins`` levels,
    long): levels converted, then RGB -> grey with ``grayscale``, then ``resize`` (bilinear) or ``pad`` (zero, centred)
    to the model's height and width (an integer tensor). A mismatch that no option fixes is one ``ValueError``
    naming the expected shape and the options."""
    if resize and pad:
        raise ValueError("--resize and --pad are alternatives: scale the images, or zero-pad them")
    c, h, w = preprocessing.raw_shape
    k = convert_levels(inputs.data, inputs.num_bins, preprocessing.raw_bins)
    expected = f"the model takes {c}x{h}x{w} images"
    got = "x".join(map(str, k.shape[1:]))
    if k.shape[1] != c:
        if k.shape[1] == 3 and c == 1 and grayscale:
            k = to_grayscale(k)
        elif k.shape[1] == 3 and c == 1:
            raise ValueError(f"{expected}; {inputs.name} holds {got} (RGB): --grayscale converts them to one channel")
        else:
            raise ValueError(f"{expected}; {inputs.name} holds {got}: {k.shape[1]} channels cannot become {c}")
    if tuple(k.shape[2:]) != (h, w):
        got = "x".join(map(str, k.shape[1:]))
        if resize:
            k = resize_images(k, (h, w), preprocessing.raw_bins)
        elif pad and k.shape[2] <= h and k.shape[3] <= w:
            k = pad_to(k, (h, w))
        elif pad:
            raise ValueError(f"{expected}; {inputs.name} holds larger {got} images, which --pad cannot fit: use "
                             "--resize")  # fmt: skip
        else:
            raise ValueError(f"{expected}; {inputs.name} holds {got}: --resize scales them to {h}x{w}, --pad zero-pads "
                             "them (centred)")  # fmt: skip
    return k


def fit_rows(inputs: InputSet, dim: int) -> Tensor:
    """The rows of ``inputs`` for a model of ``dim`` dimensions (float32); ``ValueError`` for another width."""
    if inputs.data.dim() != 2 or inputs.data.shape[1] != dim:
        raise ValueError(f"the model takes rows of {dim} numbers; {inputs.name} holds shape "
                         f"{tuple(inputs.data.shape)}")  # fmt: skip
    return inputs.data.float()
