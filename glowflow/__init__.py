"""glowflow: Glow normalizing flows on PyTorch."""

from glowflow.errors import CheckpointError, DataError, GlowflowError, NotInitializedError, SingularWeightError
from glowflow.layers.dequantization import bits_per_dim, quantize, reduce_bits, to_continuous, to_uint8
from glowflow.models import FlowModel, Glow, TabularGlow

__version__ = "0.1.0"

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
]
