"""Per-example scores of new data under a trained model: :func:`score` (``glowflow.score``), what ``glowflow score``
prints and saves.

Images (an image Glow): bits per dimension of the discrete image ``k`` (the model's input: raw images after the
model's own preprocessing), with the dequantization noise averaged over ``n_samples`` draws,

    bpd(k) = -E_u[ log p(x) + logdet_deq ] / (D ln 2),   x = (k + u) / N - 0.5,

split level by level (:meth:`glowflow.Glow.level_log_probs`): ``bpd = sum_l level_bpd[l] + dequantization_bpd``,
where ``level_bpd[l] = -(log N(z_l) + log|det| of level l) / (D ln 2)`` and ``dequantization_bpd = log2 N`` for
uniform noise (plus ``log q(u|k) / (D ln 2)`` for variational noise). ``noise_std`` is the standard deviation of
bpd over the draws (``n_samples`` > 1). Rows (a TabularGlow): the negative log-likelihood in nats of the raw row,
and ``bpd = nll / (D ln 2)``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from glowflow.data.npy import as_image_array
from glowflow.io import atomic_write_text
from glowflow.models import FlowModel, Glow
from glowflow.models.base import check_positive_int
from glowflow.progress import Progress
from glowflow.scoring.inputs import InputSet
from glowflow.scoring.model import FitOptions, Scorer, load_scorer, model_input, raw_levels, read_inputs
from glowflow.training.evaluate import isolated_rng

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


@dataclass(eq=False)
class Scores:
    """Per-example scores of one or more input sets, in input order (see the module docstring).

    Arrays have one entry per example: ``bpd``, ``nll`` (nats), ``level_bpd`` (N, L) and ``dequantization_bpd``
    (image Glow only), ``noise_std`` (bits/dim, with ``n_samples`` > 1), ``set_index`` (into ``set_names``);
    ``sources`` and ``labels`` are lists of text; ``inputs`` holds the model's discrete input (images) for the
    pictures and the compression scores. ``metadata``: the model, the settings, the timing.
    """

    is_image: bool
    bpd: np.ndarray
    nll: np.ndarray
    set_index: np.ndarray
    set_names: list[str]
    sources: list[str]
    labels: list[str | None]
    level_bpd: np.ndarray | None = None
    dequantization_bpd: np.ndarray | None = None
    noise_std: np.ndarray | None = None
    inputs: Tensor | None = None
    num_bins: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def values(self) -> np.ndarray:
        """The primary score: bits/dim for images, NLL in nats for rows (higher: less likely)."""
        return self.bpd if self.is_image else self.nll

    @property
    def unit(self) -> str:
        return "bits/dim" if self.is_image else "nats"

    @property
    def key(self) -> str:
        """The primary score's column name."""
        return "bpd" if self.is_image else "nll"

    def __len__(self) -> int:
        return len(self.bpd)

    def of_set(self, name: str) -> Scores:
        """The examples of the input set ``name``."""
        if name not in self.set_names:
            raise ValueError(f"no input set {name!r}; sets: {', '.join(self.set_names)}")
        return self.select(self.set_index == self.set_names.index(name))

    def select(self, keep: np.ndarray) -> Scores:
        """The examples where the boolean mask (or index array) ``keep`` says."""
        idx = np.arange(len(self))[keep]

        def pick(a: Any) -> Any:
            return None if a is None else a[idx]

        return Scores(
            self.is_image, self.bpd[idx], self.nll[idx], self.set_index[idx], self.set_names,
            [self.sources[i] for i in idx], [self.labels[i] for i in idx], pick(self.level_bpd),
            pick(self.dequantization_bpd), pick(self.noise_std),
            None if self.inputs is None else self.inputs[torch.from_numpy(idx)], self.num_bins, self.metadata,
        )  # fmt: skip

    def columns(self) -> dict[str, np.ndarray]:
        """The numeric columns of the CSV, in order."""
        cols = {"bpd": self.bpd, "nll_nats": self.nll} if self.is_image else {"nll_nats": self.nll, "bpd": self.bpd}
        if self.level_bpd is not None:
            for i in range(self.level_bpd.shape[1]):
                cols[f"bpd_level_{i + 1}"] = self.level_bpd[:, i]
            cols["bpd_dequantization"] = self.dequantization_bpd
        if self.noise_std is not None:
            cols["noise_std_bpd"] = self.noise_std
        return cols

    def summary(self) -> dict[str, Any]:
        """Plain data (JSON): per input set the count, mean, std, min, quantiles and max of the primary score (and
        the mean bits/dim of each level), and the metadata."""
        sets = {}
        for i, name in enumerate(self.set_names):
            part = self.select(self.set_index == i)
            entry = {"examples": len(part), **describe(part.values)}
            if part.level_bpd is not None:
                entry["mean_bpd_per_level"] = [float(v) for v in part.level_bpd.mean(0)]
                entry["mean_bpd_dequantization"] = float(part.dequantization_bpd.mean())
            if part.noise_std is not None:
                entry["mean_noise_std_bpd"] = float(part.noise_std.mean())
            sets[name] = entry
        return {"score": self.key, "unit": self.unit, "sets": sets, **self.metadata}


