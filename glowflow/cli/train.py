"""``glowflow train``: the command line of :func:`glowflow.train`, generated from :class:`TrainConfig`."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from glowflow.checks import TEMPERATURE
from glowflow.cli.common import SIGNAL_EXIT, Formatter, device_name, number_list, optional, ranged

TRAIN_EXAMPLES = """\
examples:
  glowflow train                                   # the built-in 8x8 digits: a few minutes on a CPU
  glowflow train --iters 500 --out runs/quick      # shorter, into a chosen run directory
  glowflow train --out runs/quick --resume --iters 1000   # continue it exactly
  glowflow train --data mnist --data-dir ~/data --download --device cuda     # the mnist preset
  glowflow train --preset cifar10 --data-dir ~/data --precision bf16 --compile
  glowflow train --data folder --data-dir ~/celeba64 --preset celeba64
  glowflow train --data imagenet32 --data-dir ~/data/imagenet32 --workers 4   # read batch by batch when large
  glowflow train --data folder --data-dir ~/photos --image-size 64 --fit center-crop --on-error skip --workers 8
  glowflow train --data shards --data-dir "~/shards/train-*.tar" --image-size 32 --workers 4
  glowflow train --data mnist --data-dir ~/data --conditional --n-bits 5 --levels 2 --steps 8 --hidden 128
  glowflow train --data moons                      # a 2-D toy density (TabularGlow)
  glowflow train --data tabular --data-dir table.csv
  glowflow train --config run.toml --lr 5e-4       # defaults < --preset < --config < flags
  torchrun --nproc_per_node=4 -m glowflow train --data cifar10 --data-dir ~/data

The run directory holds config.json (the resolved configuration), metrics.jsonl, samples.png (and samples/),
curve.png and checkpoints/last.pt + best.pt. Ctrl-C or SIGTERM finish the current step, save, and exit.
"""


def add_parsers(sub: Any) -> None:
    from glowflow.training.config import PRESET_NOTES, PRESETS, RANGES, TrainConfig, choices_of

    presets = "\n".join(f"  {name:<10} {note}" for name, note in PRESET_NOTES.items())
    p = sub.add_parser(
        "train",
        help="train a model (the built-in digits by default)",
        description="Train a Glow on images or a TabularGlow on tabular / 2-D toy data. Every setting below can "
        "also come from --preset and --config FILE (JSON or TOML, the same keys with underscores); explicit flags "
        "win. Without --preset, the preset made for the data is used (digits, mnist, cifar10, toy, tabular); the "
        "defaults shown are the digits preset's.",
        epilog=f"presets (--preset NAME; none: the bare defaults):\n{presets}\n\n{TRAIN_EXAMPLES}",
        formatter_class=Formatter,
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
            kwargs["type"] = number_list(TEMPERATURE)
            kwargs["metavar"] = "T1,T2,..."
        else:
            base = {"int": int, "float": float, "str": str}[t.split("|")[0].strip()]
            kwargs["type"] = optional(base) if "None" in t and f.name != "preset" else base  # preset "none": a name
            if f.name in RANGES:  # a bad value is a usage error before anything loads
                kwargs["type"] = ranged(RANGES[f.name])
            elif f.name == "device":
                kwargs["type"] = device_name
            if meta.get("choices") and f.name != "data":
                kwargs["choices"] = choices_of(f)
            if f.name == "data":
                kwargs["metavar"] = "NAME"
            kwargs.setdefault("metavar", {"int": "N", "float": "X"}.get(t.split("|")[0].strip()))
            if f.name in ("out", "data_dir"):
                kwargs["metavar"] = "DIR"
            if f.name == "background_for":
                kwargs["metavar"] = "RUN"
            if kwargs["metavar"] is None:
                del kwargs["metavar"]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if default is not None and f.name != "preset" and t != "bool":
            help_text += f" (default {','.join(map(str, default)) if isinstance(default, list) else default})"
        groups[meta["group"]].add_argument(flag, help=help_text, **kwargs)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glowflow.training import train
    from glowflow.training.config import FIELD_NAMES

    overrides = {k: v for k, v in vars(args).items() if k in FIELD_NAMES}
    result = train(args.config, resume=args.resume, **overrides)
    if result.stopped_by:
        return SIGNAL_EXIT.get(result.stopped_by, 143)
    return 0
