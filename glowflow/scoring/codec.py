"""Exact encode / decode of data with a trained model, and the latent archive that carries them: what
``glowflow encode`` and ``glowflow decode`` run.

Encoding an image: its raw levels go through the model's preprocessing (n-bit reduction, padding) to the discrete
input ``k``, are dequantized to ``x = (k + u) / N - 0.5`` - ``u`` drawn by the model's dequantizer from a seeded
stream, or the bin centres ``u = 0.5`` (``deterministic``) - and mapped to one latent per level, finest first, with
the float32 conditioners (``FlowModel.encode(exact=True)``). Decoding inverts that map and recovers the levels as
``k = round((x + 0.5) N - u)`` with the archived noise (``quantize(x)`` for bin centres and for changed latents:
scaled, or a mean), then removes the padding. n-bit reduction is not undone (it discards the low bits); decoded
images are in the model's levels.

Every level comes back exactly, and :func:`encode` checks it: the float32 round trip is usually ~1e-6 in ``x``, far
inside the margin of half a bin, but a trained model can be ill-conditioned on a rare input (measured: one of 2,000
MNIST test digits under the MNIST Glow of docs/results.md came back up to 20 levels off in float32, 6e-11 in
float64). So encode decodes every batch it made and, if any example does not come back, encodes the whole input
again with a float64 copy of the model; the archive says so (``meta["precision"]``) and decode then runs in float64.

The archive (``.npz``, no pickles): ``z0``, ``z1``, ... (float32, or float64 when ``meta["precision"]`` is
``"float64"``; finest first), ``noise`` (float32 ``u`` in the model's input shape; absent for bin centres and
means), ``classes`` (the model's class indices, class-conditional models), ``labels`` (the inputs' labels as text,
when they had labels), ``sources`` (text) and ``meta`` (JSON: the model, the checkpoint, the number of levels, the
preprocessing, the precision, and how the latents were made).
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from glowflow.io import atomic_write_bytes
from glowflow.layers.dequantization import quantize
from glowflow.models import FlowModel, Glow
from glowflow.models.base import check_positive_int
from glowflow.progress import Progress
from glowflow.scoring.model import FitOptions, Scorer, load_scorer, model_input
from glowflow.scoring.score import as_input_sets
from glowflow.training.evaluate import isolated_rng

FORMAT = "glowflow-latents"


@dataclass(eq=False)
class Latents:
    """Latents of a set of examples (see the module docstring): ``zs`` one float32 (or float64) array per level,
    each ``(N, *latent_shape)``; ``noise`` the dequantization noise or None; ``classes`` / ``labels`` / ``sources`` per
    example; ``meta`` what made them."""

    zs: list[np.ndarray]
    noise: np.ndarray | None = None
    classes: np.ndarray | None = None
    labels: list[str] | None = None
    sources: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.zs[0])


def encode(
    model_or_run: Any,
    data: Any,
    labels: Any = None,
    *,
    deterministic: bool = False,
    mean: bool = False,
    seed: int = 0,
    batch_size: int = 256,
    device: str | None = None,
    checkpoint: str = "best",
    resize: bool = False,
    pad: bool = False,
    grayscale: bool = False,
    label: int | str | None = None,
    levels: int | None = None,
    data_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> Latents:
    """Encode every example of ``data`` (one input, as for :func:`~glowflow.scoring.score`) to its latents.

    ``deterministic``: dequantize at the bin centres instead of drawing noise (seeded by ``seed``); ``mean``: keep
    only the mean latent of the set (one example: what attribute vectors are made of; for a class-conditional model
    the set must be of one class). The fitting options are :func:`~glowflow.scoring.score`'s."""
    batch_size = check_positive_int("batch_size", batch_size)
    scorer = load_scorer(model_or_run, device, checkpoint)
    model = scorer.model
    inputs = as_input_sets(data, labels, scorer, levels, data_dir)
    if len(inputs) != 1:
        raise ValueError("encode takes one input at a time")
    x, y = model_input(inputs[0], model, FitOptions(resize, pad, grayscale, label))
    if mean and y is not None and len(torch.unique(y)) > 1:
        raise ValueError("--mean of a class-conditional model's latents needs inputs of one class (or --label); "
                         f"these hold classes {sorted(set(y.tolist()))}")  # fmt: skip
    zs, noise = _encode_all(model, x, y, deterministic, seed, batch_size, progress)
    precision, lost = _dtype_name(model), 0
    if isinstance(model, Glow) and not mean and precision == "float32":
        lost = _not_recovered(model, zs, noise, x, y, batch_size)
        if lost:  # an ill-conditioned input: float32 cannot invert it, float64 can
            zs, noise = _encode_all(copy.deepcopy(model).double(), x, y, deterministic, seed, batch_size, progress)
            precision = "float64"
    meta = _meta(scorer, inputs[0].name, len(x), deterministic=deterministic, mean=mean, seed=seed,
                 precision=precision, lost_in_float32=lost)  # fmt: skip
    if mean:
        return Latents([z.astype(np.float64).mean(0, keepdims=True).astype(np.float32) for z in zs], None,
                       None if y is None else y[:1].numpy(), None, [f"mean of {len(x)}"], meta)  # fmt: skip
    names = inputs[0].label_names() if inputs[0].labels is not None else None
    return Latents(zs, noise, None if y is None else y.numpy(), names, list(inputs[0].sources), meta)


