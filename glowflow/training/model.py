"""The model a training configuration describes for its data."""

from __future__ import annotations

import warnings

from glowflow.models import FlowModel, Glow, TabularGlow
from glowflow.training.config import TrainConfig
from glowflow.training.data import TrainingData


def model_for_data(cfg: TrainConfig, data: TrainingData) -> FlowModel:
    """Glow for images, TabularGlow for tabular / toy rows, as ``cfg`` says, owning the data's units: the images'
    preprocessing and class names, or the rows' standardisation (fitted to the training split)."""
    num_classes = data.num_classes if cfg.conditional else None
    class_names = data.class_names if cfg.conditional else None
    if data.is_image:
        return Glow(
            data.shape, levels=cfg.levels, steps=cfg.steps, hidden=cfg.hidden, coupling=cfg.coupling,
            permutation=cfg.permutation, conditioner=cfg.conditioner, mask=cfg.mask, num_classes=num_classes,
            num_bins=data.num_bins, dequantization=cfg.dequantization, precision=cfg.precision, memory=cfg.memory,
            class_names=class_names, preprocessing=data.preprocessing,
        )  # fmt: skip
    model = TabularGlow(
        data.shape[0], steps=cfg.steps, hidden=cfg.hidden, coupling=cfg.coupling, permutation=cfg.permutation,
        num_classes=num_classes, precision=cfg.precision, class_names=class_names,
    )  # fmt: skip
    model.standardize.fit(data.train_x)
    return model


def build_model(cfg: TrainConfig, data: TrainingData) -> FlowModel:
    """Deprecated name (until glowflow 0.2) of :func:`model_for_data`; :func:`glowflow.models.build_model` is the
    other function, which builds a model from its class name and constructor arguments."""
    warnings.warn(
        "glowflow.training.build_model is now glowflow.training.model_for_data", DeprecationWarning, stacklevel=2
    )
    return model_for_data(cfg, data)
