"""Training glowflow models: ``glowflow.train`` / ``glowflow train`` and what they are made of.

- :mod:`~glowflow.training.loop`: :func:`train`, the loop, read top to bottom;
- :mod:`~glowflow.training.config`: :class:`TrainConfig`, the presets, config files and their layering;
- :mod:`~glowflow.training.data` / :mod:`~glowflow.training.batches`: the splits ready for the model, the batches;
- :mod:`~glowflow.training.model`: the model a configuration describes;
- :mod:`~glowflow.training.step`: one optimiser step, without host synchronisation;
- :mod:`~glowflow.training.optim`: the optimiser and the learning-rate rule;
- :mod:`~glowflow.training.checkpoint`: atomic, validated checkpoints and :func:`load_model`;
- :mod:`~glowflow.training.evaluate`: test bits/dim (or NLL), samples, sample pictures;
- :mod:`~glowflow.training.outputs` / :mod:`~glowflow.training.metrics`: the run directory, ``metrics.jsonl``;
- :mod:`~glowflow.training.distributed` / :mod:`~glowflow.training.devices`: torchrun / DDP, devices;
- :mod:`~glowflow.training.guard`: the fault guard (skip non-finite steps, roll back, give up).
"""

from glowflow.training.checkpoint import find_checkpoint, load_checkpoint, load_model, save_checkpoint
from glowflow.training.config import PRESETS, TrainConfig, load_config_file, resolve_config
from glowflow.training.data import TrainingData, prepare_data
from glowflow.training.evaluate import draw_samples, evaluate
from glowflow.training.guard import FaultGuard, TrainingError
from glowflow.training.loop import RESUMABLE, TrainResult, train
from glowflow.training.metrics import read_metrics
from glowflow.training.model import build_model, model_for_data

__all__ = [
    "PRESETS",
    "RESUMABLE",
    "FaultGuard",
    "TrainConfig",
    "TrainResult",
    "TrainingData",
    "TrainingError",
    "build_model",
    "draw_samples",
    "evaluate",
    "find_checkpoint",
    "load_checkpoint",
    "load_config_file",
    "load_model",
    "model_for_data",
    "prepare_data",
    "read_metrics",
    "resolve_config",
    "save_checkpoint",
    "train",
]
