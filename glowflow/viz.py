"""Pictures of models and runs: image grids, titled sample sheets, interpolation strips, training curves and
2-D density maps, written as PNG.

Images come in as displayable grey levels (uint8 ``(N, C, H, W)`` with 0..255, see :func:`glowflow.to_uint8`);
every drawing function returns an ``(H, W, 3)`` uint8 array and :func:`save_png` writes one atomically (a file
being watched is never seen half-written). Plots use matplotlib's Agg canvas directly, never ``pyplot``, so
importing this module changes no global matplotlib state.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from glowflow.io import atomic_write_bytes

BACKGROUND = 255  # sheets: white
SEPARATOR = 96  # grid lines between tiles: mid-dark grey
MIN_TILE = 32  # small images (8x8 digits) are enlarged to at least this many pixels


def _as_uint8_images(images: torch.Tensor | np.ndarray) -> np.ndarray:
    a = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if a.ndim != 4 or a.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1 or 3, H, W), got {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"expected uint8 grey levels 0..255 (glowflow.to_uint8), got {a.dtype}")
    return a


def default_scale(height: int) -> int:
    """Nearest-neighbour enlargement that makes a tile at least :data:`MIN_TILE` pixels tall."""
    return max(1, math.ceil(MIN_TILE / height))


def image_grid(
    images: torch.Tensor | np.ndarray, ncol: int | None = None, scale: int | None = None, pad: int = 2
) -> np.ndarray:
    """Tile ``images`` (uint8 ``(N, C, H, W)``) row by row into an ``(H', W', 3)`` array, ``ncol`` per row
    (default: a square-ish grid), each enlarged ``scale`` times (default :func:`default_scale`), with ``pad``
    pixels of grey between tiles."""
    a = _as_uint8_images(images)
    n, c, h, w = a.shape
    if n == 0:
        raise ValueError("no images to draw")
    scale = default_scale(h) if scale is None else scale
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    a = np.repeat(a, 3, axis=1) if c == 1 else a
    a = a.repeat(scale, axis=2).repeat(scale, axis=3).transpose(0, 2, 3, 1)  # (N, h, w, 3)
    th, tw = h * scale, w * scale
    out = np.full((nrow * (th + pad) + pad, ncol * (tw + pad) + pad, 3), SEPARATOR, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        y, x = pad + r * (th + pad), pad + col * (tw + pad)
        out[y : y + th, x : x + tw] = a[i]
    return out


def font(size: int = 14) -> Any:
    """Pillow's default font at ``size`` (the fixed bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def titled_panels(panels: Sequence[tuple[str, np.ndarray]], gap: int = 12, title_height: int = 22) -> np.ndarray:
    """Lay ``(title, image)`` panels side by side on white, each with its title above it."""
    if not panels:
        raise ValueError("no panels to draw")
    height = max(p.shape[0] for _, p in panels) + title_height + gap
    width = sum(p.shape[1] for _, p in panels) + gap * (len(panels) + 1)
    sheet = Image.new("RGB", (width, height), (BACKGROUND,) * 3)
    draw = ImageDraw.Draw(sheet)
    text_font = font()
    x = gap
    for title, panel in panels:
        draw.text((x, 3), title, fill=(0, 0, 0), font=text_font)
        sheet.paste(Image.fromarray(panel), (x, title_height))
        x += panel.shape[1] + gap
    return np.asarray(sheet)


def sample_sheet(
    samples: Sequence[tuple[float, torch.Tensor | np.ndarray]], ncol: int | None = None, caption: str = ""
) -> np.ndarray:
    """One grid per temperature, side by side, titled ``T=0.7`` etc. (``caption`` is prefixed to the first)."""
    panels = []
    for i, (t, images) in enumerate(samples):
        title = f"T={t:g}"
        if i == 0 and caption:
            title = f"{caption}   {title}"
        panels.append((title, image_grid(images, ncol=ncol)))
    return titled_panels(panels)


def strip_rows(rows: Sequence[torch.Tensor | np.ndarray], scale: int | None = None) -> np.ndarray:
    """Rows of images (each uint8 ``(n, C, H, W)``, same ``n``) stacked into one grid: an interpolation strip per
    row, or an attribute-manipulation row per source image."""
    if not rows:
        raise ValueError("no rows to draw")
    ncol = _as_uint8_images(rows[0]).shape[0]
    both = np.concatenate([_as_uint8_images(r) for r in rows])
    return image_grid(both, ncol=ncol, scale=scale)


