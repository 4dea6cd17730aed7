"""Conditioner networks: the (non-invertible) functions inside coupling layers and split priors.

Every conditioner maps ``(x, cond) -> h``. Its last layer is zero-initialised, so ``h == 0`` at construction
and the coupling that uses it starts as the identity. ``cond`` is optional: a feature vector (B, F) enters
through a learned projection added to the first hidden layer; a spatial map (B, C', H, W) is concatenated to
the input channels.

* :class:`GlowConvNet` - Glow's own: 3x3 conv -> ActNorm -> ReLU -> 1x1 conv -> ActNorm -> ReLU -> zero 3x3 conv.
* :class:`GatedResNet` - Flow++ / RealNVP-style gated residual network with concat-ELU and channel layer norm.
* :class:`MLP` - for vectors: Linear -> ReLU -> Linear -> ReLU -> zero Linear.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glowflow.layers.actnorm import ActNorm
from glowflow.layers.fused import conv_same, fold_actnorm, fold_gain, mix_channels
from glowflow.registry import Registry


class ZeroConv2d(nn.Module):
    """Conv2d initialised to output zeros, with a learned per-channel output gain ``g = exp(3 * logs)``
    (the original Glow's ``Conv2dZeros``, which lets the last layer's scale learn quickly).

    Computed as a single convolution with the gain folded in (:func:`~glowflow.layers.fused.fold_gain`):
    ``conv(x, w, b) * g = conv(x, w g, b g)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(out_channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return conv_same(x, *fold_gain(self.conv.weight, self.conv.bias, self.logs))


class ConvActNorm(nn.Module):
    """A bias-free convolution followed by :class:`ActNorm`, computed as one convolution with the normalisation
    folded into the weights (:func:`~glowflow.layers.fused.fold_actnorm`):
    ``(conv(x, w) + shift + b) e^s = conv(x, w e^s, b e^s) + shift e^s``.

    ``shift`` is an optional (B, C_out, 1, 1) per-example offset added before the normalisation (the projected
    conditioning vector). The ActNorm initialises from the first batch's pre-normalisation statistics.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = ActNorm(out_channels)

    def forward(self, x: Tensor, shift: Tensor | None = None) -> Tensor:
        if not self.norm.is_initialized():
            h = self.conv(x)
            self.norm.initialize(h if shift is None else h + shift)
        weight, bias = fold_actnorm(self.conv.weight, self.norm.bias, self.norm.log_scale)
        if self.conv.kernel_size == (1, 1):  # a matrix product over the channel axis: faster than oneDNN's conv
            out = mix_channels(x, weight.flatten(1), bias)
        else:
            out = conv_same(x, weight, bias)
        return out if shift is None else out + shift * self.norm.log_scale.exp().view(1, -1, 1, 1)


class ZeroLinear(nn.Linear):
    """Linear layer initialised to output zeros."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


class _Conditioned(nn.Module):
    """Shared handling of the optional conditioning input of the convolutional conditioners."""

    def __init__(self, cond_features: int, cond_channels: int, hidden: int) -> None:
        super().__init__()
        self.cond_channels = cond_channels
        self.cond_proj = nn.Linear(cond_features, hidden) if cond_features else None

    def _input(self, x: Tensor, cond: Tensor | None) -> Tensor:
        if self.cond_channels:
            if cond is None or cond.dim() != 4:
                raise ValueError(f"this conditioner needs a (B, {self.cond_channels}, H, W) conditioning map")
            return torch.cat([x, cond.to(x.dtype)], dim=1)
        return x

    def _cond_shift(self, cond: Tensor | None, dtype: torch.dtype) -> Tensor | None:
        """The projected conditioning vector as a (B, hidden, 1, 1) offset, or None."""
        if self.cond_proj is None:
            return None
        if cond is None or cond.dim() != 2:
            raise ValueError(f"this conditioner needs a (B, {self.cond_proj.in_features}) conditioning vector")
        return self.cond_proj(cond.to(dtype))[:, :, None, None]


class GlowConvNet(_Conditioned):
    """Glow's coupling network. Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W).

    Activations are computed in channels-last memory layout, which oneDNN convolutions run fastest on; the
    input may have any layout, the output is channels-last.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int,
        cond_features: int = 0,
        cond_channels: int = 0,
    ) -> None:
        super().__init__(cond_features, cond_channels, hidden)
        self.conv1 = ConvActNorm(in_channels + cond_channels, hidden, 3)
        self.conv2 = ConvActNorm(hidden, hidden, 1)
        self.out = ZeroConv2d(hidden, out_channels, 3)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        x = self._input(x, cond).contiguous(memory_format=torch.channels_last)
        inplace = not torch.is_grad_enabled()  # in training, a separate ReLU output makes its backward faster
        h = F.relu(self.conv1(x, self._cond_shift(cond, x.dtype)), inplace=inplace)
        h = F.relu(self.conv2(h), inplace=inplace)
        return self.out(h)


def concat_elu(x: Tensor) -> Tensor:
    """ELU of ``x`` and ``-x`` stacked on the channel axis (doubles the channels, keeps both signs' information)."""
    return F.elu(torch.cat([x, -x], dim=1))


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channel axis at each position of a (B, C, H, W) map."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GatedResidualBlock(nn.Module):
    """``x + a * sigmoid(g)`` with ``(a, g) = conv1x1(concat_elu(conv3x3(concat_elu(x))))``, then layer norm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.gate = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.norm = ChannelLayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        a, g = self.gate(concat_elu(self.conv(concat_elu(x)))).chunk(2, dim=1)
        return self.norm(x + a * torch.sigmoid(g))


class GatedResNet(_Conditioned):
    """Gated residual conditioner (Flow++). Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int,
        blocks: int = 2,
        cond_features: int = 0,
        cond_channels: int = 0,
    ) -> None:
        super().__init__(cond_features, cond_channels, hidden)
        self.conv_in = nn.Conv2d(in_channels + cond_channels, hidden, 3, padding=1)
        self.blocks = nn.Sequential(*[GatedResidualBlock(hidden) for _ in range(blocks)])
        self.out = ZeroConv2d(2 * hidden, out_channels, 3)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        x = self._input(x, cond).contiguous(memory_format=torch.channels_last)
        h = self.conv_in(x)
        shift = self._cond_shift(cond, h.dtype)
        if shift is not None:
            h = h + shift
        return self.out(concat_elu(self.blocks(h)))


class MLP(nn.Module):
    """Vector conditioner. Shapes: (B, in_features) -> (B, out_features); ``cond`` (B, F) is concatenated."""

    def __init__(
        self, in_features: int, out_features: int, hidden: int, layers: int = 2, cond_features: int = 0
    ) -> None:
        super().__init__()
        self.cond_features = cond_features
        dims = [in_features + cond_features] + [hidden] * layers
        body: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            body += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*body)
        self.out = ZeroLinear(dims[-1], out_features)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        if self.cond_features:
            if cond is None or cond.dim() != 2:
                raise ValueError(f"this conditioner needs a (B, {self.cond_features}) conditioning vector")
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        return self.out(self.body(x))


