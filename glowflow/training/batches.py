"""The batches of a training run: the ActNorm initialisation batch, then one random batch per step.

The sequence is a function of the seed alone, so that a resumed run sees exactly the batches an uninterrupted run
would have seen::

    g = torch.Generator().manual_seed(seed)
    init = torch.randperm(n, generator=g)[: min(n, init_batch_size)]    # the ActNorm initialisation batch
    every step: torch.randint(0, n, (batch_size,), generator=g)         # drawn with replacement

Under torchrun every process draws the same global indices and keeps its own contiguous slice
(:func:`~glowflow.training.distributed.shard`). The generator's state is the position saved in checkpoints.

With ``mutation_rate`` > 0 (the background model of the likelihood-ratio score, Ren et al. 2019) every batch is
corrupted by :func:`mutate` with the process's global random stream - the one the dequantization noise comes from,
saved in checkpoints - so a resumed run mutates exactly as an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from glowflow.training.distributed import DistContext, shard

GPU_DATA_LIMIT = 2**31  # keep training data up to 2 GiB on the GPU and gather the batches there


def mutate(k: Tensor, rate: float, num_bins: int) -> Tensor:
    """Replace each dimension of the discrete images ``k`` (B, C, H, W) independently with probability ``rate`` by a
    level drawn uniformly from ``0..num_bins-1`` (the global random stream of ``k``'s device); same shape and
    dtype."""
    replace = torch.rand(k.shape, device=k.device) < rate
    noise = torch.randint(0, num_bins, k.shape, device=k.device, dtype=k.dtype)
    return torch.where(replace, noise, k)


class InMemoryBatches:
    """Batches gathered from tensors in memory (``x`` (N, ...) and optional labels ``y`` (N,)), optionally mutated
    (``mutation_rate`` > 0, discrete images with ``num_bins`` levels: see :func:`mutate`)."""

    def __init__(
        self,
        x: Tensor,
        y: Tensor | None,
        batch_size: int,
        init_batch_size: int,
        seed: int,
        ctx: DistContext,
        device: torch.device,
        mutation_rate: float = 0.0,
        num_bins: int | None = None,
    ) -> None:
        if mutation_rate and num_bins is None:
            raise ValueError("mutating batches needs discrete images: num_bins is None")
        self.mutation_rate, self.num_bins = mutation_rate, num_bins
        if device.type == "cuda" and x.numel() * x.element_size() <= GPU_DATA_LIMIT:
            x = x.to(device)
        self.x, self.y = x, None if y is None else y.to(x.device)
        self.batch_size, self.init_batch_size = batch_size, init_batch_size
        self.ctx, self.device = ctx, device
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.x)

    def _gather(self, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        idx = shard(idx, self.ctx).to(self.x.device)
        x = self.x[idx].to(self.device, non_blocking=True)
        y = None if self.y is None else self.y[idx].to(self.device, non_blocking=True)
        if self.mutation_rate:
            x = mutate(x, self.mutation_rate, self.num_bins)
        return x, y

    def init_batch(self) -> tuple[Tensor, Tensor | None]:
        """The ActNorm initialisation batch (this process's slice): the first draw of the sequence."""
        n = len(self.x)
        return self._gather(torch.randperm(n, generator=self.generator)[: min(n, self.init_batch_size)])

    def next(self) -> tuple[Tensor, Tensor | None]:
        """The next step's batch (this process's slice)."""
        return self._gather(torch.randint(0, len(self.x), (self.batch_size,), generator=self.generator))

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
