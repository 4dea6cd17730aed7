"""glowflow.viz: grids, sheets, strips, curves, density and scatter plots, atomic PNG writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glowflow import viz


def test_image_grid_layout():
    images = torch.arange(5 * 4 * 4, dtype=torch.uint8).reshape(5, 1, 4, 4)
    grid = viz.image_grid(images, ncol=3, scale=2, pad=1)
    # 2 rows x 3 columns of 8x8 tiles with 1-pixel separators
    assert grid.shape == (2 * 9 + 1, 3 * 9 + 1, 3) and grid.dtype == np.uint8
    assert np.array_equal(grid[1:9, 1:9, 0], images[0, 0].numpy().repeat(2, 0).repeat(2, 1))
    assert (grid[10:18, 19:27] == viz.SEPARATOR).all()  # the empty sixth tile
    rgb = viz.image_grid(torch.zeros(4, 3, 8, 8, dtype=torch.uint8))
    assert rgb.shape[0] == 2 * (8 * viz.default_scale(8) + 2) + 2  # square-ish default, small images enlarged


def test_image_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="expected uint8 grey levels"):
        viz.image_grid(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="expected images of shape"):
        viz.image_grid(torch.zeros(2, 4, 4, dtype=torch.uint8))


def test_sheets_and_strips():
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    sheet = viz.sample_sheet([(0.0, images), (0.7, images)], caption="step 5")
    assert sheet.ndim == 3 and sheet.shape[2] == 3 and sheet.shape[1] > 2 * viz.image_grid(images).shape[1]
    strip = viz.strip_rows([images, images])
    assert strip.shape == viz.image_grid(torch.cat([images, images]), ncol=6).shape


def test_plots_render():
    records = [{"step": 0, "loss": 4.6, "test_bpd": 4.6}] + [
        {"step": s, "loss": 4.0 - s / 100, **({"test_bpd": 3.9 - s / 100} if s % 20 == 0 else {})}
        for s in range(10, 101, 10)
    ]
    records[5]["events"] = [{"step": 50, "kind": "rollback", "to_step": 40, "lr_scale": 0.5}]
    curve = viz.training_curve(records)
    assert curve.shape == (420, 700, 3)
    pts = np.random.default_rng(0).normal(size=(500, 2))
    density = viz.density_plot(np.ones((20, 20)), (-3, 3, -3, 3), pts, [(1.0, pts)])
    assert density.ndim == 3 and density.shape[1] > density.shape[0]
    assert viz.scatter_plot(np.random.default_rng(1).normal(size=(100, 4)), [(1.0, pts)], dims=(0, 1)).ndim == 3
    assert viz.points_plot(pts).shape == (400, 400, 3)


def test_save_png(tmp_path: Path):
    array = (np.arange(30 * 20 * 3) % 256).astype(np.uint8).reshape(30, 20, 3)
    path = viz.save_png(array, tmp_path / "sub" / "a.png")
    assert np.array_equal(np.asarray(Image.open(path)), array)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.png"]
