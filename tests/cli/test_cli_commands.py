"""The ``glowflow`` command end to end on tiny runs: train, eval, sample, interpolate, manipulate, info, --help,
and one-line errors (exit code 2, no traceback) for bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glowflow.cli import main
from glowflow.training import read_metrics
from tests.helpers import one_thread
from tests.training.train_helpers import TINY_FLAGS, python, subprocess_env

COMMANDS = ("train", "eval", "sample", "interpolate", "manipulate", "info")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(capsys, *args: str) -> str:
    """Run a command that must fail: exit code 2, exactly one line on stderr, no traceback."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A class-conditional digits run, an unconditional one with variational dequantization, and a moons run,
    trained through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    out = {"digits": root / "digits", "moons": root / "moons", "plain": root / "plain"}
    with one_thread():  # (module fixtures run before the function-level one of conftest.py)
        assert main(["train", "--out", str(out["digits"]), *TINY_FLAGS, "--iters", "4", "--conditional"]) == 0
        assert main(["train", "--out", str(out["plain"]), *TINY_FLAGS, "--iters", "2",
                     "--dequantization", "variational", "--memory", "invertible"]) == 0  # fmt: skip
        assert main(["train", "--data", "moons", "--out", str(out["moons"]), *TINY_FLAGS, "--iters", "4"]) == 0
    return out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_examples(capsys, command: str):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"glowflow {command}" in text


def test_train_output(runs, tmp_path: Path, capsys):
    code, out, _ = run_cli(capsys, "train", "--out", tmp_path / "r", *TINY_FLAGS, "--iters", "2", "--seed", "3")
    assert code == 0
    assert "untrained: test bpd" in out and "bits/dim at 17 grey levels" in out
    assert "done: 2 steps" in out and "test bpd" in out
    assert json.loads((tmp_path / "r" / "config.json").read_text())["seed"] == 3
    assert [r["step"] for r in read_metrics(runs["digits"] / "metrics.jsonl")] == [0, 2, 4]


def test_eval(runs, capsys):
    code, out, _ = run_cli(capsys, "eval", runs["digits"], "--n-samples", "2", "--importance-weighted")
    assert code == 0 and "digits test split (all 297 images)" in out and "bits/dim" in out
    saved = json.loads((runs["digits"] / "eval_test.json").read_text())
    assert saved["n_samples"] == 2 and saved["examples"] == 297 and saved["num_bins"] == 17
    assert 1.0 < saved["bpd_importance_weighted"] <= saved["bpd"] + 1e-9 < 6.0
    code, out, _ = run_cli(capsys, "eval", runs["digits"], "--split", "train", "--limit", "50", "--n-samples", "1")
    assert code == 0 and "train split (50 of 1500 images)" in out
    assert json.loads((runs["digits"] / "eval_train.json").read_text())["examples"] == 50
    code, out, _ = run_cli(capsys, "eval", runs["plain"], "--n-samples", "2")  # variational: always both
    assert code == 0 and "importance-weighted over 2 draws" in out
    saved = json.loads((runs["plain"] / "eval_test.json").read_text())
    assert saved["bpd_importance_weighted"] <= saved["bpd"] + 1e-9
    code, out, _ = run_cli(capsys, "eval", runs["moons"])
    assert code == 0 and "NLL" in out and "nats" in out
    assert "nll" in json.loads((runs["moons"] / "eval_test.json").read_text())


def test_sample(runs, tmp_path: Path, capsys):
    png = tmp_path / "s.png"
    code, out, _ = run_cli(capsys, "sample", runs["digits"], "--n", "20", "--temperature", "0.5", "--label", "3",
                           "--out", png, "--npy")  # fmt: skip
    assert code == 0 and png.is_file() and f"wrote {png}" in out
    levels = np.load(png.with_suffix(".npy"))
    assert levels.shape == (20, 1, 8, 8) and levels.dtype == np.uint8 and levels.max() <= 16
    assert Image.open(png).mode == "RGB"
    code, _, _ = run_cli(capsys, "sample", runs["digits"])  # defaults: RUN/sample_T0.7.png, one class per column
    assert code == 0 and (runs["digits"] / "sample_T0.7.png").is_file()
    code, _, _ = run_cli(capsys, "sample", runs["moons"], "--n", "300", "--npy", "--out", tmp_path / "m.png")
    assert code == 0 and np.load(tmp_path / "m.npy").shape == (300, 2)
    line = error_line(capsys, "sample", runs["moons"], "--label", "1")
    assert line.startswith("glowflow sample: error: --label needs a class-conditional model")
    line = error_line(capsys, "sample", runs["digits"], "--label", "12")
    assert "label 12 out of range: the data has classes 0..9" in line


