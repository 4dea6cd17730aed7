"""The table of model classes by name (what checkpoints, pretrained directories and the Lightning module record).

The classes register themselves (``@MODELS.register("Glow")`` in ``glow.py``); this module imports no model, so
the file formats can look classes up without importing the models (no import cycle)."""

from __future__ import annotations

from typing import Any

from glowflow.registry import Registry

MODELS: Registry[Any] = Registry("model class")


def build_model(class_name: str, config: dict) -> Any:
    """A fresh, untrained model of class ``class_name`` (a key of :data:`MODELS`) from its constructor arguments
    ``config`` (``model.config``, e.g. read back from JSON: lists stand for tuples)."""
    cls = MODELS.get(class_name)
    kwargs = dict(config)
    if "in_shape" in kwargs:
        kwargs["in_shape"] = tuple(kwargs["in_shape"])
    return cls(**kwargs)
