"""torch.compile captures Glow's fused paths whole: a training forward (with the hand-derived backward of every
fused step of flow), an evaluation and sampling each trace as one graph without graph breaks, which is what
CUDA graphs and a compiled step need. ``torch._dynamo.explain`` traces without compiling (a few seconds)."""

from __future__ import annotations

import pytest
import torch

from glowflow import Glow


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("hidden", [8, 16])  # 2-channel halves: im2col / col2im convolutions; 12: oneDNN's direct ones
def test_training_evaluation_and_sampling_trace_without_graph_breaks(precision, hidden):
    torch.manual_seed(0)
    shape = (1, 8, 8) if hidden == 8 else (3, 8, 8)
    model = Glow(shape, levels=2, steps=2, hidden=hidden, precision=precision)
    k = torch.randint(0, 256, (4, *shape))
    with torch.no_grad():
        model(k)  # ActNorm initialisation: from here on every step of flow is fused
    assert all(step.fused_step() for step in model.modules() if hasattr(step, "fused_step"))

    def evaluate(x):
        with torch.no_grad():
            return model.log_prob(x)

    def sample(n):
        with torch.no_grad():
            return model.sample(n, temperature=0.7)

    for fn, arg in ((model, k), (evaluate, torch.rand(4, *shape) - 0.5), (sample, 4)):
        explained = torch._dynamo.explain(fn)(arg)
        reasons = [str(b.reason).splitlines()[0] for b in explained.break_reasons]
        assert explained.graph_break_count == 0 and explained.graph_count == 1, reasons
