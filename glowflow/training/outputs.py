"""What a training run writes and prints (rank 0 only): the run directory, ``config.json``, ``metrics.jsonl``, the
progress report, sample pictures, the training curve and the checkpoints."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from glowflow import viz
from glowflow.errors import NonFiniteError, SingularWeightError
from glowflow.io import atomic_write_text
from glowflow.models import FlowModel
from glowflow.progress import Progress
from glowflow.training.checkpoint import save_checkpoint
from glowflow.training.config import TrainConfig
from glowflow.training.distributed import DistContext
from glowflow.training.evaluate import sample_picture
from glowflow.training.metrics import Metric, MetricsLog


def default_run_dir(data: str) -> Path:
    """``runs/<data>-<YYYYmmdd-HHMMSS>`` (with ``-2``, ``-3``, ... if taken)."""
    base = Path("runs") / f"{data}-{datetime.now():%Y%m%d-%H%M%S}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def check_run_dir(run_dir: Path, resumed: bool) -> None:
    """A new run needs a fresh, writable directory; one holding checkpoints is only continued with --resume."""
    ckpt_dir = run_dir / "checkpoints"
    if not resumed and any((ckpt_dir / f).is_file() for f in ("last.pt", "best.pt")):
        raise ValueError(f"{run_dir} already holds a training run ({ckpt_dir}); pass --resume to continue it, or "
                         "choose another --out")  # fmt: skip
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir} is a file, not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".glowflow-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write the run directory {run_dir}: {e.strerror or e}") from None


class RunOutputs:
    """The files and messages of one run. Every method is a no-op on processes other than rank 0."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, ctx: DistContext, metric: Metric) -> None:
        self.run_dir, self.cfg, self.metric = run_dir, cfg, metric
        self.main = ctx.is_main
        self.ckpt_dir = run_dir / "checkpoints"
        self.metrics: MetricsLog | None = None
        self.progress = Progress(None, enabled=False)

    def open(self, start: int, resumed: bool) -> None:
        """Write config.json, open metrics.jsonl (kept up to ``start`` when resumed) and the progress report."""
        if not self.main:
            return
        atomic_write_text(self.run_dir / "config.json", json.dumps(self.cfg.to_dict(), indent=2) + "\n")
        self.metrics = MetricsLog(self.run_dir, self.cfg.tensorboard, start if resumed else None)
        self.progress = Progress(self.cfg.iters, start, "step", "train", enabled=self.cfg.progress)

    def close(self) -> None:
        self.progress.close()
        if self.metrics is not None:
            self.metrics.close()

    def say(self, text: str) -> None:
        if self.main:
            self.progress.write(text)

    def log(self, record: dict[str, Any], last_eval: dict[str, float]) -> None:
        """One metrics.jsonl line, mirrored in the progress report's figures."""
        if not self.main or self.metrics is None:
            return
        self.metrics.write(record)
        name = self.metric.name
        postfix = {}
        if record.get("loss") is not None:
            postfix[f"train_{name}"] = f"{record['loss']:.3f}"
        if last_eval:
            postfix[f"test_{name}"] = f"{last_eval[self.metric.key]:.3f}"
        if record.get("examples_per_s"):
            postfix[self.metric.rate_unit] = f"{record['examples_per_s']:.0f}"
        self.progress.set_postfix(postfix)

    def samples(self, model: FlowModel, test_x: torch.Tensor | None, step: int) -> None:
        """``samples/step_XXXXXX.png`` and ``samples.png`` (the latest); ``test_x``: the test rows that tabular
        samples are drawn beside (None for images)."""
        if not self.main:
            return
        try:
            with torch.random.fork_rng(devices=[]):
                picture = sample_picture(model, test_x, self.cfg.temperatures, self.cfg.sample_n, seed=self.cfg.seed,
                                         caption=f"step {step}")  # fmt: skip
        except (SingularWeightError, NonFiniteError, ValueError, RuntimeError) as e:
            self.say(f"step {step}: could not draw samples ({type(e).__name__}: {e})")
            return
        viz.save_png(picture, self.run_dir / "samples" / f"step_{step:06d}.png")
        viz.save_png(picture, self.run_dir / "samples.png")
        if self.metrics is not None:
            self.metrics.image("samples", picture, step)

    def curve(self) -> None:
        if self.main and self.metrics is not None:
            viz.save_png(viz.training_curve(self.metrics.records, self.metric.key, self.metric.unit),
                         self.run_dir / "curve.png")  # fmt: skip

    def checkpoint(self, name: str, payload: dict[str, Any] | None) -> None:
        if self.main and payload is not None:
            save_checkpoint(payload, self.ckpt_dir / name)
