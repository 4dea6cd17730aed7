"""How fast could each library's training step, evaluation and sampling be with the kernels it calls?

Every aten / oneDNN operation of one training step (evaluation pass, sampling call) is recorded at the dispatcher
(a ``TorchDispatchMode``: the operation, its argument shapes, strides, dtypes and scalars), and every distinct call
is then replayed on its own, on fresh tensors of the same shapes and layouts, ``--repeats`` times; its best time is
that kernel's **own measured peak** at that shape. Summed over the calls of the step this gives:

* **kernel bound**: the replayed time of the convolutions and matrix products alone, the least time the step can
  take while it calls these kernels at these shapes (the architecture fixes the shapes);
* **all-ops bound**: every aten operation replayed, so ``measured - all-ops`` is what the Python code, the
  dispatcher and the autograd engine add around the operations;
* **kernel efficiency in the step**: the kernels' replayed time against their time inside the step (each kernel
  call timed at the dispatcher, the same calls), i.e. how close the step runs them to their own peak.

``measured`` is the median (and the fastest) of bench.py's interleaved rounds (every library once per round on a
fresh batch, the order reversed every round; 5 training, 7 evaluation and 7 sampling rounds after 2 warm-up calls,
plain Adam for the peers, glowflow's fused Adam), so its ratios hold on a machine whose speed drifts. The replays
run in ``--repeats`` rounds over all the calls of a pass, so that a slow moment of a shared machine costs one
round, not one call's every sample.

The table's last column is the best ratio against the fastest other library of the pass that a library could
reach if everything but its kernels took no time: its kernel bound against the other's fastest measured round
(throughput; for sampling latency the inverse). It tells a target that more engineering around the kernels can
reach from one that needs faster kernels (issue 14's criterion for closing a target as out of reach). Below each
config's table, one line per target of issue 14 says which it is (``target_verdicts``).

    python benchmarks/kernel_bound.py                                   # glowflow alone, S and M
    python benchmarks/kernel_bound.py --peers /work/peers --configs S   # with normflows, rosinality, y0ast
    python benchmarks/kernel_bound.py --top 15                          # the 15 costliest operations of each step
    python benchmarks/kernel_bound.py --peers /work/peers --bf16        # and glowflow with bf16 conditioners
    python benchmarks/kernel_bound.py --quick                           # tiny configs: every code path, ~30 s

Run it under the same ``GLIBC_TUNABLES`` as bench.py's timing cases (the header prints what is set).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _normflows_glow import nf  # noqa: E402
from bench import (  # noqa: E402
    CONFIGS,
    DEFAULT_MNIST_DIR,
    PEERS,
    QUICK_CONFIGS,
    Batches,
    OpTimes,
    interleaved,
    is_kernel,
    make_contender,
    sync,
)

_aten = torch.ops.aten
SKIP = {_aten._local_scalar_dense.default, _aten.item.default}  # host reads: no kernel, nothing to replay


@dataclass
class Call:
    """One distinct operation call: the op, a recipe for its arguments, how often the step made it."""

    func: object
    args: tuple
    kwargs: dict
    count: int = 0
    best_s: float = field(default=float("inf"))

    @property
    def kernel(self) -> bool:
        return is_kernel(self.func)


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple
    stride: tuple
    dtype: torch.dtype
    device: str

    def make(self) -> torch.Tensor:
        """A tensor of this shape and strides (expanded dimensions included) over a freshly filled storage."""
        size = 1 + sum((n - 1) * st for n, st in zip(self.shape, self.stride, strict=True)) if all(self.shape) else 0
        base = torch.empty(size, dtype=self.dtype, device=self.device)
        if base.dtype.is_floating_point:
            base.uniform_(0.1, 1.0)  # positive: logs, divisions and square roots stay finite when replayed
        elif base.dtype == torch.bool:
            base.fill_(True)
        else:
            base.zero_()
        return base.as_strided(self.shape, self.stride)


@dataclass(frozen=True)
class OpaqueSpec:
    """An opaque oneDNN tensor (a weight prepacked into oneDNN's blocked layout), replayed as itself: it has no
    strides to rebuild it from (it reports zeros), and the operations only read it."""

    shape: tuple
    dtype: torch.dtype
    tensor: torch.Tensor = field(compare=False, hash=False, repr=False)

    def make(self) -> torch.Tensor:
        return self.tensor


def _spec(x):
    if isinstance(x, torch.Tensor):
        if x.is_mkldnn:
            return OpaqueSpec(tuple(x.shape), x.dtype, x)
        return TensorSpec(tuple(x.shape), tuple(x.stride()), x.dtype, str(x.device))
    return x


def _key(func, args, kwargs) -> str:
    return repr((str(func), args, sorted(kwargs.items())))


class Recorder(TorchDispatchMode):
    """Records every dispatched operation as a :class:`Call` (argument recipes, not the tensors)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, Call] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in SKIP:
            a, k = tree_map(_spec, tuple(args)), tree_map(_spec, dict(kwargs))
            key = _key(func, a, k)
            call = self.calls.setdefault(key, Call(func, a, k))
            call.count += 1
        return func(*args, **kwargs)


