"""``glowflow export``: a trained model as a directory to share (``config.json`` + ``model.safetensors`` + model card),
with ONNX / ``torch.export`` graphs on request."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from glowflow.checks import NON_NEGATIVE, POSITIVE, SEED
from glowflow.cli.common import RUN_HELP, Formatter, device_name, ranged

EXPORT_EXAMPLES = """\
examples:
  glowflow export runs/digits-20250101-120000 digits-glow          # from checkpoints/best.pt
  glowflow export runs/mnist mnist-glow --checkpoint last --onnx   # + log_prob.onnx, bits_per_dim.onnx, ...
  glowflow export runs/mnist mnist-glow --measure 10 --check 32    # score all test images now; a check subset
  glowflow export glowflow/digits digits-onnx --onnx --methods log_prob,bits_per_dim

Load the directory with glowflow.load(DIR) (or Glow.from_pretrained(DIR)); every command that takes RUN takes DIR.
"""


def _methods(text: str) -> list[str]:
    from glowflow.export import METHODS

    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected comma-separated methods from {', '.join(METHODS)}, got {text!r}")
    return names


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write a pretrained-model directory (and ONNX / torch.export graphs)",
        epilog=EXPORT_EXAMPLES,
        formatter_class=Formatter,
        description="Write DIR from RUN: config.json (the model's class and arguments, its data, the training "
        "configuration, the test figures), model.safetensors (the weights; loading runs no code) and a model card "
        "README.md with the glowflow train command that reproduces the run, the data and the test figures (the "
        "checkpoint's own test evaluation, or --measure). --onnx / --pt2 add deployment graphs of log_prob, "
        "bits_per_dim, encode, decode and sample (each graph's start and time are reported on stderr). DIR must be "
        "new or empty; it appears only when complete.",
    )
    p.add_argument("run", metavar="RUN", help=RUN_HELP)
    p.add_argument("directory", metavar="DIR", help="the directory to write (new, or empty)")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint of a run dir")
    p.add_argument("--onnx", action="store_true", help="also METHOD.onnx + onnx.json (needs glowflow[onnx])")
    p.add_argument("--pt2", action="store_true", help="also METHOD.pt2 (torch.export) + pt2.json")
    p.add_argument("--methods", type=_methods, default=None, help="the graphs' methods (default: all the model has)")
    p.add_argument("--measure", type=ranged(POSITIVE), default=None, metavar="N",
                   help="score the whole test split now with N >= 1 dequantization noise draws per image and "
                   "record that as the test figure")  # fmt: skip
    p.add_argument("--check", type=ranged(NON_NEGATIVE), default=0, metavar="N",
                   help="also check.json + check.safetensors: N >= 0 fixed test examples and their score")  # fmt: skip
    p.add_argument("--seed", type=ranged(SEED), default=0,
                   help=f"seed that chooses the check subset, 0..{SEED.high} (default 0)")  # fmt: skip
    p.add_argument("--data-dir", default=None, help="where the model's data set is now (for --measure, --check)")
    p.add_argument("--device", type=device_name, default="auto",
                   help="where --measure and --check compute: cpu, cuda, cuda:N or auto (default auto)")  # fmt: skip
    p.add_argument("--note", default=None, metavar="TEXT", help="a paragraph of your own for the model card")
    p.set_defaults(func=_export)


def _command(args: argparse.Namespace) -> str:
    """The command line that ran, for the model card."""
    words = ["glowflow", "export", args.run, args.directory]
    if args.checkpoint != "best":
        words += ["--checkpoint", args.checkpoint]
    words += [f"--{fmt}" for fmt in ("onnx", "pt2") if getattr(args, fmt)]
    if args.methods:
        words += ["--methods", ",".join(args.methods)]
    if args.measure is not None:
        words += ["--measure", str(args.measure)]
    if args.check:
        words += ["--check", str(args.check), "--seed", str(args.seed)]
    if args.data_dir is not None:
        words += ["--data-dir", args.data_dir]
    if args.note is not None:
        words += ["--note", "..."]  # the note is the card's first paragraph
    return shlex.join(words)


def _report(line: str) -> None:
    """Each graph's start and time, on stderr as they happen: a graph of a large model takes minutes."""
    print(line, file=sys.stderr, flush=True)


def _export(args: argparse.Namespace) -> int:
    from glowflow.runs import open_run
    from glowflow.sharing import export_run

    if (args.methods is not None) and not (args.onnx or args.pt2):
        raise ValueError("--methods selects the graphs of --onnx / --pt2; give one of them")
    run = open_run(args.run, args.device, args.checkpoint)
    formats = [fmt for fmt in ("onnx", "pt2") if getattr(args, fmt)]
    result = export_run(run, args.directory, formats=formats, methods=args.methods, measure_samples=args.measure,
                        check_size=args.check, seed=args.seed, data_dir=args.data_dir, command=_command(args),
                        note=args.note, report=_report)  # fmt: skip
    metrics = result["metrics"]
    key = "test_bpd" if run.is_image else "test_nll"
    unit = "bits/dim" if run.is_image else "nats"
    figure = f"{metrics[key]:.4f} {unit} on {metrics['evaluated_on']}" if key in metrics else "not measured"
    print(f"wrote {result['directory']}: {', '.join(result['files'])}")
    print(f"  {run.model.describe()}; test {figure}")
    if result["training_command"]:
        print(f"  trained with: {result['training_command']}")
    return 0
