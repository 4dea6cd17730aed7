"""Learned (conditional) Gaussian priors, written as standardising bijections.

A Gaussian ``N(mu, sigma^2)`` over ``z`` is represented by the map ``eps = (z - mu) / sigma`` with
``log|det| = -sum(log sigma)``, followed by a standard normal over ``eps``:
``log N(z; mu, sigma) = log N(eps; 0, 1) - sum(log sigma)``. Models therefore end in a standard normal, their
latents are the standardised ``eps``, and sampling at temperature ``T`` (``eps ~ N(0, T^2)``) is exactly the
same as scaling every prior's standard deviation by ``T``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from glowflow.layers.base import Flow
from glowflow.layers.conditioners import ZeroConv2d, ZeroLinear

_LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` summed over all but the batch dimension. Shapes: (B, ...) -> (B,)."""
    return -0.5 * (z.square() + _LOG_2PI).flatten(1).sum(1)


def _standardize(x: Tensor, mean: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    eps = (x - mean) * (-log_scale).exp()
    return eps, -log_scale.expand_as(x).flatten(1).sum(1)


def _unstandardize(eps: Tensor, mean: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
    x = eps * log_scale.exp() + mean
    return x, log_scale.expand_as(eps).flatten(1).sum(1)


class GaussianPrior(Flow):
    """Learned diagonal Gaussian over a tensor of fixed shape, optionally shifted per condition.

    forward: ``eps = (z - mu(cond)) * exp(-log_sigma(cond))``;  log|det| = -sum(log_sigma).
    ``mu`` and ``log_sigma`` are free parameters of shape ``shape`` (zero-initialised: a standard normal at
    start); with ``cond_features > 0`` a zero-initialised linear map of the (B, F) ``cond`` adds a per-channel
    shift to both (the class-conditional prior of Glow).

    Shapes: ``shape`` = (C, H, W) or (D,); x (B, *shape) -> (B, *shape).
    """

    def __init__(self, shape: tuple[int, ...], cond_features: int = 0) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.mean = nn.Parameter(torch.zeros(self.shape))
        self.log_scale = nn.Parameter(torch.zeros(self.shape))
        self.cond_proj = ZeroLinear(cond_features, 2 * self.shape[0]) if cond_features else None

    def _params(self, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        mean, log_scale = self.mean.unsqueeze(0), self.log_scale.unsqueeze(0)
        if self.cond_proj is not None:
            if cond is None or cond.dim() != 2:
                raise ValueError(f"this prior needs a (B, {self.cond_proj.in_features}) conditioning vector")
            dm, dl = self.cond_proj(cond.to(mean.dtype)).chunk(2, dim=1)
            spatial = (1,) * (len(self.shape) - 1)
            mean = mean + dm.view(*dm.shape, *spatial)
            log_scale = log_scale + dl.view(*dl.shape, *spatial)
        return mean, log_scale

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return _standardize(x, *self._params(cond))

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return _unstandardize(y, *self._params(cond))


class Split(Flow):
    """Factor out half the channels under a Gaussian conditioned on the other half (Glow's ``split2d``).

    With ``x = (x_keep, x_out)`` split on dim 1 (``x_out`` = the last ``C // 2`` channels):
        forward:  ``y = (x_keep, eps)``, ``eps = (x_out - mu) * exp(-log_sigma)``,
                  ``(mu, log_sigma) = ZeroConv3x3(x_keep) [+ ZeroLinear(cond)]``;
        log|det dy/dx| = -sum(log_sigma).
    The caller factors ``eps`` out (``y[:, :n_keep]`` continues through the flow, ``y[:, n_keep:]`` is the
    level's latent, standard normal under the prior). Since ``mu, sigma`` depend only on ``x_keep``, which the
    map leaves unchanged, the map is triangular and exactly invertible.

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, cond_features: int = 0) -> None:
        super().__init__()
        self.n_out = channels // 2
        self.n_keep = channels - self.n_out
        self.conv = ZeroConv2d(self.n_keep, 2 * self.n_out, 3)
        self.cond_proj = ZeroLinear(cond_features, 2 * self.n_out) if cond_features else None

    def _params(self, x_keep: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        h = self.conv(x_keep)
        if self.cond_proj is not None:
            if cond is None or cond.dim() != 2:
                raise ValueError(f"this split needs a (B, {self.cond_proj.in_features}) conditioning vector")
            h = h + self.cond_proj(cond.to(h.dtype))[:, :, None, None]
        mean, log_scale = h.chunk(2, dim=1)
        return mean, log_scale

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x_keep, x_out = x[:, : self.n_keep], x[:, self.n_keep :]
        eps, logdet = _standardize(x_out, *self._params(x_keep, cond))
        return torch.cat([x_keep, eps], dim=1), logdet

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y_keep, eps = y[:, : self.n_keep], y[:, self.n_keep :]
        x_out, logdet = _unstandardize(eps, *self._params(y_keep, cond))
        return torch.cat([y_keep, x_out], dim=1), logdet
