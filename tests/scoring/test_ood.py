"""OOD scores and metrics: AUROC / AUPR / FPR95 against hand-computed values, compressed lengths, the typicality
test and its bootstrap threshold, and detect_ood end to end on the digits with a background model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from glowflow.scoring import detect_ood
from glowflow.scoring.ood import (
    bootstrap_threshold,
    compressed_bits_per_dim,
    roc_metrics,
    threshold_of,
    typicality_statistic,
)


def test_roc_metrics_by_hand():
    perfect = roc_metrics(np.array([0.0, 1.0, 2.0]), np.array([3.0, 4.0]))
    assert perfect == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    reversed_ = roc_metrics(np.array([3.0, 4.0]), np.array([0.0, 1.0]))
    assert reversed_["auroc"] == 0.0 and reversed_["fpr95"] == 1.0
    # in 0, 2; out 1, 3: of the 4 (in, out) pairs, out scores higher in 3 -> AUROC 0.75
    mixed = roc_metrics(np.array([0.0, 2.0]), np.array([1.0, 3.0]))
    assert mixed["auroc"] == pytest.approx(0.75)
    # ranked 3 (out), 2 (in), 1 (out), 0 (in): precision 1 at recall 1/2, 2/3 at recall 1 -> AP = (1 + 2/3) / 2
    assert mixed["aupr"] == pytest.approx((1 + 2 / 3) / 2)
    # accepting 95 % of in-distribution (both: scores <= 2) accepts the OOD example at 1: FPR95 = 1/2
    assert mixed["fpr95"] == pytest.approx(0.5)
    assert roc_metrics(np.array([0.0, 1.0]), np.array([np.inf, np.nan]))["auroc"] == 1.0  # non-finite: anomalous
    assert threshold_of(np.arange(101.0), 0.05) == pytest.approx(95.0)


def test_compressed_lengths_rank_complexity():
    rng = np.random.default_rng(0)
    constant = torch.full((1, 1, 28, 28), 7, dtype=torch.uint8)
    noise = torch.from_numpy(rng.integers(0, 256, (1, 1, 28, 28), dtype=np.uint8))
    for name in ("png", "zlib", "lzma"):
        c, n = compressed_bits_per_dim(torch.cat([constant, noise]), name)
        # a constant image costs little more than the format's headers (measured: PNG 0.81, zlib 0.16, lzma 0.18);
        # noise does not compress below 8 bits per pixel (measured: PNG 8.98, zlib 8.11, lzma 8.04)
        assert c < 1.0 and 8.0 < n < 9.2, (name, c, n)
    with pytest.raises(ValueError, match="unknown compressor 'bz2'"):
        compressed_bits_per_dim(constant, "bz2")


def test_typicality_statistic_and_bootstrap():
    values = np.array([1.0, 3.0, 1.0, 3.0, 2.0])
    stat = typicality_statistic(values, 1, 2.0, np.random.default_rng(0))
    assert sorted(stat) == [0.0, 1.0, 1.0, 1.0, 1.0]
    pairs = typicality_statistic(values, 2, 2.0, np.random.default_rng(0))
    assert len(pairs) == 2 and all(v in (0.0, 0.5, 1.0) for v in pairs)  # the fifth example is left out
    reference = np.random.default_rng(1).normal(2.0, 1.0, 5000)
    thr = bootstrap_threshold(reference, 25, 2.0, 0.05, 4000, seed=0)
    # the mean of 25 draws of N(2, 1) has sd 0.2; its |deviation| exceeds 1.96 * 0.2 with probability 0.05
    assert thr == pytest.approx(1.96 * 0.2, rel=0.08)
    with pytest.raises(ValueError, match="at least M = 10 examples"):
        typicality_statistic(values, 10, 2.0, np.random.default_rng(0))


def test_detect_ood_on_the_digits(digits_run: Path, background_run: Path):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 17, (150, 1, 8, 8), dtype=np.uint8)
    blank = np.zeros((150, 1, 8, 8), dtype=np.uint8)
    report = detect_ood(digits_run, "digits:test", [noise, blank], reference="digits:train[:600]",
                        background=background_run, typicality_m=5, bootstraps=500)  # fmt: skip
    assert report.score_names == ["bpd", "complexity_png", "likelihood_ratio", "last_level", "typicality"]
    assert report.out_sets == ["array0", "array1"] and report.reference_set == "digits:train[:600]"
    m = report.metrics
    # measured on this 30-step model (AUROC, FPR95): uniform noise is far from the digits for the raw likelihood
    # (1.0, 0.0); an all-black image, the simplest input there is, is accepted by it at 95 % TPR (0.87, 1.0) but
    # flagged by the complexity correction (1.0, 0.0); the typicality test catches both in batches of 5 (1.0, 0.98)
    assert m["bpd"]["array0"]["auroc"] > 0.95 and m["bpd"]["array0"]["fpr95"] < 0.05
    assert m["complexity_png"]["array1"]["auroc"] > 0.95 and m["complexity_png"]["array1"]["fpr95"] < 0.05
    assert m["complexity_png"]["array1"]["auroc"] > m["bpd"]["array1"]["auroc"]
    assert min(m["typicality"]["array0"]["auroc"], m["typicality"]["array1"]["auroc"]) > 0.9
    for name in report.score_names:
        for out in report.out_sets:
            entry = m[name][out]
            assert 0 <= entry["auroc"] <= 1 and 0 <= entry["aupr"] <= 1 and 0 <= entry["fpr95"] <= 1
    assert 0.0 <= report.in_false_alarms["bpd"] <= 0.12  # threshold at 5 % false alarms on held-out digits
    s = report.scores
    assert len(report.values["bpd"]) == len(s) == 600 + 297 + 300
    outlier = report.is_outlier("bpd")
    assert outlier[s.set_index == s.set_names.index("array0")].mean() == pytest.approx(m["bpd"]["array0"]["detected"])
    lr = report.values["likelihood_ratio"]
    assert np.isfinite(lr).all() and abs(lr).max() < 10
    assert report.typicality["m"] == 5 and report.typicality["in_batches"] == 297 // 5
    text = report.markdown()
    assert "| bpd |" in text and "FPR at 95% TPR" in text
    data = report.to_dict()
    assert set(data["scores"]) == set(report.score_names) and data["background"]["step"] == 30
    assert math.isclose(data["scores"]["bpd"]["threshold"], report.thresholds["bpd"])


def test_detect_ood_refusals(digits_run: Path, moons_run: Path):
    blank = np.zeros((20, 1, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"'likelihood_ratio' \(needs --background\)"):
        detect_ood(digits_run, "digits:test", [blank], scores=["likelihood_ratio"])
    with pytest.raises(ValueError, match="unknown or inapplicable score 'last_level'"):
        detect_ood(moons_run, "moons:test", [np.zeros((20, 2), np.float32)], scores=["last_level"])
    with pytest.raises(ValueError, match="fpr must lie strictly between 0 and 1"):
        detect_ood(digits_run, "digits:test", [blank], fpr=1.0)
    with pytest.raises(ValueError, match="must be different inputs"):
        detect_ood(digits_run, "digits:test", ["digits:test"])
    with pytest.raises(ValueError, match="background model takes"):
        detect_ood(digits_run, "digits:test", [blank], background=moons_run)


def test_tabular_anomalies(moons_run: Path):
    far = np.random.default_rng(0).normal(0, 1, (100, 2)).astype(np.float32) * 0.3 + 6.0
    report = detect_ood(moons_run, "moons:test", [far], reference="moons:train[:1000]", typicality_m=5)
    assert report.score_names == ["nll", "typicality"]
    assert report.metrics["nll"]["array"]["auroc"] > 0.99 and report.metrics["nll"]["array"]["detected"] > 0.95
