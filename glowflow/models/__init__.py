"""Models composed from ``glowflow.layers``."""

from glowflow.models.base import FlowModel
from glowflow.models.glow import Glow
from glowflow.models.tabular import TabularGlow

__all__ = ["FlowModel", "Glow", "TabularGlow"]
