"""Models composed from ``glowflow.layers``; :data:`MODELS` maps their class names to the classes (what checkpoints,
pretrained directories and the Lightning module record)."""

from glowflow.models.base import FlowModel
from glowflow.models.glow import Glow
from glowflow.models.tabular import TabularGlow
from glowflow.registry import Registry

MODELS: Registry[type[FlowModel]] = Registry("model class")
MODELS.register("Glow", Glow, help="the multi-scale image Glow")
MODELS.register("TabularGlow", TabularGlow, help="the 1-D Glow for vectors")


def build_model(class_name: str, config: dict) -> FlowModel:
    """A fresh, untrained model of class ``class_name`` (a key of :data:`MODELS`) from its constructor arguments
    ``config`` (``model.config``, e.g. read back from JSON: lists stand for tuples)."""
    cls = MODELS.get(class_name)
    kwargs = dict(config)
    if "in_shape" in kwargs:
        kwargs["in_shape"] = tuple(kwargs["in_shape"])
    return cls(**kwargs)


__all__ = ["MODELS", "FlowModel", "Glow", "TabularGlow", "build_model"]