def replay(calls: list[Call], repeats: int, device: str) -> None:
    """Best time of each call on its own, on fresh tensors allocated outside the timing. The calls are replayed in
    ``repeats`` rounds of one replay each (after one untimed round), so that every call's best time is drawn from
    the whole replay period rather than from one moment of a machine whose speed drifts."""
    prepared = []
    for call in calls:
        args = tree_map(lambda s: s.make() if isinstance(s, (TensorSpec, OpaqueSpec)) else s, call.args)
        kwargs = tree_map(lambda s: s.make() if isinstance(s, (TensorSpec, OpaqueSpec)) else s, call.kwargs)
        prepared.append((call, args, kwargs))
    for r in range(repeats + 1):
        for call, args, kwargs in prepared:
            if call.best_s == 0.0:
                continue
            sync(device)
            t0 = time.perf_counter()
            try:
                call.func(*args, **kwargs)
            except RuntimeError:  # an op whose replay on made-up values is invalid (e.g. index bounds): not timed
                call.best_s = 0.0
                continue
            sync(device)
            if r:
                call.best_s = min(call.best_s, time.perf_counter() - t0)


def in_step_kernel_time(fn: Callable[[], object], calls: int = 3) -> float:
    """Seconds per call spent in the kernel ops (``bench.KERNEL_OPS``) inside ``fn``, each timed at the dispatcher
    (bench.py's :class:`OpTimes`, not ``torch.profiler``, which slowed oneDNN's calls)."""
    timer = OpTimes()
    with timer:
        for _ in range(calls):
            fn()
    return sum(sec for func, (_, sec) in timer.times.items() if is_kernel(func)) / calls


def _name(func) -> str:
    ns, op = str(func).split(".")[:2]
    return f"{ns}::{op}"


def record(fn: Callable[[], object]) -> list[Call]:
    """The distinct operation calls of one call of ``fn``, with their counts."""
    rec = Recorder()
    with rec:
        fn()
    return list(rec.calls.values())


def summarize(calls: list[Call], measured: list[float], in_step: float) -> dict:
    """One pass's figures from its replayed ``calls``, its interleaved times and its profiled kernel time."""
    kernel = sum(c.count * c.best_s for c in calls if c.kernel)
    every = sum(c.count * c.best_s for c in calls)
    return {
        "measured_s": statistics.median(measured),
        "measured_min_s": min(measured),
        "kernel_bound_s": kernel,
        "all_ops_bound_s": every,
        "kernel_in_step_s": in_step,
        "ops_per_call": sum(c.count for c in calls),
        "kernel_calls": sum(c.count for c in calls if c.kernel),
        "by_op": sorted(
            (
                {
                    "op": op,
                    "count": sum(c.count for c in calls if _name(c.func) == op),
                    "replay_ms": 1e3 * sum(c.count * c.best_s for c in calls if _name(c.func) == op),
                }
                for op in {_name(c.func) for c in calls}
            ),
            key=lambda r: -r["replay_ms"],
        ),  # fmt: skip
        "top": [
            {"op": _name(c.func), "count": c.count, "best_ms": 1e3 * c.best_s, "shapes": _shapes(c)}
            for c in sorted((c for c in calls if c.kernel), key=lambda c: -c.count * c.best_s)
        ],
    }


def _shapes(call: Call) -> str:
    return " ".join("x".join(map(str, a.shape)) for a in call.args if isinstance(a, TensorSpec))