def labelled_rows(
    rows: Sequence[torch.Tensor | np.ndarray], labels: Sequence[str], title: str = "", scale: int | None = None
) -> np.ndarray:
    """Rows of images (uint8 ``(n, C, H, W)`` each) as one grid with a label left of each row and a title."""
    if len(labels) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(labels)} labels")
    grid = strip_rows(rows, scale=scale)
    margin = 12 + 8 * max(len(s) for s in labels)
    top = 26 if title else 4
    sheet = Image.new("RGB", (grid.shape[1] + margin + 4, grid.shape[0] + top + 4), (BACKGROUND,) * 3)
    sheet.paste(Image.fromarray(grid), (margin, top))
    draw = ImageDraw.Draw(sheet)
    text_font = font()
    row_h = (grid.shape[0] - 2) / len(rows)
    for i, label in enumerate(labels):
        draw.text((4, top + 2 + i * row_h + row_h / 2 - 8), label, fill=(0, 0, 0), font=text_font)
    if title:
        draw.text((4, 4), title, fill=(0, 0, 0), font=text_font)
    return np.asarray(sheet)


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an ``(H, W, 3)`` or ``(H, W)`` uint8 array as PNG, atomically."""
    data = png_bytes(array)
    return atomic_write_bytes(path, lambda f: f.write(data))


# ---- matplotlib plots -----------------------------------------------------------------------------------------
def figure(width: float, height: float) -> Any:
    """A matplotlib figure on the Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def render(fig: Any) -> np.ndarray:
    """A figure as an ``(H, W, 3)`` uint8 array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def training_curve(records: Sequence[dict[str, Any]], metric: str = "test_bpd", unit: str = "bits/dim") -> np.ndarray:
    """Training loss and test ``metric`` against the step, from ``metrics.jsonl`` records; rollbacks are marked."""
    fig = figure(7.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None and r["step"] > 0]
    test = [(r["step"], r[metric]) for r in records if r.get(metric) is not None]
    if train:
        ax.plot(*zip(*train, strict=True), lw=1.0, color="tab:blue", alpha=0.8, label="train (batch mean)")
    if test:
        ax.plot(*zip(*test, strict=True), "o-", ms=4, lw=1.5, color="tab:orange", label=f"test ({metric})")
    rollbacks = [e["step"] for r in records for e in r.get("events") or [] if e.get("kind") == "rollback"]
    for i, s in enumerate(rollbacks):
        ax.axvline(s, color="tab:red", lw=0.8, ls="--", label="rollback" if i == 0 else None)
    values = [v for _, v in train + test]
    if values:  # the first steps are far above the rest: clip the view to the informative range
        lo, hi = min(values), np.percentile(values, 95) if len(values) > 4 else max(values)
        top = max(hi, max(v for _, v in test)) if test else hi
        margin = 0.05 * max(top - lo, 1e-3)
        ax.set_ylim(lo - margin, top + margin)
    ax.set_xlabel("step")
    ax.set_ylabel(unit)
    ax.grid(alpha=0.3)
    if train or test:
        ax.legend(loc="upper right")
    fig.tight_layout()
    return render(fig)


def density_plot(
    density: np.ndarray,
    extent: tuple[float, float, float, float],
    data: np.ndarray,
    samples: Sequence[tuple[float, np.ndarray]],
    title: str = "",
) -> np.ndarray:
    """2-D panels: a histogram of ``data``, the model's density (``density[i, j]`` at row y_i, column x_j over
    ``extent = (x0, x1, y0, y1)``), and a scatter of samples per temperature."""
    n = 2 + len(samples)
    fig = figure(3.2 * n, 3.4)
    x0, x1, y0, y1 = extent
    ax = fig.add_subplot(1, n, 1)
    ax.hist2d(data[:, 0], data[:, 1], bins=100, range=[[x0, x1], [y0, y1]], cmap="viridis")
    ax.set_title("data (test)")
    ax = fig.add_subplot(1, n, 2)
    ax.imshow(density, origin="lower", extent=extent, cmap="viridis", aspect="auto")
    ax.set_title("model density")
    for i, (t, pts) in enumerate(samples, start=3):
        ax = fig.add_subplot(1, n, i)
        pts = pts[np.isfinite(pts).all(axis=1)]
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.5, color="tab:blue")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_title(f"samples T={t:g}")
    for ax in fig.axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return render(fig)


def scatter_plot(
    data: np.ndarray, samples: Sequence[tuple[float, np.ndarray]], dims: tuple[int, int] = (0, 1), title: str = ""
) -> np.ndarray:
    """Data and samples of a D-dimensional model projected on two coordinates ``dims``, side by side."""
    n = 1 + len(samples)
    fig = figure(3.2 * n, 3.4)
    i, j = dims
    finite = data[np.isfinite(data).all(axis=1)]
    lo = np.percentile(finite[:, [i, j]], 0.5, axis=0)
    hi = np.percentile(finite[:, [i, j]], 99.5, axis=0)
    pad = 0.1 * (hi - lo + 1e-9)
    panels = [("data (test)", data)] + [(f"samples T={t:g}", s) for t, s in samples]
    for k, (name, pts) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, n, k)
        pts = pts[np.isfinite(pts).all(axis=1)]
        ax.scatter(pts[:, i], pts[:, j], s=1.5, alpha=0.5, color="tab:gray" if k == 1 else "tab:blue")
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_xlabel(f"x{i}")
        ax.set_ylabel(f"x{j}")
        ax.set_title(name)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return render(fig)


def points_plot(points: np.ndarray, dims: tuple[int, int] = (0, 1), title: str = "") -> np.ndarray:
    """A scatter of ``points`` ``(N, D)`` on the coordinates ``dims``."""
    fig = figure(4.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    i, j = dims
    pts = points[np.isfinite(points).all(axis=1)]
    ax.scatter(pts[:, i], pts[:, j], s=2.0, alpha=0.5, color="tab:blue")
    ax.set_xlabel(f"x{i}")
    ax.set_ylabel(f"x{j}")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return render(fig)


def _grid_of(n: int, width: float, height: float, ncol: int | None = None) -> tuple[Any, int, int]:
    ncol = min(n, ncol or 3)
    nrow = math.ceil(n / ncol)
    return figure(width * ncol, height * nrow), nrow, ncol


def score_histograms(
    panels: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]], unit: str = "bits/dim", bins: int = 50
) -> np.ndarray:
    """One panel per ``(title, [(set name, values), ...])``: the sets' score distributions overlaid as density
    step histograms on a common range (the 0.5-99.5 % quantiles of all finite values; the rest is left out)."""
    if not panels:
        raise ValueError("no histograms to draw")
    fig, nrow, ncol = _grid_of(len(panels), 4.6, 3.4)
    for p, (title, groups) in enumerate(panels):
        ax = fig.add_subplot(nrow, ncol, p + 1)
        finite = [np.asarray(v, dtype=np.float64)[np.isfinite(v)] for _, v in groups]
        pooled = np.concatenate(finite) if finite else np.zeros(0)
        if pooled.size:
            lo, hi = np.quantile(pooled, [0.005, 0.995])
            edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
            for (name, _), values in zip(groups, finite, strict=True):
                ax.hist(values, bins=edges, density=True, histtype="step", lw=1.4, label=f"{name} ({len(values)})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return render(fig)


def roc_curves(panels: Sequence[tuple[str, Sequence[tuple[str, np.ndarray, np.ndarray]]]]) -> np.ndarray:
    """One panel per ``(title, [(label, false positive rates, true positive rates), ...])``: ROC curves with the
    chance diagonal."""
    if not panels:
        raise ValueError("no ROC curves to draw")
    fig, nrow, ncol = _grid_of(len(panels), 3.8, 3.6)
    for p, (title, curves) in enumerate(panels):
        ax = fig.add_subplot(nrow, ncol, p + 1)
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        for label, fpr, tpr in curves:
            ax.plot(fpr, tpr, lw=1.3, label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("false positive rate (in-distribution flagged)", fontsize=8)
        ax.set_ylabel("true positive rate (OOD flagged)", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return render(fig)
