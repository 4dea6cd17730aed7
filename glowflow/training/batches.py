"""The batches of a training run: the ActNorm initialisation batch, then one random batch per step, from the
training split in memory or read from its files (:class:`glowflow.data.streaming.TrainBatches`).

The sequence is a function of the seed alone, whichever way the split is held, so that a resumed run sees exactly
the batches an uninterrupted run would have seen::

    g = torch.Generator().manual_seed(seed)
    init = torch.randperm(n, generator=g)[: min(n, init_batch_size)]    # the ActNorm initialisation batch
    every step: torch.randint(0, n, (batch_size,), generator=g)         # drawn with replacement

Under torchrun every process draws the same global indices and keeps its own contiguous slice. The position
saved in checkpoints is :meth:`TrainBatches.state_dict` (the generator after the last consumed batch).
"""

from __future__ import annotations

import torch

from glowflow.data.sources import TensorSource
from glowflow.data.streaming import TrainBatches
from glowflow.training.config import TrainConfig
from glowflow.training.data import TrainingData
from glowflow.training.distributed import DistContext

GPU_DATA_LIMIT = 2**31  # keep a training split of up to 2 GiB on the GPU and gather the batches there


def training_batches(data: TrainingData, cfg: TrainConfig, ctx: DistContext, device: torch.device) -> TrainBatches:
    """This process's training batches. A split in memory goes to the GPU when it fits in :data:`GPU_DATA_LIMIT`
    and no worker processes read it (``cfg.workers == 0``); otherwise batches are read on the CPU - by
    ``cfg.workers`` processes, into pinned memory on CUDA - and copied to ``device``."""
    source = data.train
    if device.type == "cuda" and cfg.workers == 0 and isinstance(source, TensorSource):
        if source.nbytes <= GPU_DATA_LIMIT:
            source = TensorSource(source.x.to(device), source.labels, source.num_bins, source.class_names, source.name)
    return TrainBatches(source, cfg.batch_size, cfg.init_batch_size, cfg.seed, ctx.rank, ctx.world_size,
                        workers=cfg.workers, device=device, labels=cfg.conditional)  # fmt: skip
