"""Checkpoints: atomic writes, validated reads, RNG state capture, and rebuilding a trained model.

A checkpoint is a ``torch.save`` of plain containers and tensors only, so it loads with
``torch.load(..., weights_only=True)`` (no code runs on load)::

    format       "glowflow-checkpoint"          (the marker; anything else is not ours)
    version      2                              (version 1 files are upgraded on load, see :func:`upgrade`)
    config       the resolved TrainConfig as a dict
    model_class  "Glow" | "TabularGlow";  model_config: the model's constructor arguments (its units included:
                 an image model's preprocessing and class names; a tabular model's standardisation is a buffer)
    model        the model's state_dict
    optimizer, scheduler                       their state_dicts
    step         optimiser steps taken
    rng          {"batch": the batch generator's state,
                  "ranks": [per process {"torch", "cuda", "numpy", "python"}]}
    batches      the batch position (``TrainBatches.state_dict``: the generator after the last consumed batch, the
                 batches consumed, the examples replaced over every process, the data set's size and the batch
                 size); files written before it existed hold only ``rng.batch``, see :func:`batch_position`
    guard        the fault guard's state;  best: {"value", "step"} of the best test metric
    data         {"name", "shape", "num_bins", "class_names", "test_note"}
    progress     {"elapsed", "untrained", "last", "log_sums"}: wall time so far, first/last test metrics, and the
                 running sums of the metrics line being accumulated

Files are written to a temporary file in the same folder, flushed and fsynced, then renamed over the target
(``os.replace``): a crash leaves the previous checkpoint intact, never a torn one.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glowflow.checks import check_choice
from glowflow.errors import CheckpointError
from glowflow.io import atomic_write_bytes
from glowflow.models import MODELS, FlowModel, build_model
from glowflow.training.devices import resolve_device

FORMAT = "glowflow-checkpoint"
VERSION = 2
REQUIRED = ("config", "model_class", "model_config", "model", "step")
# raw image shapes of the data sets a version-1 checkpoint may have padded (version 1 did not record them)
_RAW_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``payload`` (the fields in the module docstring; the marker and version are added) atomically."""
    return atomic_write_bytes(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, **payload}, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint with ``weights_only=True``. ``CheckpointError`` naming the file and the
    problem for a missing, empty, truncated, corrupt or foreign file, or one from a newer glowflow."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (an interrupted copy?); not a glowflow checkpoint")
    try:
        is_zip = zipfile.is_zipfile(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not is_zip:  # torch.save writes a zip archive; a cut-off one has lost its directory at the end
        raise CheckpointError(f"{path}: truncated or not a torch checkpoint file (no complete zip archive)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e).lower():
            raise CheckpointError(
                f"{path}: holds Python objects other than tensors and plain containers; it was not written by "
                "glowflow (refusing to run code from it)"
            ) from None
        raise CheckpointError(f"{path}: corrupt checkpoint ({_first_line(e)})") from None
    except Exception as e:  # whatever a damaged archive makes the reader raise
        raise CheckpointError(f"{path}: corrupt checkpoint ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        what = "a bare state_dict or another program's file" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a glowflow checkpoint (no {FORMAT!r} marker; found {what})")
    version = ckpt.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is newer than this glowflow reads ({VERSION}); "
            "upgrade glowflow"
        )
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: incomplete glowflow checkpoint, missing {', '.join(missing)}")
    if ckpt["model_class"] not in MODELS:
        raise CheckpointError(f"{path}: unknown model class {ckpt['model_class']!r}")
    ckpt = upgrade(ckpt, path)
    if isinstance(ckpt["model"], dict):  # glowflow <= 0.2.0 also saved each model's layers under "bijection."
        ckpt["model"] = {k: v for k, v in ckpt["model"].items() if not k.startswith("bijection.")}
    return ckpt


def upgrade(ckpt: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """A version-1 checkpoint in version 2's layout: the model owns its units. Version 1 kept a tabular model's
    standardisation beside the model (``data.mean`` / ``data.std``) and an image model's n-bit reduction and
    padding only in the training config; they move into the model (its ``standardize`` buffers, its
    ``preprocessing`` and ``class_names`` arguments)."""
    if ckpt["version"] >= 2:
        return ckpt
    try:
        data = ckpt.get("data", {})
        config = dict(ckpt["model_config"])
        train_cfg = ckpt["config"]
        state = dict(ckpt["model"])
        if train_cfg.get("conditional"):
            config["class_names"] = data.get("class_names")
        if ckpt["model_class"] == "TabularGlow":
            dim = int(config["dim"])
            mean, std = data.get("mean"), data.get("std")
            state["standardize.mean"] = torch.zeros(dim) if mean is None else mean.float()
            state["standardize.std"] = torch.ones(dim) if std is None else std.float()
        else:
            shape = tuple(config["in_shape"])
            n_bits, pad = train_cfg.get("n_bits"), train_cfg.get("pad")
            raw_shape = _RAW_SHAPES.get(data.get("name"), shape) if pad is not None else shape
            raw_bins = 256 if n_bits is not None else config.get("num_bins", 256)
            config["preprocessing"] = {"raw_shape": list(raw_shape), "raw_bins": raw_bins, "n_bits": n_bits,
                                       "pad": pad if tuple(raw_shape) != shape else None}  # fmt: skip
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: cannot read this version-1 checkpoint ({type(e).__name__}: {e})") from None
    return {**ckpt, "version": VERSION, "model_config": config, "model": state}


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def find_checkpoint(run: str | os.PathLike, prefer: str = "best") -> Path:
    """The checkpoint of ``run``: the file itself, or in a run directory ``checkpoints/best.pt`` (``prefer="best"``)
    or ``checkpoints/last.pt`` (``prefer="last"``), whichever exists, in that order."""
    check_choice("prefer", prefer, ("best", "last"))
    run = Path(run)
    if run.is_file():
        return run
    if not run.exists():
        raise FileNotFoundError(f"{run}: no such run directory or checkpoint file")
    folder = run / "checkpoints"
    order = ("best.pt", "last.pt") if prefer == "best" else ("last.pt", "best.pt")
    for name in order:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{run}: no checkpoint found (looked for {folder / order[0]} and {folder / order[1]})")


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint belongs to (``RUN/checkpoints/x.pt`` -> ``RUN``; else its folder)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def model_from_checkpoint(ckpt: dict[str, Any]) -> FlowModel:
    """A fresh, untrained model of the checkpoint's class and constructor arguments."""
    return build_model(ckpt["model_class"], ckpt["model_config"])


def restore_model(model: FlowModel, state: dict[str, Any], path: str | os.PathLike) -> None:
    """``model.load_state_dict(state)`` with a ``CheckpointError`` naming ``path`` when they do not fit."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        detail = " ".join(str(e).split())
        if len(detail) > 300:
            detail = detail[:300] + "..."
        raise CheckpointError(
            f"{path}: the saved weights do not fit the model {type(model).__name__}: {detail}"
        ) from None


def load_model(
    run: str | os.PathLike, device: str | torch.device = "cpu", prefer: str = "best"
) -> tuple[FlowModel, dict[str, Any], Path]:
    """Rebuild the trained model of a run directory or checkpoint file. Returns ``(model, checkpoint, path)``;
    the model is in eval mode on ``device`` (a ``torch.device``, or ``cpu``, ``cuda``, ``cuda:N``, ``auto``)."""
    if isinstance(device, str):
        device = resolve_device(device)
    path = find_checkpoint(run, prefer)
    ckpt = load_checkpoint(path)
    try:
        model = model_from_checkpoint(ckpt)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the model from its saved arguments: {e}") from None
    restore_model(model, ckpt["model"], path)
    return model.to(device).eval(), ckpt, path


def batch_position(ckpt: dict[str, Any], size: int, batch_size: int) -> dict[str, Any]:
    """The batch position of ``ckpt`` for ``TrainBatches.load_state_dict``. A checkpoint written before the position
    was saved holds the generator (``rng.batch``) after ``step`` batches: its position is that, with the data set's
    ``size`` and ``batch_size`` of the resuming run (not recorded then, so not checked) and no replaced examples."""
    if "batches" in ckpt:
        return ckpt["batches"]
    return {"generator": ckpt["rng"]["batch"], "init_done": True, "batches": ckpt["step"], "skipped": 0, "size": size,
            "batch_size": batch_size}  # fmt: skip


# ---- random number generator states -------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """This process's global RNG states (torch CPU, CUDA, numpy, python ``random``) as tensors and plain values."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "gauss": float(np_state[4]),
        },
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda[: torch.cuda.device_count()]])
