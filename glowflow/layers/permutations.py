"""Channel mixing between couplings: fixed permutations (RealNVP's choices) and the registry of every mixer a step
of flow can use (the learned 1x1 convolution of ``glowflow.layers.conv1x1`` included).

:data:`PERMUTATIONS` maps a name to ``factory(channels, image) -> Flow``; ``image=False`` asks for the layer that
mixes (B, D) vectors instead of the channels of (B, C, H, W) images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from glowflow.layers.base import Flow, zero_logdet
from glowflow.layers.conv1x1 import InvertibleConv1x1, InvertibleLinear
from glowflow.registry import Registry


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


PERMUTATIONS: Registry[Callable[[int, bool], Flow]] = Registry("permutation")


@PERMUTATIONS.register("lu", help="learned 1x1 convolution, LU-parameterised (Glow)")
def _lu_mixer(channels: int, image: bool) -> Flow:
    return InvertibleConv1x1(channels, lu=True) if image else InvertibleLinear(channels, lu=True)


@PERMUTATIONS.register("conv", help="learned 1x1 convolution with a dense weight")
def _dense_mixer(channels: int, image: bool) -> Flow:
    return InvertibleConv1x1(channels, lu=False) if image else InvertibleLinear(channels, lu=False)


@PERMUTATIONS.register("shuffle", help="a fixed random channel permutation (RealNVP)")
def _shuffle(channels: int, image: bool) -> Flow:
    return ChannelShuffle(channels)


@PERMUTATIONS.register("reverse", help="reverse the channel order (RealNVP)")
def _reverse(channels: int, image: bool) -> Flow:
    return ChannelReverse(channels)
