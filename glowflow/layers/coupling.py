"""Coupling layers (RealNVP / Glow): transform one part of the input conditioned on the other part.

Masks:

* ``"channel"``: split dim 1 into a conditioning part ``x_a`` (``C // 2`` channels) and a transformed part ``x_b``
  (the rest); ``parity=1`` swaps which end of the channel axis plays which role. Works for (B, C, H, W) and (B, D).
* ``"checkerboard"``: spatial mask ``m[i, j] = ((i + j) % 2 == parity)``; positions with ``m == 1`` condition,
  the others are transformed. Images only.

The conditioner sees only the conditioning part (and ``cond``), so the Jacobian is triangular. Its last layer is
zero-initialised, so every coupling starts as the identity map.

With ``precision="bf16"`` the conditioner runs under bf16 autocast while the invertible arithmetic and the
log-det stay in the input's precision. That is safe for training and scoring, but not for reconstruction: decoding
recomputes ``h`` from the *reconstructed* unchanged half, whose float32 round-off can flip a bf16 rounding of the
conditioner's input, and the resulting ~1e-3 change of ``h`` makes ``decode(encode(x))`` miss ``x`` by more than
a grey level. While ``exact`` is set (the models set it for ``encode`` / ``decode`` / interpolation), the conditioner
runs in float32 whatever ``precision`` says, and the two directions are exact inverses again.

Adding a coupling: subclass :class:`Coupling` (set ``params_per_channel``, write ``_transform`` / ``_untransform``)
and register it in :data:`COUPLINGS`; the models, the training configuration and the command line take it by name.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glowflow.layers.base import Flow, zero_logdet
from glowflow.layers.conditioners import CONDITIONERS
from glowflow.registry import Registry

ConditionerFactory = Callable[[int, int], nn.Module]
"""``factory(in_channels, out_channels) -> module`` with ``module(x, cond) -> h``."""

MASKS = ("channel", "checkerboard")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def build_conditioner(
    kind: str | ConditionerFactory,
    in_channels: int,
    out_channels: int,
    hidden: int,
    cond_features: int = 0,
    cond_channels: int = 0,
) -> nn.Module:
    """Make a conditioner by its name in :data:`~glowflow.layers.conditioners.CONDITIONERS` or from a factory."""
    if callable(kind):
        return kind(in_channels, out_channels)
    return CONDITIONERS.get(kind).build(in_channels, out_channels, hidden, cond_features, cond_channels)


@functools.cache
def _warn_if_no_native_bf16() -> None:
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        warnings.warn(
            "precision='bf16' on a CPU without native bf16 instructions (AVX512-BF16 / AMX): oneDNN emulates bf16 "
            "here and the conditioners run several times slower than in fp32; use precision='fp32' on this machine",
            RuntimeWarning,
            stacklevel=4,
        )


class Coupling(Flow):
    """Base of the coupling layers: masking and conditioner plumbing; subclasses define how the conditioner's
    output ``h`` acts on the transformed part (``_transform`` / ``_untransform``) and how many values per
    transformed channel it needs (``params_per_channel``).

    ``precision``: ``"fp32"`` or ``"bf16"`` (the conditioner under bf16 autocast). ``exact``: while True the
    conditioner runs in float32 whatever ``precision`` says (see the module docstring; models set it around
    ``encode`` / ``decode``).
    """

    params_per_channel: int

    def __init__(
        self,
        channels: int,
        hidden: int = 512,
        conditioner: str | ConditionerFactory = "glow",
        mask: str = "channel",
        parity: int = 0,
        cond_features: int = 0,
        cond_channels: int = 0,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        if mask not in MASKS:
            raise ValueError(f"unknown mask {mask!r}; expected one of {MASKS}")
        if mask == "channel" and channels < 2:
            raise ValueError(f"a channel-split coupling needs at least 2 channels, got {channels}")
        if mask == "checkerboard" and isinstance(conditioner, str) and not CONDITIONERS.get(conditioner).image:
            raise ValueError(f"the checkerboard mask needs an image conditioner, not {conditioner!r}")
        if parity not in (0, 1):
            raise ValueError(f"parity must be 0 or 1, got {parity}")
        self.channels = channels
        self.mask = mask
        self.parity = parity
        self.precision = precision
        self.exact = False
        if mask == "channel":
            n_cond = channels // 2
            net_in, net_out = n_cond, (channels - n_cond) * self.params_per_channel
        else:
            net_in, net_out = channels, channels * self.params_per_channel
        self.net = build_conditioner(conditioner, net_in, net_out, hidden, cond_features, cond_channels)

    @property
    def precision(self) -> str:
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in PRECISIONS:
            raise ValueError(f"unknown precision {value!r}; expected one of {tuple(PRECISIONS)}")
        self._precision = value

    def extra_repr(self) -> str:
        return f"{self.channels}, mask={self.mask!r}, parity={self.parity}, precision={self.precision!r}"

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """-> (conditioning input of the net, part to transform)."""
        if self.mask == "channel":
            k = self.channels // 2
            if self.parity == 0:
                return x[:, :k], x[:, k:]
            return x[:, self.channels - k :], x[:, : self.channels - k]
        return x * self._checkerboard(x), x

    def _merge(self, x_cond: Tensor, y_target: Tensor) -> Tensor:
        if self.mask == "channel":
            parts = (x_cond, y_target) if self.parity == 0 else (y_target, x_cond)
            return torch.cat(parts, dim=1)
        return y_target  # checkerboard: parameters are masked, so y_target already holds the unchanged half

    def _checkerboard(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        i = torch.arange(h, device=x.device).view(h, 1)
        j = torch.arange(w, device=x.device).view(1, w)
        return ((i + j) % 2 == self.parity).to(x.dtype)

    def _conditioner(self, x_cond: Tensor, cond: Tensor | None) -> Tensor:
        dtype = PRECISIONS[self._precision]
        if dtype is None or self.exact:
            return self.net(x_cond, cond)
        if x_cond.device.type == "cpu":
            _warn_if_no_native_bf16()
        with torch.autocast(x_cond.device.type, dtype=dtype):
            h = self.net(x_cond, cond)
        return h.to(x_cond.dtype)

    def _coefficients(self, like: Tensor, x_cond: Tensor, cond: Tensor | None) -> list[Tensor]:
        """Conditioner output split into ``params_per_channel`` tensors shaped like the transformed part,
        zeroed where the checkerboard mask leaves the input unchanged (``like`` gives the spatial size)."""
        params = list(self._conditioner(x_cond, cond).chunk(self.params_per_channel, dim=1))
        if self.mask == "checkerboard":
            keep = 1.0 - self._checkerboard(like)
            params = [p * keep for p in params]
        return params

    def _transform(self, x_t: Tensor, coeffs: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Transform the target part: -> (y_t, log|det|)."""
        raise NotImplementedError

    def _untransform(self, y_t: Tensor, coeffs: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Invert :meth:`_transform`: -> (x_t, log|det| of the inverse)."""
        raise NotImplementedError

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x_cond, x_t = self._split(x)
        y_t, logdet = self._transform(x_t, self._coefficients(x, x_cond, cond))
        return self._merge(x_cond, y_t), logdet

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y_cond, y_t = self._split(y)
        x_t, logdet = self._untransform(y_t, self._coefficients(y, y_cond, cond))
        return self._merge(y_cond, x_t), logdet

    def rebuild(self, y: Tensor, cond: Tensor | None = None):
        """For invertible backpropagation: reconstruct the input from the output ``y`` and rebuild the forward
        graph, running the conditioner once (the inverse and the forward share it, since it only sees the part
        the coupling leaves unchanged).

        Returns ``(x, leaves, (y_rebuilt, logdet), input_grad)``: ``x`` the reconstructed input (detached),
        ``leaves`` the tensors that gradients are taken with respect to, and ``input_grad(*leaf_grads)`` maps
        their gradients to the gradient with respect to ``x``.
        """
        y_cond, y_t = self._split(y)
        a = y_cond.detach().requires_grad_()
        coeffs = self._coefficients(y, a, cond)
        with torch.no_grad():
            x_t, _ = self._untransform(y_t, [c.detach() for c in coeffs])
        b = x_t.requires_grad_()
        y_t_rebuilt, logdet = self._transform(b, coeffs)
        x = self._merge(a.detach(), b.detach())
        return x, (a, b), (self._merge(a, y_t_rebuilt), logdet), self._input_grad

    def _input_grad(self, grad_cond: Tensor, grad_t: Tensor) -> Tensor:
        """Adjoint of :meth:`_split`: gradients of (conditioning part, target part) -> gradient of the input."""
        if self.mask == "channel":
            return self._merge(grad_cond, grad_t)
        return grad_cond * self._checkerboard(grad_t) + grad_t


COUPLINGS: Registry[type[Coupling]] = Registry("coupling")


# log sigmoid(2) as torch's own kernel rounds it in each precision, so that a zero h gives log s == 0 exactly
# (-math.log1p(math.exp(-2.0)) is an ulp away from the float32 kernel under ATEN_CPU_CAPABILITY=default).
_LOGSIGMOID_2 = {
    dtype: F.logsigmoid(torch.tensor(2.0, dtype=dtype)).item()
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
}


@COUPLINGS.register("affine", help="y_b = (x_b + t(x_a)) * sigmoid(h(x_a) + 2) / sigmoid(2) (Glow)")
class AffineCoupling(Coupling):
    """Affine coupling (RealNVP / Glow): ``y_b = (x_b + t(x_a)) * s(x_a)``, ``y_a = x_a``.

    The scale is Glow's stable ``sigmoid(h + 2)``, divided by ``sigmoid(2)`` so that the zero-initialised
    conditioner gives exactly the identity: ``log s = logsigmoid(h + 2) - logsigmoid(2)`` (so ``s`` lies in
    (0, 1.135)).  log|det dy/dx| = sum over the transformed part of ``log s``.

    Shapes: (B, C, H, W) or (B, D) for the channel mask; (B, C, H, W) for the checkerboard mask.
    """

    params_per_channel = 2

    @staticmethod
    def _log_scale(raw: Tensor) -> Tensor:
        # Masked positions have raw == 0, hence log s == 0: they pass through unchanged.
        return F.logsigmoid(raw + 2.0) - _LOGSIGMOID_2[raw.dtype]

    def _transform(self, x_t: Tensor, coeffs: list[Tensor]) -> tuple[Tensor, Tensor]:
        shift, raw = coeffs
        log_s = self._log_scale(raw)
        return (x_t + shift) * log_s.exp(), log_s.flatten(1).sum(1)

    def _untransform(self, y_t: Tensor, coeffs: list[Tensor]) -> tuple[Tensor, Tensor]:
        shift, raw = coeffs
        log_s = self._log_scale(raw)
        return y_t * (-log_s).exp() - shift, -log_s.flatten(1).sum(1)


@COUPLINGS.register("additive", help="volume-preserving y_b = x_b + t(x_a) (NICE)")
class AdditiveCoupling(Coupling):
    """Volume-preserving coupling (NICE): ``y_b = x_b + t(x_a)``, ``y_a = x_a``.  log|det| = 0.

    Shapes: (B, C, H, W) or (B, D) for the channel mask; (B, C, H, W) for the checkerboard mask.
    """

    params_per_channel = 1

    def _transform(self, x_t: Tensor, coeffs: list[Tensor]) -> tuple[Tensor, Tensor]:
        return x_t + coeffs[0], zero_logdet(x_t)

    def _untransform(self, y_t: Tensor, coeffs: list[Tensor]) -> tuple[Tensor, Tensor]:
        return y_t - coeffs[0], zero_logdet(y_t)
