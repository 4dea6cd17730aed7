"""What every study shares: the data choice, the budget, arms (one ``glowflow.train`` run each), the resumable
parallel runner, and the table / JSON / plot writers.

A study is a module with ``NAME``, ``TITLE``, ``DEFAULT_SEEDS``, ``arms(ctx) -> list[Arm]`` and
``report(ctx, results) -> dict``; :func:`main` parses the command line, runs the arms and calls ``report``.

Arms are identified by their training configuration alone (a hash of every :class:`TrainConfig` value that can
change the result), and live in a shared folder (``--arms-dir``, default ``<out>/../arms``): ``ARMS/<slug>/`` is a
glowflow run directory (``config.json``, ``metrics.jsonl``, ``checkpoints/``, ``samples.png``, ``train.log``)
plus ``result.json``, written last. So

- an arm whose ``result.json`` exists is never trained again: an interrupted study re-run with the same command
  continues where it stopped (an arm cut off mid-training resumes from its ``checkpoints/last.pt``);
- studies share arms: the base model (L=2, K=8, width 64, LU 1x1 conv, affine coupling, Glow conditioner, uniform
  dequantization) trained by the permutation x coupling study for seeds 0, 1, 2 is also the temperature study's
  model, the dequantization study's uniform arm and the conditioner study's ``glow`` arm.

With ``--jobs J`` (J > 1) arms train in J separate processes with ``torch.set_num_threads(cpus // J)`` each.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import platform
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from glowflow import viz  # noqa: E402
from glowflow.errors import DataError  # noqa: E402
from glowflow.training import TrainConfig  # noqa: E402

STUDIES_DIR = ROOT / "studies"
RESULTS_DIR = STUDIES_DIR / "results"
DEFAULT_MNIST_DIR = ROOT / ".." / "shared" / "data" / "mnist-5k"

# ---- the budget ---------------------------------------------------------------------------------------------------
# Every arm of every study starts from BASE (image size and grey levels come from the data). The numbers are
# calibrated in studies/README.md ("Budget and calibration"): on this 2-core CPU with --jobs 2 the six studies take
# about 3.5 hours together.
BASE: dict[str, Any] = dict(
    levels=2, steps=8, hidden=64, coupling="affine", permutation="lu", conditioner="glow", mask="channel",
    dequantization="uniform", precision="fp32", n_bits=None, pad=None, conditional=False,
    batch_size=64, iters=1500, lr=1e-3, warmup=150, optimizer="adam", grad_clip=50.0, init_batch_size=512,
    eval_every=250, eval_samples=4, eval_size=None, eval_batch_size=500,
    sample_every=0, sample_n=32, temperatures=[0.0, 0.5, 0.7, 1.0], checkpoint_every=250, log_every=25, progress=False,
)  # fmt: skip
# --quick: about a second per arm, for the tests (tiny model, 3 steps, a 32-image test subset, 2 noise draws,
# evaluated at the start and the end only).
QUICK: dict[str, Any] = dict(
    steps=2, hidden=8, batch_size=16, iters=3, warmup=2, init_batch_size=64, eval_every=0, eval_samples=2,
    eval_size=32, eval_batch_size=64, sample_n=4, temperatures=[0.0, 1.0], checkpoint_every=0, log_every=1,
)  # fmt: skip
# Measured on the 2-core CPU this was written on (torch 2.13, MNIST-5k 28x28, the base arm; studies/README.md):
# seconds per optimiser step with one thread per job and two jobs running (the default), or one job with two
# threads; an evaluation (1,000 test images x 4 noise draws) costs about as much as 17-24 optimiser steps; relative
# cost per step of the variants that are not just a different area x depth (measured: gated at width 13).
CALIBRATION: dict[str, float] = dict(
    s_per_step_jobs2=0.43, s_per_step_jobs1=0.28, eval_in_steps=20.0, overhead_s=15.0, variational=2.6, gated=1.8,
    conditional=1.07, digits=0.3,
)  # fmt: skip
# Settings that do not change what an arm computes: left out of its identity.
NOT_IDENTITY = frozenset({"out", "data_dir", "download", "device", "threads", "progress", "tensorboard", "preset",
                          "checkpoint_every", "eval_batch_size", "log_every", "sample_n", "temperatures"})  # fmt: skip


# ---- data ---------------------------------------------------------------------------------------------------------
@dataclass
class DataChoice:
    name: str  # "mnist" or "digits"
    data_dir: str | None
    note: str
    shape: tuple[int, int, int]
    num_bins: int


def resolve_data(choice: str = "auto", data_dir: str | os.PathLike | None = None) -> DataChoice:
    """MNIST-5k from ``data_dir`` (default ``../shared/data/mnist-5k``) when it is there (``auto``) or asked for
    (``mnist``); otherwise scikit-learn's bundled 8x8 digits, with a note saying so."""
    from glowflow.data import load_dataset

    where = Path(data_dir) if data_dir is not None else DEFAULT_MNIST_DIR
    if choice in ("auto", "mnist"):
        try:
            train = load_dataset("mnist", where, "train")
            test = load_dataset("mnist", where, "test")
        except (DataError, FileNotFoundError, OSError) as e:
            if choice == "mnist":
                raise SystemExit(f"--data mnist: cannot read MNIST idx files from {where}: {e}") from None
        else:
            c, h, w = train.data.shape[1:]
            note = (f"MNIST from {where.resolve()}: {len(train)} train / {len(test)} test images, {h}x{w}, "
                    "256 grey levels")  # fmt: skip
            return DataChoice("mnist", str(where.resolve()), note, (c, h, w), 256)
        note = (f"MNIST-5k not found in {where.resolve()}: using scikit-learn's bundled 8x8 digits (17 grey levels) "
                "instead - numbers are not comparable with MNIST ones")  # fmt: skip
    elif choice == "digits":
        note = "scikit-learn's bundled 8x8 digits (17 grey levels), as asked (--data digits)"
    else:
        raise SystemExit(f"--data must be auto, mnist or digits, got {choice!r}")
    train = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test")
    note += f": {len(train)} train / {len(test)} test images"
    return DataChoice("digits", None, note, tuple(train.data.shape[1:]), train.num_bins)


