"""``compile=True`` wraps the model's forward in torch.compile and trains to the same result as eager mode.

On CPU, the default inductor backend takes minutes to compile even the tiniest Glow (measured on the 2-core CI
machine: 72 s for the first forward and 22 s for the first backward of a K=1, width-8 model), so the suite
compiles through TorchDynamo + AOTAutograd with the ``aot_eager`` backend (the same graph capture and autograd
transformation, eager kernels: ~10 s). The inductor variant runs when CUDA is available or
``GLOWFLOW_TEST_INDUCTOR=1`` is set.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from glowflow.training import train
from tests.training.train_helpers import max_diff, params, tiny

INDUCTOR = torch.cuda.is_available() or os.environ.get("GLOWFLOW_TEST_INDUCTOR") == "1"


def _compare(tmp_path: Path, **kwargs) -> None:
    settings = tiny(iters=3, eval_every=0, log_every=1, **kwargs)
    eager = train(out=str(tmp_path / "eager"), **settings)
    compiled = train(out=str(tmp_path / "compiled"), compile=True, **settings)
    assert compiled.config.compile
    # same seed: same batches and noise, so the same losses and parameters up to the round-off of the compiled
    # graph's kernels, amplified by 3 Adam steps (measured with aot_eager on CPU: 0; inductor fuses and reorders)
    assert compiled.metrics["test_bpd"] == pytest.approx(eager.metrics["test_bpd"], abs=1e-4)
    assert max_diff(params(eager.model), params(compiled.model)) < 1e-4


def test_compile_matches_eager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls = []
    real = torch.compile

    def compile_aot_eager(model, **kwargs):
        calls.append(type(model).__name__)
        return real(model, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_aot_eager)
    _compare(tmp_path)
    assert calls == ["Glow"]


@pytest.mark.skipif(not INDUCTOR, reason="inductor compiles for minutes on CPU (see the module docstring)")
def test_compile_inductor_matches_eager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)  # the same random numbers as eager
    _compare(tmp_path, device="cuda" if torch.cuda.is_available() else "cpu")