def test_interpolate(runs, tmp_path: Path, capsys):
    code, out, _ = run_cli(capsys, "interpolate", runs["digits"], "--pairs", "2", "--frames", "5",
                           "--out", tmp_path / "i.png")  # fmt: skip
    assert code == 0 and "test images" in out
    w, h = Image.open(tmp_path / "i.png").size
    assert w > h  # 5 frames wide, 2 pairs high
    code, out, _ = run_cli(capsys, "interpolate", runs["plain"], "--index", "3", "17", "--out", tmp_path / "j.png")
    assert code == 0 and "test images 3 -> 17" in out
    line = error_line(capsys, "interpolate", runs["digits"], "--index", "0", "100000")
    assert "--index 100000 out of range: the test split has 297 images" in line
    line = error_line(capsys, "interpolate", runs["moons"])
    assert "interpolate needs an image model" in line


def test_manipulate(runs, tmp_path: Path, capsys):
    out_png = tmp_path / "m.png"
    code, out, _ = run_cli(capsys, "manipulate", runs["digits"], "--from", "1", "--to", "7", "--n", "2",
                           "--max-per-class", "30", "--out", out_png)  # fmt: skip
    assert code == 0 and out_png.is_file() and "mean latent of 7 - mean latent of 1" in out
    code, _, _ = run_cli(capsys, "manipulate", runs["plain"], "--from", "0", "--to", "6", "--n", "1",
                         "--strengths", "0,1", "--max-per-class", "20")  # fmt: skip
    assert code == 0 and (runs["plain"] / "manipulate_0_to_6.png").is_file()
    line = error_line(capsys, "manipulate", runs["moons"], "--from", "0", "--to", "1")
    assert "manipulate needs an image model" in line
    line = error_line(capsys, "manipulate", runs["digits"], "--from", "1", "--to", "cat")
    assert "unknown class 'cat'; classes: 0, 1, 2" in line


def test_manipulate_without_labels(tmp_path: Path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    run = tmp_path / "run"
    assert main(["train", "--data", "folder", "--data-dir", str(folder), "--out", str(run), *TINY_FLAGS,
                 "--iters", "1"]) == 0  # fmt: skip
    capsys.readouterr()
    line = error_line(capsys, "manipulate", run, "--from", "0", "--to", "1")
    assert "manipulate needs class labels" in line and "'folder', which has none" in line


def test_info(runs, capsys):
    code, out, _ = run_cli(capsys, "info", runs["digits"])
    assert code == 0
    assert "Glow L=2 K=1 width 8" in out and "conditional on 10 classes" in out
    assert "trained:     4 of 4 steps" in out and "best" in out and "iters = 4" in out
    code, out, _ = run_cli(capsys, "info", runs["moons"] / "checkpoints" / "last.pt", "--json")
    info = json.loads(out)
    assert info["model_class"] == "TabularGlow" and info["step"] == 4 and info["parameters"] > 0
    assert info["wall_time_s"] > 0 and "test_nll" in info["last"]


def test_errors_are_one_line(runs, tmp_path: Path, capsys):
    line = error_line(capsys, "info", tmp_path / "nowhere")
    assert line == f"glowflow info: error: {tmp_path / 'nowhere'}: no such run directory or checkpoint file"
    bad = tmp_path / "bad.pt"
    bad.write_bytes((runs["digits"] / "checkpoints" / "last.pt").read_bytes()[:1000])
    line = error_line(capsys, "eval", bad)
    assert line == f"glowflow eval: error: {bad}: truncated or not a torch checkpoint file (no complete zip archive)"
    line = error_line(capsys, "train", "--preset", "huge")
    assert "argument --preset: invalid choice: 'huge'" in line and "(see glowflow train --help)" in line
    cfg = tmp_path / "c.json"
    cfg.write_text('{"hiden": 3}')
    line = error_line(capsys, "train", "--config", cfg, "--out", tmp_path / "x")
    assert line == f"glowflow train: error: config file {cfg}: unknown config key 'hiden' (did you mean 'hidden'?)"
    line = error_line(capsys, "train", "--data", "mnist", "--data-dir", tmp_path / "empty", "--out", tmp_path / "y")
    assert "train-images-idx3-ubyte.gz not found" in line and "--download" in line
    line = error_line(capsys, "train", "--out", runs["digits"], *TINY_FLAGS)
    assert "already holds a training run" in line and "--resume" in line
    line = error_line(capsys, "train", "--out", runs["digits"], "--resume", "--hidden", "32")
    assert "hidden is 8 there and cannot change to 32" in line
    line = error_line(capsys, "train", "--iters", "0", "--out", tmp_path / "z")
    assert line == "glowflow train: error: argument --iters: must be >= 1, got '0' (see glowflow train --help)"
    line = error_line(capsys)
    assert "the following arguments are required: COMMAND" in line


def test_console_entry_point(runs):
    """``python -m glowflow`` (what torchrun runs, and what the ``glowflow`` script calls) in a real process: exit
    code 2 and one line on stderr."""
    p = subprocess.run([python(), "-m", "glowflow", "eval", str(runs["moons"] / "missing.pt")], env=subprocess_env(),
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no such run directory or checkpoint file" in p.stderr
