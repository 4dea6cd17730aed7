"""Smoke test of benchmarks/streaming.py: each measurement on tiny data, and the report, so the script cannot rot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from glowflow.data.arrays import ArraySource
from glowflow.data.image_files import ImageFolderSource
from glowflow.data.shards import TarShardSource
from tests.helpers import load_script

sb = load_script("benchmarks", "streaming")


def test_measurements_and_report(tmp_path: Path):
    x, what = sb.images_for(3, 8, 40, tmp_path / "no-mnist")
    assert x.shape == (40, 3, 8, 8) and what == "uniform random pixels"
    sb.write_files(x, tmp_path / "d", per_shard=16)
    png, tar, npy = (ImageFolderSource(tmp_path / "d" / "png"), TarShardSource(tmp_path / "d" / "shards"),
                     ArraySource(tmp_path / "d" / "x.npy"))  # fmt: skip
    assert torch.equal(png.get([7])[0], torch.from_numpy(x[[7]])) and torch.equal(tar.get([39])[0], npy.get([39])[0])
    rates = {str(w): sb.reader_rate(npy, w, 0.01) for w in (0, 1)}
    assert all(r > 0 for r in rates.values())
    assert sb.index_rate(tmp_path / "d" / "shards") > 0
    n = sb.write_large_array(tmp_path / "big.npy", 2**20 / 2**30, (3, 8, 8))  # 1 MiB
    assert n == 2**20 // 192 and np.load(tmp_path / "big.npy", mmap_mode="r").shape == (n, 3, 8, 8)
    training = sb.train_rate("digits", 1, 4, 1)
    assert training["batch"] == 4 and training["threads"] == 1 and training["img_per_s"] > 0
    memory = [sb.rss_case(case, str(tmp_path / "big.npy"), 3) for case in ("memory", "pread-large", "memmap")]
    assert all(m["peak_rss_mib"] >= m["rss_before_mib"] > 0 for m in memory)
    np.save(tmp_path / "test.npy", x[:8])
    runs = [sb.run_case(case, str(tmp_path / "big.npy"), str(tmp_path / "test.npy"), 2, str(tmp_path / case))
            for case in ("run-memory", "run-stream-large")]  # fmt: skip
    assert [r["steps"] for r in runs] == [2, 2] and all(r["peak_rss_mib"] >= r["rss_before_mib"] > 0 for r in runs)
    assert runs[0]["test_bpd"] == pytest.approx(runs[1]["test_bpd"], rel=1e-12)  # the same run, in memory or streamed
    res = {
        "environment": {"cpu": "test", "cpu_count": 2, "torch": "x", "python": "y", "git": None,
                        "load_average_start": 1.0, "load_average_end": 2.0},
        "readers": [{"data": "CIFAR-size 3x32x32", "reader": ".npy", "examples": 40,
                     "img_per_s": {"0": 10.0, "1": 20.0, "2": 30.0}}],  # fmt: skip
        "notes": ["a note"], "training": [training], "memory": memory, "rss_batches": 3, "tar_index_members_per_s": 5.0,
        "runs": runs,
    }  # fmt: skip
    text = sb.report(res)
    assert "| CIFAR-size 3x32x32 | .npy | 40 | 10 | 20 | 30 |" in text and "load average 1.0 at the start" in text
    assert "slowest reader case / fastest preset" in text and "the large .npy (ArraySource): peak RSS" in text
    assert "the large .npy, read batch by batch: peak RSS" in text and "| 2 |" in text
