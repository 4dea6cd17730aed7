"""glowflow: Glow normalizing flows on PyTorch."""

import importlib

from glowflow.errors import (
    CheckpointError,
    DataError,
    GlowflowError,
    NonFiniteError,
    NotInitializedError,
    SingularWeightError,
)
from glowflow.layers.dequantization import bits_per_dim, quantize, to_continuous, to_uint8
from glowflow.models import MODELS, FlowModel, Glow, TabularGlow
from glowflow.preprocessing import ImagePreprocessing, reduce_bits
from glowflow.version import __version__  # noqa: F401  (glowflow.__version__)

# Imported on first use, so that ``import glowflow`` stays light: ``glowflow.training.load_model(...)``,
# ``glowflow.train(...)``, ``glowflow.load(...)`` and ``glowflow.score(...)`` work right after ``import glowflow``.
_SUBMODULES = ("data", "layers", "models", "scoring", "training", "viz")
_LAZY = {"train": "glowflow.training", "load": "glowflow.loading", "score": "glowflow.scoring"}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"glowflow.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'glowflow' has no attribute {name!r}")


__all__ = [
    "MODELS",
    "CheckpointError",
    "DataError",
    "FlowModel",
    "Glow",
    "GlowflowError",
    "ImagePreprocessing",
    "NonFiniteError",
    "NotInitializedError",
    "SingularWeightError",
    "TabularGlow",
    "bits_per_dim",
    "load",
    "quantize",
    "reduce_bits",
    "score",
    "to_continuous",
    "to_uint8",
    "train",
]
