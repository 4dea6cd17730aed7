"""Does bf16 train as well as float32? Test bits/dim after equal steps, the two precisions side by side.

    python benchmarks/precision.py                          # digits preset and MNIST-5k, fp32 vs bf16
    python benchmarks/precision.py --runs digits --json precision.json
    python benchmarks/precision.py --quick                  # a few steps of each (smoke test)

Each run is ``glowflow.train`` with one seed, the same configuration apart from ``precision`` (so the same data
order, initialisation and dequantization noise up to where the precisions' round-off makes the runs diverge), and
the final test bits/dim as the training loop measures it. The rule of glowflow issue 14: ``--precision auto``
(bf16 where the hardware computes it natively) becomes the default if ``|bpd_bf16 - bpd_fp32| <= 0.01`` on both.

Runs:

* ``digits``: the ``digits`` preset as it is (scikit-learn's 8x8 digits, 800 steps), the README's main command;
* ``mnist5k``: MNIST-5k (``--mnist5k-dir``, default ``../shared/data/mnist-5k``: the first 5,000 training and
  1,000 test images as idx files) with L=2, K=8, width 64, batch 64, lr 1e-3, ``--mnist5k-iters`` steps
  (default 1,000), evaluated on the whole test split with 2 noise draws.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_MNIST5K = HERE.parent.parent / "shared" / "data" / "mnist-5k"
TOLERANCE = 0.01


def run_configs(args: argparse.Namespace) -> dict[str, dict]:
    """The configurations to train, by run name (``glowflow.train`` keyword arguments)."""
    runs = {"digits": dict(preset="digits", progress=False)}
    if args.mnist5k_dir.is_dir():
        runs["mnist5k"] = dict(
            data="mnist", data_dir=str(args.mnist5k_dir), levels=2, steps=8, hidden=64, batch_size=64, lr=1e-3,
            warmup=100, iters=args.mnist5k_iters, eval_every=0, eval_samples=2, sample_every=0,
            checkpoint_every=0, threads=args.threads, progress=False,
        )  # fmt: skip
    if args.quick:
        for cfg in runs.values():
            cfg.update(iters=4, warmup=2, eval_every=0, eval_size=64, eval_samples=1)
            cfg.update(sample_every=0, checkpoint_every=0)
    return {name: cfg for name, cfg in runs.items() if name in args.runs}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="digits,mnist5k", help="comma-separated among digits, mnist5k")
    parser.add_argument("--mnist5k-dir", type=Path, default=DEFAULT_MNIST5K)
    parser.add_argument("--mnist5k-iters", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the MNIST-5k runs (digits: preset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="a few steps per run (smoke test)")
    args = parser.parse_args(argv)
    args.runs = [r for r in args.runs.split(",") if r]

    import glowflow
    from glowflow.training.devices import native_bf16

    device = torch.device("cpu")
    results: dict = {"native_bf16": native_bf16(device), "tolerance": TOLERANCE, "runs": {}}
    if not args.mnist5k_dir.is_dir() and "mnist5k" in args.runs:
        print(f"MNIST-5k not found in {args.mnist5k_dir}: that run is skipped", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in run_configs(args).items():
            row: dict = {"config": cfg}
            for precision in ("fp32", "bf16"):
                t0 = time.perf_counter()
                out = Path(tmp) / f"{name}-{precision}"
                result = glowflow.train(out=str(out), device="cpu", seed=args.seed, precision=precision, **cfg)
                row[precision] = {
                    "test_bpd": result.metrics["test_bpd"],
                    "steps": result.step,
                    "skipped": result.skipped,
                    "train_s": result.elapsed,
                    "wall_s": time.perf_counter() - t0,
                }
                print(f"{name} {precision}: test bpd {result.metrics['test_bpd']:.4f} after {result.step} steps "
                      f"({result.elapsed:.0f} s of training)", file=sys.stderr, flush=True)  # fmt: skip
            row["difference"] = row["bf16"]["test_bpd"] - row["fp32"]["test_bpd"]
            row["within_tolerance"] = abs(row["difference"]) <= TOLERANCE
            results["runs"][name] = row
    results["auto_as_default"] = bool(results["runs"]) and all(r["within_tolerance"] for r in results["runs"].values())
    print(report(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return results


def report(results: dict) -> str:
    lines = [
        f"native bf16 on this CPU: {'yes' if results['native_bf16'] else 'no (bf16 is emulated)'}",
        "",
        "| run | steps | fp32 test bpd | bf16 test bpd | bf16 - fp32 | within 0.01 |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results["runs"].items():
        lines.append(
            f"| {name} | {r['fp32']['steps']} | {r['fp32']['test_bpd']:.4f} | {r['bf16']['test_bpd']:.4f} | "
            f"{r['difference']:+.4f} | {'yes' if r['within_tolerance'] else 'NO'} |"
        )
    verdict = "yes" if results["auto_as_default"] else "no"
    lines += ["", f"--precision auto as the training default (every run within {results['tolerance']}): {verdict}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
