"""``glowflow.sharing.export_run``: the pretrained directory of a run (card, config.json sections, test figures and
which evaluation measured them, the check subset, graphs), built whole or not at all; and the training command
rebuilt from a configuration."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import pytest
import safetensors.torch
import torch

import glowflow
from glowflow import TabularGlow
from glowflow.cli import build_parser, main
from glowflow.runs import checkpoint_metrics, evaluate_run, open_run
from glowflow.sharing import export_run
from glowflow.training.config import FIELD_NAMES, TrainConfig, command_line, resolve_config
from glowflow.training.evaluate import EVAL_SEED, evaluate
from tests.helpers import one_thread
from tests.training.train_helpers import TINY_FLAGS

FILES = ["README.md", "config.json", "model.safetensors"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A class-conditional digits run of 4 steps."""
    out = tmp_path_factory.mktemp("sharing") / "digits"
    with one_thread():  # module fixtures run before the autouse one
        assert main(["train", "--out", str(out), *TINY_FLAGS, "--iters", "4", "--conditional"]) == 0
    return out


def test_export_of_a_run(run_dir, tmp_path):
    run = open_run(run_dir, "cpu")
    result = export_run(run, tmp_path / "glow-digits", command="glowflow export RUN glow-digits", note="On a CPU. ")
    directory = tmp_path / "glow-digits"
    assert result["files"] == FILES and result["directory"] == str(directory)
    assert oct(directory.stat().st_mode & 0o777) != "0o700"  # the usual permissions, not a private temp folder
    config = json.loads((directory / "config.json").read_text())
    assert config["training"] == run.config.to_dict()
    assert config["data"] == {k: v for k, v in run.data.items() if k != "test_note"}  # the run's eval subset
    assert config["data"]["class_names"] == [str(i) for i in range(10)]
    best = run.checkpoint["best"]
    wall = round(run.checkpoint["progress"]["elapsed"])
    on = "all 297 test images, 1 noise draw each"
    assert config["metrics"] == {"test_bpd": best["test_bpd"], "evaluated_on": on, "step": 4, "wall_time_s": wall}
    card = (directory / "README.md").read_text()
    command = result["training_command"]
    assert command.startswith("glowflow train ")
    assert f"```\n{command}\n```" in card and "--conditional" in command and "--iters 4" in command
    assert (
        "On a CPU.\n\nThe weights of the run's checkpoint `best.pt` (step 4), exported with "
        "`glowflow export RUN glow-digits`." in card
    )
    assert "Test figures: the run's best test evaluation, at step 4 (these weights)." in card
    assert f"| Test bits/dim | {best['test_bpd']:.4f} |" in card and "| Steps trained | 4 |" in card
    assert 'glowflow.load("glow-digits")' in card and 'Glow.from_pretrained("glow-digits")' in card
    x, y = torch.rand(3, 1, 8, 8) - 0.5, torch.tensor([1, 5, 9])
    with torch.no_grad():
        assert torch.equal(glowflow.load(directory).log_prob(x, y), run.model.log_prob(x, y))


def test_measure_and_check_subset(run_dir, tmp_path):
    run = open_run(run_dir, "cpu")
    result = export_run(run, tmp_path / "m", measure_samples=2, check_size=12, seed=5)
    directory = tmp_path / "m"
    assert result["files"] == sorted([*FILES, "check.json", "check.safetensors"])
    metrics = json.loads((directory / "config.json").read_text())["metrics"]
    assert list(metrics)[:2] == ["test_bpd", "evaluated_on"]
    assert metrics["evaluated_on"] == "all 297 test images, 2 noise draws each"
    # the same computation as glowflow eval with the same noise seed: equal
    assert metrics["test_bpd"] == evaluate_run(run, "test", 2, seed=EVAL_SEED, save=False)["bpd"]
    check = json.loads((directory / "check.json").read_text())
    assert len(check["indices"]) == 12 and check["indices"] == sorted(check["indices"])
    assert check["selection_seed"] == 5 and check["n_samples"] == 1 and check["noise_seed"] == EVAL_SEED  # the run's
    inputs = safetensors.torch.load_file(directory / "check.safetensors")
    data = run.load_data()
    x, y = data.test.get(check["indices"])
    assert torch.equal(inputs["x"], x) and inputs["x"].dtype == torch.uint8
    assert torch.equal(inputs["y"], y)
    rescored = evaluate(glowflow.load(directory), inputs["x"], inputs["y"], 1, seed=EVAL_SEED)["bpd"]
    assert rescored == check["check_bpd"] == metrics["check_bpd"]
    card = (directory / "README.md").read_text()
    assert "Test figures: measured when exported." in card and "- `check.json`: the check subset: 12" in card
    again = export_run(open_run(directory, "cpu"), tmp_path / "again")  # a pretrained source: figures carried over
    carried = json.loads((tmp_path / "again" / "config.json").read_text())["metrics"]
    assert again["files"] == FILES and "check_bpd" not in carried  # no check subset written this time
    assert carried == {k: v for k, v in metrics.items() if k != "check_bpd"}
    assert "The weights of the pretrained model" in (tmp_path / "again" / "README.md").read_text()


