"""The batches of a training run and of its evaluations, from any batch source, in memory or streamed from files.

The training batches are the ones the in-memory loop has always drawn, from one seeded generator ``g`` shared by
every process::

    g = torch.Generator().manual_seed(seed)
    init = torch.randperm(n, generator=g)[: min(n, init_batch_size)]    # the ActNorm initialisation batch
    for step in 1, 2, ...:
        idx = torch.randint(0, n, (batch_size,), generator=g)           # this step's global batch (with replacement)
        mine = idx[rank * per : (rank + 1) * per]                        # per = batch_size // world_size

:class:`TrainBatches` yields exactly these, for any source, with ``workers=0`` (read in this process) or with
``workers > 0`` (a ``torch.utils.data.DataLoader`` whose worker processes read and decode the batches ahead of the
loop, into pinned memory when the device is CUDA). The workers change where a batch is read, never which: the
indices are drawn in this process by a copy of ``g`` running ahead, and each batch travels with the generator
state that follows it, so :meth:`TrainBatches.state_dict` is always the position after the last batch the loop
*consumed*, whatever the workers have read ahead. Saving it in a checkpoint and loading it into a new
``TrainBatches`` continues with the very next batch (exact resume). The state is plain tensors and numbers
(``torch.load(..., weights_only=True)`` reads it).

Evaluation (:func:`eval_batches`) scores a fixed list of indices - the whole test split, or the fixed subset of
:func:`eval_subset` - split between processes as ``indices[rank::world_size]``, in batches, in order: the same
examples in the same order as the in-memory evaluation, so the same numbers.

Bad data never hangs the workers: an unreadable example becomes one DataError naming its file in this process (or,
with a reader built with ``on_error="skip"``, a :class:`glowflow.data.sources.SkippedExampleWarning` and a count in
:attr:`TrainBatches.skipped`); a worker that dies, or no batch within ``timeout`` seconds, is a DataError too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.utils.data
from torch import Tensor

from glowflow.data.sources import SourceBatch, check_indices, warn_skipped
from glowflow.errors import DataError

EVAL_SUBSET_SEED = 0  # the fixed evaluation subset, as glowflow.training.data draws it
DEFAULT_TIMEOUT = 300.0  # seconds to wait for one batch from the workers before giving up


def fetch(source: Any, indices: Tensor) -> SourceBatch:
    """``source.read(indices)`` for glowflow's sources; ``source.get(indices)`` for any other object with it."""
    read = getattr(source, "read", None)
    if read is not None:
        return read(indices)
    x, y = source.get(indices)
    return SourceBatch(x, y)


def eval_subset(n: int, size: int | None = None) -> Tensor:
    """The indices an evaluation scores: all ``n`` (``size`` None or >= n), or a fixed random subset of ``size``,
    sorted: ``torch.randperm(n, generator=torch.Generator().manual_seed(0))[:size].sort().values``, the same at every
    evaluation of every run."""
    if size is None or size >= n:
        return torch.arange(n)
    if size < 1:
        raise ValueError(f"the evaluation subset needs at least 1 example, got size {size}")
    g = torch.Generator().manual_seed(EVAL_SUBSET_SEED)
    return torch.randperm(n, generator=g)[:size].sort().values


@dataclass
class _Task:
    """One batch to read: its number, this process's indices, and the batch generator's state after drawing it
    (numpy arrays: they reach the worker pickled through its pipe, see :class:`_Loaded`)."""

    number: int
    indices: np.ndarray
    state: np.ndarray | None


@dataclass
class _Loaded:
    """A task's result as a worker returns it: the batch, or the message of the DataError that stopped it. Arrays
    travel as numpy arrays, pickled through the worker's pipe, rather than as tensors, which torch hands over as
    one shared-memory segment each: measured on 2 cores with 64 CIFAR-size images per batch, 1.7x the batch rate
    for the results and 2.6x with the tasks sent the same way."""

    number: int
    indices: np.ndarray
    state: np.ndarray | None
    x: np.ndarray | Tensor | None
    y: np.ndarray | Tensor | None
    skipped: list[str]
    error: str | None

    def tensors(self) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """``(indices, generator state, x, y)`` as tensors (``x`` / ``y`` may already be pinned tensors)."""
        x, y = (torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in (self.x, self.y))
        state = None if self.state is None else torch.from_numpy(self.state)
        return torch.from_numpy(self.indices), state, x, y

    def pin_memory(self) -> _Loaded:  # called by the DataLoader's pinning thread (CUDA)
        self.x = None if self.x is None else torch.from_numpy(self.x).pin_memory()
        self.y = None if self.y is None else torch.from_numpy(self.y).pin_memory()
        return self


