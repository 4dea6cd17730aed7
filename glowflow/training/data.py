"""The data of a training run, ready for the model: both splits as batch sources (``glowflow/data/sources.py``),
images preprocessed as the configuration says (n-bit reduction, padding:
:class:`~glowflow.preprocessing.ImagePreprocessing`, which the model keeps), held in memory or read batch by batch
from their files (``cfg.input``), and the fixed list of test examples every evaluation scores.

    data set table entry -> open_dataset (both splits: in memory, or readers of files)  |  arrays / sources given
      -> images: ImagePreprocessing, on the whole tensor in memory or batch by batch (TransformedSource)
      -> input "memory": read whole (to_memory), or "stream": left to be read batch by batch
      = TrainingData(train, test, eval_indices)

Tabular and toy rows stay in memory and in their own units: the model standardises them itself
(``TabularGlow.standardize``), so every likelihood is a likelihood of the raw rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from glowflow.checks import IntRange
from glowflow.data import DATASETS, ReadOptions, open_dataset
from glowflow.data.base import Dataset, split_indices
from glowflow.data.memory import in_memory_splits
from glowflow.data.sources import BatchSource, SubsetSource, TensorSource, TransformedSource, choose_input, to_memory
from glowflow.data.streaming import eval_subset
from glowflow.errors import DataError
from glowflow.preprocessing import ImagePreprocessing
from glowflow.training.config import TrainConfig
from glowflow.training.distributed import DistContext, barrier
from glowflow.wording import levels_text, plural

DATA_SEED = 0  # seeds the 90/10 split of folders, shards, single tabular files and in-memory data, and the toy
# samples (the evaluation subset has its own fixed seed): test numbers stay comparable between training seeds


@dataclass
class InMemoryData:
    """Data handed to ``glowflow.train(data=...)``: arrays, tensors or a ``torch.utils.data.Dataset`` (see
    :func:`glowflow.data.memory.in_memory_splits`), or a batch source (``glowflow.data.sources``: e.g. an
    ``ArraySource`` of a ``.npy`` file) with an optional test source, whose labels and levels it carries."""

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

    def sources(self) -> tuple[BatchSource, BatchSource]:
        """``(train, test)`` batch sources: the given sources, or the arrays' splits in memory. A source without
        ``test_data`` is split as arrays are (a fixed ``test_fraction``, the same examples)."""
        if not isinstance(self.data, BatchSource):
            train, test = self.splits()
            return TensorSource.from_dataset(train), TensorSource.from_dataset(test)
        if any(v is not None for v in (self.labels, self.test_labels, self.num_bins, self.class_names)):
            raise ValueError("a batch source carries its own labels, levels and class names: labels, test_labels, "
                             "num_bins and class_names go with arrays")  # fmt: skip
        if self.test_data is not None:
            if not isinstance(self.test_data, BatchSource):
                raise ValueError(f"test_data must be a batch source like data, got {type(self.test_data).__name__}")
            return self.data, self.test_data
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {self.test_fraction}")
        n = len(self.data)
        n_test = max(1, round(self.test_fraction * n))
        train, test = (split_indices(n, s, DATA_SEED, f"{self.data.name}", n_test) for s in ("train", "test"))
        return SubsetSource(self.data, torch.from_numpy(train)), SubsetSource(self.data, torch.from_numpy(test))


@dataclass(eq=False)
class TrainingData:
    """Both splits as the model takes them (see the module docstring): ``train`` / ``test`` yield uint8 levels
    ``(B, C, H, W)`` at ``num_bins`` levels (preprocessed) or float32 rows ``(B, D)`` in their own units, and their
    labels; ``eval_indices`` are the test examples each evaluation scores (all, or the fixed ``--eval-size``
    subset); ``input`` is ``"memory"`` (both splits held as tensors) or ``"stream"`` (read from their files)."""

    name: str
    train: BatchSource
    test: BatchSource
    eval_indices: Tensor
    num_bins: int | None
    class_names: list[str] | None
    preprocessing: ImagePreprocessing | None = None  # images: raw files -> the model's levels
    conditional: bool = False  # batches carry the labels (a class-conditional model)
    input: str = "memory"

    @property
    def is_image(self) -> bool:
        return self.train.is_image

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape)

    @property
    def num_dims(self) -> int:
        return math.prod(self.shape)

    @property
    def num_classes(self) -> int | None:
        if self.class_names is not None:
            return len(self.class_names)
        labels = self.train.labels
        if labels is None or len(labels) == 0:
            return None
        return int(labels.max()) + 1

    @property
    def test_total(self) -> int:
        """Size of the whole test split (evaluations may score a fixed subset of it)."""
        return len(self.test)

    @property
    def test_note(self) -> str:
        what = "image" if self.is_image else "example"
        n = len(self.eval_indices)
        if n < self.test_total:
            return f"a fixed random subset of {n} of the {plural(self.test_total, 'test ' + what)}"
        return f"all {plural(n, 'test ' + what)}" if n > 1 else f"the one test {what}"

    def describe(self) -> str:
        n_train, n_test = len(self.train), self.test_total
        if self.is_image:
            c, h, w = self.shape
            levels = levels_text(self.num_bins, c)
            extra = ""
            if self.preprocessing is not None and not self.preprocessing.is_identity:
                extra = f" (from {self.preprocessing.describe()})"
            where = ", read batch by batch from the files" if self.input == "stream" else ""
            return f"{self.name}: {n_train} train / {n_test} test images, {c}x{h}x{w}, {levels}{extra}{where}"
        spec = DATASETS.get(self.name) if self.name in DATASETS else None
        kind = "2-D toy density" if spec is not None and spec.kind == "toy" else f"{self.shape[0]}-D table"
        return f"{self.name}: {n_train} train / {n_test} test points, {kind} (standardised by the model)"

    def origins(self) -> list[str]:
        """What the readers know of the files beyond their names (e.g. which ImageNet version, and why)."""
        return list(dict.fromkeys(s.origin for s in (self.train, self.test) if s.origin))

    # ---- the splits as tensors, for data held in memory ----------------------------------------------------
    def _in_memory(self, source: BatchSource, split: str) -> Tensor:
        if not isinstance(source, TensorSource):
            raise DataError(f"{self.name}: the {split} split is read batch by batch from its files ({source.name}); "
                            f"read its examples with .{split}.get(indices)")  # fmt: skip
        return source.x

    @property
    def train_x(self) -> Tensor:
        """The training split's examples (in memory only)."""
        return self._in_memory(self.train, "train")

    @property
    def test_x(self) -> Tensor:
        """The evaluated test examples (in memory only): the fixed subset when ``--eval-size`` is set."""
        return self._in_memory(self.test, "test")[self.eval_indices.to(self.test.x.device)]

    @property
    def train_labels(self) -> Tensor | None:
        """The training split's labels (also for a model that is not conditional)."""
        return self.train.labels

    @property
    def test_labels(self) -> Tensor | None:
        """The evaluated test examples' labels."""
        labels = self.test.labels
        return None if labels is None else labels[self.eval_indices.to(labels.device)]

    @property
    def train_y(self) -> Tensor | None:
        """The labels the model takes: the training labels when conditional, else None."""
        return self.train_labels if self.conditional else None

    @property
    def test_y(self) -> Tensor | None:
        return self.test_labels if self.conditional else None


