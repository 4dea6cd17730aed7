"""``glowflow.train``: the training loop, readable top to bottom.

    seed everything -> load the data -> build the model -> optimiser, warm-up schedule, fault guard, batch generator
    -> initialise ActNorm on a dedicated larger batch (or restore a checkpoint) -> wrap for DDP / torch.compile
    -> for each step: draw a batch, forward, all-reduce the step's status, backward, clip, update
       (or skip a faulty step / roll back), then log, evaluate, draw samples and checkpoint on schedule
    -> final evaluation, samples, curve and checkpoint.

Exact resumption: a checkpoint holds the model, optimiser, scheduler, step, the batch generator and every process's
global RNG states; evaluation and sampling draw from isolated random streams, so stopping and resuming at step n
continues the same sequence of batches and noise as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from glowflow import viz
from glowflow.errors import CheckpointError, SingularWeightError
from glowflow.models import FlowModel, Glow, TabularGlow
from glowflow.training import distributed
from glowflow.training.checkpoint import (
    atomic_write_bytes,
    capture_rng_state,
    load_checkpoint,
    restore_model,
    restore_rng_state,
    save_checkpoint,
)
from glowflow.training.config import FIELD_NAMES, TrainConfig, check_keys, load_config_file, resolve_config
from glowflow.training.data import TrainingData, prepare_data
from glowflow.training.distributed import DistContext, shard
from glowflow.training.evaluate import evaluate, sample_picture
from glowflow.training.guard import FaultGuard, TrainingError
from glowflow.training.metrics import MetricsLog

# Settings that may change when a run is resumed; everything else (data, model, optimiser) is fixed by the run.
RESUMABLE = frozenset({
    "out", "iters", "device", "threads", "data_dir", "download", "precision", "memory", "compile", "eval_every",
    "eval_samples", "eval_batch_size", "sample_every", "sample_n", "temperatures", "checkpoint_every",
    "log_every", "tensorboard", "progress", "max_faults", "max_rollbacks", "rollback_lr_factor",
})  # fmt: skip
GPU_DATA_LIMIT = 2**31  # keep training data up to 2 GiB on the GPU, gather batches there


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


def train(
    config: TrainConfig | dict[str, Any] | str | os.PathLike | None = None,
    *,
    resume: bool = False,
    loss_hook: Callable[[int, Tensor], Tensor] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a Glow (image data) or TabularGlow (tabular / 2-D toy data): what ``glowflow train`` runs.

    ``config``: a :class:`TrainConfig`, a dict, or a JSON/TOML file path; ``overrides``: config keys given
    explicitly (they win over the config and the preset, see :func:`resolve_config`)::

        result = glowflow.train(iters=500, out="runs/quick")          # the digits preset, shorter
        result = glowflow.train("mnist.toml", device="cuda")
        result = glowflow.train(out="runs/quick", resume=True, iters=1000)

    ``resume=True`` continues the run in ``out`` from ``checkpoints/last.pt``: its configuration comes from the
    checkpoint, and only the keys in :data:`RESUMABLE` may be changed. ``loss_hook(step, per_example_loss)``, if
    given, may transform each step's loss before it is checked and minimised (fault-injection tests use it).

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process calls this; see ``glowflow.training.distributed``.
    """
    cfg, ckpt = _configure(config, resume, overrides)
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    ctx = distributed.setup(cfg.device)
    try:
        return _Run(cfg, ctx, ckpt, loss_hook).train()
    finally:
        distributed.cleanup(ctx)
        torch.set_num_threads(threads)


def _configure(config: Any, resume: bool, overrides: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any] | None]:
    if not resume:
        return resolve_config(config, **overrides), None
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


