"""Pretrained-model directories: save -> load is bit-exact, and every damaged or foreign file is one clear error."""

import json
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from glowflow import CheckpointError, FlowModel, Glow, TabularGlow
from glowflow.models.pretrained import (
    ModelCard,
    from_pretrained,
    is_hub_id,
    is_pretrained_dir,
    load_pretrained_dir,
    read_config,
    save_pretrained,
)
from tests.helpers import randomize_

FILES = {"config.json", "model.safetensors", "README.md"}


def trained_glow(**kwargs) -> tuple[Glow, torch.Tensor, torch.Tensor]:
    """A small class-conditional Glow with variational dequantization (so the dequantizer's ActNorm layers and
    the label path travel too), initialised on data and perturbed away from its identity initialisation."""
    model = Glow((1, 8, 8), levels=2, steps=2, hidden=8, num_classes=3, dequantization="variational", **kwargs)
    x = torch.rand(4, 1, 8, 8) - 0.5
    y = torch.tensor([0, 1, 2, 0])
    model.bits_per_dim(torch.randint(0, 256, (4, 1, 8, 8)), y)  # initialises the bijection and the dequantizer
    return randomize_(model, 0.05), x, y


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert torch.equal(sa[name], sb[name]), name


def saved(tmp_path, model=None):
    model = model if model is not None else trained_glow()[0]
    return save_pretrained(model, tmp_path / "model", data={"name": "toy", "num_bins": 256})


def edit_config(directory, edit) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def test_glow_round_trip_is_bitwise(tmp_path):
    model, x, y = trained_glow(permutation="conv", mask="checkerboard")
    directory = model.save_pretrained(tmp_path / "glow", metrics={"test_bpd": 3.25})
    assert {p.name for p in directory.iterdir()} == FILES
    loaded = Glow.from_pretrained(directory)
    assert type(loaded) is Glow and not loaded.training and loaded.is_initialized
    assert loaded.config == model.config
    assert_same_state(loaded, model)
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(x, y), model.log_prob(x, y))
        torch.manual_seed(1)
        expected = model.bits_per_dim(torch.randint(0, 256, (4, 1, 8, 8)), y)
        torch.manual_seed(1)
        assert torch.equal(loaded.bits_per_dim(torch.randint(0, 256, (4, 1, 8, 8)), y), expected)


def test_tabular_float64_round_trip_keeps_dtype_and_bits(tmp_path):
    model = TabularGlow(5, steps=2, hidden=8, permutation="conv").double()
    x = torch.randn(6, 5, dtype=torch.float64)
    model.log_prob(x)
    randomize_(model, 0.05)
    loaded = FlowModel.from_pretrained(save_pretrained(model, tmp_path / "tab"))
    assert type(loaded) is TabularGlow
    assert_same_state(loaded, model)
    assert torch.equal(loaded.log_prob(x), model.log_prob(x))


def test_actnorm_state_travels(tmp_path):
    fresh = Glow((1, 4, 4), levels=1, steps=1, hidden=4)
    assert not Glow.from_pretrained(save_pretrained(fresh, tmp_path / "fresh")).is_initialized
    model, x, y = trained_glow()
    loaded = Glow.from_pretrained(saved(tmp_path, model))
    assert loaded.is_initialized
    # an initialised ActNorm keeps its loaded statistics on the next batch instead of re-initialising from it
    loaded.log_prob(x[:2] * 3, y[:2])
    assert_same_state(loaded, model)


def test_tuple_arguments_come_back_from_json_lists(tmp_path):
    model, x, y = trained_glow()
    directory = saved(tmp_path, model)
    assert json.loads((directory / "config.json").read_text())["model_config"]["in_shape"] == [1, 8, 8]
    config = read_config(directory)
    assert config["model_config"]["in_shape"] == (1, 8, 8)
    rebuilt = Glow(**config["model_config"])
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config == model.config
    assert torch.equal(rebuilt.log_prob(x, y), model.log_prob(x, y))


def test_config_sections_and_dispatch_helpers(tmp_path):
    model = TabularGlow(3, steps=1, hidden=4)
    model.log_prob(torch.randn(4, 3))
    data = {"name": "blobs", "mean": torch.tensor([0.5, 1.0, -2.0]), "std": [1.0, 2.0, 3.0], "class_names": None}
    directory = save_pretrained(model, tmp_path / "t", data=data, training={"lr": 1e-3, "steps": 10})
    loaded, config = load_pretrained_dir(directory)
    assert config["data"] == {"name": "blobs", "mean": [0.5, 1.0, -2.0], "std": [1.0, 2.0, 3.0], "class_names": None}
    assert config["training"] == {"lr": 1e-3, "steps": 10} and config["metrics"] is None
    assert is_pretrained_dir(directory) and not is_pretrained_dir(tmp_path)
    assert is_hub_id("someone/glow-mnist") and not is_hub_id("runs/a/b") and not is_hub_id("../x")


