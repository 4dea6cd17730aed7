"""The data of a training run, ready for the model: both splits loaded, images reduced to ``n_bits`` and padded,
tabular / toy data standardised by the training split's mean and standard deviation.

Standardisation is part of the model's bijection as far as likelihoods go: the model sees ``s = (x - mean) / std``,
so ``log p(x) = log p_model(s) - sum(log std)``; every number glowflow reports (loss, test NLL) is in the original
units of ``x``, and samples are mapped back with ``x = s * std + mean``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from glowflow.data import TOY_DENSITIES, load_dataset, pad_images
from glowflow.errors import DataError
from glowflow.layers.dequantization import reduce_bits
from glowflow.training.config import TrainConfig
from glowflow.training.distributed import DistContext, barrier

DATA_SEED = 0  # seeds the 90/10 split of folders and single tabular files, and the toy samples: fixed, so that
# test numbers stay comparable between runs with different training seeds


@dataclass(eq=False)
class TrainingData:
    """Both splits as tensors the model takes (see the module docstring)."""

    name: str
    train_x: Tensor  # uint8 levels (N, C, H, W) or float32 standardised (N, D)
    train_y: Tensor | None
    test_x: Tensor
    test_y: Tensor | None
    num_bins: int | None
    class_names: list[str] | None
    mean: Tensor | None = None  # tabular / toy: the standardisation
    std: Tensor | None = None
    test_total: int = 0  # size of the whole test split (test_x may be a fixed subset)
    train_labels: Tensor | None = None  # the data set's labels, also when the model is not conditional
    test_labels: Tensor | None = None

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> TrainingData:
        """The data description a checkpoint stores (shape, levels, classes, standardisation), without the data:
        enough to sample from and describe a trained model."""
        d = ckpt["data"]
        shape = tuple(d["shape"])
        empty = torch.empty((0, *shape), dtype=torch.uint8 if len(shape) == 3 else torch.float32)
        return cls(d["name"], empty, None, empty, None, d["num_bins"], d["class_names"], d.get("mean"), d.get("std"))

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
        if self.train_y is None:
            return None
        return int(self.train_y.max()) + 1

    @property
    def log_std_sum(self) -> float:
        """``sum(log std)``: add to an NLL of standardised data to get the NLL in original units."""
        return 0.0 if self.std is None else float(self.std.double().log().sum())

    def standardize(self, x: Tensor) -> Tensor:
        return x if self.mean is None else (x - self.mean.to(x)) / self.std.to(x)

    def unstandardize(self, s: Tensor) -> Tensor:
        return s if self.mean is None else s * self.std.to(s) + self.mean.to(s)

    @property
    def test_note(self) -> str:
        what = "images" if self.is_image else "examples"
        n = len(self.test_x)
        if n < self.test_total:
            return f"a fixed random subset of {n} of the {self.test_total} test {what}"
        return f"all {n} test {what}"

    def describe(self) -> str:
        n_train, n_test = len(self.train_x), self.test_total
        if self.is_image:
            c, h, w = self.shape
            return (f"{self.name}: {n_train} train / {n_test} test images, {c}x{h}x{w}, "
                    f"{self.num_bins} grey levels per channel")  # fmt: skip
        kind = "2-D toy density" if self.name in TOY_DENSITIES else f"{self.shape[0]}-D table"
        return f"{self.name}: {n_train} train / {n_test} test points, {kind} (standardised by the train mean/std)"


def _load_split(cfg: TrainConfig, split: str, ctx: DistContext | None):
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


def _subset(n: int, size: int | None) -> Tensor | None:
    """Indices of a fixed random subset of ``size`` of ``n`` items (sorted), or None for all of them."""
    if size is None or size >= n:
        return None
    g = torch.Generator().manual_seed(DATA_SEED)
    return torch.randperm(n, generator=g)[:size].sort().values


def prepare_data(
    cfg: TrainConfig,
    ctx: DistContext | None = None,
    stats: tuple[Tensor, Tensor] | None = None,
    eval_size: int | None = None,
) -> TrainingData:
    """Load and transform both splits as ``cfg`` says. ``stats`` = (mean, std) reuses a trained model's
    standardisation (tabular / toy); ``eval_size`` keeps a fixed random subset of the test split."""
    train = _load_split(cfg, "train", ctx)
    test = _load_split(cfg, "test", ctx)
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"{cfg.data}: the {'train' if len(train) == 0 else 'test'} split is empty")
    train_x, test_x = train.data, test.data
    num_bins = train.num_bins
    if train.is_image:
        if cfg.n_bits is not None:
            if num_bins != 256:
                raise ValueError(
                    f"--n-bits reduces 8-bit images (256 levels); {cfg.data} has {num_bins} levels per channel"
                )
            train_x = reduce_bits(train_x, cfg.n_bits).to(torch.uint8)
            test_x = reduce_bits(test_x, cfg.n_bits).to(torch.uint8)
            num_bins = 2**cfg.n_bits
        if cfg.pad is not None:
            train_x, test_x = pad_images(train_x, cfg.pad), pad_images(test_x, cfg.pad)
    if cfg.conditional and (train.labels is None or test.labels is None):
        raise ValueError(f"--conditional needs class labels, and the {cfg.data!r} data set has none")
    train_y = train.labels if cfg.conditional else None
    test_y = test.labels if cfg.conditional else None
    total = len(test_x)
    keep = _subset(total, eval_size)
    test_labels = test.labels
    if keep is not None:
        test_x = test_x[keep]
        test_y = None if test_y is None else test_y[keep]
        test_labels = None if test_labels is None else test_labels[keep]
    data = TrainingData(
        cfg.data, train_x, train_y, test_x, test_y, num_bins, train.class_names, test_total=total,
        train_labels=train.labels, test_labels=test_labels,
    )  # fmt: skip
    if not train.is_image:
        if stats is None:
            mean = train_x.double().mean(0)
            std = train_x.double().std(0)
            std = torch.where(std > 1e-12, std, torch.ones_like(std))
            stats = (mean.float(), std.float())
        data.mean, data.std = stats
        data.train_x = data.standardize(train_x)
        data.test_x = data.standardize(test_x)
    return data
