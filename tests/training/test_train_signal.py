"""SIGTERM / Ctrl-C: the training finishes its step, saves a checkpoint and exits cleanly; --resume goes on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from glowflow.training import read_metrics, train
from tests.training.train_helpers import TINY, TINY_FLAGS, python, subprocess_env

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _train(out: Path, *extra: str) -> list[str]:
    # the moons toy data: no scikit-learn import, so the child process starts faster
    return [python(), "-m", "glowflow", "train", "--data", "moons", "--out", str(out), *TINY_FLAGS, *extra]


def _wait_for_step(out: Path, proc: subprocess.Popen, step: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.communicate()}")
        if any(r["step"] >= step for r in read_metrics(out / "metrics.jsonl")):
            return
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("training did not reach the step in time")


def test_sigterm_saves_and_resume_continues(tmp_path: Path):
    sig = signal.SIGTERM
    out = tmp_path / "run"
    # a long run that the signal cuts short; checkpoints only at the end or on the signal
    cmd = _train(out, "--iters", "100000", "--checkpoint-every", "0", "--eval-every", "0")
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_step(out, proc, 2)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    name = sig.name
    assert f"{name} received: finishing this step and saving a checkpoint" in stdout
    assert f"stopped by {name} at step" in stdout and "--resume" in stdout
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    stopped = ckpt["step"]
    assert stopped >= 2
    records = read_metrics(out / "metrics.jsonl")
    assert records[-1]["step"] == stopped  # the last step is logged, then saved
    resumed = subprocess.run(_train(out, "--resume", "--iters", str(stopped + 4)), env=subprocess_env(),
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {out} at step {stopped}" in resumed.stdout
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == stopped + 4
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == stopped + 4


def test_ctrl_c_in_process(tmp_path: Path):
    """Ctrl-C (SIGINT) arriving during step 3: that step completes, the run saves and returns; a second Ctrl-C
    aborts at once."""

    def hook(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    before = signal.getsignal(signal.SIGINT)
    result = train(out=str(tmp_path / "r"), iters=50, loss_hook=hook, **TINY)
    assert result.stopped_by == "SIGINT" and result.step == 3
    assert torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)["step"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are restored

    def twice(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    with pytest.raises(KeyboardInterrupt):
        train(out=str(tmp_path / "r2"), iters=50, loss_hook=twice, **TINY)