def test_model_card(tmp_path):
    model, _, _ = trained_glow()
    card = ModelCard(command="python -m glowflow train --preset mnist", license="mit")
    directory = model.save_pretrained(
        tmp_path / "glow-mnist", data={"name": "mnist"}, metrics={"test_bpd": 1.0525}, card=card
    )
    text = (directory / "README.md").read_text()
    assert text.startswith("---\nlibrary_name: glowflow\n")
    assert 'license: "mit"' in text.split("---")[1]
    assert "# Glow on mnist" in text
    assert "| Test bits/dim | 1.0525 |" in text
    assert f"| Parameters | {sum(p.numel() for p in model.parameters()):,} |" in text
    assert "python -m glowflow train --preset mnist" in text
    assert 'Glow.from_pretrained("glow-mnist")' in text
    assert "model.safetensors" in text and "config.json" in text


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.pop("model_class"), "missing field.*model_class"),
        (lambda c: c.update(format="transformers"), "not a glowflow pretrained model"),
        (lambda c: c.pop("format"), "no format field"),
        (lambda c: c.update(version=2), "version 2"),
        (lambda c: c.update(extra=1), "unknown field.*extra"),
        (lambda c: c.update(model_class="RealNVP"), "unknown model_class 'RealNVP'"),
        (lambda c: c.update(model_config=[1, 2]), "model_config must be a JSON object"),
        (lambda c: c.update(data="mnist"), "data must be a JSON object"),
        (lambda c: c["model_config"].pop("hidden"), r"lacks Glow argument\(s\) \['hidden'\]"),
        (lambda c: c["model_config"].update(depth=3), r"does not take: \['depth'\]"),
        (lambda c: c["model_config"].update(coupling="spline"), "does not build a Glow.*coupling"),
        (lambda c: c["model_config"].update(in_shape=[1, 8]), "does not build a Glow.*in_shape"),
        (lambda c: c["model_config"].update(levels="two"), "does not build a Glow"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, edit, message):
    directory = saved(tmp_path)
    edit_config(directory, edit)
    with pytest.raises(CheckpointError, match=message) as info:
        Glow.from_pretrained(directory)
    assert "config.json" in str(info.value)


