"""Trained runs: :func:`open_run` loads a run's model with what its checkpoint says about it (:class:`OpenRun`), and
what ``glowflow eval / sample / interpolate / manipulate / info`` do, as functions.

Every function takes an :class:`OpenRun` (:func:`open_run` of a run directory or checkpoint file) and returns
numbers or pictures; the command line prints and saves them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from glowflow import viz
from glowflow.checks import FINITE, NON_NEGATIVE, POSITIVE, SEED, TEMPERATURE, IntRange, check_choice
from glowflow.data.base import SPLITS
from glowflow.errors import CheckpointError
from glowflow.io import atomic_write_text
from glowflow.layers.dequantization import to_continuous, to_uint8, uint8_to_levels
from glowflow.loading import CHECKPOINTS, Source, resolve_source
from glowflow.models import FlowModel, Glow
from glowflow.models.pretrained import load_pretrained_dir
from glowflow.progress import Progress
from glowflow.training.checkpoint import load_model, run_dir_of
from glowflow.training.config import TrainConfig
from glowflow.training.data import TrainingData, prepare_data
from glowflow.training.devices import resolve_device
from glowflow.training.distributed import DistContext
from glowflow.training.evaluate import draw_samples, evaluate_source, sample_labels


@dataclass
class OpenRun:
    """A trained model with what is known of its training and data, from either kind of source
    (:mod:`glowflow.loading`): a run's checkpoint, or a pretrained-model directory (local, shipped or from the Hub).

    ``config``, ``data``, ``step`` and ``metrics`` are what the source records: a checkpoint records all of them; a
    pretrained directory records what its ``config.json`` holds (``training``: the TrainConfig, ``data``,
    ``metrics``), which is everything when ``glowflow export`` wrote it and may be less when it was saved by hand.
    """

    model: FlowModel
    source: str  # as the caller gave it (a path, a shipped name, a Hub id)
    kind: str  # "checkpoint" or "pretrained"
    path: Path  # the checkpoint file, or the local pretrained-model directory
    run_dir: Path | None  # the run directory of a checkpoint; None for a pretrained model
    config: TrainConfig | None  # the training configuration; None when a pretrained directory does not record it
    data: dict[str, Any]  # the data: name, shape, num_bins, class_names, test_note (those recorded)
    step: int | None  # optimiser steps trained
    metrics: dict[str, Any]  # measured test figures of these weights ({"test_bpd": ...}); {} when unmeasured
    checkpoint: dict[str, Any]  # the whole checkpoint (optimiser, progress, ...); {} for a pretrained model

    @property
    def class_names(self) -> list[str] | None:
        """The data set's class names (also for a model that is not conditional)."""
        return self.data.get("class_names", self.model.class_names)

    @property
    def is_image(self) -> bool:
        return self.model.is_image

    @property
    def num_bins(self) -> int | None:
        return self.model.num_bins if isinstance(self.model, Glow) else None

    @property
    def num_classes(self) -> int | None:
        return None if self.class_names is None else len(self.class_names)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def data_name(self) -> str:
        """The data set's name (``"unknown data"`` when not recorded)."""
        return self.data.get("name") or (self.config.data if self.config else "unknown data")

    @property
    def output_dir(self) -> Path:
        """Where commands write by default: the run directory, or the current directory for a pretrained model."""
        return self.run_dir if self.run_dir is not None else Path(".")

    def load_data(self, data_dir: str | None = None, eval_size: int | None = None) -> TrainingData:
        """Both splits of the model's data, prepared as in training (``data_dir`` overrides where they are): in
        memory, or read batch by batch from the files as the training configuration's ``input`` says."""
        if self.config is None:
            raise ValueError(f"{self.source} records no training configuration, so its data set is unknown")
        cfg = replace(self.config, download=False)
        if data_dir is not None:
            cfg.data_dir = data_dir
        if cfg.data == "memory":
            raise ValueError(f"{self.source} was trained on arrays in memory; there is no data set to load here")
        return prepare_data(cfg, DistContext(), eval_size)


