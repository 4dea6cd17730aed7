"""Progress reports that read well everywhere: a tqdm bar on a terminal, plain lines in a log file.

When stderr is a terminal, :class:`Progress` draws a tqdm bar (with its ``\\r`` redraws). When it is not (CI,
``nohup``, ``2> train.log``), it writes one plain line every ``interval`` seconds (and one at the end) instead, so a log
file holds a few readable lines rather than hundreds of carriage-return updates (the interval: 30 s, or
``$GLOWFLOW_PROGRESS_INTERVAL``). Messages (:meth:`Progress.write`) go to stdout in both cases, above the bar.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, TextIO

DEFAULT_INTERVAL_S = 30.0
INTERVAL_ENV = "GLOWFLOW_PROGRESS_INTERVAL"


def default_interval() -> float:
    """Seconds between plain progress lines: ``$GLOWFLOW_PROGRESS_INTERVAL`` if set (a number >= 0; 0 writes a line
    at every update), else :data:`DEFAULT_INTERVAL_S`."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"${INTERVAL_ENV} must be a number of seconds >= 0, got {text!r}")
    return value


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


class Progress:
    """Counts ``total`` units (steps, images) from ``initial``.

    Args:
        total: units in all (None: unknown).
        initial: units already done (a resumed run).
        unit: what is counted (``"step"``, ``"img"``).
        desc: a short label for the plain lines (``"train"``, ``"score"``).
        enabled: False draws and writes nothing but :meth:`write`'s messages.
        interval: seconds between plain lines when stderr is not a terminal (default :func:`default_interval`).
        stream: where the bar or the plain lines go (default ``sys.stderr``).
    """

    def __init__(
        self,
        total: int | None,
        initial: int = 0,
        unit: str = "step",
        desc: str = "",
        enabled: bool = True,
        interval: float | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.n, self.unit, self.desc = total, initial, unit, desc
        self.enabled = enabled
        self.interval = default_interval() if interval is None else interval
        self.stream = stream if stream is not None else sys.stderr
        self.postfix: dict[str, str] = {}
        self._start_n = self._reported = initial
        self._start = self._last = time.perf_counter()
        self._bar: Any = None
        if enabled and is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit=unit, desc=desc or None, dynamic_ncols=True,
                             file=self.stream)  # fmt: skip

    @property
    def is_bar(self) -> bool:
        """Whether a tqdm bar is drawn (stderr is a terminal)."""
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.perf_counter() - self._last >= self.interval:
            self._line()

    def set_postfix(self, values: dict[str, str]) -> None:
        """Figures shown beside the count (the bar's postfix, or the end of each plain line)."""
        self.postfix = dict(values)
        if self._bar is not None:
            self._bar.set_postfix(self.postfix, refresh=False)

    def write(self, text: str) -> None:
        """A message line on stdout (above the bar, which stays intact)."""
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text, file=sys.stdout, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.n != self._reported:  # a closing line, unless the last one said it all
            self._line()

    def _line(self) -> None:
        now = time.perf_counter()
        self._last, self._reported = now, self.n
        elapsed = now - self._start
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        if self.total:
            done += f" ({100 * self.n / self.total:.0f}%)"
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.unit} {done}" if self.desc else f"{self.unit} {done}"]
        parts.append(f"{rate:.3g} {self.unit}/s, {_clock(elapsed)} elapsed")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"{_clock((self.total - self.n) / rate)} left")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        print(", ".join(parts), file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