def test_unreadable_or_missing_config(tmp_path):
    directory = saved(tmp_path)
    (directory / "config.json").write_text('{"format": "glowflow-pretrained",')
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        Glow.from_pretrained(directory)
    (directory / "config.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CheckpointError, match="not UTF-8"):
        Glow.from_pretrained(directory)
    (directory / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        Glow.from_pretrained(directory)
    (directory / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json in it"):
        Glow.from_pretrained(directory)
    with pytest.raises(CheckpointError, match="a file, not a directory"):
        Glow.from_pretrained(directory / "model.safetensors")
    with pytest.raises(CheckpointError, match="no such pretrained-model directory"):
        Glow.from_pretrained(tmp_path / "absent")


def test_config_describing_other_weights(tmp_path):
    directory = saved(tmp_path)
    edit_config(directory, lambda c: c["model_config"].update(steps=3))
    with pytest.raises(CheckpointError, match=r"model.safetensors: not the weights of the Glow.*missing"):
        Glow.from_pretrained(directory)
    edit_config(directory, lambda c: c["model_config"].update(steps=2, hidden=16))
    with pytest.raises(
        CheckpointError, match=r"model.safetensors: \S+ has shape \(8, 3\), the model expects \(16, 3\)"
    ):
        Glow.from_pretrained(directory)
    edit_config(directory, lambda c: c.update(model_class="Glow"))
    with pytest.raises(CheckpointError, match="holds a Glow, not a TabularGlow"):
        TabularGlow.from_pretrained(directory)


@pytest.mark.parametrize("cut", ["empty", "header", "half", "last byte"])
def test_truncated_weights(tmp_path, cut):
    directory = saved(tmp_path)
    path = directory / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "header": data[:6], "half": data[: len(data) // 2], "last byte": data[:-1]}[cut])
    with pytest.raises(CheckpointError, match="model.safetensors: truncated or not a safetensors file"):
        Glow.from_pretrained(directory)


def test_missing_corrupt_and_foreign_weights(tmp_path):
    directory = saved(tmp_path)
    path = directory / "model.safetensors"
    path.write_bytes(torch.zeros(64).numpy().tobytes())
    with pytest.raises(CheckpointError, match="model.safetensors: truncated or not a safetensors file"):
        Glow.from_pretrained(directory)
    safetensors.torch.save_file({"encoder.weight": torch.randn(4, 4), "encoder.bias": torch.zeros(4)}, path)
    with pytest.raises(
        CheckpointError, match=r"not the weights of the Glow.*missing, 2 \(encoder.bias, encoder.weight"
    ):
        Glow.from_pretrained(directory)
    tabular = TabularGlow(4, steps=1, hidden=4)
    save_pretrained(tabular, tmp_path / "tab")
    (tmp_path / "tab" / "model.safetensors").replace(path)
    with pytest.raises(CheckpointError, match="not the weights of the Glow"):
        Glow.from_pretrained(directory)
    model = trained_glow()[0]
    tensors = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("bijection.")}
    tensors["levels.0.layers.1.layers.0.layers.0.initialized"] = torch.tensor(1.0)
    safetensors.torch.save_file(tensors, path)
    with pytest.raises(CheckpointError, match="initialized is torch.float32, the model expects torch.bool"):
        Glow.from_pretrained(directory)
    path.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: no such weights file"):
        Glow.from_pretrained(directory)


def test_unsavable_sections_write_nothing(tmp_path):
    model = TabularGlow(3, steps=1, hidden=4)
    with pytest.raises(ValueError, match=r"metrics.test_nll is nan"):
        save_pretrained(model, tmp_path / "m", metrics={"test_nll": float("nan")})
    with pytest.raises(ValueError, match=r"data.loader is a object"):
        save_pretrained(model, tmp_path / "m", data={"loader": object()})
    with pytest.raises(ValueError, match="data must be a dict or None, got str"):
        save_pretrained(model, tmp_path / "m", data="mnist")
    with pytest.raises(ValueError, match="expected a glowflow model"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "m")
    assert not (tmp_path / "m").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        save_pretrained(model, tmp_path / "file")


def test_hub_id_without_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r"'someone/glow' is not a local directory.*pip install 'glowflow\[hub\]'"):
        Glow.from_pretrained("someone/glow")
    with pytest.raises(ImportError, match=r"glowflow\[hub\]"):
        TabularGlow(3, steps=1, hidden=4).push_to_hub("someone/glow")
    monkeypatch.chdir(tmp_path)  # a local directory of that name wins over the Hub id, and needs no extra
    save_pretrained(TabularGlow(3, steps=1, hidden=4), tmp_path / "someone" / "glow")
    assert isinstance(from_pretrained("someone/glow"), TabularGlow)
    with pytest.raises(CheckpointError, match="someone/glwo: no such pretrained-model directory"):
        from_pretrained("someone/glwo")  # a typo under a local directory is a local path, not a Hub id


def test_hub_id_offline_is_one_clear_error():
    pytest.importorskip("huggingface_hub")
    with pytest.raises(CheckpointError, match="'glowflow-tests/no-such-model' is not a local directory, and fetch"):
        Glow.from_pretrained("glowflow-tests/no-such-model", local_files_only=True)


def test_hub_download_and_push(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    model, x, y = trained_glow()
    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            uploaded["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            uploaded["created"] = (repo_id, private, exist_ok)

        def upload_folder(self, repo_id, folder_path, commit_message):
            remote = tmp_path / "remote" / repo_id
            remote.mkdir(parents=True)
            for path in Path(folder_path).iterdir():
                (remote / path.name).write_bytes(path.read_bytes())
            return type("CommitInfo", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})()

    def fake_download(repo_id, filename, revision=None, token=None, local_files_only=False):
        assert revision == "main" and token == "t0k"
        return str(tmp_path / "remote" / repo_id / filename)

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    url = model.push_to_hub("someone/glow-toy", metrics={"test_bpd": 2.5}, private=True, token="t0k")
    assert url == "https://hub.example/someone/glow-toy/commit/1"
    assert uploaded == {"token": "t0k", "created": ("someone/glow-toy", True, True)}
    remote = tmp_path / "remote" / "someone" / "glow-toy"
    assert {p.name for p in remote.iterdir()} == FILES
    assert 'Glow.from_pretrained("someone/glow-toy")' in (remote / "README.md").read_text()
    loaded = Glow.from_pretrained("someone/glow-toy", revision="main", token="t0k")
    assert_same_state(loaded, model)
    assert torch.equal(loaded.log_prob(x, y), model.log_prob(x, y))
