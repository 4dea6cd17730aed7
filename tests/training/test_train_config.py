"""TrainConfig: layering (defaults < preset < config file < explicit), presets, files, validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glowflow.training.config import (
    FIELD_NAMES,
    PRESETS,
    TrainConfig,
    default_preset,
    load_config_file,
    resolve_config,
)


def test_defaults_are_the_digits_preset():
    cfg = resolve_config()
    assert cfg.data == "digits" and cfg.preset == "digits"
    for key, value in PRESETS["digits"].items():
        assert getattr(cfg, key) == value
    assert cfg.is_image


def test_layering_order(tmp_path: Path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"preset": "mnist", "hidden": 96, "lr": 5e-4}))
    cfg = resolve_config(f, lr=2e-4)
    assert cfg.data == "mnist"  # a named preset brings its data set
    assert cfg.steps == 16 and cfg.levels == 2  # from the preset
    assert cfg.hidden == 96  # the file beats the preset
    assert cfg.lr == 2e-4  # explicit beats the file
    assert cfg.preset == "mnist"
    # explicit preset beats the file's, explicit data beats the preset's
    cfg = resolve_config(f, preset="cifar10", data="digits")
    assert cfg.data == "digits" and cfg.steps == 32 and cfg.hidden == 96


def test_preset_follows_the_data():
    assert resolve_config(data="fashion-mnist").preset == "mnist"
    toy = resolve_config(data="2spirals")
    assert toy.preset == "toy" and toy.batch_size == 256 and not toy.is_image
    assert resolve_config(data="folder", data_dir="x").preset == "digits"
    assert resolve_config(data="cifar10", preset="none").hidden == TrainConfig().hidden
    assert default_preset("tabular") == "tabular"
    celeba = resolve_config(preset="celeba64", data_dir="faces")
    assert (celeba.data, celeba.levels, celeba.n_bits) == ("folder", 4, 5)


def test_toml_file(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text('data = "moons"\nsteps = 3\ngrad_clip = "none"\ntemperatures = [0.5, 1]\n')
    cfg = resolve_config(f)
    assert (cfg.data, cfg.steps, cfg.grad_clip, cfg.temperatures) == ("moons", 3, None, [0.5, 1])


def test_resolved_config_round_trips_through_json(tmp_path: Path):
    cfg = resolve_config(data="moons", iters=7)
    f = tmp_path / "config.json"
    f.write_text(json.dumps(cfg.to_dict()))
    assert resolve_config(f) == cfg  # RUN/config.json is a valid --config file
    assert set(cfg.to_dict()) == set(FIELD_NAMES)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hiden": 3}, "unknown config key 'hiden' \\(did you mean 'hidden'\\?\\)"),
        ({"levels": 0}, "'levels' must be >= 1"),
        ({"lr": -1.0}, "'lr' must be a positive number"),
        ({"coupling": "spline"}, "'coupling': unknown value 'spline'; expected one of affine, additive"),
        ({"steps": 2.5}, "'steps' expects an integer"),
        ({"compile": "yes"}, "'compile' expects true or false"),
        ({"data": "imagenet"}, "'data': unknown value 'imagenet'"),
        ({"preset": "huge"}, "unknown preset 'huge'"),
        ({"data": "moons", "n_bits": 5}, "'n_bits' applies to image data only; 'moons' is a 2-D toy density"),
        ({"device": "tpu"}, "'device' must be cpu, cuda, cuda:N or auto"),
        ({"temperatures": []}, "'temperatures' must be a non-empty list"),
        ({"n_bits": 9}, "'n_bits' must lie in 1..8"),
        ({"threads": 0}, "'threads' must be >= 1 or none"),
        ({"workers": -1}, "'workers' must be >= 0"),
        ({"input": "disk"}, "'input': unknown value 'disk'; expected one of auto, memory, stream"),
        ({"data": "folder", "fit": "stretch"}, "'fit': unknown value 'stretch'; expected one of exact, center-crop"),
        ({"data": "folder", "image_size": 0}, "'image_size' must be >= 1 or none"),
        ({"image_size": 16}, "'image_size' applies to image folders and tar shards; 'digits' images have one size"),
        ({"data": "imagenet32", "fit": "resize"}, "'fit' applies to image folders and tar shards; 'imagenet32'"),
        ({"data": "mnist", "on_error": "skip"}, "'on_error' applies to data read from image files batch by batch"),
    ],
)
def test_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(**kwargs)


def test_bad_files(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="config file .*nope.json not found"):
        load_config_file(tmp_path / "nope.json")
    (tmp_path / "a.yaml").write_text("x: 1")
    with pytest.raises(ValueError, match="expected a .json or .toml file"):
        load_config_file(tmp_path / "a.yaml")
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_config_file(tmp_path / "b.json")
    (tmp_path / "c.json").write_text('{"iters": 3, "batchsize": 4}')
    with pytest.raises(ValueError, match=r"c.json: unknown config key 'batchsize' \(did you mean 'batch_size'"):
        load_config_file(tmp_path / "c.json")
    (tmp_path / "d.toml").write_text("iters = [")
    with pytest.raises(ValueError, match="is not valid TOML"):
        load_config_file(tmp_path / "d.toml")
    (tmp_path / "e.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold one object"):
        load_config_file(tmp_path / "e.json")