def _open_splits(cfg: TrainConfig, ctx: DistContext | None) -> tuple[BatchSource, BatchSource]:
    """Both splits of ``cfg.data``; with several processes rank 0 downloads first while the others wait."""
    size = None if cfg.image_size is None else (cfg.image_size, cfg.image_size)
    options = ReadOptions(size, cfg.fit, cfg.on_error)

    def open_splits(download: bool) -> tuple[BatchSource, BatchSource]:
        return open_dataset(cfg.data, cfg.data_dir, DATA_SEED, options, download)

    if cfg.download and ctx is not None and ctx.enabled:
        splits = open_splits(True) if ctx.is_main else None
        barrier(ctx)
        return splits if splits is not None else open_splits(False)
    return open_splits(cfg.download)


def _preprocess(source: BatchSource, preprocessing: ImagePreprocessing) -> BatchSource:
    """Images at the model's levels: a split in memory transformed whole (as it always was), a reader of files
    batch by batch."""
    if isinstance(source, TensorSource):
        prepared = TensorSource(preprocessing(source.x), source.labels, preprocessing.num_bins, source.class_names,
                                source.name)  # fmt: skip
        prepared.origin = source.origin
        return prepared
    return source if preprocessing.is_identity else TransformedSource(source, preprocessing)


def prepare_data(
    cfg: TrainConfig,
    ctx: DistContext | None = None,
    eval_size: int | None = None,
    memory: InMemoryData | None = None,
) -> TrainingData:
    """Open both splits of ``cfg.data`` (or take them from ``memory``) and prepare them as ``cfg`` says (see the
    module docstring); ``eval_size`` (>= 1, or None: all) fixes a random subset of the test split for
    evaluations."""
    eval_size = IntRange(1, optional=True).check("eval_size", eval_size)
    train, test = memory.sources() if memory is not None else _open_splits(cfg, ctx)
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"{cfg.data}: the {'train' if len(train) == 0 else 'test'} split is empty")
    if train.shape != test.shape or train.num_bins != test.num_bins:
        raise DataError(f"{cfg.data}: the train split holds {train.shape} examples, the test split {test.shape}")
    preprocessing = None
    if train.is_image:
        if cfg.n_bits is not None and train.num_bins != 256:
            raise ValueError(
                f"--n-bits reduces 8-bit images (256 levels); {cfg.data} has {train.num_bins} levels per channel"
            )
        preprocessing = ImagePreprocessing(train.shape, train.num_bins, cfg.n_bits, cfg.pad)
        train, test = _preprocess(train, preprocessing), _preprocess(test, preprocessing)
    else:
        for key in ("n_bits", "pad"):
            if getattr(cfg, key) is not None:
                raise ValueError(f"--{key.replace('_', '-')} applies to images; {cfg.data} holds rows of numbers")
    if cfg.conditional and (train.labels is None or test.labels is None):
        raise ValueError(f"--conditional needs class labels, and the {cfg.data!r} data set has none")
    if not train.is_image or choose_input(train, cfg.input) == "memory":  # rows: the model fits their scale
        train, test = to_memory(train), to_memory(test)
    where = "memory" if isinstance(train, TensorSource) else "stream"  # data sets loaded whole stay in memory
    return TrainingData(cfg.data, train, test, eval_subset(len(test), eval_size), train.num_bins, train.class_names,
                        preprocessing, cfg.conditional, where)  # fmt: skip
