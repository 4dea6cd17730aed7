"""What every ``glowflow`` command shares: the argument parser that reports usage errors in one line, the help
formatter, argument types that check ranges, and the arguments of the commands that take a trained ``RUN``."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, NoReturn

EXIT_ERROR = 2
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}


class Formatter(argparse.HelpFormatter):
    """Wraps one-paragraph descriptions; keeps multi-line text (the examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class Parser(argparse.ArgumentParser):
    """Usage errors as one line: ``glowflow train: error: ... (see glowflow train --help)``."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


def optional(kind: type) -> Any:
    """An argparse type: ``none`` / ``null`` / ``off`` -> None, else ``kind(text)``."""

    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null", "off") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def floats(text: str) -> list[float]:
    """An argparse type: comma-separated finite numbers."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers, got {text!r}")
    return values


RUN_HELP = (
    "a run directory (uses checkpoints/best.pt, else last.pt), a .pt checkpoint file, a pretrained-model directory "
    "(glowflow export), a shipped model (glowflow/digits, glowflow/moons) or a Hugging Face Hub id "
    "(owner/name; needs glowflow[hub])"
)
PRETRAINED_OUT = "the current directory for a pretrained model, which has no run directory"


def run_args(p: argparse.ArgumentParser, data: bool = False) -> None:
    """``RUN`` and the options of every command that uses a trained model."""
    p.add_argument("run", metavar="RUN", help=RUN_HELP)
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint of a run dir")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choices and noise (default 0)")
    if data:
        p.add_argument("--data-dir", default=None, help="where the model's data set is now, if it moved")


def open_run_of(args: argparse.Namespace) -> Any:
    from glowflow.runs import open_run

    return open_run(args.run, args.device, args.checkpoint)


def default_out(run: Any, name: str) -> Path:
    """Where a command writes by default: into the run directory (the current directory for a pretrained model)."""
    return run.output_dir / name
