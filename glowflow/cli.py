"""The ``glowflow`` command: ``train``, ``eval``, ``sample``, ``interpolate``, ``manipulate``, ``info``.

Errors are one line on stderr (``glowflow <command>: error: ...``) and exit code 2, never a traceback. A training
stopped by SIGINT / SIGTERM saves a checkpoint and exits with 130 / 143.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from glowflow.errors import GlowflowError

EXIT_ERROR = 2
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}

TRAIN_EXAMPLES = """\
examples:
  glowflow train                                   # the built-in 8x8 digits: a few minutes on a CPU
  glowflow train --iters 500 --out runs/quick      # shorter, into a chosen run directory
  glowflow train --out runs/quick --resume --iters 1000   # continue it exactly
  glowflow train --data mnist --data-dir ~/data --download --device cuda     # the mnist preset
  glowflow train --preset cifar10 --data-dir ~/data --precision bf16 --compile
  glowflow train --data folder --data-dir ~/celeba64 --preset celeba64
  glowflow train --data mnist --data-dir ~/data --conditional --n-bits 5 --levels 2 --steps 8 --hidden 128
  glowflow train --data moons                      # a 2-D toy density (TabularGlow)
  glowflow train --data tabular --data-dir table.csv
  glowflow train --config run.toml --lr 5e-4       # defaults < --preset < --config < flags
  torchrun --nproc_per_node=4 -m glowflow train --data cifar10 --data-dir ~/data

The run directory holds config.json (the resolved configuration), metrics.jsonl, samples.png (and samples/),
curve.png and checkpoints/last.pt + best.pt. Ctrl-C or SIGTERM finish the current step, save, and exit.
"""

EVAL_EXAMPLES = """\
examples:
  glowflow eval runs/digits-20250101-120000
  glowflow eval runs/mnist --split train --n-samples 4 --limit 5000
  glowflow eval runs/cifar/checkpoints/last.pt --importance-weighted
"""

SAMPLE_EXAMPLES = """\
examples:
  glowflow sample runs/digits-20250101-120000
  glowflow sample runs/mnist --n 100 --temperature 0.8 --out mnist.png --npy
  glowflow sample runs/mnist-cond --label 7
  glowflow sample runs/fashion-cond --label Sneaker --temperature 0.5
"""

INTERPOLATE_EXAMPLES = """\
examples:
  glowflow interpolate runs/digits-20250101-120000            # 4 random pairs of test images
  glowflow interpolate runs/mnist --index 3 17 --frames 12
"""

MANIPULATE_EXAMPLES = """\
examples:
  glowflow manipulate runs/digits-20250101-120000 --from 1 --to 7
  glowflow manipulate runs/fashion --from Sneaker --to "Ankle boot" --strengths 0,0.5,1,1.5
"""

INFO_EXAMPLES = """\
examples:
  glowflow info runs/digits-20250101-120000
  glowflow info runs/mnist/checkpoints/best.pt --json
