"""The ``glowflow`` command: ``train``, ``eval``, ``sample``, ``interpolate``, ``manipulate``, ``info``, ``export``,
``score``, ``ood``, ``encode``, ``decode``.

One module per command family (``train.py``, ``evaluate.py``, ``sample.py``, ``export.py``, ``score.py``,
``codec.py``), each with ``add_parsers(sub)``; this module assembles them and runs the command. Errors are one line
on stderr (``glowflow <command>: error: ...``) and exit code 2, never a traceback. A training stopped by SIGINT /
SIGTERM saves a checkpoint and exits with 130 / 143.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from glowflow.cli import codec, evaluate, export, sample, score, train
from glowflow.cli.common import EXIT_ERROR, Parser
from glowflow.errors import GlowflowError

COMMANDS = (train, evaluate, sample, export, score, codec)


def build_parser() -> argparse.ArgumentParser:
    from glowflow import __version__

    parser = Parser(
        prog="glowflow",
        description="Glow normalizing flows: train, score, sample and edit with a trained model.",
        epilog="Run 'glowflow COMMAND --help' for each command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"glowflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for module in COMMANDS:
        module.add_parsers(sub)
    return parser


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:  # "[Errno 13] Permission denied: 'x'" -> "x: Permission denied"
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _out_of_memory(e: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return isinstance(e, MemoryError) or (torch is not None and isinstance(e, torch.OutOfMemoryError))


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
    except (GlowflowError, ValueError, FileNotFoundError, OSError, ImportError, MemoryError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not isinstance(e, GlowflowError) and not _out_of_memory(e):
            raise  # a bug, not bad input: the traceback is what a report needs
        where = f" [rank {rank}]" if rank != "0" else ""
        text = _one_line(e)
        if _out_of_memory(e):
            text = f"out of memory ({text[:200]}); use a smaller --batch-size (or --n, --sample-n)"
        print(f"{prog}{where}: error: {text}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
