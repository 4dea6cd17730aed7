"""``glowflow.train``: the training loop, readable top to bottom.

    configure -> seed -> data -> model -> optimiser, learning rate, fault guard, batches
    -> ActNorm initialisation on a dedicated larger batch and the untrained score (or restore a checkpoint)
    -> wrap for DDP / torch.compile
    -> for each step: a batch, forward, backward, clip, update (a non-finite step is a no-op on the device);
       at logging steps read the steps back: log, skip or roll back, evaluate, draw samples, checkpoint
    -> final evaluation, samples, curve and checkpoint.

Exact resumption: a checkpoint holds the model, optimiser, learning-rate schedule, step, the batch position (the
batch generator after the last consumed batch, whatever worker processes had read ahead) and every process's global
RNG states; evaluation and sampling draw from isolated random streams, so stopping and resuming at step n continues
the same sequence of batches and noise as an uninterrupted run.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glowflow.data.streaming import TrainBatches
from glowflow.errors import CheckpointError, DataError
from glowflow.models import FlowModel
from glowflow.training import distributed
from glowflow.training.batches import training_batches
from glowflow.training.checkpoint import (
    batch_position,
    capture_rng_state,
    load_checkpoint,
    restore_model,
    restore_rng_state,
)
from glowflow.training.config import FIELD_NAMES, TrainConfig, check_keys, load_config_file, resolve_config
from glowflow.training.data import InMemoryData, TrainingData, prepare_data
from glowflow.training.devices import resolve_device
from glowflow.training.distributed import DistContext
from glowflow.training.evaluate import evaluate_source
from glowflow.training.guard import FaultGuard, TrainingError
from glowflow.training.metrics import Metric, metric_for
from glowflow.training.model import model_for_data, model_precision
from glowflow.training.optim import LearningRate, make_optimizer
from glowflow.training.outputs import RunOutputs, check_run_dir, default_run_dir
from glowflow.training.step import LossHook, StepWindow, train_step
from glowflow.wording import plural

# Settings that may change when a run is resumed; everything else (data, model, optimiser) is fixed by the run.
RESUMABLE = frozenset({
    "out", "iters", "device", "threads", "data_dir", "download", "input", "workers", "precision", "memory", "compile",
    "eval_every", "eval_samples", "eval_batch_size", "sample_every", "sample_n", "temperatures", "checkpoint_every",
    "log_every", "tensorboard", "progress", "max_faults", "max_rollbacks", "rollback_lr_factor",
})  # fmt: skip


@dataclass
class TrainResult:
    """What :func:`train` returns (on every process; files are written by rank 0 alone)."""

    run_dir: Path
    config: TrainConfig
    step: int  # optimiser steps taken (skipped ones included)
    metrics: dict[str, float]  # the last test evaluation, e.g. {"test_bpd": 2.05}
    untrained: dict[str, float]  # the test evaluation before training
    best: dict[str, Any] | None  # {"value": best test_bpd, "step": ...}
    elapsed: float  # seconds of training, over resumes
    skipped: int  # faulty steps skipped
    rollbacks: int
    stopped_by: str | None  # "SIGINT" / "SIGTERM" when a signal stopped the run early, else None
    model: FlowModel = field(repr=False)
    checkpoint: Path = field(default=Path())
    skipped_examples: int = 0  # unreadable examples replaced by substitutes (--on-error skip), over every process


@dataclass
class RunState:
    """Where a run stands: what checkpoints carry besides the model, the optimiser and the random streams."""

    step: int = 0
    untrained: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    elapsed_before: float = 0.0  # seconds of training in earlier sessions of the run
    session_start: float = field(default_factory=time.perf_counter)
    events: list[dict[str, Any]] = field(default_factory=list)  # skips and rollbacks since the last metrics line
    skipped_examples: int = 0  # unreadable examples replaced, over every process, at the last logging step

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.session_start


def train(
    config: TrainConfig | dict[str, Any] | str | os.PathLike | None = None,
    *,
    resume: bool = False,
    loss_hook: LossHook | None = None,
    data: Any = None,
    labels: Any = None,
    test_data: Any = None,
    test_labels: Any = None,
    test_fraction: float = 0.1,
    num_bins: int | None = None,
    class_names: list[str] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a Glow (image data) or TabularGlow (tabular / 2-D toy data): what ``glowflow train`` runs.

    ``config``: a :class:`TrainConfig`, a dict, or a JSON/TOML file path; ``overrides``: config keys given
    explicitly (they win over the config and the preset, see :func:`resolve_config`)::

        result = glowflow.train(iters=500, out="runs/quick")          # the digits preset, shorter
        result = glowflow.train("mnist.toml", device="cuda")
        result = glowflow.train(out="runs/quick", resume=True, iters=1000)
        result = glowflow.train(data=images, labels=y, num_bins=256)  # arrays in memory (uint8 (N, C, H, W))

    ``data``: a data set name (the ``data`` config key), or data already in memory - a NumPy array or tensor of
    integer images (N, C, H, W) / (N, H, W) with levels ``0..num_bins-1`` (default 256), or of float rows (N, D),
    or a map-style ``torch.utils.data.Dataset`` of ``x`` or ``(x, label)`` items - with optional ``labels``; the
    test split is ``test_data`` (and ``test_labels``) or a fixed ``test_fraction`` of ``data``. ``data`` may also
    be a batch source (``glowflow.data.sources``: e.g. ``ArraySource("big.npy")``, ``ImageFolderSource(...)``),
    read batch by batch as ``input`` says, with a source as ``test_data``. Such data go through the same
    preparation as files (``config.json`` records ``data: "memory"``); resume such a run by passing them again.

    ``resume=True`` continues the run in ``out`` from ``checkpoints/last.pt``: its configuration comes from the
    checkpoint, and only the keys in :data:`RESUMABLE` may be changed. ``loss_hook(step, per_example_loss)``, if
    given, may transform each step's loss before it is minimised (fault-injection tests use it).

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process calls this; see ``glowflow.training.distributed``.
    """
    memory = None
    if data is not None and not isinstance(data, str):
        memory = InMemoryData(data, labels, test_data, test_labels, test_fraction, num_bins, class_names)
        overrides["data"] = "memory"
    elif data is not None:
        if any(v is not None for v in (labels, test_data, test_labels, num_bins, class_names)):
            raise ValueError("labels, test_data, test_labels, num_bins and class_names go with in-memory data")
        overrides["data"] = data
    cfg, ckpt = _configure(config, resume, overrides, memory)
    with _threads(cfg.threads):
        ctx = distributed.setup(cfg.device)
        try:
            result = _train(cfg, ckpt, ctx, memory, loss_hook)
            distributed.barrier(ctx)  # rank 0 still writes its last files: leave the group together, not mid-write
            return result
        finally:
            distributed.cleanup(ctx)


