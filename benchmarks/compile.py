"""torch.compile against eager mode for glowflow's training step, evaluation and sampling: graphs, compile time, speed.

    python benchmarks/compile.py                                  # S and M, inductor (each pass compiles once: minutes)
    python benchmarks/compile.py --configs S --passes eval,sample
    python benchmarks/compile.py --quick --backend aot_eager      # tiny configs, graph capture only: seconds

Per config (bench.py's S and M: random 8-bit images, the same models) and pass:

* **graphs / breaks**: what ``torch._dynamo.explain`` finds when it traces the pass (one graph, no break: the pass
  can be compiled, or captured by CUDA graphs, whole);
* **compile s**: wall time of the first compiled call (tracing, AOTAutograd and the backend's code generation);
* **eager / compiled ms**: median and fastest of ``--rounds`` interleaved rounds (eager, then compiled, the order
  reversed every round) after two warm-up calls of each; **ratio** = compiled / eager median (below 1: faster).

The training step is bench.py's (``Contender.train_step``: forward - the compiled module's, the way
``glowflow train --compile`` wraps it -, backward and glowflow's fused Adam); evaluation is ``log_prob`` without
autograd; sampling is ``sample(16, temperature=0.7)``. Eager and compiled share one model, so their training steps
alternate on the same parameters (lr 1e-6).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import CONFIGS, QUICK_CONFIGS, Contender, cpu_model, git_state, interleaved, make_contender  # noqa: E402

PASSES = ("train", "eval", "sample")


def measure(config: str, quick: bool, backend: str, rounds: int, which: list[str]) -> list[dict]:
    cfg = (QUICK_CONFIGS if quick else CONFIGS)[config]
    torch.manual_seed(0)
    eager = make_contender("glowflow", cfg, "cpu", name="eager", lr=1e-6)
    model = eager.model
    # the module is what is compiled (as by glowflow train --compile), the step around it is not
    compiled = Contender("compiled", "glowflow", torch.compile(model, backend=backend), cfg, "cpu", lr=1e-6)
    shape = (cfg.batch, *cfg.shape)
    eager.initialize(torch.randint(0, cfg.num_bins, shape, dtype=torch.uint8))

    def evaluate(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return eager.log_prob(x)

    def sample(n: int) -> torch.Tensor:
        with torch.no_grad():
            return eager.sample(n, 0.7)

    # pass -> (what dynamo explains, eager function, compiled function, maker of fresh inputs)
    cases: dict[str, tuple[Callable, Callable, Callable, Callable[[], object]]] = {
        "train": (model, eager.train_step, compiled.train_step,
                  lambda: torch.randint(0, cfg.num_bins, shape, dtype=torch.uint8)),
        "eval": (evaluate, evaluate, torch.compile(evaluate, backend=backend), lambda: torch.rand(shape) - 0.5),
        "sample": (sample, sample, torch.compile(sample, backend=backend), lambda: 16),
    }  # fmt: skip
    rows = []
    for name in (p for p in PASSES if p in which):
        traced, eager_fn, compiled_fn, make_input = cases[name]
        torch._dynamo.reset()
        explained = torch._dynamo.explain(traced)(make_input())
        torch._dynamo.reset()
        t0 = time.perf_counter()
        compiled_fn(make_input())
        compile_s = time.perf_counter() - t0
        times = interleaved({"eager": eager_fn, "compiled": compiled_fn}, make_input, 2, rounds, "cpu")
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        rows.append(
            {
                "config": config,
                "pass": name,
                "graphs": explained.graph_count,
                "graph_breaks": explained.graph_break_count,
                "compile_s": compile_s,
                "eager_ms": med["eager"],
                "eager_fastest_ms": min(times["eager"]) * 1e3,
                "compiled_ms": med["compiled"],
                "compiled_fastest_ms": min(times["compiled"]) * 1e3,
                "ratio": med["compiled"] / med["eager"],
            }
        )
        print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict) -> str:
    return (
        f"| {r['config']} | {r['pass']} | {r['graphs']} / {r['graph_breaks']} | {r['compile_s']:.1f} | "
        f"{r['eager_ms']:.1f} ({r['eager_fastest_ms']:.1f}) | "
        f"{r['compiled_ms']:.1f} ({r['compiled_fastest_ms']:.1f}) | {r['ratio']:.3f} |"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="S,M", help="comma-separated: S, M, P (default S,M)")
    parser.add_argument("--passes", default=",".join(PASSES), help="comma-separated: train, eval, sample")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved timed rounds per pass (default 9)")
    parser.add_argument("--quick", action="store_true", help="bench.py's tiny configs")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    configs, which = args.configs.split(","), args.passes.split(",")
    for flag, values, allowed in (("--configs", configs, CONFIGS), ("--passes", which, PASSES)):
        if not values or any(v not in allowed for v in values):
            parser.error(f"{flag}: a comma-separated list of {', '.join(allowed)}, not {','.join(values)!r}")
    if args.rounds < 1:
        parser.error(f"--rounds: at least 1, not {args.rounds}")
    env = {"git": git_state(), "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model(),
           "backend": args.backend}  # fmt: skip
    print("# " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print("| config | pass | graphs / breaks | compile s | eager ms, median (fastest) | compiled ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    rows = [row for c in configs for row in measure(c, args.quick, args.backend, args.rounds, which)]
    result = {**env, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
