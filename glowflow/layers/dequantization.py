"""Discrete data <-> the continuous input of a flow. This module is the one place where data scaling is defined.

Convention (the original Glow's): a discrete value ``k`` in {0, ..., N - 1}, with ``N = num_bins`` levels per
dimension (``N = 2^n`` for n-bit images; 17 for scikit-learn's 8x8 digits), becomes

    x = (k + u) / N - 0.5,   u in [0, 1)^D  (dequantization noise),

so ``x`` lies in [-0.5, 0.5) and each discrete value owns a cube of side 1/N. For any noise distribution
q(u | k), Jensen's inequality gives the variational bound

    log P(k) >= E_q[ log p(x) - D log N - log q(u | k) ],

and a dequantizer's ``forward`` returns ``(x, logdet)`` with ``logdet = -D log N - log q(u | k)``, so that
``log p(x) + logdet`` is a one-sample estimate of that bound. For uniform noise ``log q = 0`` and the bits per
dimension of discrete data are

    bpd = (-log p(x) + D log N) / (D log 2)        (= (-log p(x) + D n log 2) / (D log 2) for n-bit data).

8-bit data modelled at ``n < 8`` bits is first reduced (``k >> (8 - n)``, :mod:`glowflow.preprocessing`), as in Glow's
5-bit CelebA-HQ experiments.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glowflow.checks import POSITIVE
from glowflow.layers.actnorm import ActNorm
from glowflow.layers.base import Flow
from glowflow.layers.coupling import AffineCoupling
from glowflow.layers.priors import standard_normal_log_prob
from glowflow.layers.sequence import FlowSequence
from glowflow.preprocessing import reduce_bits  # noqa: F401  (re-exported: its home before 0.2)
from glowflow.registry import Registry


def _check_num_bins(num_bins: int) -> None:
    whole = not isinstance(num_bins, bool) and isinstance(num_bins, numbers.Real) and float(num_bins).is_integer()
    if not (whole and 2 <= num_bins <= 2**16):
        raise ValueError(f"num_bins must be an integer between 2 and 65536, got {num_bins!r}")


def check_discrete(k: Tensor, num_bins: int, validate: bool = True) -> Tensor:
    """Validate discrete data with values in {0, ..., num_bins - 1}; return it as a float tensor (float32 for
    integer input). Raises ``ValueError`` for non-integer values, NaN/inf, or values out of range.

    ``validate=False`` (and tracing by ``torch.compile`` / ``torch.export``) checks only the type, not the values:
    reading values back to the host would split a compiled graph or stall a GPU; data readers check at load."""
    _check_num_bins(num_bins)
    if not isinstance(k, Tensor):
        raise ValueError(f"expected a torch.Tensor of pixel values, got {type(k).__name__}")
    if k.dtype == torch.bool or k.is_complex():
        raise ValueError(f"expected integer pixel values, got a {k.dtype} tensor")
    if k.numel() == 0:
        raise ValueError("empty input")
    if not validate or torch.compiler.is_compiling():
        return k if k.is_floating_point() else k.to(torch.float32)
    lo, hi = value_range(k)
    if k.is_floating_point():
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("discrete input contains NaN or inf")
        if not torch.equal(k, torch.floor(k)):
            raise ValueError(
                f"discrete input must hold integer values 0..{num_bins - 1}; got fractional values "
                "(to score continuous data use log_prob)"
            )
    if lo < 0 or hi > num_bins - 1:
        raise ValueError(
            f"pixel values must lie in [0, {num_bins - 1}] for data with {num_bins} levels; got min {lo:g}, max {hi:g}"
        )
    return k if k.is_floating_point() else k.to(torch.float32)


def value_range(x: Tensor) -> tuple[float, float]:
    """``(min, max)`` of ``x`` read back to the host in one pass and one read: NaN in ``x`` makes both NaN (``aminmax``
    propagates it), an infinity shows as itself, so the range also tells whether ``x`` is finite."""
    return tuple(torch.stack(torch.aminmax(x)).tolist())


def _bin_start(k: Tensor, num_bins: int) -> Tensor:
    return k / num_bins - 0.5


def to_continuous(k: Tensor, u: Tensor | float, num_bins: int) -> Tensor:
    """``x = (k + u) / N - 0.5`` for ``u`` in [0, 1], kept strictly inside the bin of ``k``.

    Rounding can carry ``k + u`` with ``u`` just below 1 onto the next bin's start; such values are moved to
    the largest float below it, so that :func:`quantize` recovers ``k`` exactly.
    """
    _check_num_bins(num_bins)
    x = (k + u) / num_bins - 0.5
    return torch.minimum(x, _bin_top(k, num_bins))


def _bin_top(k: Tensor, num_bins: int) -> Tensor:
    """The largest float in the bin of (integer-valued) ``k``: the one just below the next bin's start."""
    if torch.compiler.is_exporting():
        # ONNX has no nextafter, nor a bit cast to build one from: gather from the N bin tops instead, computed
        # here by numpy with the same float arithmetic as below, so that the exported graph holds them as a constant.
        np_dtype = np.dtype(str(k.dtype).removeprefix("torch."))
        starts = (np.arange(num_bins, dtype=np_dtype) + 1.0) / num_bins - 0.5
        tops = torch.from_numpy(np.nextafter(starts, np_dtype.type(-1.0))).to(k.device)
        return tops[k.long().clamp(0, num_bins - 1)]
    upper = _bin_start(k + 1.0, num_bins)
    return torch.nextafter(upper, torch.full_like(upper, -1.0))


