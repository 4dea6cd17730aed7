"""Scoring and drawing a model: test bits/dim (or NLL) of tensors or of a batch source read batch by batch,
samples at a temperature, and the sample pictures.

Randomness here never disturbs training: evaluation runs under ``torch.random.fork_rng`` with its own seed (so the
dequantization noise is the same at every evaluation, and a resumed run continues the same random stream), and
sampling uses its own ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from glowflow import viz
from glowflow.checks import POSITIVE, SEED
from glowflow.data.sources import BatchSource
from glowflow.data.streaming import eval_batches
from glowflow.layers.dequantization import to_uint8
from glowflow.models import FlowModel, Glow
from glowflow.training.distributed import DistContext, all_reduce_sum

EVAL_SEED = 1234


@contextmanager
def isolated_rng(seed: int, device: torch.device):
    """Run a block with the global RNGs seeded to ``seed`` and restored afterwards."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        fork = torch.random.fork_rng(devices=[index], device_type="cuda")
    else:
        fork = torch.random.fork_rng(devices=[])
    with fork:
        torch.manual_seed(seed)
        yield


def evaluate(
    model: FlowModel,
    x: Tensor,
    y: Tensor | None,
    n_samples: int = 1,
    batch_size: int = 512,
    importance_weighted: bool = False,
    ctx: DistContext | None = None,
    seed: int = EVAL_SEED,
    progress: Callable[[int], object] | None = None,
) -> dict[str, float]:
    """Mean score of the examples ``x`` (labels ``y``) held as tensors, split over the processes of ``ctx``: the
    numbers of :func:`evaluate_source` for the same examples (every rank scores ``x[rank::world_size]``)."""
    batch_size, n_samples, seed = _check_arguments(batch_size, n_samples, seed)
    if len(x) == 0:
        raise ValueError("nothing to evaluate: no examples")
    ctx = ctx or DistContext()
    idx = torch.arange(len(x))[ctx.rank :: ctx.world_size]  # every rank scores its own share
    batches = ((x[b], None if y is None else y[b]) for b in idx.split(batch_size))
    return _mean_score(model, batches, n_samples, importance_weighted, ctx, seed, progress)


def evaluate_source(
    model: FlowModel,
    source: BatchSource,
    indices: Tensor | None = None,
    n_samples: int = 1,
    batch_size: int = 512,
    importance_weighted: bool = False,
    ctx: DistContext | None = None,
    seed: int = EVAL_SEED,
    *,
    labels: bool = False,
    workers: int = 0,
    progress: Callable[[int], object] | None = None,
) -> dict[str, float]:
    """Mean score of the examples ``indices`` (default all) of a batch source, streamed batch by batch
    (:func:`glowflow.data.streaming.eval_batches`; ``workers`` reader processes), each process of ``ctx`` scoring
    ``indices[rank::world_size]``: for data in memory the numbers of :func:`evaluate` on the same examples.
    ``labels``: pass the source's labels to a class-conditional model.

    Images (discrete levels, the model's input): ``{"bpd": ...}``, bits/dim with the dequantization noise averaged
    over ``n_samples`` draws (or their importance-weighted combination). Tabular / toy rows (in their own units):
    ``{"nll": ..., "bpd": ...}``, the NLL in nats and ``nll / (D ln 2)``. ``progress(n)``, if given, is called
    after each batch with the number of examples it scored (e.g. :meth:`glowflow.progress.Progress.update`).
    """
    batch_size, n_samples, seed = _check_arguments(batch_size, n_samples, seed)
    indices = torch.arange(len(source)) if indices is None else indices
    if len(indices) == 0:
        raise ValueError("nothing to evaluate: no examples")
    ctx = ctx or DistContext()
    batches = eval_batches(source, indices, batch_size, ctx.rank, ctx.world_size, workers=workers, labels=labels)
    return _mean_score(model, batches, n_samples, importance_weighted, ctx, seed, progress)


def _check_arguments(batch_size: int, n_samples: int, seed: int) -> tuple[int, int, int]:
    return POSITIVE.check("batch_size", batch_size), POSITIVE.check("n_samples", n_samples), SEED.check("seed", seed)


