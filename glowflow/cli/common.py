"""What every ``glowflow`` command shares: the argument parser that reports usage errors in one line, the help
formatter, argument types that check ranges, and the arguments of the commands that take a trained ``RUN``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from glowflow.checks import FINITE, SEED, IntRange, NumberRange, device_problem

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


NONE_WORDS = ("none", "null", "off")


def optional(kind: type) -> Any:
    """An argparse type: ``none`` / ``null`` / ``off`` -> None, else ``kind(text)``."""

    def parse(text: str) -> Any:
        return None if text.lower() in NONE_WORDS else kind(text)

    parse.__name__ = kind.__name__
    return parse


def ranged(allowed: IntRange | NumberRange) -> Callable[[str], Any]:
    """An argparse type: an integer (:class:`IntRange`) or a number (:class:`NumberRange`) within ``allowed``
    (``none`` too where it is optional); anything else is a usage error such as
    ``argument --limit: must be >= 1, got '-5'``."""
    kind = int if isinstance(allowed, IntRange) else float

    def parse(text: str) -> Any:
        if allowed.optional and text.lower() in NONE_WORDS:
            return None
        try:
            value: Any = kind(text)
        except ValueError:
            value = text  # not a number: problem() says what is expected
        problem = allowed.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def number_list(allowed: NumberRange) -> Callable[[str], list[float]]:
    """An argparse type: comma-separated numbers, each within ``allowed``."""

    def parse(text: str) -> list[float]:
        try:
            values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values or any(allowed.problem(v) for v in values):
            what = allowed.describe()
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, each {what}, got {text!r}")
        return values

    return parse


floats = number_list(FINITE)  # comma-separated finite numbers


def device_name(text: str) -> str:
    """An argparse type: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``."""
    problem = device_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{problem}, got {text!r}")
    return text


def png_file(text: str) -> Path:
    """An argparse type: the path of a PNG file to write (``.png``; not an existing folder)."""
    path = Path(text).expanduser()
    if path.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"must name a .png file, got {text!r}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give the path of a .png file")
    return path


RUN_HELP = (
    "a run directory (uses checkpoints/best.pt, else last.pt), a .pt checkpoint file, a pretrained-model directory "
    "(glowflow export), a shipped model (glowflow/digits, glowflow/moons, glowflow/mnist) or a Hugging Face Hub id "
    "(owner/name; needs glowflow[hub])"
)
PRETRAINED_OUT = "the current directory for a pretrained model, which has no run directory"


def run_args(p: argparse.ArgumentParser, data: bool = False) -> None:
    """``RUN`` and the options of every command that uses a trained model."""
    p.add_argument("run", metavar="RUN", help=RUN_HELP)
    p.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint of a run dir")
    p.add_argument("--device", type=device_name, default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    p.add_argument("--seed", type=ranged(SEED), default=0,
                   help=f"seed of the random choices and noise, 0..{SEED.high} (default 0)")  # fmt: skip
    if data:
        p.add_argument("--data-dir", default=None, help="where the model's data set is now, if it moved")


def open_run_of(args: argparse.Namespace) -> Any:
    from glowflow.runs import open_run

    return open_run(args.run, args.device, args.checkpoint)


def default_out(run: Any, name: str) -> Path:
    """Where a command writes by default: into the run directory (the current directory for a pretrained model)."""
    return run.output_dir / name


def write_png(picture: Any, out: Path) -> Path:
    """Save ``picture`` (an ``(H, W, 3)`` uint8 array) as the PNG ``out``, atomically; ``ValueError`` naming ``out``
    if it cannot be written."""
    from glowflow import viz

    try:
        return viz.save_png(picture, out)
    except OSError as e:
        raise ValueError(f"cannot write {out}: {e.strerror or e}") from None


def write_npy(array: Any, out: Path) -> Path:
    """Save a NumPy array as ``out`` (``.npy``), atomically; ``ValueError`` naming ``out`` if it cannot be written."""
    import numpy as np

    from glowflow.io import atomic_write_bytes

    try:
        return atomic_write_bytes(out, lambda f: np.save(f, array))
    except OSError as e:
        raise ValueError(f"cannot write {out}: {e.strerror or e}") from None
