"""Volume-preserving reshapes of the multi-scale architecture."""

from __future__ import annotations

from torch import Tensor

from glowflow.layers.base import Flow, zero_logdet


class Squeeze(Flow):
    """2x2 space-to-depth: (B, C, H, W) -> (B, 4C, H/2, W/2); log|det| = 0.

    Output channel ``4c + 2di + dj`` holds input pixel ``(2i + di, 2j + dj)`` of channel ``c``.
    H and W must be even (the models check this at their boundary).
    """

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        if _channels_last(x):  # same layout, permuted in (B, H, W, C) memory order
            y = x.permute(0, 2, 3, 1).reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 5, 2, 4)
            y = y.reshape(b, h // 2, w // 2, 4 * c).permute(0, 3, 1, 2)
        else:
            y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return y, zero_logdet(x)

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = y.shape
        if _channels_last(y):
            x = y.permute(0, 2, 3, 1).reshape(b, h, w, c // 4, 2, 2).permute(0, 1, 4, 2, 5, 3)
            x = x.reshape(b, 2 * h, 2 * w, c // 4).permute(0, 3, 1, 2)
        else:
            x = y.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)
        return x, zero_logdet(y)


def _channels_last(x: Tensor) -> bool:
    return x.stride(1) == 1 and x.shape[1] > 1