@torch.no_grad()
def _encode_all(
    model: FlowModel, x: Tensor, y: Tensor | None, deterministic: bool, seed: int, batch_size: int, progress: bool
) -> tuple[list[np.ndarray], np.ndarray | None]:
    device = next(model.parameters()).device
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    zs: list[list[np.ndarray]] = [[] for _ in model.latent_shapes]
    noise: list[np.ndarray] = []
    with Progress(len(x), unit="img" if model.is_image else "row", desc="encode", enabled=progress) as bar:
        with isolated_rng(seed, device):
            for s in range(0, len(x), batch_size):
                xb = x[s : s + batch_size].to(device)
                yb = None if y is None else y[s : s + batch_size].to(device)
                if isinstance(model, Glow):
                    k = xb.to(dtype)
                    if deterministic:
                        cont = (k + 0.5) / model.num_bins - 0.5
                    else:
                        cont, _ = model.dequantizer(k)
                        noise.append(((cont.double() + 0.5) * model.num_bins - k.double()).float().cpu().numpy())
                    xb = cont
                for i, z in enumerate(model.encode(xb, yb)[0]):
                    zs[i].append((z.double() if dtype == torch.float64 else z.float()).cpu().numpy())
                bar.update(len(xb))
    return [np.concatenate(z) for z in zs], np.concatenate(noise) if noise else None


def _dtype_name(model: FlowModel) -> str:
    return str(next(p for p in model.parameters() if p.is_floating_point()).dtype).removeprefix("torch.")


@torch.no_grad()
def _not_recovered(
    model: Glow, zs: list[np.ndarray], noise: np.ndarray | None, x: Tensor, y: Tensor | None, batch_size: int
) -> int:
    """How many examples of ``x`` (the model's discrete input) the latents ``zs`` (with ``noise``) do not decode
    back to exactly."""
    device = next(model.parameters()).device
    lost = 0
    for s in range(0, len(x), batch_size):
        zb = [torch.from_numpy(z[s : s + batch_size]).to(device) for z in zs]
        yb = None if y is None else y[s : s + batch_size].to(device)
        u = None if noise is None else torch.from_numpy(noise[s : s + batch_size]).to(device)
        k = _levels(model, model.decode(zb, yb, validate=False), u)  # an example that decodes to NaN is one lost
        lost += int((k != x[s : s + batch_size].to(device).long()).flatten(1).any(1).sum())
    return lost


def _levels(model: Glow, x: Tensor, u: Tensor | None) -> Tensor:
    """The discrete levels (long) of the decoded ``x``: ``round((x + 0.5) N - u)`` with the archived noise ``u``,
    else the bin ``x`` lies in."""
    if u is None:
        return quantize(x, model.num_bins)
    k = torch.round((x.double() + 0.5) * model.num_bins - u.double()).long()
    return k.clamp(0, model.num_bins - 1)


def _meta(scorer: Scorer, input_name: str, n: int, **how: Any) -> dict[str, Any]:
    model = scorer.model
    meta: dict[str, Any] = {
        "format": FORMAT,
        "model_class": type(model).__name__,
        **scorer.about,
        "input": input_name,
        "examples": n,
        "latent_shapes": [list(s) for s in model.latent_shapes],
        **how,
    }
    if isinstance(model, Glow):
        meta["num_bins"] = model.num_bins
        meta["preprocessing"] = model.preprocessing.to_config()
    return meta


