"""The fault guard: numerical faults skip a step; repeated faults roll back with a lower learning rate.

A step is faulty when its loss or its gradient norm is not finite, or when the forward pass raised
:class:`~glowflow.SingularWeightError` (a dense 1x1 convolution became singular). A faulty step changes nothing
(no optimiser update) and is counted. The loop learns of faults at its logging steps (it reads the steps back
there, not in every step); ``max_faults`` faults in a row ask for a rollback, which it then carries out: it restores
the model and optimiser from the last good checkpoint and multiplies the learning rate by ``lr_factor``. More than
``max_rollbacks`` rollbacks stop the run with :class:`TrainingError`.
"""

from __future__ import annotations

from typing import Any

from glowflow.errors import GlowflowError
from glowflow.wording import plural


class TrainingError(GlowflowError, RuntimeError):
    """Training cannot go on (repeated numerical faults survived every rollback)."""


class FaultGuard:
    def __init__(self, max_faults: int = 5, max_rollbacks: int = 3, lr_factor: float = 0.5) -> None:
        self.max_faults = max_faults
        self.max_rollbacks = max_rollbacks
        self.lr_factor = lr_factor
        self.consecutive = 0  # faulty steps in a row, now
        self.skipped = 0  # faulty steps in total
        self.rollbacks = 0
        self.lr_scale = 1.0  # product of the rollback factors applied so far
        self.rollback_due = False  # max_faults faults in a row since the last rollback

    def fault(self) -> bool:
        """Record a faulty step; True when a rollback is due."""
        self.consecutive += 1
        self.skipped += 1
        self.rollback_due = self.rollback_due or self.consecutive >= self.max_faults
        return self.consecutive >= self.max_faults

    def ok(self) -> None:
        """Record a good step."""
        self.consecutive = 0

    def rollback(self) -> None:
        """Count a rollback and lower the learning rate; TrainingError past ``max_rollbacks``."""
        if self.rollbacks >= self.max_rollbacks:
            raise TrainingError(
                f"{plural(self.max_faults, 'non-finite step')} in a row again after "
                f"{plural(self.rollbacks, 'rollback')} "
                f"(learning rate already x{self.lr_scale:g}); giving up"
            )
        self.rollbacks += 1
        self.lr_scale *= self.lr_factor
        self.consecutive = 0
        self.rollback_due = False

    def state_dict(self) -> dict[str, Any]:
        return {
            "consecutive": self.consecutive,
            "skipped": self.skipped,
            "rollbacks": self.rollbacks,
            "lr_scale": self.lr_scale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consecutive = int(state["consecutive"])
        self.skipped = int(state["skipped"])
        self.rollbacks = int(state["rollbacks"])
        self.lr_scale = float(state["lr_scale"])
