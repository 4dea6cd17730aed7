"""The data of a training run, ready for the model: both splits loaded (from files, or from arrays in memory through
the same code), images preprocessed as the configuration says (n-bit reduction, padding:
:class:`~glowflow.preprocessing.ImagePreprocessing`, which the model keeps), labels attached when the model is
class-conditional, and an optional fixed evaluation subset.

Tabular and toy rows stay in their own units: the model standardises them itself (``TabularGlow.standardize``), so
every likelihood is a likelihood of the raw rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from glowflow.checks import IntRange
from glowflow.data import DATASETS, load_dataset
from glowflow.data.base import Dataset
from glowflow.data.memory import in_memory_splits
from glowflow.errors import DataError
from glowflow.preprocessing import ImagePreprocessing
from glowflow.training.config import TrainConfig
from glowflow.training.distributed import DistContext, barrier
from glowflow.wording import levels_text, plural

DATA_SEED = 0  # seeds the 90/10 split of folders, single tabular files and in-memory arrays, the toy samples and
# the evaluation subset: fixed, so that test numbers stay comparable between runs with different training seeds


@dataclass
class InMemoryData:
    """Arrays handed to ``glowflow.train(data=...)``: see :func:`glowflow.data.memory.in_memory_splits`."""

    data: Any
    labels: Any = None
    test_data: Any = None
    test_labels: Any = None
    test_fraction: float = 0.1
    num_bins: int | None = None
    class_names: list[str] | None = None

    def splits(self) -> tuple[Dataset, Dataset]:
        return in_memory_splits(self.data, self.labels, self.test_data, self.test_labels, self.test_fraction,
                                self.num_bins, self.class_names, DATA_SEED)  # fmt: skip


@dataclass(eq=False)
class TrainingData:
    """Both splits as tensors the model takes (see the module docstring)."""

    name: str
    train_x: Tensor  # uint8 levels (N, C, H, W), or float32 rows (N, D) in their own units
    train_y: Tensor | None  # labels, when the model is class-conditional
    test_x: Tensor
    test_y: Tensor | None
    num_bins: int | None
    class_names: list[str] | None
    preprocessing: ImagePreprocessing | None = None  # images: raw files -> train_x / test_x
    test_total: int = 0  # size of the whole test split (test_x may be a fixed subset)
    train_labels: Tensor | None = None  # the data set's labels, also when the model is not conditional
    test_labels: Tensor | None = None

    @property
    def is_image(self) -> bool:
        return self.train_x.dim() == 4

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def num_dims(self) -> int:
        return math.prod(self.shape)

    @property
    def num_classes(self) -> int | None:
        if self.class_names is not None:
            return len(self.class_names)
        labels = self.train_labels if self.train_labels is not None else self.train_y
        if labels is None or len(labels) == 0:
            return None
        return int(labels.max()) + 1

    @property
    def test_note(self) -> str:
        what = "image" if self.is_image else "example"
        n = len(self.test_x)
        if n < self.test_total:
            return f"a fixed random subset of {n} of the {plural(self.test_total, 'test ' + what)}"
        return f"all {plural(n, 'test ' + what)}" if n > 1 else f"the one test {what}"

    def describe(self) -> str:
        n_train, n_test = len(self.train_x), self.test_total
        if self.is_image:
            c, h, w = self.shape
            levels = levels_text(self.num_bins, c)
            extra = ""
            if self.preprocessing is not None and not self.preprocessing.is_identity:
                extra = f" (from {self.preprocessing.describe()})"
            return f"{self.name}: {n_train} train / {n_test} test images, {c}x{h}x{w}, {levels}{extra}"
        spec = DATASETS.get(self.name) if self.name in DATASETS else None
        kind = "2-D toy density" if spec is not None and spec.kind == "toy" else f"{self.shape[0]}-D table"
        return f"{self.name}: {n_train} train / {n_test} test points, {kind} (standardised by the model)"


def _load_split(cfg: TrainConfig, split: str, ctx: DistContext | None) -> Dataset:
    """Load one split; with several processes rank 0 downloads first while the others wait."""
    download = cfg.download
    if download and ctx is not None and ctx.enabled:
        if ctx.is_main:
            ds = load_dataset(cfg.data, cfg.data_dir, split, download=True, seed=DATA_SEED)
        barrier(ctx)
        if ctx.is_main:
            return ds
        download = False
    return load_dataset(cfg.data, cfg.data_dir, split, download=download, seed=DATA_SEED)


def eval_subset(n: int, size: int | None) -> Tensor | None:
    """Indices of a fixed random subset of ``size`` of ``n`` items (sorted), or None for all of them."""
    if size is None or size >= n:
        return None
    g = torch.Generator().manual_seed(DATA_SEED)
    return torch.randperm(n, generator=g)[:size].sort().values


def prepare_data(
    cfg: TrainConfig,
    ctx: DistContext | None = None,
    eval_size: int | None = None,
    memory: InMemoryData | None = None,
) -> TrainingData:
    """Load both splits of ``cfg.data`` (or take them from ``memory``) and prepare them as ``cfg`` says;
    ``eval_size`` (>= 1, or None: all) keeps a fixed random subset of the test split."""
    eval_size = IntRange(1, optional=True).check("eval_size", eval_size)
    if memory is not None:
        train, test = memory.splits()
    else:
        train, test = _load_split(cfg, "train", ctx), _load_split(cfg, "test", ctx)
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"{cfg.data}: the {'train' if len(train) == 0 else 'test'} split is empty")
    if train.shape != test.shape:
        raise DataError(f"{cfg.data}: the train split holds {train.shape} examples, the test split {test.shape}")
    train_x, test_x = train.data, test.data
    num_bins = train.num_bins
    preprocessing = None
    if train.is_image:
        if cfg.n_bits is not None and num_bins != 256:
            raise ValueError(
                f"--n-bits reduces 8-bit images (256 levels); {cfg.data} has {num_bins} levels per channel"
            )
        preprocessing = ImagePreprocessing(train.shape, num_bins, cfg.n_bits, cfg.pad)
        train_x, test_x = preprocessing(train_x), preprocessing(test_x)
        num_bins = preprocessing.num_bins
    else:
        for key in ("n_bits", "pad"):
            if getattr(cfg, key) is not None:
                raise ValueError(f"--{key.replace('_', '-')} applies to images; {cfg.data} holds rows of numbers")
    if cfg.conditional and (train.labels is None or test.labels is None):
        raise ValueError(f"--conditional needs class labels, and the {cfg.data!r} data set has none")
    train_y = train.labels if cfg.conditional else None
    test_y = test.labels if cfg.conditional else None
    total = len(test_x)
    keep = eval_subset(total, eval_size)
    test_labels = test.labels
    if keep is not None:
        test_x = test_x[keep]
        test_y = None if test_y is None else test_y[keep]
        test_labels = None if test_labels is None else test_labels[keep]
    return TrainingData(
        cfg.data, train_x, train_y, test_x, test_y, num_bins, train.class_names, preprocessing, test_total=total,
        train_labels=train.labels, test_labels=test_labels,
    )  # fmt: skip
