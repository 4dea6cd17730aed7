"""The batches of a training run: the ActNorm initialisation batch, then one random batch per step.

The sequence is a function of the seed alone, so that a resumed run sees exactly the batches an uninterrupted run
would have seen::

    g = torch.Generator().manual_seed(seed)
    init = torch.randperm(n, generator=g)[: min(n, init_batch_size)]    # the ActNorm initialisation batch
    every step: torch.randint(0, n, (batch_size,), generator=g)         # drawn with replacement

Under torchrun every process draws the same global indices and keeps its own contiguous slice
(:func:`~glowflow.training.distributed.shard`). The generator's state is the position saved in checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from glowflow.training.distributed import DistContext, shard

GPU_DATA_LIMIT = 2**31  # keep training data up to 2 GiB on the GPU and gather the batches there


class InMemoryBatches:
    """Batches gathered from tensors in memory (``x`` (N, ...) and optional labels ``y`` (N,))."""

    def __init__(
        self,
        x: Tensor,
        y: Tensor | None,
        batch_size: int,
        init_batch_size: int,
        seed: int,
        ctx: DistContext,
        device: torch.device,
    ) -> None:
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
