"""``RUN/metrics.jsonl``: one JSON object per logged step, plus optional TensorBoard scalars.

Every line has ``step`` and ``loss``: the mean training objective over the steps since the previous line (bits/dim
for images; NLL in nats of the original, unstandardised units for tabular / toy data; null if every one of those
steps was skipped; at step 0, the objective on the ActNorm initialisation batch). When the test split was
evaluated at that step: ``test_bpd`` (images: bits/dim with the dequantization noise averaged over
``eval_samples`` draws; tabular / toy data: ``test_nll`` in nats and ``test_bpd = test_nll / (D ln 2)``, a
differential entropy rate that can be negative). Also ``lr``, ``grad_norm``, ``examples_per_s``, ``time`` (seconds
of training so far, over resumes), ``skipped`` (faulty steps so far) and ``events`` (skips and rollbacks since the
previous line). Non-finite numbers are written as null.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glowflow.io import atomic_write_text


@dataclass(frozen=True)
class Metric:
    """How the score of a model is named and shown: bits/dim of discrete images, or the NLL in nats of rows (with
    its bits/dim, a differential entropy rate)."""

    name: str  # "bpd" / "nll": the key of evaluate()'s result and of the train_/test_ figures
    label: str  # "test bpd" / "test NLL"
    unit: str  # "bits/dim" / "nats"
    rate_unit: str  # "img/s" / "pts/s"

    @property
    def key(self) -> str:
        return f"test_{self.name}"

    def format(self, m: dict[str, float]) -> str:
        """``"test bpd 2.332"`` / ``"test NLL 3.251 nats (2.345 bits/dim)"`` from a ``{"test_bpd": ...}`` dict."""
        if self.name == "bpd":
            return f"test bpd {m['test_bpd']:.3f}"
        return f"test NLL {m['test_nll']:.3f} nats ({m['test_bpd']:.3f} bits/dim)"


IMAGE_METRIC = Metric("bpd", "test bpd", "bits/dim", "img/s")
ROW_METRIC = Metric("nll", "test NLL", "nats", "pts/s")


def metric_for(is_image: bool) -> Metric:
    """The metric of an image model (bits/dim) or of a tabular / toy model (NLL in nats)."""
    return IMAGE_METRIC if is_image else ROW_METRIC


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics file (or of a run directory's ``metrics.jsonl``); a torn last line (a crash while
    writing) is ignored. A file not written yet (a run that is starting) has none."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


class MetricsLog:
    """Appends records to ``metrics.jsonl`` (flushed per line) and mirrors numbers to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = False, resume_step: int | None = None) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.records: list[dict[str, Any]] = []
        if resume_step is None:
            self.path.write_text("", encoding="utf-8")
        else:
            # Keep what the checkpoint covers; drop lines written after it (a crash between log and save).
            self.records = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))
        self._file = self.path.open("a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ImportError(
                    "--tensorboard needs the tensorboard package: pip install 'glowflow[tensorboard]'"
                ) from None
            purge = None if resume_step is None else resume_step + 1
            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)

    def write(self, record: dict[str, Any]) -> None:
        record = _clean(record)
        self.records.append(record)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, record["step"])

    def image(self, tag: str, array: Any, step: int) -> None:
        """An (H, W, 3) uint8 image to TensorBoard (if enabled)."""
        if self.writer is not None:
            self.writer.add_image(tag, array, step, dataformats="HWC")

    def close(self) -> None:
        self._file.close()
        if self.writer is not None:
            self.writer.close()
