"""The contract every glowflow bijection follows.

Direction: ``forward`` is the *normalizing* direction (data -> latent), ``inverse`` the *generative* direction
(latent -> data). This is the direction of the Glow paper; normflows uses the opposite naming.

Contract, for every layer ``f``::

    y, logdet = f(x, cond=None)          # logdet = log|det dy/dx|, shape (B,)
    x, logdet = f.inverse(y, cond=None)  # logdet = log|det dx/dy| = -(forward logdet), shape (B,)

``cond`` is an optional conditioning tensor (a (B, F) feature vector such as a one-hot label, or a
(B, C', H, W) map); layers that do not use it ignore it. Compositions of layers are
:class:`~glowflow.layers.sequence.FlowSequence`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Flow(nn.Module):
    """Base class of an invertible layer with a tractable log-determinant (see the module docstring)."""

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


def zero_logdet(x: Tensor) -> Tensor:
    """A (B,) zero log-det accumulator for batch ``x``, in at least float32 whatever precision ``x`` uses."""
    return x.new_zeros(x.shape[0], dtype=torch.promote_types(x.dtype, torch.float32))
