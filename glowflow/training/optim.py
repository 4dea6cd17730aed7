"""The optimiser and the learning-rate rule of a training run (also used by the Lightning module).

The learning rate of optimiser step ``t`` (1-based) is ``lr * warmup_factor(t - 1, warmup) * lr_scale``: a linear
warm-up over the first ``warmup`` steps, times the product of the fault guard's rollback factors.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def make_optimizer(name: str, params: Iterable[Tensor], lr: float) -> torch.optim.Optimizer:
    """``"adam"``: Adam with the fused implementation (one kernel for all parameters, a fifth of the default
    per-parameter loop's time on CPU; it also skips a step on device when told the gradients are not finite, see
    :func:`skip_if_not_finite`); ``"adamax"``: Adamax with the multi-tensor implementation."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, fused=True)
    if name == "adamax":
        return torch.optim.Adamax(params, lr=lr, foreach=True)
    raise ValueError(f"unknown optimizer {name!r}; expected adam or adamax")


def warmup_factor(epoch: int, warmup: int) -> float:
    """Linear warm-up: the learning rate of step ``epoch + 1`` is ``lr * min(1, (epoch + 1) / warmup)``."""
    return 1.0 if warmup <= 0 else min(1.0, (epoch + 1) / warmup)


class LearningRate:
    """The run's learning-rate rule over an optimiser: ``lr * warmup_factor(epoch, warmup) * scale``.

    ``step()`` advances to the next optimiser step; ``scale`` (the fault guard's rollback factor) can change at any
    time and takes effect at once. ``state_dict`` is that of the ``LambdaLR`` scheduler it drives."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: int, scale: float = 1.0) -> None:
        self.warmup = warmup
        self.scale = scale
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: self.factor(epoch))

    def factor(self, epoch: int) -> float:
        return warmup_factor(epoch, self.warmup) * self.scale

    def step(self) -> None:
        self.scheduler.step()

    def rescale(self, scale: float) -> None:
        """Set ``scale`` and apply it to the current step's learning rate."""
        self.scale = scale
        epoch = self.scheduler.last_epoch
        for group, base in zip(self.scheduler.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
            group["lr"] = base * self.factor(epoch)

    @property
    def current(self) -> float:
        return self.scheduler.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def skip_if_not_finite(optimizer: torch.optim.Optimizer, ok: Tensor) -> bool:
    """Make the next ``optimizer.step()`` a no-op unless ``ok`` (a 0-dim bool tensor) is True.

    Fused Adam reads a ``found_inf`` tensor and skips its update on the device (no host synchronisation); for
    other optimisers the flag is read back and the caller must not step when this returns False."""
    defaults = optimizer.defaults
    if defaults.get("fused"):
        optimizer.found_inf = (~ok).to(torch.float32)
        return True
    return bool(ok)
