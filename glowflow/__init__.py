"""glowflow: Glow normalizing flows on PyTorch."""

from glowflow.errors import CheckpointError, DataError, GlowflowError, NotInitializedError, SingularWeightError
from glowflow.layers.dequantization import bits_per_dim, quantize, reduce_bits, to_continuous, to_uint8
from glowflow.models import FlowModel, Glow, TabularGlow

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``glowflow.train`` (the training loop, glowflow.training.train) is imported on first use, so that
    # ``import glowflow`` stays light.
    if name == "train":
        from glowflow.training import train

        return train
    raise AttributeError(f"module 'glowflow' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "DataError",
    "FlowModel",
    "Glow",
    "GlowflowError",
    "NotInitializedError",
    "SingularWeightError",
    "TabularGlow",
    "bits_per_dim",
    "quantize",
    "reduce_bits",
    "to_continuous",
    "to_uint8",
    "train",
]