@dataclass(eq=False)
class Run:
    """The parts of one training run that the steps of the recipe share."""

    cfg: TrainConfig
    ctx: DistContext
    data: TrainingData
    model: FlowModel
    opt: torch.optim.Optimizer
    lr: LearningRate
    guard: FaultGuard
    batches: TrainBatches
    state: RunState
    out: RunOutputs
    metric: Metric

    def evaluate_test(self) -> dict[str, float]:
        """The test split's score (every process its share), as ``{"test_bpd": ...}`` (+ ``test_nll`` for rows)."""
        cfg, data = self.cfg, self.data
        m = evaluate_source(self.model, data.test, data.eval_indices, cfg.eval_samples, cfg.eval_batch_size,
                            ctx=self.ctx, labels=data.conditional, workers=cfg.workers)  # fmt: skip
        return {f"test_{k}": v for k, v in m.items()}

    def save(self, name: str) -> None:
        self.out.checkpoint(name, _payload(self))


def _train(
    cfg: TrainConfig, ckpt: dict[str, Any] | None, ctx: DistContext, memory: InMemoryData | None, loss_hook: Any
) -> TrainResult:
    # 1. where: the device and the run directory
    device = ctx.device = resolve_device(cfg.device, ctx)
    run_dir = Path(distributed.broadcast_object(cfg.out or str(default_run_dir(cfg.data)), ctx))
    cfg.out = str(run_dir)
    if ctx.is_main:
        check_run_dir(run_dir, resumed=ckpt is not None)
    if cfg.batch_size % ctx.world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} must divide by the number of processes ({ctx.world_size})")

    # 2. seed everything (per-process noise streams are seeded after the model is built)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed + ctx.rank)
    random.seed(cfg.seed + ctx.rank)

    # 3. data, and the batches every step draws from it (read by worker processes from the first step on)
    data = prepare_data(cfg, ctx, cfg.eval_size, memory)
    if cfg.batch_size > len(data.train):
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the training split ({len(data.train)} "
                         f"examples); use at most {len(data.train)}")  # fmt: skip
    batches = training_batches(data, cfg, ctx, device)

    # 4. model: identical on every process; then each process gets its own dequantization-noise stream
    # precision 'auto': bf16 for images where the device computes it natively (the model records what it resolved to)
    precision = model_precision(cfg.precision, data.is_image, device)
    model = model_for_data(replace(cfg, precision=precision), data)
    model = model.to(device)
    torch.manual_seed(cfg.seed + 10_000 * (ctx.rank + 1))

    # 5. optimiser with linear warm-up and the --lr-schedule, fault guard, run state, outputs
    opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
    metric = metric_for(data.is_image)
    run = Run(cfg, ctx, data, model, opt, LearningRate(opt, cfg.warmup, schedule=cfg.lr_schedule, iters=cfg.iters),
              FaultGuard(cfg.max_faults, cfg.max_rollbacks, cfg.rollback_lr_factor), batches, RunState(),
              RunOutputs(run_dir, cfg, ctx, metric), metric)  # fmt: skip

    # 6. start: ActNorm initialisation and the untrained score, or the checkpoint
    if ckpt is None:
        _start(run)
    else:
        _restore(run, ckpt, run_dir / "checkpoints" / "last.pt")

    # 7. wrap for several processes and/or torch.compile
    net: Any = model
    if ctx.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)  # fmt: skip
    if cfg.compile:
        net = torch.compile(net)
    params = [p for p in model.parameters() if p.requires_grad]

    # 8. the loop: a step, and at logging steps everything that reads the steps back
    start, stopped_by, window = run.state.step, None, StepWindow()
    try:
        with _StopSignal(run.out.say) as stop:
            for step in range(start + 1, cfg.iters + 1):
                x, y = batches.next()
                window.add(step, train_step(net, params, opt, x, y, cfg.grad_clip, loss_hook, step))
                run.lr.step()
                run.state.step = step
                run.out.progress.update(1)
                # a signal stops a single process after this step; several processes agree at the next logging step
                if _is_logging_step(cfg, step) or (stop.requested is not None and not ctx.enabled):
                    if _logging_step(run, window, step, stop_requested=stop.requested is not None):
                        stopped_by = stop.requested or "a signal on another process"
                        break
    finally:
        batches.close()  # the worker processes end with the loop, also on an error
        run.out.close()
    if run.state.step == start:
        run.out.say(f"{run_dir} is already at step {start} (--iters {cfg.iters}): nothing to train")
    return _finish(run, stopped_by)