def run_config(cfg_name: str, libs: list[str], args) -> dict:
    """Every library of ``libs`` on one config: interleaved timings of the three passes (bench.py's rounds: a fresh
    batch per round, the order reversed every round), then each pass recorded, replayed and profiled."""
    cfg = (QUICK_CONFIGS if args.quick else CONFIGS)[cfg_name]
    torch.manual_seed(0)
    batches = Batches(cfg, args.device, Path(args.mnist_dir))
    contenders = [make_contender(lib, cfg, args.device, peers=args.peers) for lib in libs]
    if args.bf16:
        contenders.append(make_contender("glowflow", cfg, args.device, precision="bf16", name="glowflow-bf16"))
    for c in contenders:
        c.initialize(batches.next())

    def dequantized(k: torch.Tensor) -> torch.Tensor:
        return (k.float() + torch.rand(k.shape, device=k.device)) / cfg.num_bins - 0.5

    def evaluate(c, k):
        c.model.eval()
        with torch.no_grad():
            c.log_prob(dequantized(k))

    def sample(c, _):
        c.model.eval()
        with torch.no_grad():
            c.sample(16, 0.7)

    def train(c, k):
        c.model.train()
        c.train_step(k)

    # evaluation and sampling first, on the initialised weights (as in bench.py: a few steps on random pixels can
    # leave a port's sampler with a non-finite scale)
    passes = (("eval", evaluate, 7), ("sample", sample, 7), ("train", train, 5))
    if args.quick:
        passes = tuple((name, fn, 1) for name, fn, _ in passes)
    out: dict = {c.name: {"batch": cfg.batch} for c in contenders}
    recorded: dict[str, dict[str, tuple[list[Call], list[float], float]]] = {c.name: {} for c in contenders}
    for name, fn, rounds in passes:
        fns = {c.name: (lambda k, c=c, fn=fn: fn(c, k)) for c in contenders}
        times = interleaved(fns, batches.next, warmup=2, rounds=rounds * args.rounds_scale, device=args.device)
        k = batches.next()
        for c in contenders:
            one = functools.partial(fn, c, k)
            in_step = in_step_kernel_time(one) if args.device == "cpu" else float("nan")
            recorded[c.name][name] = (record(one), times[c.name], in_step)
    # a library's three passes replayed together, round after round, so that each call's best time is drawn from
    # the whole replay of the library (tens of seconds) rather than from one moment of a drifting machine
    for c in contenders:
        replay([call for calls, _, _ in recorded[c.name].values() for call in calls], args.repeats, args.device)
        for name, (calls, times, in_step) in recorded[c.name].items():
            out[c.name][name] = summarize(calls, times, in_step)
    return out


