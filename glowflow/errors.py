"""Exceptions raised by glowflow.

Bad *input* (shapes, ranges, NaN/inf, labels) raises the built-in ``ValueError``; the classes below name
failures of state or numerics that a caller may want to catch on their own.
"""

from __future__ import annotations


class GlowflowError(Exception):
    """Base class of glowflow's own exceptions."""


class NotInitializedError(GlowflowError, RuntimeError):
    """A data-initialised layer (ActNorm) was run in the generative direction before seeing any data."""


class SingularWeightError(GlowflowError, ArithmeticError):
    """An invertible linear map became (numerically) singular; using it would silently lose exactness."""


class DataError(GlowflowError, ValueError):
    """A data file is missing, corrupt, of the wrong format, or failed its checksum. The message names the file,
    where it was looked for, and how to get it."""


class CheckpointError(GlowflowError, ValueError):
    """A checkpoint is corrupt, truncated, foreign (not written by glowflow) or incompatible with the model."""


class NonFiniteError(GlowflowError, ArithmeticError):
    """A pass of the flow turned finite values into NaN or inf: its map overflowed (latents or a temperature far
    beyond what the model was trained on, or parameters that diverged). The message says how many examples."""
