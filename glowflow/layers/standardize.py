"""A fixed per-feature affine bijection: the standardisation of tabular data, as part of the model."""

from __future__ import annotations

import torch
from torch import Tensor

from glowflow.layers.base import Flow


class Standardize(Flow):
    """``y = (x - mean) / std`` per feature, with fixed (non-trainable) ``mean`` and ``std`` buffers.

    forward (data -> latent):  ``y = (x - mean) / std``,   log|det dy/dx| = -sum(log std)
    inverse (latent -> data):  ``x = y * std + mean``,     log|det dx/dy| = +sum(log std)

    Shapes: ``shape`` is one example's shape, e.g. (D,); x (B, *shape) -> (B, *shape). The buffers travel in the
    ``state_dict``, so a model that starts with this layer gives log-densities in the data's own units. Starts as
    the identity; :meth:`fit` sets it from training data.
    """

    def __init__(self, shape: tuple[int, ...], min_std: float = 1e-12) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.min_std = min_std
        self.register_buffer("mean", torch.zeros(self.shape))
        self.register_buffer("std", torch.ones(self.shape))

    def extra_repr(self) -> str:
        return f"shape={self.shape}"

    @torch.no_grad()
    def fit(self, x: Tensor) -> Standardize:
        """Set ``mean`` / ``std`` to the statistics of ``x`` (B, *shape), computed in float64; a feature whose
        standard deviation is below ``min_std`` (a constant column) keeps std 1. Returns self."""
        if x.dim() != len(self.shape) + 1 or tuple(x.shape[1:]) != self.shape or x.shape[0] < 2:
            raise ValueError(f"fit needs at least 2 examples of shape {self.shape}, got {tuple(x.shape)}")
        xd = x.detach().double()
        if not bool(torch.isfinite(xd).all()):
            raise ValueError("cannot fit a standardisation to data containing NaN or inf")
        mean, std = xd.mean(0), xd.std(0)
        std = torch.where(std > self.min_std, std, torch.ones_like(std))
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(std.to(self.std.dtype))
        return self

    def log_abs_det(self) -> Tensor:
        """``-sum(log std)``: log|det| of the forward map for one example."""
        return -self.std.double().log().sum().to(self.std.dtype)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return (x - self.mean) / self.std, self.log_abs_det().expand(x.shape[0])

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return y * self.std + self.mean, (-self.log_abs_det()).expand(y.shape[0])