# ---- arms ---------------------------------------------------------------------------------------------------------
def identity(config: dict[str, Any]) -> str:
    """A short hash of everything in ``config`` that can change an arm's result. Values equal to TrainConfig's
    defaults are left out, so that a field added to TrainConfig later does not orphan the arms already trained
    (BASE names every setting that matters explicitly)."""
    defaults = TrainConfig().to_dict()
    kept = {k: v for k, v in sorted(config.items())
            if k not in NOT_IDENTITY and (k not in defaults or v != defaults[k] or k in BASE)}  # fmt: skip
    return hashlib.sha1(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class Arm:
    """One training run: a full TrainConfig as a dict, plus optional extra test evaluations."""

    config: dict[str, Any]
    iw_samples: int = 0  # also score the final model with this many noise draws: mean bound and importance-weighted

    @property
    def key(self) -> str:
        return identity(self.config)

    @property
    def slug(self) -> str:
        c = self.config
        parts = [c["data"] + (f"{c['pad']}" if c.get("pad") else ""), f"L{c['levels']}K{c['steps']}w{c['hidden']}",
                 c["permutation"], c["coupling"]]  # fmt: skip
        if c["conditioner"] != "glow":
            parts.append(c["conditioner"])
        if c["dequantization"] != "uniform":
            parts.append(c["dequantization"])
        if c.get("conditional"):
            parts.append("cond")
        parts += [f"i{c['iters']}", f"s{c['seed']}", self.key]
        return "-".join(parts)

    def cost(self) -> float:
        """Estimated seconds of one optimiser step relative to the base arm's (see :data:`CALIBRATION`)."""
        c = self.config
        side = 8 if c["data"] == "digits" else (c.get("pad") or 28)

        def flops(levels: int, steps: int, side: int) -> float:  # the steps of flow's area, summed over levels
            return steps * sum(side * side / 4 ** (level + 1) for level in range(levels))

        rel = flops(c["levels"], c["steps"], side) / flops(BASE["levels"], BASE["steps"], side)
        rel *= (side / 28) ** 2 if c["data"] != "digits" else 1.0
        if c["dequantization"] == "variational":
            rel *= CALIBRATION["variational"]
        if c["conditioner"] == "gated":
            rel *= CALIBRATION["gated"]
        if c.get("conditional"):
            rel *= CALIBRATION["conditional"]
        return rel * (c["batch_size"] / BASE["batch_size"])

    def estimate_seconds(self, jobs: int) -> float:
        """Estimated wall seconds of this arm (training, evaluations, extra evaluations, start-up)."""
        c = self.config
        s_step = CALIBRATION["s_per_step_jobs2" if jobs > 1 else "s_per_step_jobs1"] * self.cost()
        if c["data"] == "digits":
            s_step *= CALIBRATION["digits"]
        evals = 2 + (c["iters"] // c["eval_every"] if c["eval_every"] else 0)
        eval_steps = CALIBRATION["eval_in_steps"] * (c["eval_samples"] / 4) * ((c["eval_size"] or 1000) / 1000)
        extra = 2 * self.iw_samples / c["eval_samples"] if self.iw_samples else 0
        return s_step * (c["iters"] + eval_steps * (evals + extra)) + CALIBRATION["overhead_s"]


def estimate_seconds(arms: Iterable[Arm], arms_dir: Path, jobs: int) -> float:
    """Estimated wall seconds to run the arms of ``arms`` not yet done, ``jobs`` at a time."""
    unique: dict[str, Arm] = {}
    for arm in arms:
        if arm.key not in unique or arm.iw_samples > unique[arm.key].iw_samples:
            unique[arm.key] = arm
    todo = [a.estimate_seconds(jobs) for a in unique.values() if arm_done(a, arms_dir) is None]
    if not todo:
        return 0.0
    return max(max(todo), sum(todo) / max(1, jobs))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, value: Any) -> Path:
    from glowflow.io import atomic_write_text

    return atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def arm_done(arm: Arm, arms_dir: Path) -> dict[str, Any] | None:
    """The arm's result when it is complete (with the extra evaluations it asks for), else None."""
    path = arms_dir / arm.slug / "result.json"
    if not path.is_file():
        return None
    try:
        result = read_json(path)
    except (json.JSONDecodeError, OSError):
        return None
    if arm.iw_samples and str(arm.iw_samples) not in result.get("evals", {}):
        return None
    return result


def _training_seconds(records: list[dict[str, Any]], batch_size: int) -> float:
    """Optimiser-step time (batch, forward, backward, update) from ``metrics.jsonl``, evaluation excluded."""
    total, previous = 0.0, 0
    for r in records:
        if r["step"] > 0 and r.get("examples_per_s"):
            total += (r["step"] - previous) * batch_size / r["examples_per_s"]
        previous = r["step"]
    return total


def run_arm(config: dict[str, Any], iw_samples: int, arms_dir: str, threads: int | None) -> dict[str, Any]:
    """Train one arm (or resume it, or only add its missing evaluations) and write its ``result.json``.

    Runs in a worker process with ``--jobs > 1``. Returns the result, or ``{"stopped": ...}`` when a signal
    stopped training (the checkpoint is saved; running the study again resumes it)."""
    import glowflow
    from glowflow.training import evaluate, load_model, prepare_data, read_metrics

    if threads:
        torch.set_num_threads(threads)
    arm = Arm(config, iw_samples)
    run_dir = Path(arms_dir) / arm.slug
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path = run_dir / "result.json"
    result = read_json(result_path) if result_path.is_file() else None
    with open(run_dir / "train.log", "a", encoding="utf-8") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):  # fmt: skip
        if result is None:
            stamp = f"{datetime.now():%Y-%m-%d %H:%M:%S}"
            print(f"==== {stamp} {arm.slug}, {torch.get_num_threads()} thread(s)", flush=True)
            cfg = dict(config, out=str(run_dir))
            resume = (run_dir / "checkpoints" / "last.pt").is_file()
            t0 = time.perf_counter()
            out = glowflow.train(cfg, resume=resume) if resume else glowflow.train(TrainConfig(**cfg))
            if out.stopped_by:
                return {"stopped": out.stopped_by, "arm": arm.slug}
            records = read_metrics(run_dir / "metrics.jsonl")
            train_s = _training_seconds(records, config["batch_size"])
            result = {
                "arm": arm.slug,
                "key": arm.key,
                "config": {k: v for k, v in config.items() if k not in ("progress",)},
                "parameters": sum(p.numel() for p in out.model.parameters()),
                "steps": out.step,
                "test_bpd": out.metrics["test_bpd"],
                "untrained_bpd": out.untrained["test_bpd"],
                "best": out.best,
                "curve": [[r["step"], r["test_bpd"]] for r in records if r.get("test_bpd") is not None],
                "train_curve": [[r["step"], r["loss"]] for r in records if r.get("loss") is not None],
                "wall_s": out.elapsed,  # training + evaluations, over resumes
                "train_s": train_s,  # optimiser steps only
                "s_per_step": train_s / max(out.step, 1),
                "session_wall_s": time.perf_counter() - t0,
                "threads": torch.get_num_threads(),
                "resumed": resume,
                "skipped": out.skipped,
                "rollbacks": out.rollbacks,
                "finished_at": datetime.now().isoformat(timespec="seconds"),
                "evals": {},
            }
        if iw_samples and str(iw_samples) not in result["evals"]:
            t0 = time.perf_counter()
            model, _, _ = load_model(run_dir, "cpu", prefer="last")
            data = prepare_data(TrainConfig(**dict(config, out=str(run_dir))), eval_size=config.get("eval_size"))
            scores = {
                name: evaluate(model, data.test_x, data.test_y, iw_samples, config["eval_batch_size"],
                               importance_weighted=iw)["bpd"]
                for name, iw in (("bound", False), ("importance_weighted", True))
            }  # fmt: skip
            result["evals"][str(iw_samples)] = {**scores, "test_images": len(data.test_x),
                                                "seconds": time.perf_counter() - t0}  # fmt: skip
            print(f"{iw_samples} noise draws: bound {scores['bound']:.4f}, importance-weighted "
                  f"{scores['importance_weighted']:.4f} bits/dim", flush=True)  # fmt: skip
    write_json(result_path, result)
    return result


