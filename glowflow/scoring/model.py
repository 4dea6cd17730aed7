"""The model that scores, encodes or decodes, wherever it comes from (any model source of glowflow.load, an
:class:`~glowflow.runs.OpenRun` or a model in memory), and its inputs made ready for it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from glowflow.models import FlowModel, Glow
from glowflow.scoring.inputs import InputSet, fit_images, fit_rows, read_input


@dataclass
class Scorer:
    """A model in eval mode with what is known about where it came from.

    ``about``: ``{"checkpoint", "step", "model"}`` for a run (``{"model"}`` for a bare model); ``data`` /
    ``data_dir``: the run's data set and where it was, so that ``NAME:SPLIT`` of that data set finds its files.
    """

    model: FlowModel
    about: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    data_dir: str | None = None

    @property
    def is_image(self) -> bool:
        return self.model.is_image

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_scorer(model_or_run: Any, device: str | None = None, checkpoint: str = "best") -> Scorer:
    """A :class:`Scorer` of ``model_or_run``: a :class:`~glowflow.FlowModel` (used where it is; ``device`` must then be
    None), an :class:`~glowflow.runs.OpenRun`, or any model source :func:`glowflow.load` takes (a run directory,
    ``checkpoint`` best or last; a checkpoint file; a pretrained-model directory; a shipped model name; a Hub id),
    loaded on ``device`` (default ``auto``: CUDA when available)."""
    from glowflow.runs import OpenRun, open_run
    from glowflow.training.devices import resolve_device
    from glowflow.training.distributed import DistContext

    if isinstance(model_or_run, FlowModel):
        if device is not None:
            raise ValueError("device applies to a run loaded from disk; move the model itself (model.to(...))")
        if not model_or_run.is_initialized:
            raise ValueError("the model has not been trained or initialised (its ActNorm layers have seen no data)")
        return Scorer(model_or_run.eval(), {"model": model_or_run.describe()})
    if isinstance(model_or_run, (str, os.PathLike)):
        model_or_run = open_run(model_or_run, device or "auto", checkpoint)
    if not isinstance(model_or_run, OpenRun):
        raise ValueError(f"expected a model or a model source (a run directory, a checkpoint, a pretrained directory, "
                         f"a shipped name, a Hub id), got {type(model_or_run).__name__}")  # fmt: skip
    run = model_or_run
    if device is not None:
        run.model.to(resolve_device(device, DistContext()))
    about = {"checkpoint": str(run.path), "step": run.step, "model": run.model.describe()}
    if run.config is None:  # a pretrained directory that does not record its training: the data set's name only
        return Scorer(run.model.eval(), about, run.data.get("name"), None)
    return Scorer(run.model.eval(), about, run.config.data, run.config.data_dir)


def raw_levels(model: FlowModel) -> int | None:
    """Levels of the model's raw images (None for a tabular model)."""
    return model.preprocessing.raw_bins if isinstance(model, Glow) else None


def read_inputs(
    specs: Sequence[Any], scorer: Scorer, levels: int | None = None, data_dir: str | os.PathLike | None = None
) -> list[InputSet]:
    """INPUT specs (or ready :class:`InputSet`\\ s) for this model. ``levels``: of images in array files (default: the
    model's raw levels); ``data_dir``: where ``NAME:SPLIT`` data sets are (default: the run's own ``data_dir`` for
    the run's data set, else glowflow's default data folder)."""
    if not specs:
        raise ValueError("no INPUT given")
    out = []
    for spec in specs:
        if isinstance(spec, InputSet):
            out.append(spec)
            continue
        where = data_dir
        if where is None and scorer.data is not None and str(spec).split(":")[0] == scorer.data:
            where = scorer.data_dir
        array_levels = levels if levels is not None else (raw_levels(scorer.model) or 256)
        out.append(read_input(spec, image=scorer.is_image, levels=array_levels, data_dir=where))
    return out


@dataclass
class FitOptions:
    """How images that are not the model's shape are fitted (see :func:`~glowflow.scoring.inputs.fit_images`), and
    the label of every example for a class-conditional model given unlabelled inputs."""

    resize: bool = False
    pad: bool = False
    grayscale: bool = False
    label: int | str | None = None


def model_input(inputs: InputSet, model: FlowModel, fit: FitOptions) -> tuple[Tensor, Tensor | None]:
    """``inputs`` as the model's input and labels: discrete levels (uint8 / int32, the model's shape after its own
    preprocessing: n-bit reduction, padding) or float32 rows; class indices for a class-conditional model."""
    if isinstance(model, Glow):
        x = model.preprocess(fit_images(inputs, model.preprocessing, fit.resize, fit.pad, fit.grayscale))
    else:
        x = fit_rows(inputs, model.num_dims)
    return x, model_labels(inputs, model, fit.label)


def model_labels(inputs: InputSet, model: FlowModel, label: int | str | None = None) -> Tensor | None:
    """Class indices of the model for ``inputs`` (None for a model that is not class-conditional): ``label`` for
    every example if given, else the inputs' labels, matched by class name when both sides have names."""
    if model.num_classes is None:
        if label is not None:
            raise ValueError("--label needs a class-conditional model; this one takes no labels")
        return None
    if label is not None:
        return torch.full((len(inputs),), model.label_index(label), dtype=torch.long)
    if inputs.labels is None:
        raise ValueError(f"the model is class-conditional and {inputs.name} has no labels: give labelled inputs "
                         "(class sub-folders, an npz with 'labels', a data set) or --label")  # fmt: skip
    if inputs.class_names is not None and model.class_names is not None:
        return torch.tensor([model.label_index(n) for n in inputs.label_names()], dtype=torch.long)
    return torch.tensor([model.label_index(int(i)) for i in inputs.labels.tolist()], dtype=torch.long)
