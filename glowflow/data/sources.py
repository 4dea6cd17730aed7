"""Batched random access to one split of a data set that need not fit in memory: the source protocol, and the
in-memory, subset, concatenated and transformed sources.

A *source* returns any batch of its examples by index, in the order asked (repeats allowed)::

    x, y = source.get(torch.tensor([5, 0, 5]))
    # x: torch.uint8 (3, C, H, W) levels 0..num_bins-1, or torch.float32 (3, D); y: torch.long (3,) or None

and describes itself with ``len(source)``, ``shape`` (one example: ``(C, H, W)`` or ``(D,)``), ``num_bins``
(levels per dimension of images; None for continuous data), ``labels`` (every example's class, torch.long
``(N,)``, held in memory, or None), ``class_names`` and ``name``. Readers of files (memory-mapped arrays in
``glowflow/data/arrays.py``, image folders in ``image_files.py``, tar shards in ``shards.py``, ImageNet in
``imagenet.py``) never hold the examples in memory; :class:`TensorSource` does. The same indices give the same
examples whichever source holds them, so a data set read from its files and the same data set loaded with
:func:`to_memory` give identical batches (``glowflow/data/streaming.py`` draws the indices).

:meth:`BatchSource.read` is :meth:`BatchSource.get` plus the messages of examples that could not be read and were
replaced (readers built with ``on_error="skip"``); the batch loaders call it in worker processes and report the
messages in the main process as :class:`SkippedExampleWarning`.
"""

from __future__ import annotations

import math
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from glowflow.errors import DataError
from glowflow.preprocessing import ImagePreprocessing

ON_ERROR = ("raise", "skip")  # what a file reader does with an unreadable example


class SkippedExampleWarning(UserWarning):
    """An unreadable example was replaced by a substitute (a reader built with ``on_error="skip"``)."""


@dataclass
class SourceBatch:
    """What :meth:`BatchSource.read` returns: the examples ``x``, their labels ``y`` (or None) and one message
    per example that could not be read and was replaced by a substitute."""

    x: Tensor
    y: Tensor | None
    skipped: list[str] = field(default_factory=list)


def check_indices(indices: Tensor | Sequence[int], n: int) -> Tensor:
    """``indices`` as a 1-D torch.long tensor on the CPU; IndexError if one lies outside ``0..n-1``."""
    idx = torch.as_tensor(indices)
    if idx.dim() != 1 or (idx.numel() and (idx.dtype.is_floating_point or idx.dtype == torch.bool)):
        raise ValueError(f"indices must be a 1-D tensor of integers, got {idx.dtype} of shape {tuple(idx.shape)}")
    idx = idx.to(device="cpu", dtype=torch.long)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
        raise IndexError(f"index {bad} is out of range for a data set of {n} examples")
    return idx


def warn_skipped(messages: Sequence[str]) -> None:
    """Report replaced examples (one warning per message; Python shows each distinct message once)."""
    for message in messages:
        warnings.warn(message, SkippedExampleWarning, stacklevel=3)


