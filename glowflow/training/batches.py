"""The batches of a training run: the ActNorm initialisation batch, then one random batch per step, from the
training split in memory or read from its files (:class:`glowflow.data.streaming.TrainBatches`).

The sequence is a function of the seed alone, whichever way the split is held, so that a resumed run sees exactly
the batches an uninterrupted run would have seen::

    g = torch.Generator().manual_seed(seed)
    init = torch.randperm(n, generator=g)[: min(n, init_batch_size)]    # the ActNorm initialisation batch
    every step: torch.randint(0, n, (batch_size,), generator=g)         # drawn with replacement

Under torchrun every process draws the same global indices and keeps its own contiguous slice. The position
saved in checkpoints is :meth:`TrainBatches.state_dict` (the generator after the last consumed batch).

With ``mutation_rate`` > 0 (the background model of the likelihood-ratio score, Ren et al. 2019) every batch is
corrupted by :func:`mutate` after it is read (:class:`MutatedBatches`), whether the split is in memory or streamed,
with the process's global random stream of the batch's device - the one the dequantization noise comes from,
seeded per process and saved in checkpoints - so a resumed run mutates exactly as an uninterrupted one, whatever
the number of reader processes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from glowflow.data.sources import TensorSource
from glowflow.data.streaming import TrainBatches
from glowflow.training.config import TrainConfig
from glowflow.training.data import TrainingData
from glowflow.training.distributed import DistContext

GPU_DATA_LIMIT = 2**31  # keep a training split of up to 2 GiB on the GPU and gather the batches there


def mutate(k: Tensor, rate: float, num_bins: int) -> Tensor:
    """Replace each dimension of the discrete images ``k`` (B, C, H, W) independently with probability ``rate`` by a
    level drawn uniformly from ``0..num_bins-1`` (the global random stream of ``k``'s device); same shape and
    dtype."""
    replace = torch.rand(k.shape, device=k.device) < rate
    noise = torch.randint(0, num_bins, k.shape, device=k.device, dtype=k.dtype)
    return torch.where(replace, noise, k)


class MutatedBatches(TrainBatches):
    """:class:`~glowflow.data.streaming.TrainBatches` whose every batch (the ActNorm batch included) is
    :func:`mutate`-d on its device: ``mutation_rate`` in (0, 1], ``num_bins`` the images' levels. The batch
    sequence and its saved position are those of the unmutated batches."""

    def __init__(self, *args: Any, mutation_rate: float, num_bins: int, **kwargs: Any) -> None:
        if not 0 < mutation_rate <= 1:
            raise ValueError(f"mutation_rate must lie in (0, 1], got {mutation_rate}")
        super().__init__(*args, **kwargs)
        self.mutation_rate, self.num_bins = mutation_rate, num_bins

    def init_batch(self) -> tuple[Tensor, Tensor | None]:
        x, y = super().init_batch()
        return mutate(x, self.mutation_rate, self.num_bins), y

    def next(self) -> tuple[Tensor, Tensor | None]:
        x, y = super().next()
        return mutate(x, self.mutation_rate, self.num_bins), y

    __next__ = next


def training_batches(data: TrainingData, cfg: TrainConfig, ctx: DistContext, device: torch.device) -> TrainBatches:
    """This process's training batches. A split in memory goes to the GPU when it fits in :data:`GPU_DATA_LIMIT`
    and no worker processes read it (``cfg.workers == 0``); otherwise batches are read on the CPU - by
    ``cfg.workers`` processes, into pinned memory on CUDA - and copied to ``device``. With ``cfg.mutation_rate``
    (images only) they are :class:`MutatedBatches`."""
    source = data.train
    if device.type == "cuda" and cfg.workers == 0 and isinstance(source, TensorSource):
        if source.nbytes <= GPU_DATA_LIMIT:
            source = TensorSource(source.x.to(device), source.labels, source.num_bins, source.class_names, source.name)
    args = (source, cfg.batch_size, cfg.init_batch_size, cfg.seed, ctx.rank, ctx.world_size)
    options: dict[str, Any] = dict(workers=cfg.workers, device=device, labels=cfg.conditional)
    if cfg.mutation_rate:
        if not data.is_image:
            raise ValueError(f"--mutation-rate mutates discrete images; {cfg.data} holds rows of numbers")
        return MutatedBatches(*args, mutation_rate=cfg.mutation_rate, num_bins=data.num_bins, **options)
    return TrainBatches(*args, **options)