class _ReadTasks(torch.utils.data.Dataset):
    """The DataLoader's data set: a task in, its batch out (in a worker process). A DataError travels back as its
    message, so that this process raises it as one clean error."""

    def __init__(self, source: Any, labels: bool) -> None:
        self.source, self.labels = source, labels

    def __getitem__(self, task: _Task) -> _Loaded:
        try:
            batch = fetch(self.source, torch.from_numpy(task.indices))
        except DataError as e:
            return _Loaded(task.number, task.indices, task.state, None, None, [], str(e))
        y = batch.y.numpy() if self.labels and batch.y is not None else None
        return _Loaded(task.number, task.indices, task.state, batch.x.numpy(), y, batch.skipped, None)


def _as_is(item: _Loaded) -> _Loaded:
    return item


class _DrawAhead:
    """The DataLoader's sampler: this process's indices of steps ``first, first + 1, ...``, drawn from a copy of the
    batch generator (in the main process, ahead of the loop)."""

    def __init__(self, state: Tensor, first: int, n: int, batch_size: int, rank: int, world_size: int) -> None:
        self.state, self.first, self.n, self.batch_size = state, first, n, batch_size
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[_Task]:
        g = torch.Generator()
        g.set_state(self.state)
        number = self.first
        while True:
            idx = torch.randint(0, self.n, (self.batch_size,), generator=g)
            yield _Task(number, shard_slice(idx, self.rank, self.world_size).numpy(), g.get_state().numpy())
            number += 1


def shard_slice(indices: Tensor, rank: int, world_size: int) -> Tensor:
    """This process's contiguous slice of a global batch: ``indices[rank * per : (rank + 1) * per]`` with
    ``per = len(indices) // world_size`` (as ``glowflow.training.distributed.shard``)."""
    per = len(indices) // world_size
    return indices[rank * per : (rank + 1) * per]


def _check_workers(source: Any, workers: int) -> None:
    x = getattr(source, "x", None)
    if workers and isinstance(x, Tensor) and x.device.type != "cpu":
        raise ValueError(f"{source.name} is held on {x.device}: read it in the main process (workers=0)")


def _loader(source: Any, tasks: Any, labels: bool, workers: int, pin: bool, prefetch: int, timeout: float) -> Any:
    # A DataLoader iterator draws its workers' base seed from its generator, by default the global one: a generator
    # of its own keeps the training's random stream (dequantization noise) the same with and without workers.
    loader = torch.utils.data.DataLoader(
        _ReadTasks(source, labels), batch_size=None, sampler=tasks, collate_fn=_as_is, num_workers=workers,
        pin_memory=pin, prefetch_factor=prefetch, timeout=timeout, generator=torch.Generator(),
    )  # fmt: skip
    return iter(loader)


def _next_loaded(it: Any, timeout: float) -> _Loaded:
    """The next result of a DataLoader iterator; a dead or silent worker becomes a DataError."""
    try:
        return next(it)
    except RuntimeError as e:
        text = str(e)
        if "DataLoader worker" in text or "timed out" in text:
            raise DataError(
                f"the data loader's worker processes failed ({text.splitlines()[0]}); a worker killed for memory, a "
                f"crash decoding a file, or no batch within {timeout:g} s (a stalled disk). Retry with workers=0 to "
                "read in the main process"
            ) from None
        raise


