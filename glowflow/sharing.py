"""A trained model as a directory to share: what ``glowflow export RUN DIR`` writes.

:func:`export_run` writes the pretrained-model directory of an :class:`~glowflow.runs.OpenRun` (a run's checkpoint,
or another pretrained model): ``config.json`` (the model, its data, the training configuration, the test figures),
``model.safetensors`` and a model card holding the ``glowflow train`` command that reproduces the run (rebuilt from
its configuration, :func:`~glowflow.training.config.command_line`), the data and the test figures, saying which
evaluation measured them. On request it adds

- ``check.json`` + ``check.safetensors``: a fixed subset of test examples (the model's inputs, chosen with a seed;
  their indices in the test split) and their score with a stated noise seed, so that a later glowflow can check it
  still computes the same numbers from these weights;
- ``METHOD.onnx`` + ``onnx.json`` and / or ``METHOD.pt2`` + ``pt2.json``: the deployment graphs of
  :mod:`glowflow.export`.

The directory is built beside ``DIR`` and renamed onto it when complete, so an interrupted or failed export leaves
no directory that loads; ``DIR`` must not exist yet or be empty.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from glowflow import export
from glowflow.io import atomic_write_bytes, atomic_write_text
from glowflow.models import FlowModel
from glowflow.models.pretrained import SHIPPED_PREFIX, WEIGHTS_DIR, ModelCard, save_pretrained
from glowflow.runs import OpenRun, choose_indices, evaluate_run
from glowflow.training.config import command_line
from glowflow.training.evaluate import EVAL_SEED, evaluate

CHECK_FILE = "check.json"
CHECK_INPUTS = "check.safetensors"
FORMATS = ("onnx", "pt2")


def export_run(
    run: OpenRun,
    directory: str | os.PathLike,
    *,
    formats: Sequence[str] = (),
    methods: Sequence[str] | None = None,
    measure_samples: int | None = None,
    check_size: int = 0,
    seed: int = 0,
    data_dir: str | None = None,
    command: str | None = None,
    note: str | None = None,
    report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write the pretrained-model directory of ``run`` (see the module docstring) and return what it holds:
    ``{"directory", "files", "metrics", "training_command"}``.

    ``formats``: ``"onnx"`` and / or ``"pt2"`` graphs of ``methods`` (default: every method the model has).
    ``measure_samples``: score the whole test split now, the dequantization noise averaged over that many draws, and
    record that as the test figure (default: the figures the source recorded for these weights). ``check_size``:
    write a check subset of that many test examples, chosen with ``seed`` (scored as the run's evaluations were:
    with its ``eval_samples`` dequantization draws). ``data_dir``: where the data set is, for those two.
    ``command``: the command that exported, quoted in the card; ``note``: a paragraph of your own for the card (the
    machine it was trained on, say). ``report``: called with a line of text as each graph file is begun and
    written (see :func:`glowflow.export.export_onnx`).
    """
    target = Path(directory)
    _check_request(run, target, formats, measure_samples, check_size)
    metrics, which = _test_figures(run, measure_samples, data_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    building = target.parent / f".{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    building.mkdir()  # with the usual permissions (the umask's), unlike tempfile.mkdtemp
    try:
        extra: list[tuple[str, str]] = []
        if check_size:
            metrics.update(_write_check(run, building, check_size, seed, data_dir))
            extra += [(CHECK_FILE, f"the check subset: {check_size} test examples (their indices in the test split), "
                       "their score and how it was computed"), (CHECK_INPUTS, "the check subset's inputs")]  # fmt: skip
        model = run.model.cpu()
        for fmt in formats:
            written = _write_graphs(model, building, fmt, methods, report)
            files = ", ".join(f"`{m['file']}`" for m in written["methods"].values())
            kind = "ONNX graphs" if fmt == "onnx" else "torch.export programs"
            extra.append((f"{fmt}.json", f"describes the {kind} {files}: inputs, outputs, versions"))
        card = ModelCard(command=_training_command(run), description=_description(run, which, command, note),
                         repo_id=_load_name(target), files=tuple(extra))  # fmt: skip
        training = None if run.config is None else run.config.to_dict()
        save_pretrained(model, building, data=_data(run), training=training, metrics=metrics or None, card=card)
        os.replace(building, target)  # onto a missing or empty directory: the complete directory appears at once
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return {
        "directory": str(target),
        "files": sorted(p.name for p in target.iterdir()),
        "metrics": metrics,
        "training_command": card.command,
    }


def _check_request(
    run: OpenRun, target: Path, formats: Sequence[str], measure_samples: int | None, check_size: int
) -> None:
    """Every check that can fail before any work is done."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        what = "a file" if not target.is_dir() else "a directory that is not empty"
        raise ValueError(f"{target} is {what}; export into a new (or empty) directory")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; expected {FORMATS}")
    if "onnx" in formats and any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript")):
        raise ImportError("ONNX export needs the onnx and onnxscript packages: pip install 'glowflow[onnx]'")
    if measure_samples is not None and (isinstance(measure_samples, bool) or measure_samples < 1):
        raise ValueError(f"the number of noise draws must be >= 1, got {measure_samples!r}")
    if isinstance(check_size, bool) or not isinstance(check_size, int) or check_size < 0:
        raise ValueError(f"the check subset size must be an integer >= 0, got {check_size!r}")
    if not run.model.is_initialized:
        raise ValueError(f"{run.source}: the model has not been trained or initialised; there is nothing to export")


def _load_name(target: Path) -> str:
    """What the card's loading example loads: ``glowflow/<name>`` for a shipped model, else the directory's name."""
    shipped = target.resolve().parent == WEIGHTS_DIR
    return SHIPPED_PREFIX + target.name if shipped else target.name


def _training_command(run: OpenRun) -> str | None:
    return None if run.config is None else command_line(run.config)


def _data(run: OpenRun) -> dict[str, Any]:
    """The data's description, without the run's own evaluation subset: which examples measured the test figures
    is the metrics' ``evaluated_on``."""
    data = {k: v for k, v in run.data.items() if k != "test_note"}
    data.setdefault("name", run.data_name)
    return data


def _draws_note(run: OpenRun, examples: str, draws: int | None) -> str:
    if not run.is_image or draws is None:
        return examples
    return f"{examples}, {draws} noise draw{'s' if draws != 1 else ''} each"


def _test_figures(run: OpenRun, measure_samples: int | None, data_dir: str | None) -> tuple[dict[str, Any], str]:
    """The metrics section (test figures, ``evaluated_on``, ``step``, ``wall_time_s``) and a sentence saying which
    evaluation measured the figures."""
    if run.kind == "pretrained":
        metrics = {k: v for k, v in run.metrics.items() if not k.startswith("check_")}  # a new check writes its own
        which = "as recorded by the pretrained model."
    else:
        metrics = dict(run.metrics)
        if metrics:
            draws = run.config.eval_samples
            metrics["evaluated_on"] = _draws_note(run, run.data.get("test_note", "the test split"), draws)
        best = run.checkpoint.get("best") or {}
        kind = "best test evaluation" if best.get("step") == run.step else "test evaluation"
        which = f"the run's {kind}, at step {run.step} (these weights)." if metrics else "none for these weights."
        metrics["step"] = run.step
        elapsed = run.checkpoint.get("progress", {}).get("elapsed")
        if elapsed is not None:
            metrics["wall_time_s"] = round(elapsed)
    if measure_samples is not None:
        measured = _measure(run, measure_samples, data_dir)
        metrics = {**measured, **{k: v for k, v in metrics.items() if k not in measured}}
        which = "measured when exported."
    return metrics, which


def _measure(run: OpenRun, n_samples: int, data_dir: str | None) -> dict[str, Any]:
    """The whole test split scored now: ``test_bpd`` (images) or ``test_nll`` and ``test_bpd`` (nats and bits per
    dimension, tabular), and ``evaluated_on``."""
    result = evaluate_run(run, "test", n_samples, data_dir=data_dir, seed=EVAL_SEED, save=False)
    what = "images" if run.is_image else "examples"
    figures = {"test_bpd": result["bpd"]} if run.is_image else {"test_nll": result["nll"], "test_bpd": result["bpd"]}
    on = _draws_note(run, f"all {result['examples']} test {what}", result.get("n_samples"))
    return {**figures, "evaluated_on": on}


def _write_check(run: OpenRun, folder: Path, size: int, seed: int, data_dir: str | None) -> dict[str, float]:
    """``check.json`` and ``check.safetensors`` of ``size`` test examples chosen with ``seed``; returns the metric
    (``check_bpd`` or ``check_nll``) and its value."""
    data = run.load_data(data_dir)
    if size > data.test_total:
        raise ValueError(f"the check subset ({size}) is larger than the test split ({data.test_total} examples)")
    indices = torch.from_numpy(choose_indices(data.test_total, size, seed))
    x, labels = data.test.get(indices)
    x = x.contiguous()
    y = None if run.model.num_classes is None or labels is None else labels.contiguous()  # class-conditional only
    draws = run.config.eval_samples if run.is_image else 1
    scored = evaluate(run.model, x, y, draws, seed=EVAL_SEED)
    metric, value = ("check_bpd", scored["bpd"]) if run.is_image else ("check_nll", scored["nll"])
    record = {
        "split": "test",
        "indices": indices.tolist(),
        "selection_seed": seed,
        "inputs": CHECK_INPUTS,
        "x": "the model's input: discrete levels after its preprocessing" if run.is_image else "rows, in raw units",
        "n_samples": draws,
        "noise_seed": EVAL_SEED,
        "score": "glowflow.training.evaluate.evaluate(model, x, y, n_samples, seed=noise_seed)",
        metric: value,
        "torch_version": torch.__version__,
    }
    tensors = {"x": x} if y is None else {"x": x, "y": y}
    inputs = safetensors.torch.save(tensors)
    atomic_write_bytes(folder / CHECK_INPUTS, lambda f: f.write(inputs))
    atomic_write_text(folder / CHECK_FILE, json.dumps(record, indent=2) + "\n")
    return {metric: value}


def _write_graphs(
    model: FlowModel, folder: Path, fmt: str, methods: Sequence[str] | None, report: Callable[[str], None] | None
) -> dict[str, Any]:
    if fmt == "onnx":
        return export.export_onnx(model, folder, methods, report=report)
    return export.export_pt2(model, folder, methods, report=report)


def _description(run: OpenRun, which: str, command: str | None, note: str | None) -> str:
    """Where the weights come from and which evaluation measured the test figures."""
    if run.kind == "checkpoint":
        origin = f"The weights of the run's checkpoint `{run.path.name}` (step {run.step})"
    else:
        origin = f"The weights of the pretrained model `{run.source}`"
    origin += f", exported with `{command}`." if command else "."
    generated = f"{origin} Test figures: {which}"
    return generated if not note else f"{note.strip()}\n\n{generated}"