@torch.no_grad()
def decode(
    model_or_run: Any,
    latents: Latents,
    *,
    scale: float = 1.0,
    batch_size: int = 256,
    device: str | None = None,
    checkpoint: str = "best",
    progress: bool = False,
) -> Tensor:
    """Latents -> data: images as the model's levels in the raw image shape (padding removed; uint8, int32 above
    256 levels), rows as float32 in the data's units. ``scale`` multiplies every latent first (a temperature)."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise ValueError(f"--scale must be a finite number, got {scale!r}")
    batch_size = check_positive_int("batch_size", batch_size)
    scorer = load_scorer(model_or_run, device, checkpoint)
    model = scorer.model
    check_latents(latents, model)
    device_ = scorer.device
    if latents.meta.get("precision") == "float64" and _dtype_name(model) != "float64":
        model = copy.deepcopy(model).double()  # encode found float32 could not invert these inputs
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    exact = scale == 1.0 and latents.noise is not None
    out = []
    with Progress(len(latents), unit="img" if model.is_image else "row", desc="decode", enabled=progress) as bar:
        for s in range(0, len(latents), batch_size):
            zs = [torch.from_numpy(z[s : s + batch_size]).to(device_, dtype) * scale for z in latents.zs]
            y = None if latents.classes is None else torch.from_numpy(latents.classes[s : s + batch_size])
            x = model.decode(zs, None if y is None else y.to(device_))
            if isinstance(model, Glow):
                u = torch.from_numpy(latents.noise[s : s + batch_size]).to(device_) if exact else None
                x = _crop(_levels(model, x, u), model.preprocessing.raw_shape[1:])
                x = x.to(torch.uint8) if model.num_bins <= 256 else x.to(torch.int32)
            out.append(x.cpu())
            bar.update(len(zs[0]))
    result = torch.cat(out)
    return result if model.is_image else result.float()


def _crop(k: Tensor, size: tuple[int, int]) -> Tensor:
    """Remove centred zero-padding: the inverse of ``glowflow.preprocessing.pad_images``."""
    h, w = size
    top, left = (k.shape[-2] - h) // 2, (k.shape[-1] - w) // 2
    return k[..., top : top + h, left : left + w]


def check_latents(latents: Latents, model: FlowModel) -> None:
    """``ValueError`` if ``latents`` were not made for a model of this kind and shape."""
    kind = latents.meta.get("model_class")
    if kind is not None and kind != type(model).__name__:
        raise ValueError(f"these latents come from a {kind}, not a {type(model).__name__}")
    shapes = [tuple(z.shape[1:]) for z in latents.zs]
    if shapes != [tuple(s) for s in model.latent_shapes]:
        raise ValueError(f"these latents have shapes {shapes}, the model's are {model.latent_shapes} (another model?)")
    if (latents.classes is None) != (model.num_classes is None):
        need = "class-conditional and needs" if model.num_classes is not None else "not class-conditional and takes no"
        raise ValueError(f"the model is {need} classes; the latents {'lack' if latents.classes is None else 'carry'} "
                         "them")  # fmt: skip
    if latents.noise is not None and isinstance(model, Glow) and tuple(latents.noise.shape[1:]) != model.data_shape:
        raise ValueError(f"the archived noise has shape {latents.noise.shape[1:]}, the model takes {model.data_shape}")


def save_latents(latents: Latents, path: str | os.PathLike) -> Path:
    """Write ``latents`` as an ``.npz`` archive (see the module docstring), atomically."""
    arrays: dict[str, np.ndarray] = {f"z{i}": z for i, z in enumerate(latents.zs)}
    if latents.noise is not None:
        arrays["noise"] = latents.noise
    if latents.classes is not None:
        arrays["classes"] = np.asarray(latents.classes, dtype=np.int64)
    if latents.labels is not None:
        arrays["labels"] = np.asarray(latents.labels, dtype=str)
    arrays["sources"] = np.asarray(latents.sources, dtype=str)
    arrays["meta"] = np.asarray(json.dumps(latents.meta))

    def write(f: Any) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        f.write(buf.getvalue())

    return atomic_write_bytes(path, write)


def load_latents(path: str | os.PathLike) -> Latents:
    """Read an archive written by :func:`save_latents`; ``ValueError`` naming the file for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latents file {path} not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read {path} as a glowflow latents archive (.npz): {e}") from None
    try:
        meta = json.loads(str(arrays["meta"]))
    except (KeyError, json.JSONDecodeError):
        meta = None
    count = len([k for k in arrays if k[:1] == "z" and k[1:].isdigit()])
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or count == 0:
        raise ValueError(f"{path} is not a glowflow latents archive (one written by glowflow encode)")
    z_dtype = np.float64 if meta.get("precision") == "float64" else np.float32
    latents = Latents(
        [arrays[f"z{i}"].astype(z_dtype) for i in range(count)],
        arrays["noise"].astype(np.float32) if "noise" in arrays else None,
        arrays["classes"].astype(np.int64) if "classes" in arrays else None,
        [str(v) for v in arrays["labels"]] if "labels" in arrays else None,
        [str(v) for v in arrays.get("sources", [])],
        meta,
    )
    n = len(latents)
    sizes = [len(z) for z in latents.zs] + [len(a) for a in (latents.noise, latents.classes) if a is not None]
    if any(size != n for size in sizes) or n == 0:
        raise ValueError(f"{path}: its arrays disagree on the number of examples ({sizes})")
    return latents