@dataclass(frozen=True)
class ConditionerKind:
    """A registered conditioner: ``build(in_channels, out_channels, hidden, cond_features, cond_channels)`` makes
    one; ``image`` says whether it maps (B, C, H, W) images (else (B, D) vectors)."""

    build: Callable[[int, int, int, int, int], nn.Module]
    image: bool


def _build_mlp(in_features: int, out_features: int, hidden: int, cond_features: int, cond_channels: int) -> MLP:
    if cond_channels:
        raise ValueError("the MLP conditioner takes a conditioning vector, not a map (cond_channels)")
    return MLP(in_features, out_features, hidden, cond_features=cond_features)


def _build_gated(in_channels: int, out_channels: int, hidden: int, cond_features: int, cond_channels: int):
    return GatedResNet(in_channels, out_channels, hidden, cond_features=cond_features, cond_channels=cond_channels)


CONDITIONERS: Registry[ConditionerKind] = Registry("conditioner")
CONDITIONERS.register("glow", ConditionerKind(GlowConvNet, image=True), help="3x3 conv -> 1x1 conv -> zero 3x3 conv")
CONDITIONERS.register("gated", ConditionerKind(_build_gated, image=True), help="Flow++ gated residual network")
CONDITIONERS.register("mlp", ConditionerKind(_build_mlp, image=False), help="MLP for vectors (TabularGlow)")


def conditioner_names(image: bool) -> tuple[str, ...]:
    """The registered conditioners for images (``image=True``) or for vectors."""
    return tuple(name for name, kind in CONDITIONERS.items() if kind.image == image)
