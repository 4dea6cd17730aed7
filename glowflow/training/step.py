"""One optimiser step, and the running record of the steps since the last metrics line.

A step never reads a tensor back to the host: the loss, the gradient norm and whether both are finite stay on the
device (:class:`StepResult`), a non-finite step is skipped by the optimiser itself (fused Adam's ``found_inf``), and
:class:`StepWindow` accumulates them until the loop reads them at a logging step. That is what lets a GPU run ahead
of the Python loop, and CUDA graphs / ``torch.compile`` capture the step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from glowflow.errors import SingularWeightError
from glowflow.training.optim import skip_if_not_finite

LossHook = Callable[[int, Tensor], Tensor]


@dataclass
class StepResult:
    """What one step leaves on the device (0-dim tensors), or the reason it could not run (``fault``)."""

    loss: Tensor | None = None  # the batch mean of the objective
    grad_norm: Tensor | None = None  # before clipping
    loss_finite: Tensor | None = None
    grad_finite: Tensor | None = None
    fault: str | None = None  # a fault found on the host (a singular 1x1 convolution)


def train_step(
    net: nn.Module,
    params: Sequence[Tensor],
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor | None,
    grad_clip: float | None,
    loss_hook: LossHook | None = None,
    step: int = 0,
) -> StepResult:
    """Forward (the per-example objective, inputs already validated), backward, clip, update; a non-finite loss or
    gradient makes the update a no-op. ``loss_hook(step, per_example)`` may transform the objective (tests)."""
    try:
        per_example = net(x, y, validate=False)
        if loss_hook is not None:
            per_example = loss_hook(step, per_example)
        loss = per_example.mean()
    except SingularWeightError as e:
        return StepResult(fault=f"singular 1x1 convolution ({e})")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in params if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm(grads)
    loss_finite, grad_finite = torch.isfinite(loss.detach()), torch.isfinite(grad_norm)
    if grad_clip is not None:
        torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], grad_clip, grad_norm)
    if skip_if_not_finite(optimizer, loss_finite & grad_finite):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss.detach(), grad_norm.detach(), loss_finite, grad_finite)


@dataclass
class StepRecord:
    """What the loop learns about one step when it reads the window back."""

    step: int
    ok: bool
    reason: str | None  # why it was skipped


@dataclass
class StepWindow:
    """The steps since the last metrics line, kept on the device until :meth:`read`."""

    results: list[tuple[int, StepResult]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def add(self, step: int, result: StepResult) -> None:
        self.results.append((step, result))

    def read(self) -> tuple[list[StepRecord], dict[str, float]]:
        """Read the window back (one host synchronisation): per-step records, and the sums of the good steps'
        loss and gradient norm ``{"loss_sum", "grad_sum", "good"}`` on this process."""
        ran = [(s, r) for s, r in self.results if r.fault is None]
        flags = loss_sum = grad_sum = None
        if ran:
            lf = torch.stack([r.loss_finite for _, r in ran])
            gf = torch.stack([r.grad_finite for _, r in ran])
            ok = lf & gf
            zero = torch.zeros((), dtype=torch.float64, device=lf.device)
            loss_sum = torch.where(ok, torch.stack([r.loss for _, r in ran]).double(), zero).sum()
            grad_sum = torch.where(ok, torch.stack([r.grad_norm for _, r in ran]).double(), zero).sum()
            flags = torch.stack([lf, gf]).cpu().tolist()  # the one read-back
            loss_sum, grad_sum = float(loss_sum), float(grad_sum)
        records, good, i = [], 0, 0
        for s, r in self.results:
            if r.fault is not None:
                records.append(StepRecord(s, False, r.fault))
                continue
            loss_ok, grad_ok = flags[0][i], flags[1][i]
            i += 1
            reason = None if loss_ok and grad_ok else ("non-finite loss" if not loss_ok else "non-finite gradient")
            records.append(StepRecord(s, reason is None, reason))
            good += reason is None
        sums = {"loss_sum": loss_sum or 0.0, "grad_sum": grad_sum or 0.0, "good": float(good)}
        return records, sums

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def reset(self) -> None:
        self.results = []
        self.started = time.perf_counter()
