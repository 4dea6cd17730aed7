"""``glowflow eval`` and ``glowflow info``: the score of a run's data split, and what a run is."""

from __future__ import annotations

import argparse
import json
from typing import Any

from glowflow.checks import NON_NEGATIVE, POSITIVE, IntRange
from glowflow.cli.common import PRETRAINED_OUT, RUN_HELP, Formatter, open_run_of, ranged, run_args
from glowflow.wording import levels_text, plural

EVAL_EXAMPLES = """\
examples:
  glowflow eval runs/digits-20250101-120000
  glowflow eval runs/mnist --split train --n-samples 4 --limit 5000
  glowflow eval runs/cifar/checkpoints/last.pt --importance-weighted
  glowflow eval runs/imagenet32 --workers 4        # the whole validation split, read batch by batch
  glowflow eval glowflow/digits --n-samples 4      # a shipped model, on its data set
"""

INFO_EXAMPLES = """\
examples:
  glowflow info runs/digits-20250101-120000
  glowflow info runs/mnist/checkpoints/best.pt --json
  glowflow info glowflow/digits
"""


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="bits/dim (or NLL) of a data split",
        epilog=EVAL_EXAMPLES,
        formatter_class=Formatter,
        description="Score a split of the run's data: bits/dim with the dequantization noise averaged over "
        "--n-samples draws (and the importance-weighted estimate with --importance-weighted, always for variational "
        "dequantization); NLL in nats for tabular / toy data. Printed and saved to RUN/eval_<split>.json (to "
        f"eval_<split>.json in {PRETRAINED_OUT}). A pretrained model is scored on the data set of its recorded "
        "training configuration (--data-dir: where those files are here).",
    )
    run_args(p, data=True)
    p.add_argument("--split", choices=("test", "train"), default="test", help="which split (default test)")
    p.add_argument("--n-samples", type=ranged(POSITIVE), default=10,
                   help="dequantization noise draws per image, >= 1 (default 10)")  # fmt: skip
    p.add_argument("--importance-weighted", action="store_true", help="also the importance-weighted estimate")
    p.add_argument("--batch-size", type=ranged(POSITIVE), default=256, help="images per batch, >= 1 (default 256)")
    p.add_argument("--limit", type=ranged(IntRange(1, optional=True)), default=None,
                   help="score a fixed random subset of this many examples, >= 1 (default: all)")  # fmt: skip
    p.add_argument("--workers", type=ranged(NON_NEGATIVE), default=0,
                   help="processes reading the batches ahead, >= 0 (default 0)")  # fmt: skip
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="report progress on stderr: a bar on a terminal, else a plain line every "
                   "$GLOWFLOW_PROGRESS_INTERVAL seconds (default 30)")  # fmt: skip
    p.set_defaults(func=_eval)

    p = sub.add_parser("info", help="what a run is and how far it got", epilog=INFO_EXAMPLES, formatter_class=Formatter,
                       description="Configuration, parameter count, steps trained, wall time and the test metric "
                       "(of a run: from checkpoints/last.pt, else best.pt; of a pretrained model: what its "
                       "config.json records).")  # fmt: skip
    p.add_argument("run", metavar="RUN", help=RUN_HELP)
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(func=_info)


def _eval(args: argparse.Namespace) -> int:
    from glowflow.runs import evaluate_run

    run = open_run_of(args)
    r = evaluate_run(run, args.split, args.n_samples, args.importance_weighted, args.batch_size, args.limit,
                     args.data_dir, args.seed, progress=args.progress, workers=args.workers)  # fmt: skip
    where = f"{r['examples']} of {r['of']}" if r["examples"] < r["of"] else f"all {r['examples']}"
    if "files" in r:
        print(f"files: {r['files']}")
    if run.is_image:
        draws = plural(r["n_samples"], "draw")
        print(f"{run.data_name} {args.split} split ({where} images), {run.source}:")
        print(f"  {r['bpd']:.4f} bits/dim  (dequantization noise averaged over {draws}; "
              f"{levels_text(r['num_bins'], run.model.data_shape[0])})")  # fmt: skip
        if "bpd_importance_weighted" in r:
            print(f"  {r['bpd_importance_weighted']:.4f} bits/dim  (importance-weighted over {draws})")
    else:
        print(f"{run.data_name} {args.split} split ({where} points), {run.source}:")
        print(f"  NLL {r['nll']:.4f} nats  ({r['bpd']:.4f} bits/dim)")
    print(f"saved {r['saved']}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from glowflow.runs import run_info

    info = run_info(args.run)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    image = len(info["shape"]) == 3
    metric = "test_bpd" if image else "test_nll"
    unit = "bits/dim" if image else "nats"

    def fmt(m: dict | None) -> str:
        return "-" if not m or m.get(metric) is None else f"{m[metric]:.4f}"

    shape = "x".join(map(str, info["shape"]))
    levels = f", {levels_text(info['num_bins'], info['shape'][0])}" if info["num_bins"] else ""
    wall = "unknown" if info["wall_time_s"] is None else f"{info['wall_time_s']:.0f} s"
    name = "test bpd" if image else "test NLL"
    if info["kind"] == "checkpoint":
        print(f"run:         {info['run_dir']}  ({info['path']}, saved {info['saved_at']})")
    else:
        print(f"pretrained:  {info['source']}  ({info['path']})")
    print(f"data:        {info['data']} ({shape}{levels}); evaluated on {info['test_set'] or 'not recorded'}")
    print(f"model:       {info['model']}")
    if info["kind"] == "checkpoint":
        print(f"trained:     {info['step']} of {plural(info['iters'], 'step')}, {wall} wall time, "
              f"{plural(info['processes'], 'process')}; {info['skipped']} skipped, "
              f"{plural(info['rollbacks'], 'rollback')}")  # fmt: skip
        best = info["best"]
        best_text = f"best {best.get(metric, best['value']):.4f} at step {best['step']}" if best else "no best yet"
        print(f"{name + ':':<12} {fmt(info['last'])} {unit} at step {info['step']} ({best_text}; "
              f"untrained {fmt(info['untrained'])})")  # fmt: skip
    else:
        steps = "not recorded" if info["step"] is None else plural(info["step"], "step")
        print(f"trained:     {steps}, {wall} wall time")
        print(f"{name + ':':<12} {fmt(info['last'])} {unit}")
    if info["config"] is None:
        print("config:      not recorded")
        return 0
    print("config:")
    for key, value in info["config"].items():
        print(f"  {key} = {json.dumps(value)}")
    return 0