def report(results: dict, top: int, quick: bool = False) -> None:
    for cfg_name, libs in results.items():
        print(f"\n### config {cfg_name} ({(QUICK_CONFIGS if quick else CONFIGS)[cfg_name].describe()})\n")
        print("| library | pass | measured ms (median / min) | kernel bound ms | all-ops bound ms | kernels in the "
              "pass ms | kernels at their own peak | time outside kernels | aten calls | ratio now | best ratio at "
              "the kernel bound |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for lib, r in libs.items():
            for name in ("train", "eval", "sample"):
                a = r[name]
                rivals = _rivals(lib, libs)
                now = best = ""
                if rivals:
                    fastest = min(o[name]["measured_s"] for o in rivals)
                    now = a["measured_s"] / fastest if name == "sample" else fastest / a["measured_s"]
                    now, best = f"{now:.2f}x", f"{_best_ratio(name, a, rivals):.2f}x"
                in_pass = a["kernel_in_step_s"]
                eff = f"{100 * a['kernel_bound_s'] / in_pass:.0f} %" if in_pass == in_pass and in_pass > 0 else ""
                print(f"| {lib} | {name} | {1e3 * a['measured_s']:.1f} / {1e3 * a['measured_min_s']:.1f} | "
                      f"{1e3 * a['kernel_bound_s']:.1f} | {1e3 * a['all_ops_bound_s']:.1f} | {1e3 * in_pass:.1f} | "
                      f"{eff} | {100 * (1 - a['kernel_bound_s'] / a['measured_s']):.0f} % | {a['ops_per_call']} | "
                      f"{now} | {best} |")  # fmt: skip
        print("\nratios against the fastest other library of the pass (throughput: other / this; sampling latency: "
              "this / other): now = medians of the interleaved rounds; at the kernel bound = this library's kernel "
              "bound against the other's fastest round (best case against best case)")  # fmt: skip
        verdicts = [line for lib, r in libs.items() for line in target_verdicts(lib, r, libs)]
        if verdicts:
            print("\nissue 14's speed targets at the kernel bound:\n")
            print("\n".join(verdicts))
        if top:
            for lib, r in libs.items():
                print(f"\n{lib}, training step: operations by replayed time (all calls of each op)\n")
                for t in r["train"]["by_op"][:top]:
                    print(f"  {t['op']:36s} x{t['count']:5d}  {t['replay_ms']:8.2f} ms")
                print(f"\n{lib}, training step: the {top} costliest kernel calls (count x own best time)\n")
                for t in r["train"]["top"][:top]:
                    print(f"  {t['op']:32s} x{t['count']:3d}  {t['best_ms']:7.3f} ms  {t['shapes']}")


TARGETS = {
    ("glowflow", "train"): 1.5,
    ("glowflow", "eval"): 1.5,
    ("glowflow", "sample"): 0.6,
    ("glowflow-bf16", "train"): 3.0,
}
"""Issue 14's speed targets against the fastest other library: throughput ratios at least this, sampling latency
ratios at most this (bf16 training against the others' float32)."""


def target_verdicts(lib: str, r: dict, libs: dict) -> list[str]:
    """For each of issue 14's targets of ``lib``'s passes: whether its kernel bound against the fastest other
    library's fastest round reaches the target (then the time around the kernels is what stands between), or not
    (then no amount of work around the kernels reaches it: it needs faster kernels, a proof of out of reach where
    they already run at >= 80 % of their own peak in the pass)."""
    rivals = _rivals(lib, libs)
    lines = []
    for (name_lib, name), target in TARGETS.items():
        if name_lib != lib or not rivals:
            continue
        a = r[name]
        latency = name == "sample"
        best = _best_ratio(name, a, rivals)
        reached = best <= target if latency else best >= target
        in_pass = a["kernel_in_step_s"]
        eff = a["kernel_bound_s"] / in_pass if in_pass == in_pass and in_pass > 0 else float("nan")
        sign = "<=" if latency else ">="
        if reached:
            why = "reachable: what stands between is the time around the kernels"
        elif eff >= 0.8:
            why = f"out of reach with these kernels, which run at {100 * eff:.0f} % of their own peak in the pass"
        else:
            why = f"not reachable at this bound, and the kernels run at {100 * eff:.0f} % of their own peak"
        lines.append(f"- {lib} {name} {sign} {target}x: {best:.2f}x at the kernel bound: {why}")
    return lines


def _rivals(lib: str, libs: dict) -> list[dict]:
    """The results of every other library than ``lib`` (glowflow-bf16 is not glowflow's rival)."""
    return [o for lo, o in libs.items() if not _same_library(lo, lib)]


def _best_ratio(name: str, a: dict, rivals: list[dict]) -> float:
    """Pass ``name``'s kernel bound ``a`` against the rivals' fastest round: throughput other / this, sampling
    latency this / other."""
    fastest_min = min(o[name]["measured_min_s"] for o in rivals)
    return a["kernel_bound_s"] / fastest_min if name == "sample" else fastest_min / a["kernel_bound_s"]


def _same_library(a: str, b: str) -> bool:
    """glowflow and glowflow-bf16 are one library: each is compared with the other libraries only."""
    return a.split("-")[0] == b.split("-")[0]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="S,M")
    parser.add_argument("--peers", default=None, help="directory with the ports' checkouts (see bench.py --peers)")
    parser.add_argument("--no-normflows", action="store_true")
    parser.add_argument("--rounds-scale", type=int, default=1, help="multiply bench.py's rounds (5 / 7 / 7)")
    parser.add_argument("--repeats", type=int, default=10, help="replays per distinct operation (best)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--mnist-dir", default=str(DEFAULT_MNIST_DIR))
    parser.add_argument("--top", type=int, default=0, help="list the N costliest operations of each training step")
    parser.add_argument("--bf16", action="store_true", help="also glowflow with precision='bf16'")
    parser.add_argument("--quick", action="store_true", help="bench.py's tiny configs, one round: all code paths")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    libs = ["glowflow"]
    if not args.no_normflows and nf is not None:
        libs.append("normflows")
    if args.peers:
        libs += list(PEERS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}")  # fmt: skip
    results = {name: run_config(name, libs, args) for name in args.configs.split(",")}
    report(results, args.top, args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