def describe(values: np.ndarray) -> dict[str, float]:
    """Mean, standard deviation (ddof 0), min, :data:`QUANTILES` and max of ``values``."""
    v = np.asarray(values, dtype=np.float64)
    out = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min())}
    for q, value in zip(QUANTILES, np.quantile(v, QUANTILES), strict=True):
        out[f"q{round(100 * q):02d}"] = float(value)
    out["max"] = float(v.max())
    return out


def score(
    model_or_run: Any,
    data: Any,
    labels: Any = None,
    *,
    n_samples: int = 1,
    batch_size: int = 256,
    seed: int = 0,
    device: str | None = None,
    checkpoint: str = "best",
    resize: bool = False,
    pad: bool = False,
    grayscale: bool = False,
    label: int | str | None = None,
    levels: int | None = None,
    data_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> Scores:
    """Score every example of ``data`` under a trained model; returns :class:`Scores` (see the module docstring).

    ``model_or_run``: a model, an :class:`~glowflow.runs.OpenRun`, or a run directory / checkpoint path (loaded on
    ``device``, default auto). ``data``: an INPUT spec (an image folder or file, ``.npy`` / ``.npz`` / idx / ``.csv``,
    ``NAME:SPLIT``; see :mod:`glowflow.scoring.inputs`), an :class:`InputSet`, raw images (integer array or tensor,
    ``(N, C, H, W)`` / ``(N, H, W)`` / ``(N, H, W, C)`` at the model's raw levels, ``labels`` optional) or rows
    ``(N, D)``, or a list of these (several input sets, scored in turn). Images of another size or channel count
    are refused unless ``resize`` / ``pad`` / ``grayscale`` say how to fit them; ``label`` is the class of every
    example for a class-conditional model and unlabelled data; ``levels`` the levels of array files.

    The dequantization noise comes from its own random stream (``seed``): the same call gives the same scores.
    """
    n_samples = check_positive_int("n_samples", n_samples)
    batch_size = check_positive_int("batch_size", batch_size)
    scorer = load_scorer(model_or_run, device, checkpoint)
    sets = as_input_sets(data, labels, scorer, levels, data_dir)
    fit = FitOptions(resize, pad, grayscale, label)
    prepared = [model_input(s, scorer.model, fit) for s in sets]  # every input is checked before any is scored
    total = sum(len(x) for x, _ in prepared)
    bar = Progress(total, unit="img" if scorer.is_image else "row", desc="score", enabled=progress)
    start = time.perf_counter()
    parts = []
    with bar, torch.no_grad():
        for x, y in prepared:
            parts.append(_score_one(scorer.model, x, y, n_samples, batch_size, seed, bar))
    seconds = time.perf_counter() - start
    return _assemble(scorer, sets, prepared, parts, n_samples, batch_size, seed, seconds, fit)


def as_input_sets(
    data: Any, labels: Any, scorer: Scorer, levels: int | None, data_dir: str | os.PathLike | None
) -> list[InputSet]:
    """``data`` of :func:`score` as a list of :class:`InputSet`."""
    items = list(data) if isinstance(data, (list, tuple)) else [data]
    if labels is not None and len(items) != 1:
        raise ValueError("labels go with a single array of data, not with several inputs")
    out: list[InputSet] = []
    for i, item in enumerate(items):
        if isinstance(item, (np.ndarray, Tensor)):
            out.append(_array_set(item, labels, scorer.model, f"array{i}" if len(items) > 1 else "array"))
        else:
            if labels is not None:
                raise ValueError("labels go with data given as an array; files and data sets bring their own")
            out.append(read_inputs([item], scorer, levels, data_dir)[0])
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"the same input is given twice: {', '.join(twice)}")
    return out


def _array_set(array: np.ndarray | Tensor, labels: Any, model: FlowModel, name: str) -> InputSet:
    a = array.detach().cpu().numpy() if isinstance(array, Tensor) else np.asarray(array)
    y = None if labels is None else torch.as_tensor(np.asarray(labels)).long()
    if isinstance(model, Glow):
        images = as_image_array(a, name)
        return InputSet(name, torch.from_numpy(images), raw_levels(model), y)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name}: a tabular model scores rows (N, D) of numbers, got {a.dtype} {a.shape}")
    rows = a.astype(np.float32)
    if not np.isfinite(rows).all():
        raise ValueError(f"{name}: rows contain NaN or inf")
    return InputSet(name, torch.from_numpy(np.ascontiguousarray(rows)), None, y)


