"""Composition of layers: :class:`FlowSequence`, the container every model is built from."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from glowflow.layers.base import Flow, zero_logdet
from glowflow.layers.memory import MEMORY_MODES, memory_saving_forward


class FlowSequence(Flow):
    """Composition ``f_n o ... o f_1``: forward runs the layers in order and sums their log-dets; inverse
    runs them in reverse order.

    ``memory`` sets how training (forward with autograd on) stores activations, see ``glowflow.layers.memory``:
    ``"standard"`` (all of them), ``"checkpoint"`` (each layer's input; layers re-run in backward) or
    ``"invertible"`` (only the sequence's output; inputs rebuilt with the exact inverse in backward).
    """

    def __init__(self, *layers: Flow, memory: str = "standard") -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.memory = memory

    @property
    def memory(self) -> str:
        return self._memory

    @memory.setter
    def memory(self, value: str) -> None:
        if value not in MEMORY_MODES:
            raise ValueError(f"unknown memory mode {value!r}; expected one of {MEMORY_MODES}")
        self._memory = value

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, index: int) -> Flow:
        return self.layers[index]

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self._memory != "standard" and torch.is_grad_enabled():
            return memory_saving_forward(self._memory, self.layers, x, cond)
        logdet = zero_logdet(x)
        for layer in self.layers:
            x, ld = layer(x, cond)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = zero_logdet(y)
        for layer in reversed(self.layers):
            y, ld = layer.inverse(y, cond)
            logdet = logdet + ld
        return y, logdet
