"""``glowflow.load`` and ``open_run`` over every kind of source: run directory, checkpoint file, pretrained-model
directory, shipped model name, Hugging Face Hub id (faked); and one clear error for each bad source."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import glowflow
from glowflow import CheckpointError, Glow, TabularGlow
from glowflow.cli import main
from glowflow.loading import resolve_source
from glowflow.models.pretrained import shipped_models
from glowflow.runs import open_run
from glowflow.sharing import export_run
from glowflow.training.config import TrainConfig
from tests.helpers import one_thread
from tests.training.train_helpers import TINY_FLAGS


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A class-conditional digits run and a moons run (4 steps each), and the pretrained directory of each."""
    root = tmp_path_factory.mktemp("sources")
    out = {"digits": root / "digits", "moons": root / "moons"}
    with one_thread():  # module fixtures run before the autouse one
        assert main(["train", "--out", str(out["digits"]), *TINY_FLAGS, "--iters", "4", "--conditional"]) == 0
        assert main(["train", "--data", "moons", "--out", str(out["moons"]), *TINY_FLAGS, "--iters", "4"]) == 0
        for name in ("digits", "moons"):
            out[f"{name}-pretrained"] = root / f"{name}-pretrained"
            export_run(open_run(out[name], "cpu"), out[f"{name}-pretrained"])
    return out


def score(model, x, y=None) -> torch.Tensor:
    with torch.no_grad():
        return model.log_prob(x, y)


def test_every_local_source_loads_the_same_model(runs):
    x, y = torch.rand(5, 1, 8, 8) - 0.5, torch.tensor([0, 3, 9, 2, 2])
    reference = glowflow.load(runs["digits"])  # checkpoints/best.pt
    assert isinstance(reference, Glow) and not reference.training and reference.is_initialized
    assert reference.class_names == [str(i) for i in range(10)]  # the units travel in the model
    assert reference.config["preprocessing"]["raw_bins"] == 17
    expected = score(reference, x, y)
    for source in (runs["digits"] / "checkpoints" / "best.pt", runs["digits-pretrained"],
                   str(runs["digits-pretrained"])):  # fmt: skip
        model = glowflow.load(source)
        assert model.config == reference.config
        assert torch.equal(score(model, x, y), expected), source  # the same weights, the same computation
    best = torch.load(runs["digits"] / "checkpoints" / "best.pt", weights_only=True)
    last = torch.load(runs["digits"] / "checkpoints" / "last.pt", weights_only=True)
    model = glowflow.load(runs["digits"], checkpoint="last")
    assert best["step"] == last["step"] == 4  # the last evaluation was the best: both hold the same weights
    assert torch.equal(score(model, x, y), expected)

    rows = torch.randn(6, 2)
    tabular = glowflow.load(runs["moons-pretrained"])
    assert isinstance(tabular, TabularGlow)
    run_model = glowflow.load(runs["moons"])
    assert torch.equal(tabular.standardize.mean, run_model.standardize.mean)
    assert not torch.equal(tabular.standardize.std, torch.ones(2))  # fitted to the moons, not the identity
    assert torch.equal(score(tabular, rows), score(run_model, rows))


def test_sources_are_told_apart(runs):
    assert resolve_source(runs["digits"]).kind == "checkpoint"
    assert resolve_source(runs["digits"]).path.name == "best.pt"
    assert resolve_source(runs["digits"], "last").path.name == "last.pt"
    assert resolve_source(runs["digits-pretrained"]).kind == "pretrained"
    for name in shipped_models():
        found = resolve_source(f"glowflow/{name}")
        assert found.kind == "pretrained" and found.path == Path(glowflow.__file__).parent / "weights" / name
    assert {"digits", "moons", "mnist"} <= set(shipped_models())


