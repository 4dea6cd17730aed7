"""Fixed channel permutations (RealNVP's choices), kept as options to compare against the learned 1x1 conv."""

from __future__ import annotations

import torch
from torch import Tensor

from glowflow.layers.base import Flow, zero_logdet


class ChannelPermutation(Flow):
    """Reorder dim 1 by a fixed permutation: ``y[:, i] = x[:, perm[i]]``.

    Shapes: (B, C, ...) -> (B, C, ...).  log|det| = 0 (a permutation preserves volume).
    The permutation is a buffer, so it is saved in ``state_dict``.
    """

    def __init__(self, perm: Tensor) -> None:
        super().__init__()
        perm = torch.as_tensor(perm, dtype=torch.long)
        if not torch.equal(torch.sort(perm).values, torch.arange(perm.numel())):
            raise ValueError(f"not a permutation of 0..{perm.numel() - 1}: {perm.tolist()}")
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x[:, self.perm], zero_logdet(x)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return y[:, self.inverse_perm], zero_logdet(y)


class ChannelReverse(ChannelPermutation):
    """Reverse the channel order (RealNVP's fixed permutation)."""

    def __init__(self, channels: int) -> None:
        super().__init__(torch.arange(channels - 1, -1, -1))


class ChannelShuffle(ChannelPermutation):
    """A random but fixed channel permutation, drawn once at construction."""

    def __init__(self, channels: int, generator: torch.Generator | None = None) -> None:
        super().__init__(torch.randperm(channels, generator=generator))