def _worker(config: dict[str, Any], iw_samples: int, arms_dir: str, threads: int) -> dict[str, Any]:
    try:  # one process per job: no inter-op pool either
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    return run_arm(config, iw_samples, arms_dir, threads)


class Interrupted(Exception):
    pass


def run_arms(
    arms: Iterable[Arm],
    arms_dir: Path,
    jobs: int = 1,
    threads: int | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Run every arm not yet done (``jobs`` at a time, longest first, ``threads`` torch threads each: default
    ``cpus // jobs``); returns ``{arm.key: result}`` for all of them.

    A failed arm is reported and left out of the results; a signal (Ctrl-C) lets the running arms save a
    checkpoint, then raises :class:`Interrupted`."""
    unique: dict[str, Arm] = {}
    for arm in arms:
        if arm.key in unique:
            unique[arm.key].iw_samples = max(unique[arm.key].iw_samples, arm.iw_samples)
        else:
            unique[arm.key] = Arm(dict(arm.config), arm.iw_samples)
    results: dict[str, dict[str, Any]] = {}
    todo: list[Arm] = []
    for key, arm in unique.items():
        done = arm_done(arm, arms_dir)
        if done is not None:
            results[key] = done
        else:
            todo.append(arm)
    todo.sort(key=lambda a: -a.estimate_seconds(jobs))
    jobs = max(1, min(jobs, len(todo)))
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    say(f"arms: {len(unique)} ({len(results)} already done in {arms_dir}, {len(todo)} to run; "
        f"{jobs} at a time, {threads} thread(s) each)")  # fmt: skip
    if not todo:
        return results
    t_start = time.perf_counter()
    failures: list[str] = []
    finished = 0

    def record(arm: Arm, outcome: dict[str, Any] | BaseException) -> None:
        nonlocal finished
        finished += 1
        if isinstance(outcome, BaseException):
            text = "".join(traceback.format_exception_only(type(outcome), outcome)).strip()
            failures.append(f"{arm.slug}: {text}")
            say(f"[{finished}/{len(todo)}] {arm.slug}: FAILED: {text} (see {arms_dir / arm.slug / 'train.log'})")
            return
        if "stopped" in outcome:
            return
        results[arm.key] = outcome
        left = len(todo) - finished
        elapsed = time.perf_counter() - t_start
        eta = f", about {elapsed / finished * left / 60:.0f} min left" if left else ""
        extra = "".join(f", {n} draws: bound {e['bound']:.3f} / IW {e['importance_weighted']:.3f}"
                        for n, e in outcome.get("evals", {}).items())  # fmt: skip
        say(f"[{finished}/{len(todo)}] {arm.slug}: test bpd {outcome['test_bpd']:.4f}{extra} ({outcome['steps']} "
            f"steps, {outcome['wall_s']:.0f} s, {outcome['s_per_step']:.3f} s/step){eta}")  # fmt: skip

    stopped = False
    if jobs == 1:
        before = torch.get_num_threads()
        try:
            for arm in todo:
                try:
                    outcome: Any = run_arm(arm.config, arm.iw_samples, str(arms_dir), threads)
                except KeyboardInterrupt:
                    stopped = True
                    break
                except Exception as e:  # noqa: BLE001 - reported, the other arms go on
                    outcome = e
                record(arm, outcome)
                if isinstance(outcome, dict) and "stopped" in outcome:
                    stopped = True
                    break
        finally:
            torch.set_num_threads(before)
    else:
        queue = list(todo)
        running: dict[Future, Arm] = {}
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            try:
                while queue or running:
                    while queue and len(running) < jobs and not stopped:
                        arm = queue.pop(0)
                        running[pool.submit(_worker, arm.config, arm.iw_samples, str(arms_dir), threads)] = arm
                    if not running:
                        break
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in done:
                        arm = running.pop(fut)
                        try:
                            outcome = fut.result()
                        except Exception as e:  # noqa: BLE001
                            outcome = e
                        record(arm, outcome)
                        if isinstance(outcome, dict) and "stopped" in outcome:
                            stopped = True
                            queue.clear()
            except KeyboardInterrupt:  # the workers got the signal too: they finish their step and save
                stopped = True
                say("interrupted: waiting for the running arms to save their checkpoints ...")
                wait(running)
    if stopped:
        raise Interrupted("interrupted: the running arms saved their checkpoints; run the same command again "
                          "to resume")  # fmt: skip
    if failures:
        say(f"{len(failures)} arm(s) failed:\n  " + "\n  ".join(failures))
    say(f"arms finished in {(time.perf_counter() - t_start) / 60:.1f} min")
    return results


# ---- the study context and command line -------------------------------------------------------------------------
@dataclass
class Context:
    """What a study's ``arms`` and ``report`` need."""

    name: str
    out: Path
    arms_dir: Path
    data: DataChoice
    base: dict[str, Any]  # the full TrainConfig of the base arm, as a dict
    seeds: tuple[int, ...]
    quick: bool
    jobs: int
    threads: int | None
    command: str
    args: argparse.Namespace = field(repr=False)

    def config(self, seed: int = 0, **changes: Any) -> dict[str, Any]:
        """The base configuration with ``changes``, validated."""
        values = dict(self.base, seed=seed, **changes)
        return TrainConfig(**values).validate().to_dict()

    def arm(self, seed: int = 0, iw_samples: int = 0, **changes: Any) -> Arm:
        return Arm(self.config(seed, **changes), iw_samples)

    def parameters(self, **changes: Any) -> int:
        """Parameter count of the Glow that ``self.config(**changes)`` trains (built, not trained)."""
        from glowflow import Glow

        c = self.config(**changes)
        shape = self.data.shape if not c["pad"] else (self.data.shape[0], c["pad"], c["pad"])
        model = Glow(shape, levels=c["levels"], steps=c["steps"], hidden=c["hidden"], coupling=c["coupling"],
                     permutation=c["permutation"], conditioner=c["conditioner"], mask=c["mask"],
                     num_classes=10 if c["conditional"] else None, num_bins=self.data.num_bins,
                     dequantization=c["dequantization"])  # fmt: skip
        return sum(p.numel() for p in model.parameters())


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes integers separated by commas, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds needs distinct integers >= 0, got {text!r}")
    return seeds


def _set_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set takes KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None if value.lower() == "none" else value
    return key.strip().replace("-", "_"), parsed


def default_jobs() -> int:
    """Two processes with one thread each train these small models faster than one with two threads (measured,
    see studies/README.md): the default is one job per CPU core, at most 2."""
    return max(1, min(2, os.cpu_count() or 1))


def add_common_arguments(p: argparse.ArgumentParser, default_seeds: Sequence[int] | None) -> None:
    p.add_argument("--quick", action="store_true", help="tiny models, a few steps (seconds): checks the code path")
    if default_seeds is not None:
        p.add_argument("--seeds", type=parse_seeds, default=None,
                       help=f"training seeds, comma-separated (default {','.join(map(str, default_seeds))}; "
                       f"--quick: at most the first two)")  # fmt: skip
    p.add_argument("--iters", type=int, default=None, help=f"optimiser steps per arm (default {BASE['iters']}, "
                   f"--quick {QUICK['iters']})")  # fmt: skip
    p.add_argument("--jobs", type=int, default=default_jobs(),
                   help="arms trained in parallel, each a separate process (default %(default)s)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per job (default: CPU cores / jobs; 1 with --quick)")  # fmt: skip
    p.add_argument("--data", default="auto", choices=("auto", "mnist", "digits"),
                   help="auto (default): MNIST-5k if present, else the sklearn 8x8 digits")  # fmt: skip
    p.add_argument("--data-dir", default=None, help=f"MNIST idx files (default {DEFAULT_MNIST_DIR})")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--set", dest="overrides", type=_set_value, action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig value of every arm, e.g. --set lr=2e-3 (JSON values)")  # fmt: skip


def build_parser(study: ModuleType) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python studies/{study.NAME}.py", description=study.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    add_common_arguments(p, getattr(study, "DEFAULT_SEEDS", None))
    p.add_argument("--out", default=None, help=f"output folder (default studies/results/{study.NAME})")
    p.add_argument("--arms-dir", default=None, help="where arms are trained and shared (default OUT/../arms)")
    if hasattr(study, "add_arguments"):
        study.add_arguments(p)
    return p


def base_config(data: DataChoice, quick: bool, args: argparse.Namespace) -> dict[str, Any]:
    values = dict(BASE)
    if quick:
        values.update(QUICK)
    values.update(data=data.name, data_dir=data.data_dir, device=args.device)
    if args.iters is not None:
        values["iters"] = args.iters
    for key, value in args.overrides:
        values[key] = value
    try:
        return TrainConfig(**values).validate().to_dict()
    except (TypeError, ValueError) as e:
        raise SystemExit(f"bad budget setting: {e}") from None


def make_context(study: ModuleType, args: argparse.Namespace, argv: Sequence[str] | None = None,
                 data: DataChoice | None = None, out: Path | None = None,
                 arms_dir: Path | None = None) -> Context:  # fmt: skip
    data = data or resolve_data(args.data, args.data_dir)
    out = Path(out or getattr(args, "out", None) or RESULTS_DIR / study.NAME)
    arms_dir = Path(arms_dir or getattr(args, "arms_dir", None) or out.parent / "arms")
    command = " ".join([f"python studies/{study.NAME}.py", *(shlex.quote(a) for a in (argv or []))])
    seeds = getattr(args, "seeds", None) or tuple(study.DEFAULT_SEEDS)[: 2 if args.quick else None]
    threads = args.threads or (1 if args.quick else None)
    return Context(study.NAME, out, arms_dir, data, base_config(data, args.quick, args), tuple(seeds), args.quick,
                   args.jobs, threads, command, args)  # fmt: skip


def finish(ctx: Context, study: ModuleType, results: dict[str, dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Call the study's ``report`` and write ``results.json`` (its summary plus the run's context)."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    before = torch.get_num_threads()
    if ctx.threads:
        torch.set_num_threads(ctx.threads)
    try:
        summary = study.report(ctx, results)
    finally:
        torch.set_num_threads(before)
    payload = {
        "study": ctx.name,
        "title": study.TITLE,
        "command": ctx.command,
        "data": ctx.data.note,
        "quick": ctx.quick,
        "seeds": list(ctx.seeds),
        "jobs": ctx.jobs,
        "budget": {k: v for k, v in ctx.base.items() if k not in ("out", "progress")},
        "study_wall_s": wall_s,
        "environment": environment(),
        "written_at": datetime.now().isoformat(timespec="seconds"),
        **summary,
    }
    write_json(ctx.out / "results.json", payload)
    return payload


def environment() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "machine": platform.machine(), "processor": platform.processor() or None}  # fmt: skip


def main(study: ModuleType, argv: Sequence[str] | None = None) -> int:
    """``python studies/<name>.py ...``: parse, run the arms, report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(study).parse_args(argv)
    ctx = make_context(study, args, argv)
    print(f"== {study.TITLE}")
    print(f"data: {ctx.data.note}")
    print(f"output: {ctx.out}   arms: {ctx.arms_dir}")
    t0 = time.perf_counter()
    arms = study.arms(ctx)
    estimate = estimate_seconds(arms, ctx.arms_dir, ctx.jobs)
    if estimate and not ctx.quick:
        print(f"estimated time: {estimate / 60:.0f} min with --jobs {ctx.jobs} (calibrated on a quiet 2-core CPU)")
    try:
        results = run_arms(arms, ctx.arms_dir, ctx.jobs, ctx.threads)
    except Interrupted as e:
        print(e)
        return 130
    missing = [a.slug for a in arms if a.key not in results]
    if missing and not getattr(study, "PARTIAL_OK", False):
        print(f"not reporting: {len(missing)} arm(s) have no result ({', '.join(missing)})")
        return 1
    finish(ctx, study, results, time.perf_counter() - t0)
    print(f"wrote {ctx.out}/results.json, table.md and the PNGs ({(time.perf_counter() - t0) / 60:.1f} min)")
    return 0


# ---- numbers, tables and pictures -------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def pm(values: Sequence[float], digits: int = 3) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(ctx: Context, title: str, body: str, notes: Sequence[str] = ()) -> Path:
    """``OUT/table.md``: a title, the data and budget line, the table(s) and notes."""
    b = ctx.base
    budget = (f"{b['iters']} optimiser steps per arm, batch {b['batch_size']}, Adam lr {b['lr']:g} "
              f"(warm-up {b['warmup']}), test bpd on {'all' if b['eval_size'] is None else b['eval_size']} test images "
              f"with {b['eval_samples']} dequantization draws averaged")  # fmt: skip
    text = f"# {title}\n\nData: {ctx.data.note}.  \nBudget: {budget}.  \nCommand: `{ctx.command}`\n\n{body}"
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    path = ctx.out / "table.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


figure = viz.figure
labelled_rows = viz.labelled_rows


def save_figure(fig: Any, path: Path) -> Path:
    return viz.save_png(viz.render(fig), path)


def bpd_curves(series: Sequence[tuple[str, list[list[list[float]]]]], title: str, ax: Any = None,
               skip_untrained: bool = True) -> Any:  # fmt: skip
    """Plot test-bpd curves, one band per named series: ``(label, [curve per seed])`` with each curve
    ``[[step, bpd], ...]``; the line is the mean over seeds, the band ± one standard deviation."""
    fig = None
    if ax is None:
        fig = figure(8.0, 5.0)
        ax = fig.add_subplot(1, 1, 1)
    lows, highs = [], []
    for i, (label, curves) in enumerate(series):
        steps = sorted(set.intersection(*[{s for s, _ in c} for c in curves]))
        if skip_untrained:
            steps = [s for s in steps if s > 0] or steps
        values = np.array([[dict((s, v) for s, v in c)[s] for s in steps] for c in curves])
        mean = values.mean(0)
        std = values.std(0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
        color = f"C{i % 10}"
        ax.plot(steps, mean, "o-", ms=3, lw=1.5, color=color, label=label)
        if len(curves) > 1:
            ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, lw=0)
        lows.append(float((mean - std).min()))
        highs.append(float(np.percentile(mean + std, 75)) if len(mean) > 3 else float((mean + std).max()))
    if lows:
        lo, hi = min(lows), max(highs)
        pad = 0.05 * max(hi - lo, 1e-3)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("test bits/dim")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if fig is not None:
        fig.tight_layout()
    return fig


def seed_values(ctx: Context, results: dict[str, dict[str, Any]], arms: Sequence[Arm],
                get: Callable[[dict[str, Any]], float] = lambda r: r["test_bpd"]) -> list[float]:  # fmt: skip
    return [get(results[a.key]) for a in arms if a.key in results]


def seconds(results: dict[str, dict[str, Any]], arms: Sequence[Arm], what: str = "wall_s") -> float:
    """Mean seconds per arm over the arms that have a result."""
    values = [results[a.key][what] for a in arms if a.key in results]
    return float(np.mean(values)) if values else math.nan


def compact_time(s: float) -> str:
    if not math.isfinite(s):
        return "-"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"