def test_open_run_of_a_pretrained_directory(runs):
    run = open_run(runs["digits-pretrained"], "cpu")
    from_run = open_run(runs["digits"], "cpu")
    assert run.kind == "pretrained" and run.run_dir is None and run.output_dir == Path(".")
    assert run.checkpoint == {} and run.path == runs["digits-pretrained"]
    assert run.config == from_run.config and isinstance(run.config, TrainConfig)
    assert run.class_names == from_run.class_names == [str(i) for i in range(10)]
    assert run.is_image and run.num_bins == 17 and run.step == 4
    assert run.metrics["test_bpd"] == pytest.approx(from_run.metrics["test_bpd"], rel=0, abs=0)
    assert run.data == {k: v for k, v in from_run.data.items() if k != "test_note"}  # the run's eval subset
    assert run.metrics["evaluated_on"] == "all 297 test images, 1 noise draw each"
    data = run.load_data(eval_size=10)
    x, y = data.test.get(data.eval_indices)
    assert x.shape == (10, 1, 8, 8) and data.conditional and y is not None  # conditional: labels come along


def test_open_run_of_a_directory_saved_without_training_configuration(tmp_path):
    model = TabularGlow(2, steps=1, hidden=4)
    model.log_prob(torch.randn(8, 2))
    model.save_pretrained(tmp_path / "bare")
    run = open_run(tmp_path / "bare", "cpu")
    assert run.config is None and run.data == {} and run.step is None and run.metrics == {}
    assert run.data_name == "unknown data" and run.class_names is None
    with pytest.raises(ValueError, match="records no training configuration, so its data set is unknown"):
        run.load_data()


def test_hub_id(runs, tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.chdir(tmp_path)  # no local directory named like the id

    def fake_download(repo_id, filename, revision=None, token=None, local_files_only=False):
        assert repo_id == "someone/glow-digits"
        return str(runs["digits-pretrained"] / filename)

    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    found = resolve_source("someone/glow-digits")
    assert found.kind == "pretrained" and found.path == runs["digits-pretrained"]
    x, y = torch.rand(3, 1, 8, 8) - 0.5, torch.tensor([1, 2, 3])
    assert torch.equal(score(glowflow.load("someone/glow-digits"), x, y), score(glowflow.load(runs["digits"]), x, y))
    assert open_run("someone/glow-digits", "cpu").source == "someone/glow-digits"


def test_hub_id_offline_or_without_the_extra(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if importlib.util.find_spec("huggingface_hub") is not None:  # offline: only the (empty) cache is looked in
        with pytest.raises(CheckpointError, match="'nobody/no-model' is not a local directory, and fetching it"):
            resolve_source("nobody/no-model", local_files_only=True)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r"needs huggingface_hub: pip install 'glowflow\[hub\]'"):
        glowflow.load("nobody/no-model")


def test_bad_sources_are_one_clear_error(runs, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such run directory or checkpoint file"):
        glowflow.load(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"no shipped model 'glowflow/cifar'; the shipped models are glowflow/"):
        glowflow.load("glowflow/cifar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        glowflow.load(tmp_path / "empty")
    copied = tmp_path / "config-only"  # a run directory's config.json without its checkpoints
    copied.mkdir()
    (copied / "config.json").write_text((runs["digits"] / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        glowflow.load(copied)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        glowflow.load(broken)
    for bad in (None, "", 3):
        with pytest.raises(ValueError, match="expected a run directory"):
            glowflow.load(bad)
    with pytest.raises(ValueError, match="checkpoint must be one of best, last"):
        glowflow.load(runs["digits"], checkpoint="first")
    edited = tmp_path / "edited"
    edited.mkdir()
    for f in runs["digits-pretrained"].iterdir():
        (edited / f.name).write_bytes(f.read_bytes())
    config = json.loads((edited / "config.json").read_text())
    config["training"]["iters"] = 0
    (edited / "config.json").write_text(json.dumps(config))
    assert isinstance(glowflow.load(edited), Glow)  # the model does not need the training section
    with pytest.raises(CheckpointError, match="training section is not a glowflow training configuration.*iters"):
        open_run(edited, "cpu")
