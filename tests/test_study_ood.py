"""studies/ood.py end to end on a tiny MNIST-5k model and its background model (--quick)."""

from __future__ import annotations

import json
from pathlib import Path

from glowflow.training import train
from studies import ood
from tests.scoring.scoring_helpers import MNIST_5K, needs_mnist_5k
from tests.training.train_helpers import TINY


@needs_mnist_5k
def test_ood_study_quick(tmp_path: Path, capsys):
    tiny = {**TINY, "eval_every": 0, "eval_size": 64, "checkpoint_every": 0, "iters": 4}
    train(out=str(tmp_path / "m"), data="mnist", data_dir=str(MNIST_5K), **tiny)
    schedule = {k: v for k, v in tiny.items() if k not in ("levels", "steps", "hidden")}
    train(out=str(tmp_path / "bg"), background_for=str(tmp_path / "m"), **schedule)
    out = tmp_path / "study"
    assert ood.main(["--run", str(tmp_path / "m"), "--background", str(tmp_path / "bg"), "--mnist-dir",
                     str(MNIST_5K), "--quick", "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
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
