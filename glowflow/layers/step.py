"""The step of flow: ActNorm -> invertible channel mixing -> coupling (Glow, Figure 2a)."""

from __future__ import annotations

from torch import Tensor

from glowflow.layers.actnorm import ActNorm
from glowflow.layers.base import Flow
from glowflow.layers.conv1x1 import InvertibleConv1x1, InvertibleLinear, mix_channels
from glowflow.layers.sequence import FlowSequence


class FlowStep(FlowSequence):
    """``FlowSequence(actnorm, mixer, coupling)``, the repeating unit of Glow. Shapes: (B, C, H, W) or (B, C).

    When the mixer is an :class:`InvertibleConv1x1` / :class:`InvertibleLinear` ``W`` and the ActNorm
    ``(x + b) e^s`` is initialised, the two are evaluated as one affine map of the channel vector, saving the
    ActNorm's passes over the data:

        forward:  ``W (e^s * (x + b)) = (W diag(e^s)) x + W (e^s * b)``,   log|det| = S (sum(s) + log|det W|)
        inverse:  ``diag(e^-s) W^-1 y - b``

    (S = positions per channel.) The layers themselves are unchanged: the memory-saving modes, which walk the
    layers one by one, and every other mixer use the plain composition.
    """

    def __init__(self, actnorm: ActNorm, mixer: Flow, coupling: Flow) -> None:
        super().__init__(actnorm, mixer, coupling)
        self._fusable = isinstance(mixer, (InvertibleConv1x1, InvertibleLinear))

    def _fused(self) -> bool:
        return self._fusable and self.layers[0].is_initialized()

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not self._fused():
            return super().forward(x, cond)
        actnorm, mixer, coupling = self.layers
        scale = actnorm.log_scale.exp()
        w = mixer.matrix.weight()
        h = mix_channels(x, w * scale, w @ (actnorm.bias * scale))
        positions = x[0, 0].numel()
        logdet = positions * (actnorm.log_scale.sum() + mixer.matrix.log_abs_det())
        y, logdet_coupling = coupling(h, cond)
        return y, logdet_coupling + logdet

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not self._fused():
            return super().inverse(y, cond)
        actnorm, mixer, coupling = self.layers
        h, logdet_coupling = coupling.inverse(y, cond)
        w_inv = mixer.matrix.inverse_weight()
        x = mix_channels(h, (-actnorm.log_scale).exp().unsqueeze(1) * w_inv, -actnorm.bias)
        positions = h[0, 0].numel()
        logdet = positions * (actnorm.log_scale.sum() + mixer.matrix.log_abs_det())
        return x, logdet_coupling - logdet
