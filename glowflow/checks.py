"""Range checks of arguments at the library's boundary: one ``ValueError`` naming the argument and the allowed
range, such as ``limit must be >= 1, got -5``.

An :class:`IntRange` or :class:`NumberRange` says what a value may be; :meth:`~IntRange.check` raises for anything
else and :meth:`~IntRange.problem` says what is wrong (None: nothing). The command line builds its argparse types
from the same ranges (``glowflow.cli.common.ranged``), so a bad flag is a usage error before anything loads, and
the training configuration checks its keys with them (``glowflow.training.config.RANGES``).
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any

MAX_SEED = 2**31 - 1
"""The largest seed: numpy's legacy ``np.random.seed`` takes seeds below 2**32, and training adds a per-process
offset to the seed."""


@dataclass(frozen=True)
class IntRange:
    """Integers in ``low..high`` (either end None: unbounded); ``optional`` also allows None."""

    low: int | None = None
    high: int | None = None
    optional: bool = False

    def describe(self) -> str:
        """The range in words: ``>= 1``, ``<= 8``, ``in 1..8``, or ``an integer``."""
        if self.low is not None and self.high is not None:
            return f"in {self.low}..{self.high}"
        if self.low is not None:
            return f">= {self.low}"
        if self.high is not None:
            return f"<= {self.high}"
        return "an integer"

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (``"must be >= 1"``), or None if it is in range."""
        none = " or none" if self.optional else ""
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            words = self.describe()
            return f"must be an integer{'' if words == 'an integer' else ' ' + words}{none}"
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            verb = "lie" if self.low is not None and self.high is not None else "be"
            return f"must {verb} {self.describe()}{none}"
        return None

    def check(self, name: str, value: Any) -> Any:
        """``value`` (a Python int, or None where optional); ``ValueError`` naming ``name`` if it is out of range."""
        problem = self.problem(value)
        if problem is not None:
            raise ValueError(f"{name} {problem}, got {value!r}")
        return None if value is None else int(value)


@dataclass(frozen=True)
class NumberRange:
    """Finite real numbers from ``low`` (excluded if ``low_open``) to ``high`` (included); None ends: unbounded.
    ``optional`` also allows None."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    optional: bool = False

    def describe(self) -> str:
        """The range in words: ``a positive number``, ``a number >= 0``, ``in (0, 1]``, ``a finite number``."""
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        if self.low == 0 and self.low_open:
            return "a positive number"
        if self.low is not None:
            return f"a number {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"a number <= {self.high:g}"
        return "a finite number"

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value``, or None if it is in range."""
        if value is None and self.optional:
            return None
        words = self.describe()
        must = f"must lie {words}" if words.startswith("in ") else f"must be {words}"
        bad = isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
        if not bad:
            low_bad = self.low is not None and (value <= self.low if self.low_open else value < self.low)
            bad = low_bad or (self.high is not None and value > self.high)
        return must + (" or none" if self.optional else "") if bad else None

    def check(self, name: str, value: Any) -> Any:
        """``value`` as a float (or None where optional); ``ValueError`` naming ``name`` if it is out of range."""
        problem = self.problem(value)
        if problem is not None:
            raise ValueError(f"{name} {problem}, got {value!r}")
        return None if value is None else float(value)


POSITIVE = IntRange(1)
NON_NEGATIVE = IntRange(0)
SEED = IntRange(0, MAX_SEED)
FINITE = NumberRange()
TEMPERATURE = NumberRange(0)  # the latent standard deviation of sampling


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else ``ValueError`` naming ``name`` and the choices."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


DEVICE_WORDS = "cpu, cuda, cuda:N or auto"


def device_problem(value: Any) -> str | None:
    """What is wrong with a device name (``cpu``, ``cuda``, ``cuda:N``, ``auto``), or None."""
    ok = isinstance(value, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", value) is not None
    return None if ok else f"must be {DEVICE_WORDS}"
