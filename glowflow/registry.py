"""Name -> entry tables: one per extension point (couplings, permutations, conditioners, dequantizers, models,
data sets).

Every place that takes a choice by name - the model constructors, :class:`~glowflow.training.TrainConfig`, the
command line - reads the same table, so adding a coupling or a data set is one new class (or reader) plus one
``register`` line beside it::

    from glowflow.layers.coupling import COUPLINGS, Coupling

    @COUPLINGS.register("shift", help="y_b = x_b + t(x_a) (no scale)")
    class ShiftCoupling(Coupling):
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered table of named entries of one kind (``"coupling"``, ``"data set"``, ...).

    ``register(name)`` adds an entry (as a decorator or called with the entry); ``get(name)`` returns it or raises a
    ``ValueError`` that lists the valid names; ``names()`` gives them in registration order.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, entry: T | None = None, *, help: str = "") -> Callable[[T], T] | T:
        """Add ``entry`` under ``name``; without ``entry``, return a decorator that adds what it decorates."""

        def add(value: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = value
            self._help[name] = help
            return value

        return add if entry is None else add(entry)

    def get(self, name: str) -> T:
        """The entry called ``name``; ``ValueError`` naming the valid choices for an unknown name."""
        self.check(name)
        return self._entries[name]

    def check(self, name: str) -> None:
        """``ValueError`` if ``name`` is not registered."""
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of {', '.join(self._entries)}")

    def help(self, name: str) -> str:
        """The one-line description given at registration."""
        self.check(name)
        return self._help[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