def quantize(x: Tensor, num_bins: int) -> Tensor:
    """The bin index of ``x``, ``floor((x + 0.5) N)``, clamped to {0, ..., N - 1} (long tensor).

    Bin starts are compared in ``x``'s own precision with the same arithmetic as :func:`to_continuous`, so
    ``quantize(to_continuous(k, u, N), N) == k`` exactly for every ``u`` in [0, 1].
    """
    _check_num_bins(num_bins)
    k = torch.floor((x.double() + 0.5) * num_bins).to(x.dtype)
    k = k - (_bin_start(k, num_bins) > x).to(x.dtype)
    k = k + (_bin_start(k + 1.0, num_bins) <= x).to(x.dtype)
    return k.clamp(0, num_bins - 1).to(torch.long)


def to_uint8(x: Tensor, num_bins: int = 256) -> Tensor:
    """Continuous model output -> displayable 8-bit grey levels: bin ``k`` -> ``round(255 k / (N - 1))``.

    Non-finite values (a decode at a high temperature early in training can overflow) show as black (NaN, -inf)
    or white (+inf)."""
    x = torch.nan_to_num(x.float(), nan=-0.5, posinf=0.5, neginf=-0.5)
    return levels_to_uint8(quantize(x, num_bins), num_bins)


def levels_to_uint8(k: Tensor, num_bins: int) -> Tensor:
    """Discrete levels ``0..N-1`` -> displayable grey levels ``round(255 k / (N - 1))`` (uint8)."""
    _check_num_bins(num_bins)
    return torch.round(k.float() * (255.0 / (num_bins - 1))).clamp(0, 255).to(torch.uint8)


def uint8_to_levels(images: Tensor, num_bins: int) -> Tensor:
    """Inverse of :func:`levels_to_uint8`: displayable grey levels back to levels ``0..N-1`` (uint8, or int32 for
    ``N > 256``)."""
    _check_num_bins(num_bins)
    k = torch.round(images.float() * ((num_bins - 1) / 255.0)).long()
    return k.to(torch.uint8) if num_bins <= 256 else k.to(torch.int32)


def bits_per_dim(log_prob: Tensor, num_dims: int) -> Tensor:
    """Convert a log-probability (nats) of discrete data with ``num_dims`` dimensions to bits per dimension."""
    POSITIVE.check("num_dims", num_dims)
    return -log_prob / (num_dims * math.log(2.0))


def _as_float(k: Tensor) -> Tensor:
    return k if k.is_floating_point() else k.to(torch.float32)


