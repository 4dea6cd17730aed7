"""The model a training configuration describes for its data."""

from __future__ import annotations

import warnings

import torch

from glowflow.models import FlowModel, Glow, TabularGlow
from glowflow.training.config import TrainConfig
from glowflow.training.data import TrainingData
from glowflow.training.devices import resolve_device, resolve_precision


def model_for_data(cfg: TrainConfig, data: TrainingData, device: torch.device | None = None) -> FlowModel:
    """Glow for images, TabularGlow for tabular / toy rows, as ``cfg`` says, owning the data's units: the images'
    preprocessing and class names, or the rows' standardisation (fitted to the training split). ``precision``
    ``"auto"`` resolves for ``device`` (default: ``cfg.device``'s) by :func:`model_precision`."""
    num_classes = data.num_classes if cfg.conditional else None
    class_names = data.class_names if cfg.conditional else None
    precision = cfg.precision
    if precision == "auto":
        precision = model_precision(precision, data.is_image, device or resolve_device(cfg.device))
    if data.is_image:
        return Glow(
            data.shape, levels=cfg.levels, steps=cfg.steps, hidden=cfg.hidden, coupling=cfg.coupling,
            permutation=cfg.permutation, conditioner=cfg.conditioner, mask=cfg.mask, num_classes=num_classes,
            num_bins=data.num_bins, dequantization=cfg.dequantization, precision=precision, memory=cfg.memory,
            class_names=class_names, preprocessing=data.preprocessing,
        )  # fmt: skip
    model = TabularGlow(
        data.shape[0], steps=cfg.steps, hidden=cfg.hidden, coupling=cfg.coupling, permutation=cfg.permutation,
        num_classes=num_classes, precision=precision, class_names=class_names,
    )  # fmt: skip
    model.standardize.fit(data.train_x)
    return model


def model_precision(name: str, is_image: bool, device: torch.device) -> str:
    """The conditioners' precision a run's ``precision`` setting gives its model: ``"fp32"`` / ``"bf16"`` as given;
    ``"auto"``, the default, bf16 for the image Glow where ``device`` computes it natively
    (:func:`~glowflow.training.devices.resolve_precision`) and fp32 elsewhere, and fp32 for the tabular / toy
    models, whose small MLP conditioners the precision rule (test bits/dim within 0.01 of fp32's after equal steps,
    benchmarks/precision.py) was not measured on."""
    if name == "auto" and not is_image:
        return "fp32"
    return resolve_precision(name, device)


def build_model(cfg: TrainConfig, data: TrainingData) -> FlowModel:
    """Deprecated name (until glowflow 0.2) of :func:`model_for_data`; :func:`glowflow.models.build_model` is the
    other function, which builds a model from its class name and constructor arguments."""
    warnings.warn(
        "glowflow.training.build_model is now glowflow.training.model_for_data", DeprecationWarning, stacklevel=2
    )
    return model_for_data(cfg, data)
