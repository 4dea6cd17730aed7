"""Where a trained model comes from: :func:`resolve_source` tells what a ``source`` names, :func:`load` loads it.

A source is, in the order it is tried:

1. a local path: a checkpoint file (``.pt``), a run directory (``checkpoints/best.pt``, else ``last.pt``;
   ``checkpoint="last"`` swaps them) or a pretrained-model directory (``config.json`` of the
   ``glowflow-pretrained`` format + ``model.safetensors``, see :mod:`glowflow.models.pretrained`);
2. a shipped model, ``glowflow/<name>`` (:func:`shipped_models`: ``glowflow/digits``, ``glowflow/moons``,
   ``glowflow/mnist``): a pretrained-model directory inside the installed package, ``glowflow/weights/<name>``,
   read offline. The ``glowflow/`` namespace is reserved for them: another name under it is an error, never a Hub
   lookup;
3. a Hugging Face Hub model id ``owner/name`` (needs the ``hub`` extra; downloaded, or from the cache). Offline,
   or without the extra, it is one clear error.

Everything else is one ``FileNotFoundError`` / :class:`~glowflow.errors.CheckpointError` naming the source.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from glowflow.checks import check_choice
from glowflow.models.pretrained import (
    CONFIG_FILE,
    SHIPPED_PREFIX,
    load_pretrained_dir,
    resolve_pretrained,
    shipped_models,
    shipped_path,
)
from glowflow.training.checkpoint import find_checkpoint, load_model

if TYPE_CHECKING:
    import torch

    from glowflow.models.base import FlowModel


CHECKPOINTS = ("best", "last")  # which checkpoint of a run directory


@dataclass(frozen=True)
class Source:
    """What a source names: ``kind`` ``"checkpoint"`` (``path``: the checkpoint file of a run or the file given) or
    ``"pretrained"`` (``path``: the local pretrained-model directory, also of a shipped model or a Hub snapshot).
    ``given``: the source as the caller wrote it."""

    kind: str
    path: Path
    given: str


def _is_pretrained_config(path: Path) -> bool:
    """Whether ``path`` (a config.json) declares the pretrained format (a run directory's config.json is a
    training configuration and has no ``format`` field)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True  # not a training configuration either: reading it as a pretrained one names the problem
    return not isinstance(config, dict) or "format" in config


def _local(path: Path, given: str, checkpoint: str) -> Source:
    if path.is_dir() and (path / CONFIG_FILE).is_file() and not (path / "checkpoints").is_dir():
        if _is_pretrained_config(path / CONFIG_FILE):
            return Source("pretrained", path, given)
    return Source("checkpoint", find_checkpoint(path, checkpoint), given)


def resolve_source(source: str | os.PathLike, checkpoint: str = "best", *, local_files_only: bool = False) -> Source:
    """What ``source`` names (see the module docstring), downloading a Hub id's files if needed (``local_files_only``:
    only from the Hub cache). ``checkpoint``: ``"best"`` or ``"last"``, which checkpoint of a run directory."""
    check_choice("checkpoint", checkpoint, CHECKPOINTS)
    given = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    if not isinstance(given, str) or not given.strip():
        raise ValueError(f"expected a run directory, checkpoint, pretrained directory or model name, got {source!r}")
    path = Path(given)
    if path.exists():
        return _local(path, given, checkpoint)
    resolved = resolve_pretrained(given, local_files_only=local_files_only)  # shipped, a Hub snapshot, or the path
    if not resolved.exists():
        raise FileNotFoundError(f"{given}: no such run directory or checkpoint file")
    return Source("pretrained", resolved, given)


def load(source: str | os.PathLike, device: str | torch.device = "cpu", *, checkpoint: str = "best") -> FlowModel:
    """The trained model of ``source`` (a run directory, checkpoint file, pretrained-model directory, shipped model
    name such as ``"glowflow/digits"``, or Hugging Face Hub id; see the module docstring), in eval mode on
    ``device``. Its units travel in it: an image model's preprocessing (``model.preprocess``) and class names, a
    tabular model's standardisation. ``checkpoint``: ``"best"`` or ``"last"``, for a run directory."""
    found = resolve_source(source, checkpoint)
    if found.kind == "pretrained":
        return load_pretrained_dir(found.path, device)[0]
    return load_model(found.path, device)[0]


__all__ = ["SHIPPED_PREFIX", "Source", "load", "resolve_source", "shipped_models", "shipped_path"]
