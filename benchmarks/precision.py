"""Does bf16 train as well as float32? Test bits/dim after equal steps, the two precisions side by side.

    python benchmarks/precision.py                          # digits preset and MNIST-5k, fp32 vs bf16, seed 0
    python benchmarks/precision.py --runs mnist5k --seeds 0,1,2,3 --jobs 2   # four seeds, two at a time
    python benchmarks/precision.py --runs mnist5k --seeds 0,1,2,3 --jobs 2 --mnist5k-lr-schedule cosine
    python benchmarks/precision.py --runs digits --json precision.json
    python benchmarks/precision.py --quick                  # a few steps of each (smoke test)

Each run is ``glowflow.train`` with one seed, the same configuration apart from ``precision`` (so the same data
order, initialisation and dequantization noise up to where the precisions' round-off makes the runs diverge), and
the final test bits/dim as the training loop measures it. The rule of glowflow issue 14: ``--precision auto``
(bf16 where the hardware computes it natively) is the training default while ``|bpd_bf16 - bpd_fp32| <= 0.01`` on
both (met on an AMD EPYC Zen 5: benchmarks/README.md, twentieth pass). Each run sets ``precision`` explicitly.

With several ``--seeds`` the report gives each seed's pair, the mean difference over the seeds and its standard
error, and the spread of the fp32 runs alone: how far two trajectories of one precision end apart when only the
seed (or any rounding) differs. A difference is only resolved to 0.01 when that standard error is below 0.01; one
seed cannot say (on MNIST-5k at 1,000 steps four seeds ended 0.29-0.32 bpd apart in fp32 alone). ``auto_as_default``
needs every run's mean difference within the tolerance and, with several seeds, its standard error within it too.
``--jobs N`` trains N runs at a time in separate processes (each MNIST-5k run uses ``--threads`` threads).

Runs:

* ``digits``: the ``digits`` preset as it is (scikit-learn's 8x8 digits, 800 steps), the README's main command;
* ``mnist5k``: MNIST-5k (``--mnist5k-dir``, default ``../shared/data/mnist-5k``: the first 5,000 training and
  1,000 test images as idx files) with L=2, K=8, width 64, batch 64, lr 1e-3, ``--mnist5k-iters`` steps
  (default 1,000), evaluated on the whole test split with 2 noise draws; ``--mnist5k-lr-schedule cosine`` anneals
  the rate over the run (at a constant 1e-3 the test bits/dim swings by 0.2-0.3 between evaluations 50 steps apart,
  so a single final evaluation cannot resolve 0.01; annealed, the final model is settled).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from glowflow.training.optim import LR_SCHEDULES

HERE = Path(__file__).resolve().parent
DEFAULT_MNIST5K = HERE.parent.parent / "shared" / "data" / "mnist-5k"
TOLERANCE = 0.01


def run_configs(args: argparse.Namespace) -> dict[str, dict]:
    """The configurations to train, by run name (``glowflow.train`` keyword arguments)."""
    runs = {"digits": dict(preset="digits", progress=False)}
    if args.mnist5k_dir.is_dir():
        runs["mnist5k"] = dict(
            data="mnist", data_dir=str(args.mnist5k_dir), levels=2, steps=8, hidden=64, batch_size=64, lr=1e-3,
            warmup=100, iters=args.mnist5k_iters, lr_schedule=args.mnist5k_lr_schedule, eval_every=0,
            eval_samples=2, sample_every=0, checkpoint_every=0, threads=args.threads, progress=False,
        )  # fmt: skip
    if args.quick:
        for cfg in runs.values():
            cfg.update(iters=4, warmup=2, eval_every=0, eval_size=64, eval_samples=1)
            cfg.update(sample_every=0, checkpoint_every=0)
    return {name: cfg for name, cfg in runs.items() if name in args.runs}


def train_one(name: str, cfg: dict, seed: int, precision: str) -> dict:
    """One ``glowflow.train`` run in a temporary directory (a top-level function: ``--jobs`` runs it in workers)."""
    import glowflow

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = glowflow.train(out=str(Path(tmp) / f"{name}-{precision}"), device="cpu", seed=seed,
                                precision=precision, **cfg)  # fmt: skip
    return {
        "test_bpd": result.metrics["test_bpd"],
        "steps": result.step,
        "skipped": result.skipped,
        "train_s": result.elapsed,
        "wall_s": time.perf_counter() - t0,
    }


def summarise(cfg: dict, seeds: list[int], runs: dict[tuple[int, str], dict]) -> dict:
    """One configuration's row: each seed's pair, the means, the mean difference and its standard error, and the
    spread (sample standard deviation over seeds) of each precision's own runs."""
    per_seed = []
    for seed in seeds:
        fp32, bf16 = runs[seed, "fp32"], runs[seed, "bf16"]
        per_seed.append({"seed": seed, "fp32": fp32, "bf16": bf16, "difference": bf16["test_bpd"] - fp32["test_bpd"]})
    differences = [r["difference"] for r in per_seed]
    row: dict = {"config": cfg, "seeds": seeds, "per_seed": per_seed}
    for precision in ("fp32", "bf16"):
        bpds = [r[precision]["test_bpd"] for r in per_seed]
        row[precision] = {
            "test_bpd": statistics.fmean(bpds),
            "spread": statistics.stdev(bpds) if len(bpds) > 1 else None,
            "steps": per_seed[0][precision]["steps"],
            "skipped": sum(r[precision]["skipped"] for r in per_seed),
            "train_s": statistics.fmean(r[precision]["train_s"] for r in per_seed),
        }
    row["difference"] = statistics.fmean(differences)
    row["difference_stderr"] = statistics.stdev(differences) / math.sqrt(len(seeds)) if len(seeds) > 1 else None
    row["within_tolerance"] = abs(row["difference"]) <= TOLERANCE
    row["resolved"] = row["difference_stderr"] is None or row["difference_stderr"] <= TOLERANCE
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="digits,mnist5k", help="comma-separated among digits, mnist5k")
    parser.add_argument("--mnist5k-dir", type=Path, default=DEFAULT_MNIST5K)
    parser.add_argument("--mnist5k-iters", type=int, default=1000)
    schedule_help = "the MNIST-5k runs' learning rate after warm-up (glowflow.train's lr_schedule)"
    parser.add_argument("--mnist5k-lr-schedule", choices=LR_SCHEDULES, default="constant", help=schedule_help)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the MNIST-5k runs (digits: preset)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; each trains both precisions")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at a time, each in its own process")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="a few steps per run (smoke test)")
    args = parser.parse_args(argv)
    args.runs = [r for r in args.runs.split(",") if r]
    from glowflow.checks import SEED
    from glowflow.training.devices import native_bf16

    try:
        seeds = sorted({int(s) for s in args.seeds.split(",") if s.strip()})
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    if not seeds:
        parser.error("--seeds names no seed")
    for seed in seeds:
        if (problem := SEED.problem(seed)) is not None:
            parser.error(f"--seeds: {seed} {problem}")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")

    results: dict = {"native_bf16": native_bf16(torch.device("cpu")), "tolerance": TOLERANCE, "runs": {}}
    if not args.mnist5k_dir.is_dir() and "mnist5k" in args.runs:
        print(f"MNIST-5k not found in {args.mnist5k_dir}: that run is skipped", file=sys.stderr)
    configs = run_configs(args)
    tasks = [(name, seed, precision) for name in configs for seed in seeds for precision in ("fp32", "bf16")]
    done: dict[tuple[str, int, str], dict] = {}

    def record(task: tuple[str, int, str], out: dict) -> None:
        done[task] = out
        name, seed, precision = task
        print(f"{name} seed {seed} {precision}: test bpd {out['test_bpd']:.4f} after {out['steps']} steps "
              f"({out['train_s']:.0f} s of training)", file=sys.stderr, flush=True)  # fmt: skip

    if args.jobs == 1:
        for task in tasks:
            record(task, train_one(task[0], configs[task[0]], task[1], task[2]))
    else:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(train_one, t[0], configs[t[0]], t[1], t[2]): t for t in tasks}
            for future in as_completed(futures):
                record(futures[future], future.result())
    for name, cfg in configs.items():
        runs = {(seed, precision): done[name, seed, precision] for seed in seeds for precision in ("fp32", "bf16")}
        results["runs"][name] = summarise(cfg, seeds, runs)
    results["auto_as_default"] = bool(results["runs"]) and all(
        r["within_tolerance"] and r["resolved"] for r in results["runs"].values()
    )
    print(report(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return results


def report(results: dict) -> str:
    def opt(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = [
        f"native bf16 on this CPU: {'yes' if results['native_bf16'] else 'no (bf16 is emulated)'}",
        "",
        "| run | steps | seeds | fp32 test bpd (mean) | bf16 test bpd (mean) | bf16 - fp32 | its std. error | "
        "fp32 spread over seeds (sd) | within 0.01 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["runs"].items():
        within = "yes" if r["within_tolerance"] else "NO"
        if not r["resolved"]:
            within += " (not resolved: std. error above the tolerance)"
        lines.append(
            f"| {name} | {r['fp32']['steps']} | {len(r['seeds'])} | {r['fp32']['test_bpd']:.4f} | "
            f"{r['bf16']['test_bpd']:.4f} | {r['difference']:+.4f} | {opt(r['difference_stderr'], '.4f')} | "
            f"{opt(r['fp32']['spread'], '.4f')} | {within} |"
        )
    if any(len(r["seeds"]) > 1 for r in results["runs"].values()):
        lines += ["", "| run | seed | fp32 test bpd | bf16 test bpd | bf16 - fp32 |", "|---|---|---|---|---|"]
        for name, r in results["runs"].items():
            for s in r["per_seed"]:
                lines.append(f"| {name} | {s['seed']} | {s['fp32']['test_bpd']:.4f} | {s['bf16']['test_bpd']:.4f} | "
                             f"{s['difference']:+.4f} |")  # fmt: skip
    verdict = "yes" if results["auto_as_default"] else "no"
    lines += ["", f"--precision auto as the training default (every run within {results['tolerance']}): {verdict}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
