"""How counts read in messages: ``1 draw`` / ``2 draws``, and ``17 grey levels`` / ``256 levels per channel``."""

from __future__ import annotations


def plural(n: int, noun: str) -> str:
    """``1 draw``, ``2 draws``; ``1 process``, ``2 processes``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def levels_text(num_bins: int, channels: int) -> str:
    """``17 grey levels`` for one channel, ``256 levels per channel`` for colour images."""
    return f"{num_bins} grey levels" if channels == 1 else f"{num_bins} levels per channel"