def open_run(run: str | os.PathLike, device: str = "auto", prefer: str = "best") -> OpenRun:
    """Open a trained model from any source :func:`glowflow.load` takes (a run directory: ``checkpoints/best.pt``,
    else ``last.pt``, ``prefer="last"`` swaps them; a checkpoint file; a pretrained-model directory; a shipped
    model name; a Hub id) on ``device`` (``auto``: CUDA when available)."""
    check_choice("prefer", prefer, CHECKPOINTS)
    target = resolve_device(device, DistContext())  # a bad device name fails before anything loads
    found = resolve_source(run, prefer)
    opened = _open_pretrained(found) if found.kind == "pretrained" else _open_checkpoint(found)
    opened.model.to(target)
    return opened


def _open_checkpoint(found: Source) -> OpenRun:
    model, ckpt, path = load_model(found.path, "cpu")
    try:
        config = TrainConfig(**ckpt["config"])
        data = dict(ckpt["data"])
        if "class_names" not in data:
            raise KeyError("data.class_names")
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: incomplete run description in the checkpoint ({e})") from None
    step = ckpt["step"]
    return OpenRun(model, found.given, "checkpoint", path, run_dir_of(path), config, data, step,
                   checkpoint_metrics(ckpt, config), ckpt)  # fmt: skip


def checkpoint_metrics(ckpt: dict[str, Any], config: TrainConfig) -> dict[str, Any]:
    """The test figures measured on the weights of checkpoint ``ckpt``: the run's best evaluation for the checkpoint
    saved at it (``best.pt``), else the last evaluation if it ran at the checkpoint's step; ``{}`` otherwise (a
    checkpoint saved between evaluations)."""
    step, best = ckpt["step"], ckpt.get("best")
    if best and best.get("step") == step:
        return {k: v for k, v in best.items() if k not in ("value", "step")}
    evaluated = step == config.iters or (config.eval_every and step % config.eval_every == 0)
    last = ckpt.get("progress", {}).get("last")
    return dict(last) if evaluated and last else {}


def _open_pretrained(found: Source) -> OpenRun:
    model, saved = load_pretrained_dir(found.path, "cpu")
    where = found.path / "config.json"
    try:
        config = None if saved.get("training") is None else TrainConfig(**saved["training"]).validate()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: its training section is not a glowflow training configuration ({e})") from None
    metrics = dict(saved.get("metrics") or {})
    step = metrics.get("step")
    return OpenRun(model, found.given, "pretrained", found.path, None, config, dict(saved.get("data") or {}),
                   step if isinstance(step, int) else None, metrics, {})  # fmt: skip


def choose_indices(n: int, k: int, seed: int) -> np.ndarray:
    """``min(n, k)`` distinct indices of ``range(n)``, drawn with ``seed``, sorted: a fixed random subset."""
    return np.sort(np.random.default_rng(seed).permutation(n)[: min(n, k)])


# ---- eval ---------------------------------------------------------------------------------------------------
def evaluate_run(
    run: OpenRun,
    split: str = "test",
    n_samples: int = 10,
    importance_weighted: bool = False,
    batch_size: int = 256,
    limit: int | None = None,
    data_dir: str | None = None,
    seed: int = 0,
    save: bool = True,
    progress: bool = False,
    workers: int = 0,
) -> dict[str, Any]:
    """Score the ``split`` of the run's data, batch by batch (``workers`` reader processes). Images: bits/dim with
    the dequantization noise averaged over ``n_samples`` draws, plus the importance-weighted estimate with
    ``importance_weighted`` (always for variational dequantization); tabular / toy: NLL in nats (and per-dimension
    bits). ``limit`` (>= 1, or None: all) scores a fixed random subset. ``progress`` reports on stderr
    (:class:`~glowflow.progress.Progress`). Saves ``eval_<split>.json`` in ``run.output_dir`` (the run directory;
    the current directory for a pretrained model) when ``save``; returns what it saves. A score that is not finite
    is an error, never saved."""
    check_choice("split", split, SPLITS)
    n_samples = POSITIVE.check("n_samples", n_samples)
    batch_size = POSITIVE.check("batch_size", batch_size)
    limit = IntRange(1, optional=True).check("limit", limit)
    seed = SEED.check("seed", seed)
    workers = NON_NEGATIVE.check("workers", workers)
    data = run.load_data(data_dir, eval_size=limit if split == "test" else None)
    if split == "test":
        source, indices, total = data.test, data.eval_indices, data.test_total
    else:
        source, total = data.train, len(data.train)
        keep = limit is not None and limit < total
        indices = torch.from_numpy(choose_indices(total, limit, 0)) if keep else torch.arange(total)
    draws = n_samples if run.is_image else 1
    result: dict[str, Any] = {
        "split": split,
        "examples": len(indices),
        "of": total,
        "source": run.source,
        "checkpoint": str(run.path),
        "step": run.step,
    }
    if source.origin:  # e.g. which ImageNet version the files are
        result["files"] = source.origin
    both = run.is_image and (importance_weighted or run.model.config.get("dequantization") == "variational")
    unit = "img" if run.is_image else "row"
    with Progress(len(indices) * (2 if both else 1), unit=unit, desc=f"eval {split}", enabled=progress) as bar:

        def score(weighted: bool) -> dict[str, float]:
            return evaluate_source(run.model, source, indices, draws, batch_size, weighted, seed=seed,
                                   labels=run.model.num_classes is not None, workers=workers,
                                   progress=bar.update)  # fmt: skip

        if run.is_image:
            result["num_bins"] = data.num_bins
            result["n_samples"] = draws
            result["bpd"] = score(False)["bpd"]
            if both:
                result["bpd_importance_weighted"] = score(True)["bpd"]
        else:
            result.update(score(False))
    if not math.isfinite(result["bpd"]):
        raise ValueError(f"the score of {run.source} on the {split} split is not finite ({result['bpd']}): the model "
                         "diverged or does not fit this data; nothing saved")  # fmt: skip
    if save:
        path = atomic_write_text(run.output_dir / f"eval_{split}.json", json.dumps(result, indent=2) + "\n")
        result["saved"] = str(path)
    return result