class TrainBatches:
    """The training batches of one process (see the module docstring): ``init_batch()`` once, then ``next()`` per
    step, both ``(x, y)`` on ``device`` (``y`` None without labels or with ``labels=False``).

    ``source``: a batch source (``glowflow.data.sources``), or any object with ``__len__`` and ``get(indices)``.
    ``batch_size``: the global batch over all ``world_size`` processes (it must divide by ``world_size``);
    ``init_batch_size``: the global ActNorm batch. ``workers``: reader processes (0: read in this process);
    ``prefetch``: batches each worker reads ahead; ``timeout``: seconds to wait for one batch.

        batches = TrainBatches(source, 64, 512, seed=0, workers=4, device="cuda")
        x, y = batches.init_batch()
        for step in range(1, steps + 1):
            x, y = batches.next()
        torch.save(batches.state_dict(), path)   # resume: TrainBatches(...).load_state_dict(torch.load(path))
    """

    def __init__(
        self,
        source: Any,
        batch_size: int,
        init_batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        workers: int = 0,
        device: str | torch.device = "cpu",
        labels: bool = True,
        prefetch: int = 2,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if batch_size < 1 or init_batch_size < 1:
            raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {init_batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} of {world_size} processes is not a valid position")
        if batch_size % world_size:
            raise ValueError(f"the batch size {batch_size} must divide by the number of processes ({world_size})")
        if workers < 0 or prefetch < 1 or timeout <= 0:
            raise ValueError(f"workers must be >= 0, prefetch >= 1, timeout > 0; got {workers}, {prefetch}, {timeout}")
        _check_workers(source, workers)
        self.n = len(source)
        if self.n < 1:
            raise DataError(f"{getattr(source, 'name', 'the data set')} is empty")
        self.source, self.batch_size, self.init_batch_size = source, batch_size, init_batch_size
        self.rank, self.world_size, self.workers = rank, world_size, workers
        self.device = torch.device(device)
        self.labels, self.prefetch, self.timeout = labels, prefetch, timeout
        self.generator = torch.Generator().manual_seed(seed)  # the position after the last consumed batch
        self.init_done = False
        self.consumed = 0  # training batches consumed (the init batch not counted)
        self.skipped = 0  # unreadable examples replaced (readers with on_error="skip")
        self.indices: Tensor | None = None  # this process's indices of the last batch returned
        self._ahead: Any = None  # the DataLoader iterator, while workers read ahead

    # ---- the batches -----------------------------------------------------------------------------------------
    def init_batch(self) -> tuple[Tensor, Tensor | None]:
        """This process's slice of the ActNorm initialisation batch (a fresh run draws it first, once)."""
        if self.init_done:
            raise RuntimeError("the ActNorm initialisation batch was already drawn (a resumed run does not draw it)")
        before = self.generator.get_state()
        idx = torch.randperm(self.n, generator=self.generator)[: min(self.n, self.init_batch_size)]
        mine = shard_slice(idx, self.rank, self.world_size)
        batch = self._fetch_or_rewind(mine, before)
        self.init_done = True
        return self._deliver(mine, batch.x, batch.y if self.labels else None, batch.skipped)

    def next(self) -> tuple[Tensor, Tensor | None]:
        """This process's slice of the next step's batch."""
        if not self.init_done:
            raise RuntimeError("draw init_batch() first: a fresh run's batch generator draws the ActNorm batch first")
        if self.workers == 0:
            before = self.generator.get_state()
            idx = torch.randint(0, self.n, (self.batch_size,), generator=self.generator)
            mine = shard_slice(idx, self.rank, self.world_size)
            batch = self._fetch_or_rewind(mine, before)
            self.consumed += 1
            return self._deliver(mine, batch.x, batch.y if self.labels else None, batch.skipped)
        if self._ahead is None:
            self._ahead = self._start()
        loaded = _next_loaded(self._ahead, self.timeout)
        if loaded.error is not None:
            self.close()
            raise DataError(loaded.error)
        if loaded.number != self.consumed + 1:  # the DataLoader returns batches in order (in_order=True)
            raise RuntimeError(f"batch {loaded.number} arrived where batch {self.consumed + 1} was expected")
        indices, state, x, y = loaded.tensors()
        self.generator.set_state(state)
        self.consumed += 1
        return self._deliver(indices, x, y, loaded.skipped)

    __next__ = next

    def __iter__(self) -> TrainBatches:
        return self

    def _fetch_or_rewind(self, indices: Tensor, before: Tensor) -> SourceBatch:
        """Read a batch in this process; if that fails, the position goes back to before the batch was drawn."""
        try:
            return fetch(self.source, indices)
        except BaseException:
            self.generator.set_state(before)
            raise

    def _start(self) -> Any:
        tasks = _DrawAhead(self.generator.get_state(), self.consumed + 1, self.n, self.batch_size, self.rank,
                           self.world_size)  # fmt: skip
        pin = self.device.type == "cuda"
        return _loader(self.source, tasks, self.labels, self.workers, pin, self.prefetch, self.timeout)

    def _deliver(
        self, indices: Tensor, x: Tensor, y: Tensor | None, skipped: list[str]
    ) -> tuple[Tensor, Tensor | None]:
        self.indices = indices
        self.skipped += len(skipped)
        warn_skipped(skipped)
        x = x.to(self.device, non_blocking=True)
        return x, None if y is None else y.to(self.device, non_blocking=True)

    # ---- position ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The position after the last consumed batch: ``{"generator": ByteTensor, "init_done": bool,
        "batches": int, "skipped": int, "size": int, "batch_size": int}`` (``weights_only`` loadable)."""
        return {
            "generator": self.generator.get_state(),
            "init_done": self.init_done,
            "batches": self.consumed,
            "skipped": self.skipped,
            "size": self.n,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (workers reading ahead are stopped and restart from there). The data
        set's size and the batch size must be those of the saved run; the number of processes may differ."""
        try:
            size, batch_size = int(state["size"]), int(state["batch_size"])
            generator, init_done = state["generator"], bool(state["init_done"])
            consumed, skipped = int(state["batches"]), int(state["skipped"])
            if not isinstance(generator, Tensor) or generator.dtype != torch.uint8:
                raise TypeError(f"the generator state is a {type(generator).__name__}, not a torch.uint8 tensor")
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a TrainBatches state ({type(e).__name__}: {e})") from None
        if size != self.n:
            raise DataError(f"the saved batch position is for a data set of {size} examples, this one has {self.n}; "
                            "resume with the data the run started with")  # fmt: skip
        if batch_size != self.batch_size:
            raise ValueError(f"the saved batch position is for batches of {batch_size}, not {self.batch_size}")
        self.close()
        self.generator.set_state(generator)
        self.init_done, self.consumed, self.skipped = init_done, consumed, skipped

    # ---- workers -------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the worker processes (they start again on the next ``next()``)."""
        self._ahead = None  # the DataLoader iterator shuts its workers down when released

    def __enter__(self) -> TrainBatches:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def eval_batches(
    source: Any,
    indices: Tensor,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    *,
    workers: int = 0,
    device: str | torch.device = "cpu",
    labels: bool = True,
    prefetch: int = 2,
    timeout: float = DEFAULT_TIMEOUT,
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """This process's evaluation batches ``(x, y)`` on ``device``: the examples ``indices[rank::world_size]``, in
    order, ``batch_size`` at a time (the last batch may be smaller). Every process gets its own share; together
    they score each index once. Unreadable examples and workers behave as for :class:`TrainBatches`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of {world_size} processes is not a valid position")
    _check_workers(source, workers)
    mine = check_indices(indices, len(source))[rank::world_size]
    device = torch.device(device)
    tasks = [_Task(k, mine[s : s + batch_size].numpy(), None) for k, s in enumerate(range(0, len(mine), batch_size))]
    if workers == 0 or not tasks:
        for task in tasks:
            batch = fetch(source, torch.from_numpy(task.indices))
            warn_skipped(batch.skipped)
            y = batch.y if labels else None
            yield batch.x.to(device), None if y is None else y.to(device)
        return
    ahead = _loader(source, tasks, labels, workers, device.type == "cuda", prefetch, timeout)
    try:
        for _ in tasks:
            loaded = _next_loaded(ahead, timeout)
            if loaded.error is not None:
                raise DataError(loaded.error)
            warn_skipped(loaded.skipped)
            _, _, x, y = loaded.tensors()
            yield x.to(device, non_blocking=True), None if y is None else y.to(device, non_blocking=True)
    finally:
        del ahead
