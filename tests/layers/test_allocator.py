"""glibc's dynamic allocation thresholds raised once for the passes with autograd off (glowflow.layers.allocator)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import glowflow.layers.allocator as allocator
import glowflow.layers.step as step_module
from tests.layers.test_fast_paths import make_steps


def test_the_block_is_allocated_once_per_process_and_only_on_glibc(monkeypatch):
    blocks = []
    monkeypatch.setattr(allocator.torch, "empty", lambda n, dtype: blocks.append((n, dtype)))
    monkeypatch.setattr(allocator, "uses_glibc", lambda: True)
    monkeypatch.setattr(allocator, "_raised", False)
    allocator.raise_glibc_thresholds()
    allocator.raise_glibc_thresholds()
    assert blocks == [(allocator.THRESHOLD_BLOCK_BYTES, torch.uint8)]
    assert allocator.THRESHOLD_BLOCK_BYTES < 32 * 2**20  # under glibc's largest dynamic mmap threshold
    monkeypatch.setattr(allocator, "uses_glibc", lambda: False)
    monkeypatch.setattr(allocator, "_raised", False)
    allocator.raise_glibc_thresholds()
    assert len(blocks) == 1 and allocator._raised


def test_passes_with_autograd_off_on_the_cpu_raise_the_thresholds_and_training_does_not(monkeypatch):
    calls = []
    monkeypatch.setattr(step_module, "raise_glibc_thresholds", lambda: calls.append(1))
    level = make_steps(2, "affine", torch.float32, channels=8, hidden=16)[0]
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    level(x)  # autograd on: a training step
    assert not calls
    with torch.no_grad():
        level(x)
        level.inverse(x)
    assert len(calls) == 2


SCRIPT = textwrap.dedent(
    """
    import resource, torch
    from glowflow import Glow
    torch.manual_seed(0)
    model = Glow((1, 32, 32), levels=2, steps=4, hidden=256)
    with torch.no_grad():
        model(torch.randint(0, 256, (16, 1, 32, 32)))  # ActNorm initialisation
        x = torch.rand(16, 1, 32, 32) - 0.5
        for _ in range(3):
            model.log_prob(x)
        faults = []
        for _ in range(5):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            model.log_prob(x)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(sorted(faults)[2])
    """
)


@pytest.mark.skipif(not allocator.uses_glibc(), reason="glibc's allocator only")
def test_an_evaluation_under_glibc_s_default_settings_faults_no_pages_in_after_the_first_passes():
    """A fresh process under glibc's default settings (no GLIBC_TUNABLES / MALLOC_ variables), evaluating batches of
    16 with 4 MiB hidden activations, whose buffers glibc's default thresholds would map and fault in afresh at every
    pass (about 32,000 minor faults a call for config M's 16 steps): no page is faulted in after the first passes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLIBC_TUNABLES", "MALLOC_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) < 100