# ---- sample -------------------------------------------------------------------------------------------------
def resolve_label(run: OpenRun, label: str | int) -> int:
    """A class index from an index or a class name (case-insensitive)."""
    names = run.class_names
    n = run.num_classes
    text = str(label).strip()
    if text.lstrip("-").isdigit():
        k = int(text)
        if n is not None and not 0 <= k < n:
            raise ValueError(f"label {k} out of range: the data has classes 0..{n - 1}")
        return k
    if names:
        lowered = [c.lower() for c in names]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        raise ValueError(f"unknown class {text!r}; classes: {', '.join(names)}")
    raise ValueError(f"unknown class {text!r}: the data set has no class names; give a class index")


def sample_run(
    run: OpenRun, n: int = 64, temperature: float = 0.7, label: str | int | None = None, seed: int = 0
) -> Tensor:
    """``n`` samples: displayable grey levels uint8 ``(n, C, H, W)`` for images, float32 ``(n, D)`` in original
    units for tabular / toy data. ``label`` (index or class name) for a class-conditional model."""
    n = POSITIVE.check("n", n)
    TEMPERATURE.check("temperature", temperature)
    seed = SEED.check("seed", seed)
    if label is not None and run.model.num_classes is None:
        raise ValueError(f"--label needs a class-conditional model; {run.source} was trained without --conditional")
    labels = sample_labels(run.model, n, None if label is None else resolve_label(run, label))
    return draw_samples(run.model, n, temperature, labels, seed)


def discrete_levels(images: Tensor, num_bins: int) -> Tensor:
    """Displayable grey levels 0..255 back to the model's discrete levels 0..num_bins-1."""
    return uint8_to_levels(images, num_bins)


def sample_picture_of(run: OpenRun, samples: Tensor, caption: str, ncol: int | None = None) -> np.ndarray:
    """The picture of ``samples``: an image grid of ``ncol`` per row (>= 1; default one class per column for a
    class-conditional model, else square-ish) under ``caption``, or a scatter plot of tabular / toy rows."""
    ncol = IntRange(1, optional=True).check("ncol", ncol)
    if run.is_image:
        if ncol is None and run.model.num_classes is not None and len(samples) >= run.model.num_classes:
            ncol = run.model.num_classes
        return viz.titled_panels([(caption, viz.image_grid(samples, ncol=ncol))])
    return viz.points_plot(samples.numpy(), title=caption)


# ---- interpolate / manipulate -------------------------------------------------------------------------------
def _require_image(run: OpenRun, what: str) -> Glow:
    if not isinstance(run.model, Glow):
        raise ValueError(f"{what} needs an image model; {run.source} holds a {type(run.model).__name__} "
                         f"trained on {run.data_name!r}")  # fmt: skip
    return run.model


