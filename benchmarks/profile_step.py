"""Time and profile glowflow's training step, evaluation and sampling on config S, for before/after comparisons.

    python benchmarks/profile_step.py                    # medians of train / eval / sample timings
    python benchmarks/profile_step.py --profile          # plus torch.profiler top ops of a training step
    PYTHONPATH=/path/to/other/checkout python benchmarks/profile_step.py   # the same for another version

Config S: 3x32x32, L=3, K=8, width 128, batch 16, random 8-bit pixels, Adam (``--optimizer fused`` for
``torch.optim.Adam(fused=True)``, what ``glowflow.train`` uses; ``plain`` for the default implementation). Run it
under the same ``GLIBC_TUNABLES`` as bench.py's timing cases for comparable numbers. The table in
benchmarks/README.md ("Optimisation log") was made by alternating this script over checkouts of successive commits.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import glowflow
from glowflow import Glow


def median_ms(fn, rounds: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--optimizer", choices=("fused", "plain"), default="fused")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler top ops of a training step")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Glow((3, 32, 32), levels=3, steps=8, hidden=128)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=args.optimizer == "fused")
    batch = (16, 3, 32, 32)
    with torch.no_grad():
        model(torch.randint(0, 256, batch))  # ActNorm initialisation, excluded from the timings

    def train_step() -> None:
        loss = model(torch.randint(0, 256, batch)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def evaluate() -> None:
        model(torch.randint(0, 256, batch))

    def sample() -> None:
        model.sample(16, temperature=0.7)

    where = glowflow.__file__.rsplit("/glowflow/", 1)[0]
    print(f"glowflow from {where}; {torch.get_num_threads()} threads; optimiser {args.optimizer}")
    for name, fn in (("train step", train_step), ("eval (16 images)", evaluate), ("sample 16 at T=0.7", sample)):
        ms = median_ms(fn, args.rounds)
        print(f"{name:20s} {ms:7.1f} ms   {16 / ms * 1e3:6.1f} img/s")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        steps = 5
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                train_step()
        events = prof.key_averages()
        heavy = {"aten::convolution_backward", "aten::mkldnn_convolution", "aten::mm", "aten::addmm"}
        total = sum(e.self_cpu_time_total for e in events) / 1e3 / steps
        conv = sum(e.self_cpu_time_total for e in events if e.key in heavy) / 1e3 / steps
        calls = sum(e.count for e in events if e.key.startswith("aten::")) // steps
        print(f"\nper training step: {total:.1f} ms profiled, convolutions and matrix products {conv:.1f} ms, "
              f"other {total - conv:.1f} ms; {calls} aten calls")  # fmt: skip
        print(events.table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
