"""normflows' multi-scale Glow built to the same architecture as ``glowflow.Glow``, and the objective both share.

Used by ``bench.py``, ``budget.py`` and ``tests/test_benchmarks.py``. normflows (``pip install -e '.[bench]'``,
``normflows==1.7.3``) names directions the other way round from glowflow: its ``forward`` is the generative
direction (latent -> data), its ``inverse`` / ``log_prob`` the normalizing one. Training and evaluation therefore
go through ``MultiscaleFlow.log_prob`` and sampling through ``MultiscaleFlow.sample``.

What is matched, level by level (normalizing direction): squeeze -> K x [ActNorm -> LU 1x1 conv -> affine
coupling with Glow's conditioner (3x3 conv -> ActNorm -> ReLU -> 1x1 conv -> ActNorm -> ReLU -> zero-initialised
3x3 conv), channel split, scale sigmoid(h + 2)] -> factor out half of the channels; the top latent has a learned
per-element diagonal Gaussian. What cannot be matched is listed in :data:`MISMATCHES`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

try:  # optional: the ``bench`` extra
    import normflows as nf
except ImportError:  # pragma: no cover - exercised only without the extra
    nf = None

NORMFLOWS_VERSION = getattr(nf, "__version__", None) if nf is not None else None

MISMATCHES = (
    "split prior: glowflow factors out half of the channels under a Gaussian whose mean and log-scale come from a "
    "zero-initialised 3x3 conv of the kept half (Glow's learned conditional prior); normflows has no conditional "
    "split prior: each factored-out latent gets its own unconditional learned per-element DiagGaussian",
    "conditioner output: glowflow's last (zero) 3x3 conv has Glow's learned per-channel gain exp(3 * logs); "
    "normflows' ConvNet2d has a plain zero-initialised conv (net_actnorm=True gives the same 3x3 -> ActNorm -> "
    "ReLU -> 1x1 -> ActNorm -> ReLU -> 3x3 body)",
    "coupling scale: both use s = sigmoid(h + 2) in the normalizing direction; glowflow divides by sigmoid(2) so "
    "that the zero-initialised net is exactly the identity and applies y = (x + t) * s, normflows applies "
    "y = (x - t) * s and reads shift/scale from interleaved (0::2 / 1::2) rather than halved output channels "
    "(same function class, different parameterisation)",
    "1x1 conv: both LU-parameterised (W = P L (U + diag(sign s * exp(log s)))); normflows rebuilds W on every "
    "call and, in the generative direction (sampling), inverts L and U with torch.inverse in float64 on every "
    "call; glowflow caches W, W^-1 and log|det| while autograd is off",
    "ActNorm: both data-initialised on the first batch (normflows through its inverse, the normalizing "
    "direction, on the first log_prob call); normflows' conditioner ActNorms too",
)


def require_normflows() -> None:
    if nf is None:
        raise ImportError("normflows is not installed: pip install -e '.[bench]' (normflows==1.7.3)")


def build_normflows_glow(in_shape: tuple[int, int, int], levels: int, steps: int, hidden: int) -> torch.nn.Module:
    """normflows ``MultiscaleFlow`` with ``levels`` scales of ``steps`` ``GlowBlock`` s (affine coupling with
    Glow's sigmoid scale, LU 1x1 conv, ActNorm, ActNorm inside the conditioner), channel split, and unconditional
    learned ``DiagGaussian`` bases for the factored-out latents and the top one.

    normflows lists levels in the generative order: index 0 is the coarsest (top) level.
    """
    require_normflows()
    c, h, w = in_shape
    q0, flows, merges = [], [], []
    for i in range(levels):  # i = 0: top level (coarsest), i = levels - 1: the finest, first in data -> latent
        depth = levels - i  # number of squeezes applied before this level's steps
        channels = c * 4**depth // 2 ** (depth - 1)  # after `depth` squeezes and `depth - 1` splits
        level_flows = [
            nf.flows.GlowBlock(
                channels,
                hidden,
                scale=True,
                scale_map="sigmoid",
                split_mode="channel",
                leaky=0.0,
                init_zeros=True,
                use_lu=True,
                net_actnorm=True,
            )
            for _ in range(steps)
        ]
        level_flows.append(nf.flows.Squeeze())  # generative order: steps, then un-squeeze to the finer level
        flows.append(level_flows)
        hs, ws = h // 2**depth, w // 2**depth
        if i == 0:
            latent_shape = (channels, hs, ws)
        else:
            merges.append(nf.flows.Merge())
            latent_shape = (channels // 2, hs, ws)  # the half factored out at this level's split
        q0.append(nf.distributions.DiagGaussian(latent_shape, trainable=True))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


def dequantize(k: Tensor, num_bins: int = 256, u: Tensor | None = None) -> Tensor:
    """glowflow's data convention ``x = (k + u) / N - 0.5`` (uniform noise ``u``), float32."""
    k = k.to(torch.float32)
    if u is None:
        u = torch.rand_like(k)
    return (k + u) / num_bins - 0.5


def bits_per_dim_from_log_prob(log_prob: Tensor, num_dims: int, num_bins: int = 256) -> Tensor:
    """``(-log p(x) + D log N) / (D log 2)``: bits/dim of the discrete data under uniform dequantization
    (the same formula as ``glowflow.layers.dequantization``)."""
    return (-log_prob + num_dims * math.log(num_bins)) / (num_dims * math.log(2.0))


def normflows_bits_per_dim(model: torch.nn.Module, k: Tensor, num_bins: int = 256) -> Tensor:
    """Training objective for normflows' Glow, identical to glowflow's ``model(k)``: dequantize, log_prob,
    bits/dim; shape (B,)."""
    x = dequantize(k, num_bins)
    return bits_per_dim_from_log_prob(model.log_prob(x, None), x[0].numel(), num_bins)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