@torch.no_grad()
def _mean_score(
    model: FlowModel,
    batches: Iterable[tuple[Tensor, Tensor | None]],
    n_samples: int,
    importance_weighted: bool,
    ctx: DistContext,
    seed: int,
    progress: Callable[[int], object] | None = None,
) -> dict[str, float]:
    """The mean of ``batches``' scores over every process (see :func:`evaluate_source`); the batches are drawn
    inside the isolated random stream, so reading them (worker processes included) disturbs no other stream."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    try:
        with isolated_rng(seed + ctx.rank, device):
            for xb, yb in batches:
                xb = xb.to(device)
                yb = None if yb is None else yb.to(device)
                if isinstance(model, Glow):
                    score = model.bits_per_dim(xb, yb, n_samples=n_samples, importance_weighted=importance_weighted)
                else:
                    score = -model.log_prob(xb, yb)
                total[0] += score.double().sum()
                total[1] += len(xb)
                if progress is not None:
                    progress(len(xb))
    finally:
        model.train(was_training)
    all_reduce_sum(total, ctx)
    mean = (total[0] / total[1]).item()
    if model.is_image:
        return {"bpd": mean}
    return {"nll": mean, "bpd": mean / (model.num_dims * math.log(2.0))}


def sample_labels(model: FlowModel, n: int, label: int | None = None) -> Tensor | None:
    """Labels for ``n`` samples of a class-conditional model: ``label``, or every class in turn."""
    if model.num_classes is None:
        return None
    if label is not None:
        return torch.full((n,), int(label), dtype=torch.long)
    return torch.arange(n) % model.num_classes


@torch.no_grad()
def draw_samples(
    model: FlowModel,
    n: int,
    temperature: float,
    labels: Tensor | None = None,
    seed: int = 0,
) -> Tensor:
    """``n`` samples: images as displayable grey levels (uint8 ``(n, C, H, W)``, 0..255); tabular / toy data as
    float32 ``(n, D)`` in the data's own units. The same ``seed`` draws the same latents."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(SEED.check("seed", seed))
    was_training = model.training
    model.eval()
    try:
        x = model.sample(n, temperature, y=None if labels is None else labels.to(device), generator=g)
    finally:
        model.train(was_training)
    if model.is_image:
        return to_uint8(x, model.num_bins).cpu()
    return x.float().cpu()


@torch.no_grad()
def density_grid(model: FlowModel, extent: tuple[float, float, float, float], n: int = 160) -> np.ndarray:
    """The model's density (the data's units) on an ``n x n`` grid over ``extent = (x0, x1, y0, y1)``."""
    device = next(model.parameters()).device
    x0, x1, y0, y1 = extent
    gx, gy = torch.meshgrid(torch.linspace(x0, x1, n), torch.linspace(y0, y1, n), indexing="xy")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    was_training = model.training
    model.eval()
    log_p = torch.cat([model.log_prob(chunk.to(device)).cpu() for chunk in pts.split(8192)])
    model.train(was_training)
    return torch.exp(log_p.double()).nan_to_num(0.0).reshape(n, n).numpy()


def extent_of(points: np.ndarray, margin: float = 0.1) -> tuple[float, float, float, float]:
    lo = np.percentile(points, 0.5, axis=0)
    hi = np.percentile(points, 99.5, axis=0)
    pad = margin * (hi - lo) + 1e-6
    return (float(lo[0] - pad[0]), float(hi[0] + pad[0]), float(lo[1] - pad[1]), float(hi[1] + pad[1]))


def sample_picture(
    model: FlowModel,
    test_x: Tensor | None,
    temperatures: list[float],
    n: int,
    seed: int = 0,
    caption: str = "",
) -> np.ndarray:
    """What ``RUN/samples.png`` shows: image grids at each temperature (one class per column for a
    class-conditional model); for 2-D data the test data ``test_x``, the model density and samples; for tabular
    data data and samples on the first two coordinates (images need no ``test_x``)."""
    if model.is_image:
        ncol = model.num_classes
        if ncol is not None:  # one class per column: whole rows
            n = math.ceil(n / ncol) * ncol
        labels = sample_labels(model, n)
        grids = [(t, draw_samples(model, n, t, labels, seed)) for t in temperatures]
        return viz.sample_sheet(grids, ncol=ncol, caption=caption)
    if test_x is None:
        raise ValueError("a picture of tabular / 2-D samples needs the test rows beside them")
    test = test_x.float().numpy()
    samples = [(t, draw_samples(model, n, t, None, seed).numpy()) for t in temperatures]
    if model.num_dims == 2:
        extent = extent_of(test)
        return viz.density_plot(density_grid(model, extent), extent, test, samples, title=caption)
    return viz.scatter_plot(test, samples, title=caption)