@torch.no_grad()
def _encode(model: Glow, k: Tensor, y: Tensor | None) -> list[Tensor]:
    """Latents of discrete images, dequantized at their bin centres (deterministic)."""
    device = next(model.parameters()).device
    x = to_continuous(k.float(), 0.5, model.num_bins).to(device)
    return model.encode(x, None if y is None else y.to(device))[0]


@torch.no_grad()
def interpolate_run(
    run: OpenRun,
    indices: tuple[int, int] | None = None,
    pairs: int = 4,
    frames: int = 8,
    split: str = "test",
    seed: int = 0,
    data_dir: str | None = None,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Encode pairs of ``split`` images, interpolate their latents linearly over ``frames`` frames (ends
    included: they decode to the two images), decode. One row per pair (``indices``, or ``pairs`` random ones,
    within one class for a class-conditional model). Returns the picture and the pairs."""
    model = _require_image(run, "interpolate")
    frames = IntRange(2).check("frames", frames)
    pairs = POSITIVE.check("pairs", pairs)
    check_choice("split", split, SPLITS)
    seed = SEED.check("seed", seed)
    if indices is not None:
        if isinstance(indices, (str, bytes)) or len(indices) != 2:
            raise ValueError(f"indices must be two image indices (A, B), got {indices!r}")
        indices = tuple(NON_NEGATIVE.check("indices", i) for i in indices)
    data = run.load_data(data_dir)
    images = data.test if split == "test" else data.train
    labels = images.labels
    conditional = model.num_classes is not None
    n = len(images)
    if indices is not None:
        for i in indices:
            if not 0 <= i < n:
                raise ValueError(f"--index {i} out of range: the {split} split has {n} images (0..{n - 1})")
        if conditional and labels[indices[0]] != labels[indices[1]]:
            raise ValueError(f"images {indices[0]} and {indices[1]} have different classes; a class-conditional "
                             "model interpolates within one class")  # fmt: skip
        chosen = [tuple(indices)]
    else:
        rng = np.random.default_rng(seed)
        chosen = []
        for _ in range(pairs):
            a = int(rng.integers(n))
            pool = np.flatnonzero((labels == labels[a]).numpy()) if conditional else np.arange(n)
            pool = pool[pool != a] if len(pool) > 1 else pool
            chosen.append((a, int(rng.choice(pool))))
    rows = []
    t = torch.linspace(0, 1, frames, device=run.device)
    for a, b in chosen:
        y = labels[[a, b]] if conditional else None
        zs = []
        for z in _encode(model, images.get([a, b])[0], y):  # one latent per level: (2, ...) -> (frames, ...)
            w = t.view(-1, *[1] * (z.dim() - 1))
            zs.append((1 - w) * z[0] + w * z[1])
        ys = None if y is None else y[0].expand(frames).to(run.device)
        rows.append(to_uint8(model.decode(zs, ys), model.num_bins).cpu())
    return viz.strip_rows(rows), [(int(a), int(b)) for a, b in chosen]


@torch.no_grad()
def _class_mean_latent(model: Glow, images: Tensor, y: Tensor | None, batch: int = 256) -> Tensor:
    total = None
    for s in range(0, len(images), batch):
        yb = None if y is None else y[s : s + batch]
        flat = torch.cat([z.flatten(1) for z in _encode(model, images[s : s + batch], yb)], 1).double().sum(0)
        total = flat if total is None else total + flat
    return total / len(images)


def _unflatten(model: Glow, flat: Tensor) -> list[Tensor]:
    out, start = [], 0
    for shape in model.latent_shapes:
        size = math.prod(shape)
        out.append(flat[:, start : start + size].reshape(-1, *shape))
        start += size
    return out


@torch.no_grad()
def manipulate_run(
    run: OpenRun,
    source: str | int,
    target: str | int,
    n: int = 4,
    strengths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25),
    max_per_class: int = 2000,
    seed: int = 0,
    data_dir: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Latent arithmetic: the class vector ``v = mean latent of class target - mean latent of class source`` (over
    up to ``max_per_class`` training images of each class) is added with each of ``strengths`` to ``n`` test images
    of class ``source``. One row per image, one column per strength. For a class-conditional model the label stays
    ``source``: the picture shows what the latents alone carry. Returns the picture and a summary."""
    model = _require_image(run, "manipulate")
    n = POSITIVE.check("n", n)
    max_per_class = POSITIVE.check("max_per_class", max_per_class)
    seed = SEED.check("seed", seed)
    strengths = tuple(FINITE.check("strengths", v) for v in strengths)
    if not strengths:
        raise ValueError("strengths must hold at least one number")
    if run.num_classes is None:
        raise ValueError(
            f"manipulate needs class labels; {run.source} was trained on {run.data_name!r}, which has none"
        )
    data = run.load_data(data_dir)
    train_labels, test_labels = data.train.labels, data.test.labels
    if train_labels is None or test_labels is None:
        raise ValueError(f"manipulate needs class labels; the {run.data_name!r} data here has none")
    a, b = resolve_label(run, source), resolve_label(run, target)
    if a == b:
        raise ValueError(f"--from and --to name the same class ({a})")
    conditional = model.num_classes is not None
    means = []
    for c in (a, b):
        idx = np.flatnonzero((train_labels == c).numpy())
        if len(idx) == 0:
            raise ValueError(f"class {c} has no training images")
        idx = idx[choose_indices(len(idx), max_per_class, seed)]
        y = train_labels[idx] if conditional else None
        means.append(_class_mean_latent(model, data.train.get(idx)[0], y))
    vector = (means[1] - means[0]).float().to(run.device)
    test_idx = np.flatnonzero((test_labels == a).numpy())
    if len(test_idx) == 0:
        raise ValueError(f"class {a} has no test images")
    test_idx = test_idx[choose_indices(len(test_idx), n, seed)]
    y = test_labels[test_idx] if conditional else None
    flat = torch.cat([z.flatten(1) for z in _encode(model, data.test.get(test_idx)[0], y)], 1)
    rows = []
    for i in range(len(test_idx)):
        shifted = torch.stack([flat[i] + s * vector for s in strengths])
        ys = None if y is None else y[i].expand(len(strengths)).to(run.device)
        rows.append(to_uint8(model.decode(_unflatten(model, shifted), ys), model.num_bins).cpu())
    names = run.class_names
    summary = {
        "from": names[a] if names else a,
        "to": names[b] if names else b,
        "strengths": list(strengths),
        "test_images": [int(i) for i in test_idx],
        "vector_norm": float(vector.norm()),
    }
    return viz.strip_rows(rows), summary


# ---- info ---------------------------------------------------------------------------------------------------
def run_info(source: str | os.PathLike) -> dict[str, Any]:
    """What ``glowflow info`` shows: for a run, from ``checkpoints/last.pt`` (else ``best.pt``) or the checkpoint
    file given; for a pretrained model, what its ``config.json`` records (None where it records nothing)."""
    run = open_run(source, device="cpu", prefer="last")
    ckpt = run.checkpoint
    progress = ckpt.get("progress", {})
    guard = ckpt.get("guard", {})
    metrics = run.metrics
    return {
        "source": run.source,
        "kind": run.kind,
        "path": str(run.path),
        "run_dir": None if run.run_dir is None else str(run.run_dir),
        "saved_at": progress.get("saved_at"),
        "data": run.data_name,
        "shape": list(run.data.get("shape", run.model.data_shape)),
        "num_bins": run.data.get("num_bins", run.num_bins),
        "test_set": metrics.get("evaluated_on", run.data.get("test_note")),
        "model": run.model.describe(),
        "model_class": type(run.model).__name__,
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "step": run.step,
        "iters": None if run.config is None else run.config.iters,
        "wall_time_s": progress.get("elapsed", metrics.get("wall_time_s")),
        "processes": progress.get("world_size", 1) if ckpt else None,
        "untrained": progress.get("untrained"),
        "last": progress.get("last") if ckpt else _figures(metrics),
        "best": ckpt.get("best"),
        "skipped": guard.get("skipped", 0) if ckpt else None,
        "rollbacks": guard.get("rollbacks", 0) if ckpt else None,
        "metrics": metrics,
        "config": None if run.config is None else run.config.to_dict(),
    }


def _figures(metrics: dict[str, Any]) -> dict[str, float] | None:
    figures = {k: metrics[k] for k in ("test_bpd", "test_nll") if isinstance(metrics.get(k), (int, float))}
    return figures or None


__all__ = [
    "OpenRun",
    "checkpoint_metrics",
    "choose_indices",
    "discrete_levels",
    "evaluate_run",
    "interpolate_run",
    "manipulate_run",
    "open_run",
    "resolve_label",
    "run_info",
    "sample_picture_of",
    "sample_run",
]
