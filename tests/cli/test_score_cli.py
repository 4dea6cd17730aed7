"""``glowflow score``, ``ood``, ``encode``, ``decode``, ``train --background-for`` and ``--data array`` end to end on
tiny runs of the digits and generated files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import glowflow
from glowflow.cli import main
from glowflow.data import load_dataset
from glowflow.scoring import read_input
from tests.helpers import one_thread
from tests.training.train_helpers import TINY_FLAGS

COMMANDS = ("score", "ood", "encode", "decode")


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    out, _ = capsys.readouterr()
    return code, out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    with one_thread():  # module fixtures run before the autouse one-thread fixture
        return _runs(tmp_path_factory.mktemp("score_cli"))


def _runs(root: Path) -> dict[str, Path]:
    out = {"digits": root / "digits", "background": root / "background", "moons": root / "moons"}
    assert main(["train", "--out", str(out["digits"]), *TINY_FLAGS, "--iters", "20", "--lr", "3e-3"]) == 0
    assert main(["train", "--background-for", str(out["digits"]), "--out", str(out["background"]),
                 "--iters", "8", "--steps", "1", "--hidden", "8", "--batch-size", "16", "--init-batch-size", "64",
                 "--warmup", "2", "--eval-every", "0", "--sample-every", "0", "--no-progress"]) == 0  # fmt: skip
    assert main(["train", "--data", "moons", "--out", str(out["moons"]), *TINY_FLAGS, "--iters", "4"]) == 0
    return out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_examples(capsys, command: str):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"glowflow {command}" in text


def test_background_for_from_the_command_line(runs):
    config = json.loads((runs["background"] / "config.json").read_text())
    assert config["background_for"] == str(runs["digits"]) and config["mutation_rate"] == 0.2
    assert (config["steps"], config["hidden"], config["data"]) == (1, 8, "digits")


def test_score_writes_the_table_summary_and_pictures(runs, tmp_path: Path, capsys):
    out = tmp_path / "s" / "scores.csv"
    code, text = run_cli(capsys, "score", runs["digits"], "digits:test", "digits:train[:100]", "--out", out,
                         "--sort", "--extremes", "4", "--n-samples", "2", "--reference", "digits:train[1000:]",
                         "--fpr", "0.1", "--no-progress")  # fmt: skip
    assert code == 0
    assert "scored 897 images" in text and "images/s, batch 256, 2 noise draws, cpu" in text
    assert "digits:test " in text and "bpd mean" in text and "(levels " in text and "threshold" in text
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 897 and rows[0]["set"] in ("digits:test", "digits:train[:100]", "digits:train[1000:]")
    assert {"bpd", "bpd_level_1", "bpd_level_2", "bpd_dequantization", "noise_std_bpd", "is_outlier"} <= set(rows[0])
    values = [float(r["bpd"]) for r in rows]
    assert values == sorted(values, reverse=True)
    assert rows[0]["is_outlier"] == "1" and rows[-1]["is_outlier"] == "0"
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["sets"]["digits:test"]["examples"] == 297 and summary["n_samples"] == 2
    assert (
        summary["threshold"]["fpr"] == 0.1 and abs(summary["threshold"]["outliers"]["digits:train[1000:]"] - 0.1) < 0.02
    )
    for name in ("scores_hist.png", "scores_extremes.png"):
        assert Image.open(out.parent / name).size[0] > 100
    code, text = run_cli(capsys, "score", runs["moons"], "moons:test", "--no-progress")
    assert code == 0 and "nll mean" in text and (runs["moons"] / "scores.csv").is_file()


def test_ood_command(runs, tmp_path: Path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "noise.npy", rng.integers(0, 17, (100, 1, 8, 8), dtype=np.uint8))
    np.save(tmp_path / "blank.npy", np.zeros((100, 8, 8), dtype=np.uint8))
    save = tmp_path / "ood"
    code, text = run_cli(capsys, "ood", runs["digits"], "--in", "digits:test", "--out", tmp_path / "noise.npy",
                         tmp_path / "blank.npy", "--background", runs["background"], "--reference",
                         "digits:train[:500]", "--typicality-m", "5", "--bootstraps", "200", "--percentile", "99",
                         "--detector", "complexity_png", "--save", save, "--no-progress")  # fmt: skip
    assert code == 0
    assert "AUROC, in-distribution digits:test" in text and "likelihood_ratio" in text and "typicality" in text
    assert "is_outlier: complexity_png >" in text and "99th percentile of digits:train[:500]" in text
    data = json.loads((save / "ood.json").read_text())
    assert data["fpr"] == pytest.approx(0.01) and data["detector"] == "complexity_png"
    assert data["out"] == [str(tmp_path / "noise.npy"), str(tmp_path / "blank.npy")]
    blank = data["scores"]["complexity_png"]["metrics"][str(tmp_path / "blank.npy")]
    assert blank["auroc"] > 0.95  # measured 1.0: an all-black image compresses to almost nothing
    rows = list(csv.DictReader((save / "ood_scores.csv").open()))
    assert len(rows) == 500 + 297 + 200 and {"complexity_png", "likelihood_ratio", "is_outlier"} <= set(rows[0])
    flagged = [r["is_outlier"] == "1" for r in rows if r["set"] == str(tmp_path / "blank.npy")]
    assert np.mean(flagged) == pytest.approx(blank["detected"])
    assert "| typicality |" in (save / "ood.md").read_text()
    for name in ("roc.png", "histograms.png"):
        assert Image.open(save / name).size[0] > 200
    code, text = run_cli(capsys, "ood", runs["moons"], "--in", "moons:test", "--out", "checkerboard:test",
                         "--typicality-m", "4", "--no-progress")  # fmt: skip
    assert code == 0 and "nll" in text and (runs["moons"] / "ood" / "ood.json").is_file()


def test_encode_decode_round_trip_through_png_files(runs, tmp_path: Path, capsys):
    k = load_dataset("digits", split="test").data[:30]
    code, text = run_cli(capsys, "encode", runs["digits"], "digits:test[:30]", "--out", tmp_path / "z.npz",
                         "--no-progress")  # fmt: skip
    assert code == 0 and "encoded 30 examples of digits:test[:30] (noise seed 0)" in text
    assert "latents 2x4x4, 8x2x2" in text
    code, text = run_cli(capsys, "decode", runs["digits"], tmp_path / "z.npz", "--out", tmp_path / "dec", "--npy",
                         "--no-progress")  # fmt: skip
    assert code == 0 and "decoded 30 images (exact levels (archived noise))" in text
    assert np.array_equal(np.load(tmp_path / "dec" / "levels.npy"), k.numpy())
    back = read_input(tmp_path / "dec")  # PNGs in class folders, written at display levels round(255 k / 16)
    assert sorted(back.class_names) == sorted({str(int(v)) for v in load_dataset("digits", split="test").labels[:30]})
    order = np.argsort([Path(s).name for s in back.sources])
    shown = back.data.numpy()[order]
    assert np.array_equal(np.round(shown.astype(float) * 16 / 255).astype(np.uint8), k.numpy())
    # the decoded folder scores as the original images in the folder's order do: the same levels, the same noise
    code, _ = run_cli(capsys, "score", runs["digits"], tmp_path / "dec", "--out", tmp_path / "a.csv", "--no-progress")
    indices = [int(Path(s).stem) for s in back.sources]
    expected = glowflow.score(runs["digits"], k[indices].numpy()).bpd
    got = [float(r["bpd"]) for r in csv.DictReader((tmp_path / "a.csv").open())]
    assert code == 0 and np.allclose(got, expected, atol=1e-6)
    code, text = run_cli(capsys, "decode", runs["digits"], tmp_path / "z.npz", "--out", tmp_path / "g.png",
                         "--scale", "0.7", "--no-progress")  # fmt: skip
    assert code == 0 and "quantized, latents x 0.7" in text and Image.open(tmp_path / "g.png").size[0] > 100
    code, _ = run_cli(capsys, "encode", runs["digits"], "digits:test[:30]", "--out", tmp_path / "m.npz", "--mean",
                      "--deterministic", "--no-progress")  # fmt: skip
    assert code == 0 and len(np.load(tmp_path / "m.npz")["z0"]) == 1
    code, _ = run_cli(capsys, "encode", runs["moons"], "moons:test", "--out", tmp_path / "r.npz", "--no-progress")
    code2, _ = run_cli(capsys, "decode", runs["moons"], tmp_path / "r.npz", "--out", tmp_path / "rows.csv",
                       "--no-progress")  # fmt: skip
    rows = np.loadtxt(tmp_path / "rows.csv", delimiter=",")
    assert code == code2 == 0 and np.allclose(rows, load_dataset("moons", split="test").data.numpy(), atol=1e-4)


def test_train_on_an_array_file(tmp_path: Path, capsys):
    ds = load_dataset("digits")
    images = (ds.data.numpy().astype(np.int64) * 255 // 16).astype(np.uint8).transpose(0, 2, 3, 1)  # NHWC
    np.savez(tmp_path / "x.npz", images=images, labels=ds.labels.numpy())
    code, text = run_cli(capsys, "train", "--data", "array", "--data-dir", tmp_path / "x.npz", "--out",
                         tmp_path / "run", *TINY_FLAGS, "--iters", "2", "--conditional")  # fmt: skip
    assert code == 0 and "array: 1350 train / 150 test images, 1x8x8, 256 grey levels" in text
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"] == "array" and config["conditional"] is True


def test_every_model_source_is_a_run(capsys, tmp_path: Path):
    """RUN may be any model source glowflow.load takes: the shipped glowflow/digits scores as the same model loaded
    in memory (the same computation on the same weights and noise seed: float round-off at most)."""
    code, out = run_cli(capsys, "score", "glowflow/digits", "digits:test[:40]", "--out", tmp_path / "s.csv",
                        "--no-progress")  # fmt: skip
    assert code == 0 and "(step 800)" in out
    with open(tmp_path / "s.csv", newline="") as f:
        bpd = np.array([float(row["bpd"]) for row in csv.DictReader(f)])
    in_memory = glowflow.score(glowflow.load("glowflow/digits"), "digits:test[:40]")
    assert len(bpd) == 40 and np.allclose(bpd, np.asarray(in_memory.bpd), rtol=0, atol=1e-5)  # CSV: 6 decimals


def test_a_pretrained_model_writes_into_the_current_directory(capsys, tmp_path: Path, monkeypatch):
    """A shipped model has no run directory (it lives in the installed package): score's and ood's outputs go to
    the current directory unless --out / --save say otherwise."""
    monkeypatch.chdir(tmp_path)
    code, out = run_cli(capsys, "score", "glowflow/digits", "digits:test[:20]", "--no-progress")
    assert code == 0 and "wrote scores.csv" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv", "scores.json", "scores_hist.png"]
    code, out = run_cli(capsys, "ood", "glowflow/digits", "--in", "digits:test[:60]", "--out", "digits:train[:30]",
                        "--no-progress")  # fmt: skip
    assert code == 0 and (tmp_path / "ood").is_dir() and any((tmp_path / "ood").iterdir())
