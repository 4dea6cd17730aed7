"""Quality at equal compute: glowflow and normflows' Glow, same architecture, same data, same wall-clock budget.

    python benchmarks/budget.py                          # 20 minutes of training each, MNIST 28x28, test bpd curves
    python benchmarks/budget.py --minutes 5 --eval-every 1
    python benchmarks/budget.py --quick                  # seconds: smoke test of the whole path

The two libraries train one after the other (never in parallel) on the same sequence of training batches, with the
same optimiser (Adam: glowflow's fused implementation as ``glowflow.train`` uses it, torch's default Adam for
normflows, as in bench.py), learning rate, linear warm-up, batch size and ActNorm initialisation batch. The clock that
the budget counts is training time only: batch assembly, forward, backward and optimiser step. ActNorm
initialisation and every evaluation run with the clock stopped.

Evaluation (the same function for both): test bits/dim on a fixed subset of the standard MNIST test split (the
first ``--test-images`` images), dequantization noise averaged over ``--noise-draws`` fixed draws that are
identical for both libraries and every evaluation, ``(-log p(x) + D log N) / (D log 2)`` with ``log p`` from each
library's own log-density. MNIST is read from ``../shared/data/mnist`` (28x28, which both libraries support at
L=2; ``--size 32`` pads to 32x32); without it the 8x8 scikit-learn digits (17 levels) are used, with a note.

Outputs: a table of both curves at the common evaluation times, ``benchmarks/budget.png`` and ``--json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _normflows_glow import MISMATCHES, bits_per_dim_from_log_prob, dequantize  # noqa: E402
from _normflows_glow import nf as _nf  # noqa: E402
from bench import DEFAULT_MNIST_DIR, TIMING_TUNABLES, Config, Contender, environment, load_mnist, make_contender  # noqa: E402


@dataclass
class Data:
    name: str
    train: torch.Tensor  # uint8 (N, C, H, W)
    test: torch.Tensor
    num_bins: int
    note: str


def load_data(mnist_dir: Path, size: int, test_images: int) -> Data:
    train = load_mnist(mnist_dir, "train", size)
    test = load_mnist(mnist_dir, "test", size)
    if train is not None and test is not None:
        note = f"MNIST from {mnist_dir} at {size}x{size}" + (" (zero-padded)" if size > 28 else "")
        return Data("mnist", train, test[:test_images], 256, note)
    from glowflow.data import load_dataset

    train_ds, test_ds = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    note = f"MNIST not found in {mnist_dir}: scikit-learn 8x8 digits (17 levels) instead"
    return Data("digits", train_ds.data, test_ds.data[:test_images], 17, note)


@torch.no_grad()
def evaluate(c: Contender, test: torch.Tensor, noise: list[torch.Tensor], num_bins: int, batch: int) -> float:
    """Mean test bits/dim over the fixed images and fixed noise draws (identical code for both libraries)."""
    c.model.eval()
    total, count = 0.0, 0
    num_dims = test[0].numel()
    for u in noise:
        for i in range(0, len(test), batch):
            k = test[i : i + batch].to(c.device)
            x = dequantize(k, num_bins, u[i : i + batch].to(c.device))
            bpd = bits_per_dim_from_log_prob(c.log_prob(x), num_dims, num_bins)
            total += float(bpd.sum())
            count += len(k)
    c.model.train()
    return total / count


def train_for_budget(
    c: Contender, data: Data, args: argparse.Namespace, noise: list[torch.Tensor], log=print
) -> list[dict]:
    """Train ``c`` for ``args.minutes`` of training time, evaluating every ``args.eval_every`` minutes of it."""
    gen = torch.Generator().manual_seed(args.seed)  # the same batch sequence for every library
    torch.manual_seed(args.seed)
    init = data.train[torch.randint(0, len(data.train), (args.init_batch,), generator=gen)].to(c.device)
    c.initialize(init)  # ActNorm data-dependent initialisation: clock stopped
    budget = args.minutes * 60.0
    marks = [args.eval_every * 60.0 * i for i in range(1, math.ceil(args.minutes / args.eval_every) + 1)]
    marks = [min(m, budget) for m in marks]
    curve: list[dict] = []
    if args.eval_at_start:
        curve.append(
            {"train_s": 0.0, "steps": 0, "test_bpd": evaluate(c, data.test, noise, data.num_bins, args.eval_batch)}
        )
    train_s, steps, losses, diverged = 0.0, 0, [], False
    while marks:
        t0 = time.perf_counter()
        k = data.train[torch.randint(0, len(data.train), (args.batch,), generator=gen)].to(c.device)
        for group in c.optimizer.param_groups:  # linear warm-up, then constant
            group["lr"] = args.lr * min(1.0, (steps + 1) / args.warmup_steps)
        loss = c.train_step(k)
        train_s += time.perf_counter() - t0
        steps += 1
        losses.append(loss)
        if not math.isfinite(loss):
            diverged = True
        if train_s >= marks[0] or diverged:
            marks.pop(0)
            t_eval = time.perf_counter()
            bpd = float("nan") if diverged else evaluate(c, data.test, noise, data.num_bins, args.eval_batch)
            recent = losses[-50:]
            point = {
                "train_s": train_s,
                "steps": steps,
                "test_bpd": bpd,
                "train_bpd_recent": sum(recent) / len(recent),
                "eval_s": time.perf_counter() - t_eval,
            }
            curve.append(point)
            log(
                f"  {c.name}: {train_s / 60:6.2f} min, {steps} steps, train bpd {point['train_bpd_recent']:.3f}, "
                f"test bpd {bpd:.4f} (eval {point['eval_s']:.0f} s)"
            )
            if diverged:
                log(f"  {c.name}: non-finite loss at step {steps}; stopping this run")
                break
    return curve


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0, help="training-time budget per library (default 20)")
    parser.add_argument("--eval-every", type=float, default=4.0, help="minutes of training between evaluations")
    parser.add_argument("--eval-at-start", action="store_true", help="also evaluate the initialised, untrained model")
    parser.add_argument("--size", type=int, default=28, choices=(28, 32), help="MNIST image size (32: zero-padded)")
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--steps", type=int, default=16, help="steps of flow per level K")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=200, help="linear learning-rate warm-up (steps)")
    parser.add_argument("--init-batch", type=int, default=256, help="ActNorm initialisation batch")
    parser.add_argument("--test-images", type=int, default=2000, help="fixed test subset: the first N test images")
    parser.add_argument("--noise-draws", type=int, default=2, help="fixed dequantization draws averaged per eval")
    parser.add_argument("--eval-batch", type=int, default=250)
    parser.add_argument("--libs", default="glowflow,normflows", help="comma-separated, run in this order")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_MNIST_DIR)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="default benchmarks/budget.png (none with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny model, seconds of budget (smoke test)")
    if parser.parse_known_args(argv)[0].quick:  # tiny defaults; explicit options still win
        parser.set_defaults(minutes=0.05, eval_every=0.025, steps=1, hidden=8, batch=8, test_images=64, init_batch=32)
        parser.set_defaults(noise_draws=2, warmup_steps=5)
    args = parser.parse_args(argv)
    if argv is None and "GLIBC_TUNABLES" not in os.environ and not args.quick:
        # the same allocator settings as bench.py's timing cases: re-execute once with them set
        os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, GLIBC_TUNABLES=TIMING_TUNABLES))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    libs = [x for x in args.libs.split(",") if x]
    if "normflows" in libs and _nf is None:
        print("normflows is not installed (pip install -e '.[bench]'): glowflow only", file=sys.stderr)
        libs.remove("normflows")
    plot_path = args.plot if args.plot is not None else (None if args.quick else HERE / "budget.png")

    data = load_data(args.mnist_dir, args.size, args.test_images)
    shape = tuple(data.train.shape[1:])
    if shape[-1] % 2**args.levels:
        parser.error(f"{shape[-1]}x{shape[-1]} images are not divisible by 2**levels = {2**args.levels}")
    cfg = Config("budget", shape, args.levels, args.steps, args.hidden, args.batch, data.name, data.num_bins)
    noise_gen = torch.Generator().manual_seed(12345)
    noise = [torch.rand(data.test.shape, generator=noise_gen) for _ in range(args.noise_draws)]
    print(f"data: {data.note}; {len(data.train)} training images, test subset {len(data.test)} images")
    print(f"architecture: {cfg.describe()}; Adam lr {args.lr}, {args.warmup_steps} warm-up steps")
    print(f"budget: {args.minutes:g} min of training per library, evaluated every {args.eval_every:g} min")

    results: dict = {"env": environment(device), "args": {k: str(v) for k, v in vars(args).items()}}
    results.update(config=asdict(cfg), data=data.note, data_name=data.name, mismatches=list(MISMATCHES))
    results.update(curves={}, params={})
    for lib in libs:
        print(f"training {lib} ...", flush=True)
        torch.manual_seed(args.seed)
        c = make_contender(lib, cfg, device, lr=args.lr)
        results["params"][lib] = c.params
        results["curves"][lib] = train_for_budget(c, data, args, noise, log=lambda m: print(m, flush=True))
        del c

    print()
    print(report(results))
    if plot_path is not None:
        plot(results, plot_path)
        print(f"plot: {plot_path}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"results: {args.json}")
    return results


def divergence_index(curve: list[dict]) -> int | None:
    """Index of the evaluation point where the run stopped on a non-finite loss (its test bpd is NaN), or None."""
    return next((j for j, p in enumerate(curve) if not math.isfinite(p["test_bpd"])), None)


def compare_at(curves: dict[str, list[dict]], libs: list[str], i: int) -> str:
    """Whether ``libs[0]`` has the lower test bpd at evaluation ``i``; a run that diverged (non-finite loss, then
    stopped) counts as worse from that point on."""
    values, diverged = [], []
    for lib in libs:
        curve = curves[lib]
        bad = divergence_index(curve)
        diverged.append(bad is not None and i >= bad)
        values.append(curve[i]["test_bpd"] if i < len(curve) else None)
    if diverged[0] or diverged[1]:
        if diverged[0] and diverged[1]:
            return "- (both diverged)"
        return ("NO" if diverged[0] else "yes") + f" ({libs[diverged.index(True)]} diverged)"
    a, b = values
    return "-" if a is None or b is None else ("yes" if a < b else "NO") + f" ({a - b:+.4f})"


def report(results: dict) -> str:
    curves = results["curves"]
    libs = list(curves)
    n = max((len(v) for v in curves.values()), default=0)
    header = ["eval"] + [f"{lib}: min / steps / test bpd" for lib in libs]
    if len(libs) == 2:
        header.append(f"{libs[0]} lower?")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for i in range(n):
        row = [str(i + 1)]
        for lib in libs:
            p = curves[lib][i] if i < len(curves[lib]) else None
            row.append("-" if p is None else f"{p['train_s'] / 60:.2f} / {p['steps']} / {p['test_bpd']:.4f}")
        if len(libs) == 2:
            row.append(compare_at(curves, libs, i))
        lines.append("| " + " | ".join(row) + " |")
    params = ", ".join(f"{lib} {p:,}" for lib, p in results["params"].items())
    lines.append("")
    cfg = results["config"]
    c, h, w = cfg["shape"]
    arch = f"{c}x{h}x{w}, L={cfg['levels']}, K={cfg['steps']}, width {cfg['hidden']}, batch {cfg['batch']}"
    lines.append(f"parameters: {params}; data: {results['data']}; architecture: {arch}")
    lines.append("evaluation time excluded from the budget; rows are the evaluation points (same training-time marks)")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for lib, curve in results["curves"].items():
        pts = [p for p in curve if math.isfinite(p["test_bpd"])]
        (line,) = ax.plot([p["train_s"] / 60 for p in pts], [p["test_bpd"] for p in pts], "o-", label=lib)
        bad = divergence_index(curve)
        if bad is not None and pts:  # mark where the run stopped on a non-finite loss
            x = curve[bad]["train_s"] / 60
            ax.plot([x], [pts[-1]["test_bpd"]], "x", color=line.get_color(), markersize=10, mew=2)
            ax.annotate(f"{lib} diverged (step {curve[bad]['steps']})", (x, pts[-1]["test_bpd"]), xytext=(6, -4),
                        textcoords="offset points", fontsize=8, color=line.get_color())  # fmt: skip
    ax.set_xlabel("training time (min, evaluation excluded)")
    ax.set_ylabel("test bits/dim")
    cfg = results["config"]
    c, h, w = cfg["shape"]
    ax.set_title(
        f"{results['data_name']} {c}x{h}x{w}, L={cfg['levels']}, K={cfg['steps']}, "
        f"width {cfg['hidden']}, batch {cfg['batch']}, lr {float(results['args']['lr']):g}",
        fontsize=9,
    )
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