class Dequantization(Flow):
    """Base of the dequantizers: discrete ``k`` (B, ...) -> continuous ``x`` in [-0.5, 0.5), with
    ``logdet = -D log N - log q(u | k)`` (see the module docstring); ``inverse`` quantises."""

    def __init__(self, num_bins: int) -> None:
        super().__init__()
        _check_num_bins(num_bins)
        self.num_bins = int(num_bins)

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}"

    def _scale_logdet(self, x: Tensor) -> Tensor:
        """``-D log N``: the log-det of the scaling ``(k + u) -> x``."""
        return torch.full((x.shape[0],), -x[0].numel() * math.log(self.num_bins), device=x.device)

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Quantisation: ``k = floor((x + 0.5) N)`` (long), with the log-det ``+D log N`` of the scaling."""
        return quantize(x, self.num_bins), -self._scale_logdet(x)


DEQUANTIZERS: Registry[Callable[[int, int], Dequantization]] = Registry("dequantization")
"""``factory(channels, num_bins) -> Dequantization`` by name."""


class UniformDequantization(Dequantization):
    """``x = (k + u) / N - 0.5`` with ``u ~ U[0, 1)^D`` (``N = num_bins``, e.g. 256 for 8-bit images).

    forward: (B, ...) integer-valued -> (B, ...) continuous, ``logdet = -D log N`` (the scaling; log q = 0).
    inverse: quantisation. Not a bijection: the inverse recovers ``k`` exactly, not the noise.
    """

    def forward(self, k: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        k = _as_float(k)
        return self.dequantize(k, torch.rand_like(k))

    def dequantize(self, k: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """``forward`` with a given noise draw ``u`` in [0, 1), shaped like ``k``: ``(x, logdet)``."""
        k = _as_float(k)
        return to_continuous(k, u, self.num_bins), self._scale_logdet(k)


class VariationalDequantization(Dequantization):
    """Flow++'s variational dequantization: learned noise ``u ~ q(u | k)`` instead of uniform noise.

    ``u = sigmoid(g(eps; k))`` with ``eps ~ N(0, I)`` and ``g`` a conditional flow (ActNorm + affine checkerboard
    couplings whose conditioners also see features of ``k``), so
    ``log q(u | k) = log N(eps) - log|det dg/deps| - sum log sigmoid'(g)``.

    forward: (B, C, H, W) integer-valued -> continuous ``x = (k + u) / N - 0.5``,
             ``logdet = -D log N - log q(u | k)`` (see the module docstring: the variational bound).
    inverse: quantisation, as for :class:`UniformDequantization`.
    """

    def __init__(self, channels: int, num_bins: int = 256, hidden: int = 32, steps: int = 4) -> None:
        super().__init__(num_bins)
        self.features = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
        )
        layers: list[Flow] = []
        for i in range(steps):
            layers.append(ActNorm(channels))
            layers.append(
                AffineCoupling(
                    channels, hidden, conditioner="glow", mask="checkerboard", parity=i % 2, cond_channels=hidden
                )
            )
        self.flow = FlowSequence(*layers)

    def noise(self, k: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """Deterministic part of the sampler: ``eps -> u``. Returns ``(u, log|det du/deps|)``."""
        features = self.features(to_continuous(k, 0.5, self.num_bins))
        v, logdet = self.flow(eps, features)
        logdet = logdet + (F.logsigmoid(v) + F.logsigmoid(-v)).flatten(1).sum(1)
        return torch.sigmoid(v), logdet

    def forward(self, k: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        k = _as_float(k)
        return self.dequantize(k, torch.randn_like(k))

    def dequantize(self, k: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """``forward`` with a given noise draw ``eps ~ N(0, I)``, shaped like ``k``: ``(x, logdet)``."""
        k = _as_float(k)
        u, logdet_noise = self.noise(k, eps)
        log_q = standard_normal_log_prob(eps) - logdet_noise
        return to_continuous(k, u, self.num_bins), self._scale_logdet(k) - log_q


@DEQUANTIZERS.register("uniform", help="uniform noise u ~ U[0, 1)^D")
def _uniform(channels: int, num_bins: int) -> Dequantization:
    return UniformDequantization(num_bins)


DEQUANTIZERS.register("variational", VariationalDequantization, help="learned noise q(u | k) (Flow++)")
