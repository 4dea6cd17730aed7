"""A training step reads nothing back to the host: the step can run ahead of Python and be captured on a GPU."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from glowflow import Glow
from glowflow.training.optim import make_optimizer
from glowflow.training.step import StepWindow, train_step


class CountHostReads(TorchDispatchMode):
    """Counts ``aten._local_scalar_dense`` (what ``.item()``, ``bool()``, ``float()`` and ``.tolist()`` dispatch to)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            self.reads += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.filterwarnings("ignore:precision='bf16' on a CPU:RuntimeWarning")
def test_training_steps_do_not_read_back_until_the_window_is_read(precision):
    torch.manual_seed(0)
    model = Glow((3, 8, 8), levels=2, steps=2, hidden=16, precision=precision)
    k = torch.randint(0, 256, (4, 3, 8, 8))
    with torch.no_grad():
        model(k)  # ActNorm initialisation
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer("adam", params, 1e-3)
    window = StepWindow()
    with CountHostReads() as counter:
        for step in range(1, 4):
            window.add(step, train_step(model, params, opt, k, None, grad_clip=50.0, step=step))
    assert counter.reads == 0
    records, sums = window.read()  # the logging step: one read of all three steps
    assert [r.ok for r in records] == [True, True, True] and sums["good"] == 3.0
