"""studies/ood.py end to end on a tiny MNIST-5k model and its background model (--quick)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "training"))
from train_helpers import TINY  # noqa: E402

from glowflow.training import train  # noqa: E402
from studies import ood  # noqa: E402

MNIST_5K = ROOT / ".." / "shared" / "data" / "mnist-5k"


@pytest.mark.skipif(not (MNIST_5K / "t10k-images-idx3-ubyte.gz").is_file(), reason="needs ../shared/data/mnist-5k")
def test_ood_study_quick(tmp_path: Path, capsys):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tiny = {**TINY, "eval_every": 0, "eval_size": 64, "checkpoint_every": 0, "iters": 4}
        train(out=str(tmp_path / "m"), data="mnist", data_dir=str(MNIST_5K), **tiny)
        schedule = {k: v for k, v in tiny.items() if k not in ("levels", "steps", "hidden")}
        train(out=str(tmp_path / "bg"), background_for=str(tmp_path / "m"), **schedule)
        out = tmp_path / "study"
        assert ood.main(["--run", str(tmp_path / "m"), "--background", str(tmp_path / "bg"), "--mnist-dir",
                         str(MNIST_5K), "--quick", "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
    finally:
        torch.set_num_threads(before)
    results = json.loads((out / "results.json").read_text())
    assert results["out"] == ["digits", "rotated", "inverted", "noise", "constant", "patches"]
    assert set(results["scores"]) == set(ood.SCORES) and results["in"] == "mnist:test[500:]"
    for name in ood.SCORES:
        for entry in results["scores"][name]["metrics"].values():
            assert 0 <= entry["auroc"] <= 1
    # noise is the one OOD set even a 4-step model separates: it costs ~8 bits per pixel
    assert results["scores"]["bpd"]["metrics"]["noise"]["auroc"] > 0.99
    table = (out / "table.md").read_text()
    assert "| complexity_lzma |" in table and "FPR at 95% TPR" in table and "--quick" in table
    for name in ("roc.png", "histograms.png", "examples.png"):
        assert (out / name).stat().st_size > 1000
