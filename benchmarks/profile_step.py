"""Time and profile glowflow's training step, evaluation and sampling on config S or M, for before/after comparisons.

    python benchmarks/profile_step.py                    # medians of train / eval / sample timings, config S
    python benchmarks/profile_step.py --config M --profile   # plus the profile splits: train, eval, sample
    python benchmarks/profile_step.py --threads 1 --clock cpu # on a busy machine: process CPU time, one thread
    python benchmarks/profile_step.py --batch 256            # batches (and samples) of 256, as glowflow score's
    python benchmarks/profile_step.py --config M --precision bf16   # bf16 conditioners (Glow(precision="bf16"))
    PYTHONPATH=/path/to/other/checkout python benchmarks/profile_step.py   # the same for another version

Configs as in bench.py: S = 3x32x32, L=3, K=8, width 128, batch 16; M = 1x32x32, L=2, K=16, width 256, batch 32;
random 8-bit pixels, Adam (``--optimizer packed``, the default, for ``glowflow.training.optim.PackedAdam``, what
``glowflow.train`` uses; ``fused`` for ``torch.optim.Adam(fused=True)``; ``plain`` for torch's default
implementation). Run it under the same ``GLIBC_TUNABLES`` as bench.py's timing cases for comparable numbers.
``--clock cpu`` times with ``time.process_time`` (this process's CPU time): with one thread it leaves out the time
the process waits for a CPU, which on a shared machine is most of the noise.

``--profile`` prints, per training step, the split between the kernels that do the arithmetic (convolutions and
matrix products: their FLOPs counted by ``FlopCounterMode``) and everything else, each kernel's GFLOP/s as a
fraction of this process's float32 matrix-product rate (a 2048 x 2048 ``torch.mm``, best of 5) and of a 3x3
convolution's (16 x 128 x 16 x 16, 128 -> 128 channels, channels-last, best of 5), the costliest operations, the
number of aten calls, the host synchronisations (``aten._local_scalar_dense``) of one training step, and the
costliest kernels by operand shapes (``KernelShapeTimes``: which convolution of a kind is the slow one); then, for
the evaluation and the sampling call, the time in the kernels against all operations and their costliest kernels by
operand shapes (``profile_inference``).
Every operation is timed at the dispatcher (bench.py's ``OpTimes``, a ``TorchDispatchMode`` around each call: CPU
operations are synchronous, so the clock brackets the kernel), not by ``torch.profiler``: under the profiler torch
2.13's oneDNN calls ran about 2x slower than without it (config M on an Intel Xeon: 396 against 198 ms of
``mkldnn._linear_pointwise`` per training step), which inflated the kernels' share. The timer adds a few
microseconds per call (and the by-shape table's FLOP formula per kernel call, outside each call's bracket: one
instrumented pass serves the split and the table); the split reports the instrumented step beside the plain one.
The table in benchmarks/README.md ("Optimisation log") was made by alternating this script over checkouts of
successive commits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, shape_wrapper

import glowflow
from glowflow import Glow
from glowflow.cli.score import positive_int
from glowflow.layers.coupling import PRECISIONS
from glowflow.training.optim import make_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import CONFIGS, KERNEL_OPS, OpTimes, fused_kernel_flop_formulas, is_kernel  # noqa: E402


def timer(clock: str):
    return time.process_time if clock == "cpu" else time.perf_counter


def median_ms(fn, rounds: int, clock: str) -> tuple[float, float]:
    """(median, fastest) of ``rounds`` timed calls after 3 warm-up calls, in ms."""
    now = timer(clock)
    for _ in range(3):
        fn()
    times = []
    for _ in range(rounds):
        t = now()
        fn()
        times.append(now() - t)
    return statistics.median(times) * 1e3, min(times) * 1e3


def best_gflops(fn, flops: float, clock: str, rounds: int = 5) -> float:
    now = timer(clock)
    fn()
    best = float("inf")
    for _ in range(rounds):
        t = now()
        fn()
        best = min(best, now() - t)
    return flops / best / 1e9


def reference_rates(clock: str) -> tuple[float, float]:
    """This process's float32 rates (GFLOP/s): a 2048^3 matrix product and a 128 -> 128 3x3 convolution."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    mm = best_gflops(lambda: torch.mm(a, b), 2 * 2048**3, clock)
    x = torch.randn(16, 128, 16, 16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(128, 128, 3, 3)
    conv = best_gflops(lambda: F.conv2d(x, w, padding=1), 2 * 16 * 256 * 128 * 128 * 9, clock)
    return mm, conv


def host_syncs(step) -> int:
    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
                Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        step()
    return Count.n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("S", "M"), default="S")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--rounds", type=int, default=9)
    batch_help = "images a step / call and samples drawn (default: the config's batch; 16 samples)"
    parser.add_argument("--batch", type=positive_int, default=None, help=batch_help)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--optimizer", choices=("packed", "fused", "plain"), default="packed")
    parser.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32", help="the conditioners' precision")
    parser.add_argument("--profile", action="store_true", help="the profile splits of training, evaluation, sampling")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = CONFIGS[args.config] if args.batch is None else replace(CONFIGS[args.config], batch=args.batch)
    n_samples = 16 if args.batch is None else args.batch
    torch.manual_seed(0)
    model = Glow(cfg.shape, levels=cfg.levels, steps=cfg.steps, hidden=cfg.hidden, precision=args.precision)
    if args.optimizer == "packed":
        opt = make_optimizer("adam", model.parameters(), lr=1e-4)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=args.optimizer == "fused")
    batch = (cfg.batch, *cfg.shape)
    with torch.no_grad():
        model(torch.randint(0, 256, batch))  # ActNorm initialisation, excluded from the timings

    def train_step() -> None:
        loss = model(torch.randint(0, 256, batch)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    x = torch.rand(batch) - 0.5

    @torch.no_grad()
    def evaluate() -> None:
        model.log_prob(x)

    def sample() -> None:
        model.sample(n_samples, temperature=0.7)

    where = glowflow.__file__.rsplit("/glowflow/", 1)[0]
    print(f"glowflow from {where}; config {args.config} ({cfg.describe()}); {torch.get_num_threads()} threads; "
          f"optimiser {args.optimizer}; {args.precision}; {args.clock} clock")  # fmt: skip
    medians = {}
    for name, fn, n in (
        ("train step", train_step, cfg.batch),
        ("eval", evaluate, cfg.batch),
        (f"sample {n_samples}", sample, n_samples),
    ):
        ms, fastest = median_ms(fn, args.rounds, args.clock)
        medians[name] = ms
        print(f"{name:12s} {ms:8.1f} ms   {n / ms * 1e3:7.1f} img/s   (fastest {fastest:.1f} ms)")
    if args.profile:
        mm_rate = profile_split(model, opt, train_step, batch, args.clock, medians["train step"])
        profile_inference("evaluation", evaluate, medians["eval"], mm_rate)
        profile_inference("sampling", sample, medians[f"sample {n_samples}"], mm_rate)


class KernelShapeTimes(OpTimes):
    """:class:`OpTimes` that also keeps, for every kernel (:data:`bench.KERNEL_OPS`), its calls, wall time and FLOPs
    by operation and operand shapes: ``rows[(name, shapes)] = [calls, seconds, flops]``, FLOPs from torch's
    ``flop_registry`` (and ``fused_kernel_flop_formulas`` for oneDNN's fused kernels), ``shapes`` the shapes of the
    tensor arguments in order. Which call of a kind is slow, not only which kind."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict = {}
        formulas = {k: shape_wrapper(f) for k, f in {**fused_kernel_flop_formulas(), **_inference_formulas()}.items()}
        self.formulas = {**flop_registry, **formulas}

    def record(self, func, args: tuple, kwargs: dict, out, seconds: float) -> None:
        super().record(func, args, kwargs, out, seconds)
        if is_kernel(func):
            name = str(func.overloadpacket)
            shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
            formula = self.formulas.get(func.overloadpacket)
            flops = int(formula(*args, out_val=out, **kwargs)) if formula else 0
            entry = self.rows.setdefault((name, shapes), [0, 0.0, 0])
            entry[0] += 1
            entry[1] += seconds
            entry[2] += flops


def _inference_formulas() -> dict:
    """FLOP formulas for ``aten.conv2d`` and ``aten.linear``, which ``flop_registry`` does not hold (where autograd
    records they reach the dispatcher as the ``aten.convolution`` / ``aten.addmm`` it counts): the same as oneDNN's
    fused convolution's and linear's (``fused_kernel_flop_formulas``)."""
    fused = fused_kernel_flop_formulas()
    if not fused:
        return {}
    ops, aten = torch.ops.mkldnn, torch.ops.aten
    return {aten.conv2d: fused[ops._convolution_pointwise], aten.linear: fused[ops._linear_pointwise]}


def print_kernel_shapes(shapes: KernelShapeTimes, steps: int, mm_rate: float, top: int = 12, per: str = "step") -> None:
    """The ``top`` costliest (kernel, operand shapes) rows that ``shapes`` recorded over ``steps`` calls of a pass: ms
    per call, calls, GFLOP/s and its share of the matmul rate ``mm_rate`` (GFLOP/s)."""
    print(f"\ncostliest kernels per {per} by operand shapes:")
    for (name, operands), (calls, sec, flops) in sorted(shapes.rows.items(), key=lambda kv: -kv[1][1])[:top]:
        rate = flops / sec / 1e9 if sec else 0.0
        operand_shapes = " ".join("x".join(map(str, shape)) for shape in operands)
        print(f"  {name:32s} {sec * 1e3 / steps:8.2f} ms {calls // steps:4d} calls {rate:7.1f} GFLOP/s "
              f"({100 * rate / mm_rate:3.0f} % of mm)  {operand_shapes}")  # fmt: skip


def profile_inference(name: str, fn, call_ms: float, mm_rate: float, calls: int = 3, top: int = 10) -> None:
    """One instrumented pass of ``calls`` calls of ``fn`` (an evaluation or a sampling call): the time in the kernels
    (``bench.KERNEL_OPS``) against all operations per call, beside ``call_ms`` (the untimed call), the aten calls,
    and the ``top`` costliest kernels by operand shapes."""
    timer_ = KernelShapeTimes()
    with timer_:
        for _ in range(calls):
            fn()
    op_ms = sum(sec for _, sec in timer_.times.values()) * 1e3 / calls
    kernel_ms = sum(sec for f, (_, sec) in timer_.times.items() if is_kernel(f)) * 1e3 / calls
    ops = sum(n for n, _ in timer_.times.values()) // calls
    print(f"\n{name} ({call_ms:.1f} ms a call without the op timer): convolutions and matrix products "
          f"{kernel_ms:.1f} ms ({100 * kernel_ms / call_ms:.0f} % of the untimed call), other operations "
          f"{op_ms - kernel_ms:.1f} ms; {ops} aten calls")  # fmt: skip
    print_kernel_shapes(timer_, calls, mm_rate, top, per=f"{name} call")


def profile_split(model, opt, train_step, batch, clock: str, step_ms: float) -> float:
    """Print the split of a training step (module docstring); returns this process's matmul rate (GFLOP/s)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=fused_kernel_flop_formulas())
    with counter:
        model(torch.randint(0, 256, batch)).mean().backward()
    opt.zero_grad(set_to_none=True)
    flops = {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts()["Global"].items()}
    steps = 3
    timer_ = KernelShapeTimes()  # one instrumented pass for the split and the by-shape table
    start = time.perf_counter()
    with timer_:
        for _ in range(steps):
            train_step()
    total = (time.perf_counter() - start) * 1e3 / steps
    per_op: dict[str, tuple[int, float]] = {}
    for func, (n, sec) in timer_.times.items():  # by overload packet: aten.add.Tensor and aten.add.out as aten.add
        calls, ms = per_op.get(str(func.overloadpacket), (0, 0.0))
        per_op[str(func.overloadpacket)] = (calls + n // steps, ms + sec * 1e3 / steps)
    mm_rate, conv_rate = reference_rates(clock)
    rows, kernel_ms, kernel_flops = [], 0.0, 0
    for name, (_, ms) in per_op.items():
        op = KERNEL_OPS.get(name)
        if op is None:
            continue
        f = flops.get(op, 0)
        kernel_ms, kernel_flops = kernel_ms + ms, kernel_flops + f
        rate = f / ms / 1e6 if ms else 0.0
        share = f"= {100 * rate / mm_rate:4.0f} % of mm, {100 * rate / conv_rate:4.0f} % of conv"
        rows.append((ms, f"  {name:32s} {ms:8.1f} ms {f / 1e9:8.2f} GFLOP {rate:7.1f} GFLOP/s {share}"))
    op_ms = sum(ms for _, ms in per_op.values())
    calls = sum(n for n, _ in per_op.values())
    rate = kernel_flops / kernel_ms / 1e6
    print(f"\nreference rates in this process: fp32 mm {mm_rate:.1f} GFLOP/s, 3x3 conv {conv_rate:.1f} GFLOP/s")
    print(f"per training step ({clock} clock): {step_ms:.1f} ms without the op timer, {total:.1f} ms with it; "
          f"convolutions and matrix products {kernel_ms:.1f} ms ({100 * kernel_ms / total:.0f} % of the timed step, "
          f"{100 * kernel_ms / step_ms:.0f} % of the untimed one), other operations "
          f"{op_ms - kernel_ms:.1f} ms ({100 * (op_ms - kernel_ms) / total:.0f} %), outside the operations (Python, "
          f"autograd engine, the timer) {total - op_ms:.1f} ms; kernels at {rate:.1f} GFLOP/s "
          f"({100 * rate / mm_rate:.0f} % of mm); whole step {kernel_flops / step_ms / 1e6:.1f} GFLOP/s "
          f"({100 * kernel_flops / step_ms / 1e6 / mm_rate:.0f} % of mm, untimed step); {calls} aten calls; "
          f"{host_syncs(train_step)} host syncs per step")  # fmt: skip
    for _, line in sorted(rows, reverse=True):
        print(line)
    print("\ncostliest operations per step:")
    for name, (n, ms) in sorted(per_op.items(), key=lambda kv: -kv[1][1])[:12]:
        print(f"  {name:32s} {ms:8.2f} ms {n:6d} calls")
    print_kernel_shapes(timer_, steps, mm_rate)
    return mm_rate


if __name__ == "__main__":
    main()