class BatchSource(ABC):
    """One split of a data set with batched random access (see the module docstring).

    Subclasses set ``shape``, ``num_bins``, ``labels``, ``class_names`` and ``name`` and implement ``__len__``
    and :meth:`read`; ``origin`` says what the files are when a reader knows more than a name (which ImageNet
    version, and why).
    """

    shape: tuple[int, ...]
    num_bins: int | None
    labels: Tensor | None
    class_names: list[str] | None
    name: str
    origin: str | None = None

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read(self, indices: Tensor) -> SourceBatch:
        """The examples at ``indices`` (1-D long), in that order, and the messages of replaced examples."""

    def get(self, indices: Tensor | Sequence[int]) -> tuple[Tensor, Tensor | None]:
        """``(x, y)`` of the examples at ``indices``; replaced examples are reported as warnings."""
        batch = self.read(check_indices(indices, len(self)))
        warn_skipped(batch.skipped)
        return batch.x, batch.y

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    @property
    def example_nbytes(self) -> int:
        """Bytes of one example as :meth:`get` returns it (uint8 images, float32 tables)."""
        return math.prod(self.shape) * (1 if self.is_image else 4)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole split as :meth:`get` returns it, i.e. what :func:`to_memory` would hold."""
        return len(self) * self.example_nbytes

    def describe(self) -> str:
        what = "images" if self.is_image else "examples"
        dims = "x".join(str(s) for s in self.shape)
        levels = f", {self.num_bins} levels" if self.num_bins is not None else ""
        classes = f", {len(self.class_names)} classes" if self.class_names else ""
        return f"{self.name}: {len(self)} {what}, {dims}{levels}{classes}"


def check_example_layout(shape: tuple[int, ...], num_bins: int | None) -> None:
    """Images are ``(C, H, W)`` with ``num_bins`` levels; tables ``(D,)`` with ``num_bins=None``."""
    if len(shape) == 3:
        if num_bins is None or num_bins < 2:
            raise ValueError(f"image data needs num_bins >= 2 (levels per channel), got {num_bins}")
    elif len(shape) != 1:
        raise ValueError(f"examples must have shape (C, H, W) or (D,), got {shape}")


def check_labels(labels: Tensor | np.ndarray | Sequence[int] | None, n: int, what: str) -> Tensor | None:
    """Labels as torch.long ``(n,)`` (non-negative), or None."""
    if labels is None:
        return None
    y = torch.as_tensor(np.asarray(labels))
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.shape != (n,):
        raise ValueError(f"{what}: labels must be {n} integers, got {y.dtype} of shape {tuple(y.shape)}")
    y = y.to(torch.long)
    if n and int(y.min()) < 0:
        raise ValueError(f"{what}: labels must be >= 0, got {int(y.min())}")
    return y


class TensorSource(BatchSource):
    """A split held in memory: ``x`` uint8 ``(N, C, H, W)`` with ``num_bins`` levels, or float ``(N, D)``;
    ``y`` long ``(N,)`` or None. The tensors may live on a GPU (then batches are gathered there)."""

    def __init__(
        self,
        x: Tensor,
        y: Tensor | None = None,
        num_bins: int | None = None,
        class_names: list[str] | None = None,
        name: str = "tensors",
    ) -> None:
        if x.dim() == 4:
            if x.dtype != torch.uint8:
                raise ValueError(f"image data must be torch.uint8 levels, got {x.dtype}")
        elif x.dim() != 2 or not x.is_floating_point():
            raise ValueError(f"data must be (N, C, H, W) uint8 or (N, D) float, got {x.dtype} {tuple(x.shape)}")
        check_example_layout(tuple(x.shape[1:]), num_bins)
        self.x = x
        self.labels = None if y is None else check_labels(y.cpu(), len(x), name).to(x.device)
        self.shape = tuple(x.shape[1:])
        self.num_bins = num_bins
        self.class_names = class_names
        self.name = name

    @classmethod
    def from_dataset(cls, dataset) -> TensorSource:
        """The source of a loaded :class:`glowflow.data.Dataset` (its ``data``, ``labels``, ``num_bins``,
        ``class_names`` and ``name``)."""
        return cls(dataset.data, dataset.labels, dataset.num_bins, dataset.class_names, dataset.name)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def read(self, indices: Tensor) -> SourceBatch:
        idx = indices.to(self.x.device)
        return SourceBatch(self.x[idx], None if self.labels is None else self.labels[idx])


class SubsetSource(BatchSource):
    """The examples ``indices`` of ``source``, renumbered ``0..len(indices)-1`` (e.g. one split of a folder)."""

    def __init__(self, source: BatchSource, indices: Tensor | Sequence[int], name: str | None = None) -> None:
        self.source = source
        self.indices = check_indices(indices, len(source))
        self.shape, self.num_bins, self.class_names = source.shape, source.num_bins, source.class_names
        self.labels = None if source.labels is None else source.labels[self.indices.to(source.labels.device)]
        self.name = name or f"{source.name} (subset of {len(self.indices)})"
        self.origin = source.origin

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, indices: Tensor) -> SourceBatch:
        return self.source.read(self.indices[indices])


class ConcatSource(BatchSource):
    """Sources of one example shape one after the other (e.g. the ten ImageNet batch files): index ``i`` of the
    whole is index ``i - offset[k]`` of part ``k``."""

    def __init__(self, parts: Sequence[BatchSource], name: str | None = None) -> None:
        if not parts:
            raise ValueError("ConcatSource needs at least one source")
        first = parts[0]
        for p in parts[1:]:
            if p.shape != first.shape or p.num_bins != first.num_bins:
                raise DataError(
                    f"cannot concatenate {first.name} ({first.shape}, {first.num_bins} levels) and {p.name} "
                    f"({p.shape}, {p.num_bins} levels): every part must have one example shape"
                )
            if (p.labels is None) != (first.labels is None):
                raise DataError(f"{first.name} and {p.name}: either every part has labels or none has")
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.shape, self.num_bins, self.class_names = first.shape, first.num_bins, first.class_names
        self.labels = None if first.labels is None else torch.cat([p.labels.cpu() for p in parts])
        self.name = name or " + ".join(p.name for p in parts)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read(self, indices: Tensor) -> SourceBatch:
        part = np.searchsorted(self.offsets, indices.numpy(), side="right") - 1
        x: Tensor | None = None
        y = None if self.labels is None else torch.empty(len(indices), dtype=torch.long)
        skipped: list[str] = []
        for k in np.unique(part):
            where = torch.from_numpy(np.flatnonzero(part == k))
            got = self.parts[k].read(indices[where] - int(self.offsets[k]))
            if x is None:
                x = torch.empty((len(indices), *got.x.shape[1:]), dtype=got.x.dtype)
            x[where] = got.x.cpu()
            if y is not None:
                y[where] = got.y.cpu()
            skipped += got.skipped
        if x is None:  # an empty batch
            x = self.parts[0].read(indices).x
        return SourceBatch(x, y, skipped)


class TransformedSource(BatchSource):
    """The images of ``source`` through an :class:`~glowflow.preprocessing.ImagePreprocessing` (n-bit reduction,
    padding), batch by batch: the object a Glow keeps as ``model.preprocessing``, so a streamed split and a split
    preprocessed whole in memory (``glowflow.training.data.prepare_data``) hold the same levels."""

    def __init__(self, source: BatchSource, preprocessing: ImagePreprocessing) -> None:
        if not source.is_image:
            raise ValueError(f"image preprocessing applies to images; {source.name} holds {source.shape} vectors")
        if preprocessing.raw_shape != source.shape or preprocessing.raw_bins != source.num_bins:
            raise ValueError(
                f"the preprocessing takes {'x'.join(map(str, preprocessing.raw_shape))} images with "
                f"{preprocessing.raw_bins} levels; {source.name} holds {'x'.join(map(str, source.shape))} images "
                f"with {source.num_bins}"
            )
        self.source, self.preprocessing = source, preprocessing
        self.shape, self.num_bins = preprocessing.model_shape, preprocessing.num_bins
        self.labels, self.class_names = source.labels, source.class_names
        self.name, self.origin = source.name, source.origin

    def __len__(self) -> int:
        return len(self.source)

    def read(self, indices: Tensor) -> SourceBatch:
        batch = self.source.read(indices)
        return SourceBatch(self.preprocessing(batch.x), batch.y, batch.skipped)


def to_memory(source: BatchSource, chunk_size: int = 4096) -> TensorSource:
    """Read every example of ``source`` into a :class:`TensorSource` (``chunk_size`` examples at a time), e.g.
    a data set small enough for memory that is stored as files. Replaced examples are reported as warnings."""
    if isinstance(source, TensorSource):
        return source
    n = len(source)
    x = torch.empty((n, *source.shape), dtype=torch.uint8 if source.is_image else torch.float32)
    for start in range(0, n, chunk_size):
        batch = source.read(torch.arange(start, min(n, start + chunk_size)))
        x[start : start + len(batch.x)] = batch.x
        warn_skipped(batch.skipped)
    memory = TensorSource(x, source.labels, source.num_bins, source.class_names, source.name)
    memory.origin = source.origin
    return memory


INPUT_MODES = ("auto", "memory", "stream")
MEMORY_FRACTION = 0.25  # "auto" keeps a split in memory when it takes at most this share of the machine's memory


def physical_memory() -> int:
    """Bytes of physical memory of this machine (``os.sysconf``)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def choose_input(source: BatchSource, mode: str = "auto", budget: int | None = None) -> str:
    """``"memory"`` (load the split with :func:`to_memory`) or ``"stream"`` (read batches from the files).

    ``mode="auto"``: an in-memory source stays in memory; any other goes to memory when its decoded size
    (:attr:`BatchSource.nbytes`) fits in ``budget`` bytes, by default :data:`MEMORY_FRACTION` of the machine's
    physical memory shared by the processes of this node (``LOCAL_WORLD_SIZE``, set by torchrun), and is streamed
    otherwise. ``"memory"`` / ``"stream"`` force a path.
    """
    if mode not in INPUT_MODES:
        raise ValueError(f"input mode must be one of {', '.join(INPUT_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    if isinstance(source, TensorSource):
        return "memory"
    if budget is None:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        budget = int(physical_memory() * MEMORY_FRACTION / max(1, local))
    return "memory" if source.nbytes <= budget else "stream"


class ReadOnlyFile:
    """A file read with ``os.pread`` at explicit offsets: no file position, so one descriptor serves threads and
    forked worker processes alike; the descriptor is opened on first use and not pickled (a worker started by
    spawn / forkserver opens its own). Reads land in fresh buffers, never in a mapping of the file, so the pages
    they touch stay in the kernel's page cache and do not count in the process's resident memory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._fd: int | None = None

    def pread(self, size: int, offset: int) -> bytes:
        """``size`` bytes at ``offset``; DataError if the file ends before them."""
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as e:
                raise DataError(f"cannot open {self.path}: {e.strerror}") from None
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise DataError(
                f"{self.path} is truncated: reading {size} bytes at offset {offset} found only {len(data)} "
                f"(the file holds {os.fstat(self._fd).st_size} bytes)"
            )
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._fd = None

    def __del__(self) -> None:
        self.close()
