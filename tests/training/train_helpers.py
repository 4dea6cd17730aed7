"""Tiny training settings shared by the training and CLI tests (a few seconds per run on one core)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch

# Glow L=2 K=1 width 8 on the 8x8 digits: every piece of the loop runs, nothing takes long.
TINY = dict(
    steps=1,
    hidden=8,
    levels=2,
    batch_size=16,
    init_batch_size=64,
    warmup=2,
    eval_samples=1,
    eval_every=4,
    sample_every=0,
    sample_n=4,
    temperatures=[0.7],
    checkpoint_every=4,
    log_every=2,
    progress=False,
)
TINY_TOY = {k: v for k, v in TINY.items() if k != "levels"} | dict(data="moons", sample_n=200, temperatures=[1.0])


def tiny(**changes) -> dict:
    """TINY with some settings changed."""
    return {**TINY, **changes}


TINY_FLAGS = [
    "--steps", "1", "--hidden", "8", "--levels", "2", "--batch-size", "16", "--init-batch-size", "64",
    "--warmup", "2", "--eval-samples", "1", "--eval-every", "4", "--sample-every", "0", "--sample-n", "4",
    "--temperatures", "0.7", "--checkpoint-every", "4", "--log-every", "2", "--no-progress",
]  # fmt: skip

REPO = Path(__file__).resolve().parents[2]


def subprocess_env() -> dict[str, str]:
    """Environment for a child python: one thread (the suite shares 2 cores), the repository importable."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def python() -> str:
    return sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)