# ---- pieces of the recipe ----------------------------------------------------------------------------------------
@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """PyTorch's operator threads set to ``n`` for the run (None: unchanged), restored afterwards."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _configure(
    config: Any, resume: bool, overrides: dict[str, Any], memory: InMemoryData | None
) -> tuple[TrainConfig, dict[str, Any] | None]:
    if not resume:
        kind = None if memory is None else _memory_kind(memory)
        return resolve_config(config, data_kind=kind, **overrides), None
    check_keys(overrides, "train()")
    if isinstance(config, TrainConfig):
        explicit = config.to_dict()
    elif isinstance(config, dict):
        check_keys(config, "config")
        explicit = dict(config)
    elif config is None:
        explicit = {}
    else:
        explicit = load_config_file(config)
    explicit.update(overrides)
    if not explicit.get("out"):
        raise ValueError("--resume needs the run directory: --out RUN_DIR")
    run_dir = Path(explicit["out"])
    path = run_dir / "checkpoints" / "last.pt"
    if not path.is_file():
        if not run_dir.is_dir():
            raise FileNotFoundError(f"cannot resume {run_dir}: no such run directory")
        raise CheckpointError(f"cannot resume {run_dir}: it holds no checkpoint ({path} not found)")
    ckpt = load_checkpoint(path)
    saved = ckpt["config"]
    unknown = [k for k in saved if k not in FIELD_NAMES]
    if unknown or not isinstance(saved, dict):
        raise CheckpointError(f"{path}: its config has keys this glowflow does not know: {', '.join(unknown)}")
    if saved.get("data") == "memory" and memory is None:
        raise ValueError(f"{run_dir} was trained on arrays in memory: pass the same arrays again (data=...)")
    values = dict(saved)
    for key, value in explicit.items():
        if key in RESUMABLE:
            values[key] = value
        elif key == "preset" and value in (None, saved.get("preset")):
            continue
        elif value != saved.get(key):
            raise ValueError(
                f"--resume continues {run_dir} as it was configured: {key} is {saved.get(key)!r} there and cannot "
                f"change to {value!r} (only {', '.join(sorted(RESUMABLE))} may); start a new run with another --out"
            )
    return TrainConfig(**values).validate(), ckpt


def _memory_kind(memory: InMemoryData) -> str:
    train, _ = memory.sources()
    return "image" if train.is_image else "tabular"


@torch.no_grad()
def _init_actnorm(model: FlowModel, batches: TrainBatches, ctx: DistContext) -> float:
    """ActNorm takes its initial statistics from a dedicated larger first batch, all-reduced over processes.
    Returns the objective on that batch (the metrics' step-0 loss)."""
    x, y = batches.init_batch()
    loss = model(x, y, validate=False)
    total = torch.stack([loss.double().sum(), torch.tensor(float(len(loss)), dtype=torch.float64,
                                                           device=loss.device)])  # fmt: skip
    distributed.all_reduce_sum(total, ctx)
    return float(total[0] / total[1])


def _start(run: Run) -> None:
    """A new run: ActNorm initialisation, the untrained score, the opening lines, step 0's metrics and checkpoint."""
    cfg, ctx, data, model, state, out = run.cfg, run.ctx, run.data, run.model, run.state, run.out
    init_loss = _init_actnorm(model, run.batches, ctx)
    state.untrained = state.last_eval = run.evaluate_test()
    out.open(0, resumed=False)
    procs = f" x {ctx.world_size} processes" if ctx.enabled else ""
    precision = model.precision + (" (auto)" if cfg.precision == "auto" else "")
    extras = [x for x in (model.precision != "fp32" and precision, cfg.compile and "compiled") if x]
    out.say(f"data: {data.describe()}" + (f", {cfg.workers} reader processes" if cfg.workers else ""))
    if cfg.mutation_rate:
        of = f", the background model for {cfg.background_for}" if cfg.background_for else ""
        out.say(f"mutation: each training input dimension replaced by a uniform random level with probability "
                f"{cfg.mutation_rate:g}{of}")  # fmt: skip
    for origin in data.origins():
        out.say(f"files: {origin}")
    out.say(f"model: {model.describe()}, on {ctx.device}{procs}" + (f" ({', '.join(extras)})" if extras else ""))
    out.say(f"run directory: {out.run_dir}")
    note = data.test_note
    if data.is_image:
        draws = f"{cfg.eval_samples} noise draw{'s' if cfg.eval_samples != 1 else ''} each"
        levels = f"{data.num_bins} {'grey levels' if data.shape[0] == 1 else 'levels per channel'}"
        note += f", {draws}; bits/dim at {levels}"
    out.say(f"untrained: {run.metric.format(state.untrained)} ({note})")
    record = {"step": 0, "loss": init_loss, **state.untrained, "time": 0.0, "skipped": 0}
    if cfg.on_error == "skip":  # examples of the ActNorm batch replaced, over every process
        replaced = torch.tensor([run.batches.skipped], dtype=torch.float64, device=ctx.device)
        state.skipped_examples = record["skipped_examples"] = int(distributed.all_reduce_sum(replaced, ctx).item())
    out.log(record, state.last_eval)
    run.save("last.pt")  # the first rollback anchor


def _is_logging_step(cfg: TrainConfig, step: int) -> bool:
    """Steps that log, evaluate, draw samples or checkpoint: the ones where the loop reads the steps back."""
    return (
        step == cfg.iters
        or step % cfg.log_every == 0
        or bool(cfg.eval_every and step % cfg.eval_every == 0)
        or bool(cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
    )


def _logging_step(run: Run, window: StepWindow, step: int, stop_requested: bool) -> bool:
    """Read the steps since the last logging step back, act on faults (skip, roll back), and log, evaluate, draw
    samples and checkpoint as scheduled. Returns whether the processes agreed to stop."""
    cfg, ctx, state, out = run.cfg, run.ctx, run.state, run.out
    final = step == cfg.iters
    record = _read_window(run, window, step)
    try:
        if run.guard.rollback_due:
            _rollback(run, step)
    except TrainingError:
        out.log(_with_events(run, record), state.last_eval)  # the line is written also when the run gives up
        raise
    record = _with_events(run, record)
    stop_now = distributed.any_true(stop_requested, ctx)
    results = run.evaluate_test() if (final or (cfg.eval_every and step % cfg.eval_every == 0)) and not stop_now else {}
    if results:
        state.last_eval = dict(results)
        out.say(f"step {step}: {run.metric.format(results)}")
    out.log({**record, **results, "time": round(state.elapsed, 3)}, state.last_eval)
    if results and (state.best is None or results["test_bpd"] < state.best["value"]):
        state.best = {"value": results["test_bpd"], "step": step, **results}
        run.save("best.pt")
    if not stop_now and (final or (cfg.sample_every and step % cfg.sample_every == 0)):
        out.samples(run.model, None if run.data.is_image else run.data.test_x, step)
    checkpointing = final or stop_now or bool(cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
    if checkpointing and run.guard.consecutive == 0:  # never overwrite the rollback anchor mid-fault
        run.save("last.pt")
    if results or final or stop_now:
        out.curve()
    window.reset()
    return stop_now


def _read_window(run: Run, window: StepWindow, step: int) -> dict[str, Any]:
    """Read the steps since the last logging step back (the host synchronisation of the loop), count faults in
    the guard and the run's events, and return the metrics line of ``step`` (loss and gradient norm averaged over
    the good steps)."""
    ctx, guard = run.ctx, run.guard
    records, sums = window.read()
    totals = torch.tensor([sums["loss_sum"], sums["good"], sums["grad_sum"], run.batches.skipped], dtype=torch.float64,
                          device=ctx.device)  # fmt: skip
    distributed.all_reduce_sum(totals, ctx)  # the loss over every process's slice; gradients are already shared
    loss_sum, good, grad_sum, skipped_examples = totals.tolist()
    run.state.skipped_examples = int(skipped_examples)
    for r in records:
        if r.ok:
            guard.ok()
            continue
        guard.fault()
        run.state.events.append({"step": r.step, "kind": "skipped", "reason": r.reason})
        run.out.say(f"step {r.step}: skipped ({r.reason}); {guard.consecutive} in a row")
    seconds = window.seconds()
    record = {
        "step": step,
        "loss": loss_sum / good if good else None,
        "grad_norm": grad_sum / good if good else None,  # every process holds the same (all-reduced) gradients
        "examples_per_s": len(records) * run.cfg.batch_size / seconds if seconds > 0 else None,
        "skipped": guard.skipped,
    }
    if run.cfg.on_error == "skip":
        record["skipped_examples"] = run.state.skipped_examples
    return record


def _with_events(run: Run, record: dict[str, Any]) -> dict[str, Any]:
    """The metrics line with the current learning rate and the events since the last line (which it consumes)."""
    record = {**record, "lr": run.lr.current}
    if run.state.events:
        record["events"], run.state.events = run.state.events, []
    return record


def _rollback(run: Run, step: int) -> None:
    """Restore the model and optimiser of the last good checkpoint and lower the learning rate."""
    guard, out = run.guard, run.out
    path = out.ckpt_dir / "last.pt"
    try:
        guard.rollback()
    except TrainingError as e:
        raise TrainingError(
            f"training stopped at step {step}: {e}. The last good checkpoint is {path}. Try a lower --lr, a "
            "longer --warmup, --grad-clip, or --coupling additive"
        ) from None
    saved = distributed.broadcast_object(load_checkpoint(path) if run.ctx.is_main else None, run.ctx)
    restore_model(run.model, saved["model"], path)
    run.opt.load_state_dict(saved["optimizer"])
    run.lr.rescale(guard.lr_scale)
    run.state.events.append({"step": step, "kind": "rollback", "to_step": saved["step"], "lr_scale": guard.lr_scale})
    out.say(f"step {step}: {plural(guard.max_faults, 'faulty step')} in a row: rolled back to the checkpoint of step "
            f"{saved['step']}, learning rate x{guard.lr_scale:g}")  # fmt: skip


def _payload(run: Run) -> dict[str, Any] | None:
    """The checkpoint of the run as it stands (rank 0; None elsewhere), see ``glowflow.training.checkpoint``."""
    rng = distributed.gather_objects(capture_rng_state(), run.ctx)  # every process's streams
    skipped = distributed.gather_objects(run.batches.skipped, run.ctx)
    if not run.ctx.is_main:
        return None
    state, data = run.state, run.data
    position = {**run.batches.state_dict(), "skipped": sum(skipped)}  # every process's replaced examples
    return {
        "config": run.cfg.to_dict(),
        "model_class": type(run.model).__name__,
        "model_config": dict(run.model.config),
        "model": run.model.state_dict(),
        "optimizer": run.opt.state_dict(),
        "scheduler": run.lr.state_dict(),
        "step": state.step,
        "rng": {"batch": position["generator"], "ranks": rng},
        "batches": position,
        "guard": run.guard.state_dict(),
        "best": state.best,
        "data": {
            "name": data.name,
            "shape": list(data.shape),
            "num_bins": data.num_bins,
            "class_names": data.class_names,
            "test_note": data.test_note,
        },  # fmt: skip
        "progress": {
            "elapsed": state.elapsed,
            "untrained": state.untrained,
            "last": state.last_eval,
            "events": list(state.events),
            "world_size": run.ctx.world_size,
            "saved_at": datetime.now().isoformat(timespec="seconds"),
        },
    }


def _restore(run: Run, ckpt: dict[str, Any], path: Path) -> None:
    """A resumed run: the model, optimiser, schedule, guard, batch position and random streams of ``ckpt``."""
    state, ctx, out = run.state, run.ctx, run.out
    restore_model(run.model, ckpt["model"], path)
    try:
        run.opt.load_state_dict(ckpt["optimizer"])
        run.lr.load_state_dict(ckpt["scheduler"])
        run.guard.load_state_dict(ckpt["guard"])
        run.lr.scale = run.guard.lr_scale
        position = batch_position(ckpt, len(run.data.train), run.cfg.batch_size)
        run.batches.load_state_dict(position if ctx.is_main else {**position, "skipped": 0})  # rank 0 holds the count
        ranks = ckpt["rng"]["ranks"]
        if len(ranks) == ctx.world_size:
            restore_rng_state(ranks[ctx.rank])
        else:  # another number of processes: the batches continue exactly, the noise streams are reseeded
            torch.manual_seed(run.cfg.seed + 10_000 * (ctx.rank + 1) + ckpt["step"])
            out.say(f"resuming with {plural(ctx.world_size, 'process')} instead of {len(ranks)}: the batches continue "
                    "exactly, the dequantization noise is reseeded")  # fmt: skip
        progress = ckpt["progress"]
        state.step = ckpt["step"]
        state.best = ckpt.get("best")
        state.untrained = dict(progress["untrained"])
        state.last_eval = dict(progress["last"])
        state.events = list(progress.get("events", []))
        state.elapsed_before = float(progress["elapsed"])
        state.session_start = time.perf_counter()
    except DataError:  # a position for another data set: the message says so
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot restore the training state ({type(e).__name__}: {e})") from None
    out.open(state.step, resumed=True)
    out.say(f"resumed {out.run_dir} at step {state.step} ({run.metric.format(state.last_eval)})")


def _finish(run: Run, stopped_by: str | None) -> TrainResult:
    state, out, metric, guard = run.state, run.out, run.metric, run.guard
    path = out.ckpt_dir / "last.pt"
    if stopped_by:
        out.say(f"stopped by {stopped_by} at step {state.step}; saved {path}. Resume with: glowflow train --out "
                f"{out.run_dir} --resume")  # fmt: skip
    elif state.last_eval and state.step > 0:
        best = state.best
        best_text = f"; best {best.get(metric.key, best['value']):.3f} at step {best['step']}" if best else ""
        out.say(f"done: {plural(state.step, 'step')}, {state.elapsed:.0f} s of training: "
                f"{metric.format(state.last_eval)} "
                f"(untrained {state.untrained[metric.key]:.3f}{best_text})")  # fmt: skip
        written = [n for n in ("samples.png", "curve.png", "metrics.jsonl") if (out.run_dir / n).exists()]
        out.say(f"outputs: {out.run_dir}/{', '.join([*written, 'checkpoints/'])}")
    if state.skipped_examples:
        n = state.skipped_examples
        out.say(f"{n} unreadable example{'s were' if n != 1 else ' was'} replaced by the next readable one "
                "(--on-error skip; the warnings name the files)")  # fmt: skip
    return TrainResult(
        run_dir=out.run_dir, config=run.cfg, step=state.step, metrics=dict(state.last_eval),
        untrained=dict(state.untrained), best=state.best, elapsed=state.elapsed, skipped=guard.skipped,
        rollbacks=guard.rollbacks, stopped_by=stopped_by, model=run.model, checkpoint=path,
        skipped_examples=state.skipped_examples,
    )  # fmt: skip


class _StopSignal:
    """SIGINT / SIGTERM ask the loop to finish its step (with several processes: to go on to the next logging step,
    where they agree), save and exit; a second SIGINT aborts at once."""

    def __init__(self, announce: Callable[[str], None]) -> None:
        self.requested: str | None = None
        self._announce = announce
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = name
        self._announce(f"{name} received: finishing this step and saving a checkpoint (Ctrl-C again to abort)")

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