def make_optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    """Adam with the fused implementation (one kernel for all parameters: a fifth of the default per-parameter
    loop's time on CPU for config S) or Adamax with the multi-tensor one."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adamax(params, lr=lr, foreach=True)


def warmup_factor(epoch: int, warmup: int) -> float:
    """Linear warm-up: the learning rate of step ``epoch + 1`` is ``lr * min(1, (epoch + 1) / warmup)``."""
    return 1.0 if warmup <= 0 else min(1.0, (epoch + 1) / warmup)


def build_model(cfg: TrainConfig, data: TrainingData) -> FlowModel:
    """The model ``cfg`` describes for ``data``: Glow for images, TabularGlow for tabular / toy data."""
    num_classes = data.num_classes if cfg.conditional else None
    if data.is_image:
        return Glow(
            data.shape, levels=cfg.levels, steps=cfg.steps, hidden=cfg.hidden, coupling=cfg.coupling,
            permutation=cfg.permutation, conditioner=cfg.conditioner, mask=cfg.mask, num_classes=num_classes,
            num_bins=data.num_bins, dequantization=cfg.dequantization, precision=cfg.precision, memory=cfg.memory,
        )  # fmt: skip
    return TabularGlow(
        data.shape[0], steps=cfg.steps, hidden=cfg.hidden, coupling=cfg.coupling, permutation=cfg.permutation,
        num_classes=num_classes, precision=cfg.precision,
    )  # fmt: skip


def describe_model(model: FlowModel) -> str:
    c = model.config
    n = sum(p.numel() for p in model.parameters())
    if isinstance(model, Glow):
        arch = f"Glow L={c['levels']} K={c['steps']} width {c['hidden']}, {c['coupling']} coupling, {c['permutation']}"
    else:
        arch = f"TabularGlow K={c['steps']} width {c['hidden']}, {c['coupling']} coupling, {c['permutation']}"
    cond = f", conditional on {c['num_classes']} classes" if c.get("num_classes") else ""
    return f"{arch}{cond}: {n / 1e6:.2f}M parameters"


def resolve_device(name: str, ctx: DistContext) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available here (torch.cuda.is_available() is False); "
                             "use --device cpu")  # fmt: skip
        return torch.device("cuda", ctx.local_rank) if ctx.enabled else torch.device(name)
    return torch.device("cpu")


def default_run_dir(data: str) -> Path:
    base = Path("runs") / f"{data}-{datetime.now():%Y%m%d-%H%M%S}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


class StopSignal:
    """SIGINT / SIGTERM ask the loop to finish its step, save and stop; a second SIGINT aborts at once."""

    def __init__(self, announce: Callable[[str], None]) -> None:
        self.requested: str | None = None
        self._announce = announce
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
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


class _Run:
    """One call of :func:`train`: the state shared by the steps of the loop."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, ckpt: dict[str, Any] | None, loss_hook: Any) -> None:
        self.cfg, self.ctx, self.ckpt, self.loss_hook = cfg, ctx, ckpt, loss_hook
        self.main = ctx.is_main
        self.bar: Any = None
        self.session_start = time.perf_counter()
        self.elapsed_before = 0.0

    # ---- output helpers ----------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        if self.main:
            from tqdm import tqdm

            tqdm.write(text)

    def _metric_text(self, m: dict[str, float]) -> str:
        if self.data.is_image:
            return f"test bpd {m['test_bpd']:.3f}"
        return f"test NLL {m['test_nll']:.3f} nats ({m['test_bpd']:.3f} bits/dim)"

    # ---- the run -------------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        cfg, ctx = self.cfg, self.ctx
        device = self.device = resolve_device(cfg.device, ctx)
        run_dir = self.run_dir = Path(distributed.broadcast_object(cfg.out or str(default_run_dir(cfg.data)), ctx))
        cfg.out = str(run_dir)
        self.ckpt_dir = run_dir / "checkpoints"
        if self.ckpt is None and any((self.ckpt_dir / f).is_file() for f in ("last.pt", "best.pt")):
            raise ValueError(f"{run_dir} already holds a training run ({self.ckpt_dir}); pass --resume to continue "
                             "it, or choose another --out")  # fmt: skip
        if cfg.batch_size % ctx.world_size:
            raise ValueError(f"--batch-size {cfg.batch_size} must divide by the number of processes "
                             f"({ctx.world_size})")  # fmt: skip

        # 1. seed everything (per-process noise streams are seeded after the model is built)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed + ctx.rank)
        random.seed(cfg.seed + ctx.rank)

        # 2. data
        stats = None
        if self.ckpt is not None and self.ckpt["data"].get("mean") is not None:
            stats = (self.ckpt["data"]["mean"], self.ckpt["data"]["std"])
        data = self.data = prepare_data(cfg, ctx, stats, cfg.eval_size)
        self.train_x = data.train_x
        if device.type == "cuda" and data.train_x.numel() * data.train_x.element_size() <= GPU_DATA_LIMIT:
            self.train_x = data.train_x.to(device)
        self.train_y = None if data.train_y is None else data.train_y.to(self.train_x.device)

        # 3. model: identical on every process; then each process gets its own dequantization-noise stream
        model = self.model = build_model(cfg, data).to(device)
        torch.manual_seed(cfg.seed + 10_000 * (ctx.rank + 1))

        # 4. optimiser with linear warm-up, fault guard, batch generator
        self.opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
        self.guard = FaultGuard(cfg.max_faults, cfg.max_rollbacks, cfg.rollback_lr_factor)
        guard = self.guard
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda e: warmup_factor(e, cfg.warmup) * guard.lr_scale
        )
        self.batch_gen = torch.Generator().manual_seed(cfg.seed)
        self.best: dict[str, Any] | None = None
        self.last_eval: dict[str, float] = {}
        self.log_sums = [0.0, 0, 0.0, 0, 0.0]  # loss sum, finite losses, grad-norm sum, steps, training seconds
        self.events: list[dict[str, Any]] = []

        # 5. start: ActNorm initialisation and the untrained score, or the checkpoint
        if self.ckpt is None:
            start = 0
            init_loss = self._init_actnorm()
            self.untrained = self._evaluate()
        else:
            start = self.ckpt["step"]
            self.elapsed_before = self._restore(self.ckpt)
            self.session_start = time.perf_counter()
        self._start_outputs(start, resumed=self.ckpt is not None)
        if self.ckpt is None:
            self._log(0, {"loss": init_loss, **self.untrained})
            self.last_eval = dict(self.untrained)
            self._save("last.pt", 0)  # the first rollback anchor
        elif self.main:
            self.say(f"resumed {run_dir} at step {start} ({self._metric_text(self.last_eval)})")

        # 6. wrap for several processes and/or torch.compile
        net: Any = model
        if ctx.enabled:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if cfg.compile:
            net = torch.compile(net)
        self.net = net

        # 7. the loop
        from tqdm import tqdm

        bar = tqdm(total=cfg.iters, initial=start, unit="step", dynamic_ncols=True,
                   disable=not (self.main and cfg.progress))  # fmt: skip
        self.bar = bar
        step = start
        stopped_by = None
        try:
            with StopSignal(self.say) as stop:
                for step in range(start + 1, cfg.iters + 1):
                    stop_now = self._step(step, stop)
                    bar.update(1)
                    final = step == cfg.iters
                    evaluate_now = final or (cfg.eval_every and step % cfg.eval_every == 0)
                    if stop_now:
                        evaluate_now = False
                    results = self._evaluate() if evaluate_now else {}
                    if results:
                        self.last_eval = dict(results)
                    if results or step % cfg.log_every == 0 or final or stop_now:
                        self._log(step, results)
                    if results and self.main:
                        self.say(f"step {step}: {self._metric_text(results)}")
                    if results and (self.best is None or results["test_bpd"] < self.best["value"]):
                        self.best = {"value": results["test_bpd"], "step": step, **results}
                        self._save("best.pt", step)
                    if not stop_now and (final or (cfg.sample_every and step % cfg.sample_every == 0)):
                        self._samples(step)
                    if final or stop_now or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                        if final or stop_now or guard.consecutive == 0:  # never overwrite the anchor mid-fault
                            self._save("last.pt", step)
                    if results or final or stop_now:
                        self._curve()
                    if stop_now:
                        stopped_by = stop.requested or "a signal on another process"
                        break
        finally:
            bar.close()
            self.metrics.close()
        if step == start and self.main:  # nothing left to train (resumed at or past --iters)
            self.say(f"{run_dir} is already at step {start} (--iters {cfg.iters}): nothing to train")
        return self._finish(step, stopped_by)

    # ---- pieces of the run -----------------------------------------------------------------------------------
    def _batch(self, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        idx = idx.to(self.train_x.device)
        x = self.train_x[idx].to(self.device, non_blocking=True)
        y = None if self.train_y is None else self.train_y[idx].to(self.device, non_blocking=True)
        return x, y

    @torch.no_grad()
    def _init_actnorm(self) -> float:
        """ActNorm takes its initial statistics from a dedicated larger first batch, all-reduced over processes."""
        n = len(self.train_x)
        init_idx = torch.randperm(n, generator=self.batch_gen)[: min(n, self.cfg.init_batch_size)]
        x, y = self._batch(shard(init_idx, self.ctx))
        loss = self.model(x, y)
        total = torch.tensor([loss.double().sum().item(), len(loss)], dtype=torch.float64, device=self.device)
        distributed.all_reduce_sum(total, self.ctx)
        return (total[0] / total[1]).item() + self.data.log_std_sum

    def _evaluate(self) -> dict[str, float]:
        m = evaluate(self.model, self.data, self.data.test_x, self.data.test_y, self.cfg.eval_samples,
                     self.cfg.eval_batch_size, ctx=self.ctx)  # fmt: skip
        return {f"test_{k}": v for k, v in m.items()}

    def _step(self, step: int, stop: StopSignal) -> bool:
        """One optimiser step (or a skipped one). Returns True when the processes agreed to stop."""
        cfg, ctx, guard = self.cfg, self.ctx, self.guard
        t0 = time.perf_counter()
        idx = shard(torch.randint(0, len(self.train_x), (cfg.batch_size,), generator=self.batch_gen), ctx)
        x, y = self._batch(idx)
        loss = None
        singular = None
        try:
            per_example = self.net(x, y)
            if self.loss_hook is not None:
                per_example = self.loss_hook(step, per_example)
            loss = per_example.mean()
        except SingularWeightError as e:
            singular = str(e)
        finite = loss is not None and bool(torch.isfinite(loss))
        # what every process must agree on: [non-finite losses, singular weights, stop requests, loss sum, count]
        status = torch.tensor(
            [float(loss is not None and not finite), float(singular is not None), float(stop.requested is not None),
             loss.item() if finite else 0.0, 1.0], dtype=torch.float64, device=self.device,
        )  # fmt: skip
        n_nonfinite, n_singular, n_stop, loss_sum, n_procs = distributed.all_reduce_sum(status, ctx).tolist()
        fault = None
        grad_norm = math.nan
        if n_singular > 0:
            fault = f"singular 1x1 convolution ({singular})" if singular else "singular 1x1 convolution"
        elif n_nonfinite > 0:
            fault = "non-finite loss"
        else:
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for p in self.model.parameters() if p.grad is not None]
            if cfg.grad_clip is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip).item()
            else:
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params]).item()
            if math.isfinite(grad_norm):
                self.opt.step()
                guard.ok()
            else:
                fault = "non-finite gradient"
            self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        s = self.log_sums
        if fault is None:
            s[0] += loss_sum / n_procs + self.data.log_std_sum
            s[1] += 1
            s[2] += grad_norm
        s[3] += 1
        s[4] += time.perf_counter() - t0
        if fault is not None:
            self.events.append({"step": step, "kind": "skipped", "reason": fault})
            self.say(f"step {step}: skipped ({fault}); {guard.consecutive + 1} in a row")
            if guard.fault():
                self._rollback(step)
        return n_stop > 0

    def _rollback(self, step: int) -> None:
        """Restore the model and optimiser of the last good checkpoint and lower the learning rate."""
        path = self.ckpt_dir / "last.pt"
        try:
            self.guard.rollback()
        except TrainingError as e:
            self._log(step, {})
            raise TrainingError(
                f"training stopped at step {step}: {e}. The last good checkpoint is {path}. Try a lower --lr, a "
                "longer --warmup, --grad-clip, or --coupling additive"
            ) from None
        state = distributed.broadcast_object(load_checkpoint(path) if self.main else None, self.ctx)
        restore_model(self.model, state["model"], path)
        self.opt.load_state_dict(state["optimizer"])
        factor = warmup_factor(self.sched.last_epoch, self.cfg.warmup) * self.guard.lr_scale
        for group, base in zip(self.opt.param_groups, self.sched.base_lrs, strict=True):
            group["lr"] = base * factor
        self.events.append({"step": step, "kind": "rollback", "to_step": state["step"],
                            "lr_scale": self.guard.lr_scale})  # fmt: skip
        self.say(f"step {step}: {self.cfg.max_faults} faulty steps in a row: rolled back to the checkpoint of step "
                 f"{state['step']}, learning rate x{self.guard.lr_scale:g}")  # fmt: skip

    def _log(self, step: int, results: dict[str, float]) -> None:
        loss_sum, n_loss, grad_sum, n_steps, seconds = self.log_sums
        record: dict[str, Any] = {"step": step}
        if step == 0:
            record["loss"] = results.pop("loss")
        else:
            record["loss"] = loss_sum / n_loss if n_loss else None
            record["lr"] = self.opt.param_groups[0]["lr"]
            record["grad_norm"] = grad_sum / n_loss if n_loss else None
            record["examples_per_s"] = n_steps * self.cfg.batch_size / seconds if seconds > 0 else None
        record.update(results)
        record["time"] = round(self._elapsed(), 3)
        record["skipped"] = self.guard.skipped
        if self.events:
            record["events"] = self.events
        self.log_sums = [0.0, 0, 0.0, 0, 0.0]
        self.events = []
        if not self.main:
            return
        self.metrics.write(record)
        if self.bar is None:
            return
        unit = "img/s" if self.data.is_image else "pts/s"
        name = "bpd" if self.data.is_image else "nll"
        postfix = {}
        if record.get("loss") is not None:
            postfix[f"train_{name}"] = f"{record['loss']:.3f}"
        if self.last_eval:
            postfix[f"test_{name}"] = f"{self.last_eval[f'test_{name}']:.3f}"
        if record.get("examples_per_s"):
            postfix[unit] = f"{record['examples_per_s']:.0f}"
        self.bar.set_postfix(postfix, refresh=False)

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.session_start

    def _payload(self, step: int) -> dict[str, Any] | None:
        rng = distributed.gather_objects(capture_rng_state(), self.ctx)  # every process's streams
        if not self.main:
            return None
        d = self.data
        return {
            "config": self.cfg.to_dict(),
            "model_class": type(self.model).__name__,
            "model_config": dict(self.model.config),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "step": step,
            "rng": {"batch": self.batch_gen.get_state(), "ranks": rng},
            "guard": self.guard.state_dict(),
            "best": self.best,
            "data": {
                "name": d.name,
                "shape": list(d.shape),
                "num_bins": d.num_bins,
                "class_names": d.class_names,
                "mean": d.mean,
                "std": d.std,
                "test_note": d.test_note,
            },  # fmt: skip
            "progress": {
                "elapsed": self._elapsed(),
                "untrained": self.untrained,
                "last": self.last_eval,
                "log_sums": list(self.log_sums),
                "events": list(self.events),
                "world_size": self.ctx.world_size,
                "saved_at": datetime.now().isoformat(timespec="seconds"),
            },  # fmt: skip
        }

    def _save(self, name: str, step: int) -> None:
        payload = self._payload(step)
        if self.main:
            save_checkpoint(payload, self.ckpt_dir / name)

    def _restore(self, ckpt: dict[str, Any]) -> float:
        path = self.ckpt_dir / "last.pt"
        restore_model(self.model, ckpt["model"], path)
        try:
            self.opt.load_state_dict(ckpt["optimizer"])
            self.sched.load_state_dict(ckpt["scheduler"])
            self.guard.load_state_dict(ckpt["guard"])
            self.batch_gen.set_state(ckpt["rng"]["batch"])
            ranks = ckpt["rng"]["ranks"]
            if len(ranks) == self.ctx.world_size:
                restore_rng_state(ranks[self.ctx.rank])
            else:  # another number of processes: the batches continue exactly, the noise streams are reseeded
                torch.manual_seed(self.cfg.seed + 10_000 * (self.ctx.rank + 1) + ckpt["step"])
                self.say(f"resuming with {self.ctx.world_size} processes instead of {len(ranks)}: the batches "
                         "continue exactly, the dequantization noise is reseeded")  # fmt: skip
            progress = ckpt["progress"]
            self.best = ckpt.get("best")
            self.untrained = dict(progress["untrained"])
            self.last_eval = dict(progress["last"])
            self.log_sums = list(progress["log_sums"])
            self.events = list(progress["events"])
            return float(progress["elapsed"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: cannot restore the training state ({type(e).__name__}: {e})") from None

    def _start_outputs(self, start: int, resumed: bool) -> None:
        """config.json, the metrics log and the opening lines (rank 0)."""
        self.metrics = _NullLog()
        if not self.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.cfg.to_dict(), indent=2) + "\n"
        atomic_write_bytes(self.run_dir / "config.json", lambda f: f.write(text.encode("utf-8")))
        self.metrics = MetricsLog(self.run_dir, self.cfg.tensorboard, start if resumed else None)
        if resumed:
            return
        procs = f" x {self.ctx.world_size} processes" if self.ctx.enabled else ""
        extras = [x for x in (self.cfg.precision != "fp32" and self.cfg.precision,
                              self.cfg.compile and "compiled") if x]  # fmt: skip
        self.say(f"data: {self.data.describe()}")
        self.say(f"model: {describe_model(self.model)}, on {self.device}{procs}"
                 + (f" ({', '.join(extras)})" if extras else ""))  # fmt: skip
        self.say(f"run directory: {self.run_dir}")
        draws = f", {self.cfg.eval_samples} noise draws each" if self.data.is_image else ""
        levels = f"; bits/dim at {self.data.num_bins} grey levels" if self.data.is_image else ""
        self.say(f"untrained: {self._metric_text(self.untrained)} ({self.data.test_note}{draws}{levels})")

    def _samples(self, step: int) -> None:
        if not self.main:
            return
        caption = f"step {step}"
        try:
            with torch.random.fork_rng(devices=[]):
                picture = sample_picture(self.model, self.data, self.cfg.temperatures, self.cfg.sample_n,
                                         seed=self.cfg.seed, caption=caption)  # fmt: skip
        except (SingularWeightError, ValueError, RuntimeError) as e:
            self.say(f"step {step}: could not draw samples ({type(e).__name__}: {e})")
            return
        viz.save_png(picture, self.run_dir / "samples" / f"step_{step:06d}.png")
        viz.save_png(picture, self.run_dir / "samples.png")
        self.metrics.image("samples", picture, step)

    def _curve(self) -> None:
        if not self.main:
            return
        unit = "bits/dim" if self.data.is_image else "NLL (nats)"
        metric = "test_bpd" if self.data.is_image else "test_nll"
        viz.save_png(viz.training_curve(self.metrics.records, metric, unit), self.run_dir / "curve.png")

    def _finish(self, step: int, stopped_by: str | None) -> TrainResult:
        elapsed = self._elapsed()
        path = self.ckpt_dir / "last.pt"
        if self.main:
            if stopped_by:
                self.say(f"stopped by {stopped_by} at step {step}; saved {path}. Resume with: glowflow train --out "
                         f"{self.run_dir} --resume")  # fmt: skip
            elif self.last_eval:
                key = "test_bpd" if self.data.is_image else "test_nll"
                best = self.best
                best_text = f"; best {best.get(key, best['value']):.3f} at step {best['step']}" if best else ""
                first = self.untrained[key]
                self.say(f"done: {step} steps, {elapsed:.0f} s of training: {self._metric_text(self.last_eval)} "
                         f"(untrained {first:.3f}{best_text})")  # fmt: skip
                self.say(f"outputs: {self.run_dir}/samples.png, curve.png, metrics.jsonl, checkpoints/")
        return TrainResult(
            run_dir=self.run_dir, config=self.cfg, step=step, metrics=dict(self.last_eval),
            untrained=dict(self.untrained), best=self.best, elapsed=elapsed, skipped=self.guard.skipped,
            rollbacks=self.guard.rollbacks, stopped_by=stopped_by, model=self.model, checkpoint=path,
        )  # fmt: skip


class _NullLog:
    """Stands in for the metrics log on processes other than rank 0."""

    records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        pass

    def image(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        pass