"""


class _Formatter(argparse.HelpFormatter):
    """Wraps one-paragraph descriptions; keeps multi-line text (the examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line: ``glowflow train: error: ... (see glowflow train --help)``."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


def _optional(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null", "off") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _train_parser(sub: Any) -> None:
    from glowflow.training.config import PRESET_NOTES, PRESETS, TrainConfig

    presets = "\n".join(f"  {name:<10} {note}" for name, note in PRESET_NOTES.items())
    p = sub.add_parser(
        "train",
        help="train a model (the built-in digits by default)",
        description="Train a Glow on images or a TabularGlow on tabular / 2-D toy data. Every setting below can "
        "also come from --preset and --config FILE (JSON or TOML, the same keys with underscores); explicit flags "
        "win. Without --preset, the preset made for the data is used (digits, mnist, cifar10, toy, tabular); the "
        "defaults shown are the digits preset's.",
        epilog=f"presets (--preset NAME; none: the bare defaults):\n{presets}\n\n{TRAIN_EXAMPLES}",
        formatter_class=_Formatter,
    )
    p.add_argument("--config", metavar="FILE", default=None, help="JSON or TOML file of config keys")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")
    groups = {
        name: p.add_argument_group(name)
        for name in ("data", "run", "model", "optimisation", "output", "faults")
    }  # fmt: skip
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name}
        help_text = meta["help"]
        if f.name == "preset":
            kwargs["choices"] = (*PRESETS, "none")
            help_text = "start from this preset (default: the one made for the data)"
        t = str(f.type)
        if t == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif t == "list[float]":
            kwargs["type"] = _floats
            kwargs["metavar"] = "T1,T2,..."
        else:
            base = {"int": int, "float": float, "str": str}[t.split("|")[0].strip()]
            kwargs["type"] = _optional(base) if "None" in t else base
            if meta.get("choices") and f.name != "data":
                kwargs["choices"] = meta["choices"]
            if f.name == "data":
                kwargs["metavar"] = "NAME"
            kwargs.setdefault("metavar", {"int": "N", "float": "X"}.get(t.split("|")[0].strip()))
            if f.name in ("out", "data_dir"):
                kwargs["metavar"] = "DIR"
            if kwargs["metavar"] is None:
                del kwargs["metavar"]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if default is not None and f.name != "preset" and t != "bool":
            help_text += f" (default {','.join(map(str, default)) if isinstance(default, list) else default})"
        groups[meta["group"]].add_argument(flag, help=help_text, **kwargs)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from glowflow.training import train
    from glowflow.training.config import FIELD_NAMES

    overrides = {k: v for k, v in vars(args).items() if k in FIELD_NAMES}
    result = train(args.config, resume=args.resume, **overrides)
    if result.stopped_by:
        return SIGNAL_EXIT.get(result.stopped_by, 143)
    return 0


def _run_args(p: argparse.ArgumentParser, data: bool = False) -> None:
    p.add_argument("run", metavar="RUN", help="a run directory (uses checkpoints/best.pt, else last.pt) or a .pt file")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint of a run dir")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choices and noise (default 0)")
    if data:
        p.add_argument("--data-dir", default=None, help="where the run's data is now, if it moved")


def _open(args: argparse.Namespace) -> Any:
    from glowflow.training.tools import open_run

    return open_run(args.run, args.device, args.checkpoint)


def _default_out(run: Any, name: str) -> Path:
    return run.run_dir / name