def _score_one(
    model: FlowModel, x: Tensor, y: Tensor | None, n_samples: int, batch_size: int, seed: int, bar: Progress
) -> dict[str, np.ndarray]:
    device = next(model.parameters()).device
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    per_dim = 1.0 / (model.num_dims * math.log(2.0))
    out: dict[str, list[np.ndarray]] = {"nll": [], "terms": [], "std": []}
    with isolated_rng(seed, device):
        for s in range(0, len(x), batch_size):
            xb = x[s : s + batch_size].to(device)
            yb = None if y is None else y[s : s + batch_size].to(device)
            if isinstance(model, Glow):
                draws = []
                for _ in range(n_samples):
                    cont, logdet_deq = model.dequantizer(xb.to(dtype))
                    levels = model.level_log_probs(cont, yb)
                    draws.append(torch.cat([levels, logdet_deq[:, None].to(levels.dtype)], 1).double())
                terms = torch.stack(draws)  # (S, B, L + 1) nats: each level, then the dequantization
                log_p = terms.sum(-1)  # (S, B)
                out["terms"].append((-terms.mean(0) * per_dim).cpu().numpy())
                out["nll"].append((-log_p.mean(0)).cpu().numpy())
                if n_samples > 1:
                    out["std"].append((log_p * per_dim).std(0).cpu().numpy())
            else:
                out["nll"].append((-model.log_prob(xb, yb)).double().cpu().numpy())
            bar.update(len(xb))
    return {k: np.concatenate(v) for k, v in out.items() if v}


def _assemble(
    scorer: Scorer,
    sets: list[InputSet],
    prepared: list[tuple[Tensor, Tensor | None]],
    parts: list[dict[str, np.ndarray]],
    n_samples: int,
    batch_size: int,
    seed: int,
    seconds: float,
    fit: FitOptions,
) -> Scores:
    model = scorer.model
    nll = np.concatenate([p["nll"] for p in parts])
    per_dim = 1.0 / (model.num_dims * math.log(2.0))
    image = isinstance(model, Glow)
    terms = np.concatenate([p["terms"] for p in parts]) if image else None
    std = np.concatenate([p["std"] for p in parts]) if image and n_samples > 1 else None
    metadata = {
        **scorer.about,
        "inputs": [{"name": s.name, "examples": len(s), "levels": s.num_bins, "shape": list(s.data.shape[1:])}
                   for s in sets],
        "device": str(scorer.device),
        "batch_size": batch_size,
        "n_samples": n_samples if image else 1,
        "seed": seed,
        "fit": {k: v for k, v in vars(fit).items() if v not in (False, None)},
        "seconds": seconds,
        "examples_per_s": len(nll) / seconds if seconds > 0 else None,
    }  # fmt: skip
    if image:
        metadata["num_bins"] = model.num_bins
        metadata["preprocessing"] = model.preprocessing.describe()
    return Scores(
        is_image=image,
        bpd=nll * per_dim,
        nll=nll,
        set_index=np.concatenate([np.full(len(s), i) for i, s in enumerate(sets)]),
        set_names=[s.name for s in sets],
        sources=[src for s in sets for src in s.sources],
        labels=[lab for s in sets for lab in s.label_names()],
        level_bpd=None if terms is None else terms[:, :-1],
        dequantization_bpd=None if terms is None else terms[:, -1],
        noise_std=std,
        inputs=torch.cat([x for x, _ in prepared]) if image else None,
        num_bins=model.num_bins if image else None,
        metadata=metadata,
    )


# ---- files --------------------------------------------------------------------------------------------------
def csv_text(scores: Scores, sort: bool = False, extra: dict[str, Sequence[Any]] | None = None) -> str:
    """The per-example table: ``set, source, label``, the numeric columns (:meth:`Scores.columns`) and any
    ``extra`` columns; ``sort``: least likely (highest score) first."""
    cols = {**scores.columns(), **(extra or {})}
    order = np.argsort(-scores.values, kind="stable") if sort else np.arange(len(scores))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["set", "source", "label", *cols])
    for i in order:
        label = scores.labels[i]
        w.writerow([scores.set_names[scores.set_index[i]], scores.sources[i], "" if label is None else label,
                    *(_cell(cols[c][i]) for c in cols)])  # fmt: skip
    return buf.getvalue()


def _cell(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6f}"
    return str(value)


def write_csv(scores: Scores, path: str | os.PathLike, sort: bool = False, extra: dict | None = None) -> Path:
    """:func:`csv_text` written atomically to ``path``."""
    return atomic_write_text(path, csv_text(scores, sort, extra))