def test_a_failed_export_leaves_nothing_that_loads(run_dir, tmp_path, monkeypatch):
    run = open_run(run_dir, "cpu")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("glowflow.sharing.save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        export_run(run, tmp_path / "out", check_size=4)  # after check.json was written into the partial directory
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / "empty").mkdir()
    assert export_run(run, tmp_path / "empty")["files"] == FILES  # an existing empty directory is filled
    with pytest.raises(ValueError, match="empty is a directory that is not empty; export into a new"):
        export_run(run, tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="file is a file"):
        export_run(run, tmp_path / "file")
    with pytest.raises(ValueError, match="unknown export format"):
        export_run(run, tmp_path / "o", formats=["tflite"])
    with pytest.raises(ValueError, match="noise draws must be >= 1"):
        export_run(run, tmp_path / "o", measure_samples=0)
    with pytest.raises(ValueError, match="check subset size must be an integer >= 0"):
        export_run(run, tmp_path / "o", check_size=-1)
    with pytest.raises(ValueError, match=r"check subset \(1000\) is larger than the test split \(297"):
        export_run(run, tmp_path / "o", check_size=1000)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install 'glowflow\[onnx\]'"):
        export_run(run, tmp_path / "o", formats=["onnx"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file"]


@pytest.fixture
def tabular_source(tmp_path) -> Path:
    """A small fitted TabularGlow saved with a moons training configuration: a source without a training run."""
    model = TabularGlow(2, steps=1, hidden=4)
    model.standardize.fit(torch.randn(64, 2) * 3 + 1)
    model.log_prob(torch.randn(16, 2))
    training = resolve_config(None, data="moons").to_dict()
    return model.save_pretrained(tmp_path / "source", data={"name": "moons"}, training=training)


def test_graphs(tabular_source, tmp_path, monkeypatch):
    run = open_run(tabular_source, "cpu")
    result = export_run(run, tmp_path / "g", formats=["pt2"], methods=["log_prob"])
    directory = tmp_path / "g"
    assert result["files"] == sorted([*FILES, "log_prob.pt2", "pt2.json"])
    x = torch.randn(5, 2)
    with torch.no_grad():
        eager = run.model.log_prob(x)
    program = torch.export.load(directory / "log_prob.pt2").module()
    torch.testing.assert_close(program(x), eager, rtol=1e-6, atol=1e-6)  # the same ATen kernels (tests/test_export.py)
    assert "- `pt2.json`: describes the torch.export programs `log_prob.pt2`" in (directory / "README.md").read_text()

    calls = []  # ONNX export itself is tested in tests/test_export.py (and slow); here: what export_run asks of it

    def export_onnx(model, folder, methods, report):
        calls.append((model, methods, report))
        (folder / "encode.onnx").write_bytes(b"graph")
        return {"methods": {"encode": {"file": "encode.onnx"}}}

    monkeypatch.setattr("glowflow.export.export_onnx", export_onnx)
    result = export_run(run, tmp_path / "o", formats=["onnx"], methods=["encode"], report=print)
    assert calls == [(run.model, ["encode"], print)] and "encode.onnx" in result["files"]
    assert "- `onnx.json`: describes the ONNX graphs `encode.onnx`" in (tmp_path / "o" / "README.md").read_text()


def test_checkpoint_metrics_say_which_weights_they_measure():
    config = TrainConfig(iters=100, eval_every=20)
    best = {"value": 2.0, "step": 40, "test_bpd": 2.0}
    progress = {"last": {"test_bpd": 2.5}}
    assert checkpoint_metrics({"step": 40, "best": best, "progress": progress}, config) == {"test_bpd": 2.0}
    assert checkpoint_metrics({"step": 60, "best": best, "progress": progress}, config) == {"test_bpd": 2.5}
    assert checkpoint_metrics({"step": 100, "best": best, "progress": progress}, config) == {"test_bpd": 2.5}
    assert checkpoint_metrics({"step": 70, "best": best, "progress": progress}, config) == {}  # between evaluations


@pytest.mark.parametrize(
    "values",
    [
        {},  # the README's glowflow train
        {"data": "mnist", "data_dir": "/data/mnist", "hidden": 128, "iters": 12000, "progress": False, "threads": 1},
        {"data": "moons", "temperatures": [0.5, 1.0], "grad_clip": None, "conditional": False},
        {"preset": "none", "lr": 5e-4, "eval_size": 300, "compile": True},
        {"preset": "toy", "data": "digits", "n_bits": 3, "pad": 12, "conditional": True},
        {"preset": "mnist", "data": "fashion-mnist", "data_dir": "dir with spaces", "seed": 7},
    ],
)
def test_the_training_command_rebuilds_the_configuration(values):
    config = resolve_config(None, **values, out="runs/x")
    command = command_line(config)
    assert command.startswith("glowflow train") and "--out" not in command
    args = build_parser().parse_args(shlex.split(command)[1:])
    overrides = {k: v for k, v in vars(args).items() if k in FIELD_NAMES}
    assert resolve_config(None, **overrides, out="runs/x") == config
    if not values:
        assert command == "glowflow train"


def test_no_training_command_for_arrays_in_memory():
    assert command_line(TrainConfig(data="memory")) is None