def _cmd_eval(args: argparse.Namespace) -> int:
    from glowflow.training.tools import evaluate_run

    run = _open(args)
    r = evaluate_run(run, args.split, args.n_samples, args.importance_weighted, args.batch_size, args.limit,
                     args.data_dir, args.seed)  # fmt: skip
    where = f"{r['examples']} of {r['of']}" if r["examples"] < r["of"] else f"all {r['examples']}"
    if run.is_image:
        print(f"{run.config.data} {args.split} split ({where} images), {run.path}:")
        print(f"  {r['bpd']:.4f} bits/dim  (dequantization noise averaged over {r['n_samples']} draws; "
              f"{r['num_bins']} grey levels)")  # fmt: skip
        if "bpd_importance_weighted" in r:
            print(f"  {r['bpd_importance_weighted']:.4f} bits/dim  (importance-weighted over {r['n_samples']} draws)")
    else:
        print(f"{run.config.data} {args.split} split ({where} points), {run.path}:")
        print(f"  NLL {r['nll']:.4f} nats  ({r['bpd']:.4f} bits/dim)")
    print(f"saved {r['saved']}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from glowflow import viz
    from glowflow.training.tools import discrete_levels, sample_picture_of, sample_run

    run = _open(args)
    samples = sample_run(run, args.n, args.temperature, args.label, args.seed)
    label = "" if args.label is None else f"_label{args.label}"
    out = Path(args.out) if args.out else _default_out(run, f"sample_T{args.temperature:g}{label}.png")
    caption = f"T={args.temperature:g}" + ("" if args.label is None else f", label {args.label}")
    viz.save_png(sample_picture_of(run, samples, caption, args.ncol), out)
    print(f"wrote {out}")
    if args.npy:
        npy = out.with_suffix(".npy")
        array = discrete_levels(samples, run.num_bins) if run.is_image else samples
        np.save(npy, array.numpy())
        what = f"discrete levels 0..{run.num_bins - 1}" if run.is_image else "values in the data's units"
        print(f"wrote {npy} ({tuple(array.shape)}, {what})")
    return 0


def _cmd_interpolate(args: argparse.Namespace) -> int:
    from glowflow import viz
    from glowflow.training.tools import interpolate_run

    run = _open(args)
    picture, pairs = interpolate_run(run, tuple(args.index) if args.index else None, args.pairs, args.frames,
                                     args.split, args.seed, args.data_dir)  # fmt: skip
    out = Path(args.out) if args.out else _default_out(run, "interpolate.png")
    viz.save_png(picture, out)
    print(f"wrote {out}: {args.split} images " + ", ".join(f"{a} -> {b}" for a, b in pairs))
    return 0


def _cmd_manipulate(args: argparse.Namespace) -> int:
    from glowflow import viz
    from glowflow.training.tools import manipulate_run

    run = _open(args)
    picture, s = manipulate_run(run, args.source, args.target, args.n, tuple(args.strengths), args.max_per_class,
                                args.seed, args.data_dir)  # fmt: skip
    out = Path(args.out) if args.out else _default_out(run, f"manipulate_{args.source}_to_{args.target}.png")
    viz.save_png(picture, out)
    strengths = ", ".join(f"{v:g}" for v in s["strengths"])
    print(f"wrote {out}: class {s['from']} + s * (mean latent of {s['to']} - mean latent of {s['from']}), "
          f"s = {strengths} (columns); test images {s['test_images']} (rows)")  # fmt: skip
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from glowflow.training.tools import run_info

    info = run_info(args.run)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    image = len(info["shape"]) == 3
    metric = "test_bpd" if image else "test_nll"
    unit = "bits/dim" if image else "nats"

    def fmt(m: dict | None) -> str:
        return "-" if not m or m.get(metric) is None else f"{m[metric]:.4f}"

    wall = info["wall_time_s"]
    shape = "x".join(map(str, info["shape"]))
    levels = f", {info['num_bins']} levels" if info["num_bins"] else ""
    print(f"run:         {info['run_dir']}  ({info['checkpoint']}, saved {info['saved_at']})")
    print(f"data:        {info['data']} ({shape}{levels}); evaluated on {info['test_set']}")
    print(f"model:       {info['model']}")
    print(f"trained:     {info['step']} of {info['iters']} steps, {wall:.0f} s wall time, "
          f"{info['processes']} process(es); {info['skipped']} skipped, {info['rollbacks']} rollbacks")  # fmt: skip
    best = info["best"]
    best_text = f"best {best.get(metric, best['value']):.4f} at step {best['step']}" if best else "no best yet"
    name = "test bpd" if image else "test NLL"
    print(f"{name + ':':<12} {fmt(info['last'])} {unit} at step {info['step']} ({best_text}; "
          f"untrained {fmt(info['untrained'])})")  # fmt: skip
    print("config:")
    for key, value in info["config"].items():
        print(f"  {key} = {json.dumps(value)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from glowflow import __version__

    parser = _Parser(
        prog="glowflow",
        description="Glow normalizing flows: train, score, sample and edit with a trained model.",
        epilog="Run 'glowflow COMMAND --help' for each command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"glowflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _train_parser(sub)
    raw = _Formatter

    p = sub.add_parser("eval", help="bits/dim (or NLL) of a data split", epilog=EVAL_EXAMPLES, formatter_class=raw,
                       description="Score a split of the run's data: bits/dim with the dequantization noise averaged "
                       "over --n-samples draws (and the importance-weighted estimate with --importance-weighted, "
                       "always for variational dequantization); NLL in nats for tabular / toy data. Printed and "
                       "saved to RUN/eval_<split>.json.")  # fmt: skip
    _run_args(p, data=True)
    p.add_argument("--split", choices=("test", "train"), default="test", help="which split (default test)")
    p.add_argument("--n-samples", type=int, default=10, help="dequantization noise draws per image (default 10)")
    p.add_argument("--importance-weighted", action="store_true", help="also the importance-weighted estimate")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    p.add_argument("--limit", type=int, default=None, help="score a fixed random subset of this many examples")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("sample", help="a PNG grid of samples (and .npy)", epilog=SAMPLE_EXAMPLES,
                       formatter_class=raw, description="Draw samples at a temperature into a PNG grid (a scatter "
                       "plot for tabular / toy models); --npy also saves the samples as an array.")  # fmt: skip
    _run_args(p)
    p.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--temperature", type=float, default=0.7, help="latent standard deviation (default 0.7)")
    p.add_argument("--label", default=None, help="class index or name (class-conditional models)")
    p.add_argument("--out", default=None, help="PNG file (default RUN/sample_T<temperature>.png)")
    p.add_argument("--npy", action="store_true", help="also save the samples beside it as .npy")
    p.add_argument("--ncol", type=int, default=None, help="images per row")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("interpolate", help="latent interpolation between data images", epilog=INTERPOLATE_EXAMPLES,
                       formatter_class=raw, description="Encode two data images, interpolate their latents "
                       "linearly and decode: one PNG row per pair, the two images at its ends.")  # fmt: skip
    _run_args(p, data=True)
    p.add_argument("--index", type=int, nargs=2, metavar=("A", "B"), help="the two images (default: random pairs)")
    p.add_argument("--pairs", type=int, default=4, help="random pairs, one row each (default 4)")
    p.add_argument("--frames", type=int, default=8, help="images per row, ends included (default 8)")
    p.add_argument("--split", choices=("test", "train"), default="test", help="where the images come from")
    p.add_argument("--out", default=None, help="PNG file (default RUN/interpolate.png)")
    p.set_defaults(func=_cmd_interpolate)

    p = sub.add_parser("manipulate", help="latent arithmetic with a class vector", epilog=MANIPULATE_EXAMPLES,
                       formatter_class=raw, description="Class vector = mean latent of class --to minus mean "
                       "latent of class --from over the training set; it is added with several strengths to test "
                       "images of class --from (rows: images, columns: strengths). Needs labelled data.")  # fmt: skip
    _run_args(p, data=True)
    p.add_argument("--from", dest="source", required=True, help="source class (index or name)")
    p.add_argument("--to", dest="target", required=True, help="target class (index or name)")
    p.add_argument("--n", type=int, default=4, help="test images of the source class (default 4)")
    p.add_argument("--strengths", type=_floats, default=[0.0, 0.25, 0.5, 0.75, 1.0, 1.25],
                   help="multiples of the class vector (default 0,0.25,0.5,0.75,1,1.25)")  # fmt: skip
    p.add_argument("--max-per-class", type=int, default=2000, help="training images per class mean (default 2000)")
    p.add_argument("--out", default=None, help="PNG file (default RUN/manipulate_<from>_to_<to>.png)")
    p.set_defaults(func=_cmd_manipulate)

    p = sub.add_parser("info", help="what a run is and how far it got", epilog=INFO_EXAMPLES, formatter_class=raw,
                       description="Configuration, parameter count, steps trained, wall time and the test metric "
                       "(from checkpoints/last.pt, else best.pt).")  # fmt: skip
    p.add_argument("run", metavar="RUN", help="a run directory or a .pt file")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(func=_cmd_info)
    return parser


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``glowflow`` command (and ``python -m glowflow``). Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"glowflow {args.command}"
    rank = os.environ.get("RANK", "0")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. head, which closed early: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (GlowflowError, ValueError, FileNotFoundError, OSError, ImportError) as e:
        where = f" [rank {rank}]" if rank != "0" else ""
        print(f"{prog}{where}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
