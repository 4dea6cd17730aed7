"""Models composed from ``glowflow.layers``; :data:`MODELS` maps their class names to the classes (what checkpoints,
pretrained directories and the Lightning module record)."""

from glowflow.models.base import FlowModel
from glowflow.models.glow import Glow
from glowflow.models.registry import MODELS, build_model
from glowflow.models.tabular import TabularGlow

__all__ = ["MODELS", "FlowModel", "Glow", "TabularGlow", "build_model"]
