"""Checkpoints: atomic writes, what they hold, weights_only loading, and a clear CheckpointError for every kind of
bad file (missing, empty, truncated, foreign, unsafe, newer, wrong model)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from glowflow import Glow, TabularGlow
from glowflow.errors import CheckpointError
from glowflow.training import load_checkpoint, load_model, save_checkpoint, train
from glowflow.training.checkpoint import (
    FORMAT,
    atomic_write_bytes,
    capture_rng_state,
    find_checkpoint,
    restore_rng_state,
)
from tests.helpers import one_thread
from tests.training.train_helpers import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "run"
    with one_thread():  # (module fixtures run before the function-level one of conftest.py)
        train(out=str(out), iters=2, **TINY)
    return out


def test_contents_load_with_weights_only(run: Path):
    path = run / "checkpoints" / "last.pt"
    raw = torch.load(path, weights_only=True)  # plain containers and tensors only
    assert raw["format"] == FORMAT and raw["version"] == 2 and raw["step"] == 2
    for key in ("config", "model", "optimizer", "scheduler", "rng", "guard", "best", "data", "progress"):
        assert key in raw, key
    assert raw["model_class"] == "Glow" and tuple(raw["model_config"]["in_shape"]) == (1, 8, 8)
    rng = raw["rng"]
    assert isinstance(rng["batch"], torch.Tensor) and rng["batch"].dtype == torch.uint8
    assert len(rng["ranks"]) == 1 and set(rng["ranks"][0]) == {"torch", "numpy", "python", "cuda"}
    assert raw["config"]["iters"] == 2 and isinstance(raw["config"], dict)
    assert raw["scheduler"]["last_epoch"] == 2 and raw["optimizer"]["state"]


def test_load_model_rebuilds_the_trained_model(run: Path):
    model, ckpt, path = load_model(run, prefer="last")
    assert isinstance(model, Glow) and not model.training and path.name == "last.pt"
    state = torch.load(path, weights_only=True)["model"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert find_checkpoint(path) == path
    with pytest.raises(FileNotFoundError, match="no such run directory or checkpoint file"):
        find_checkpoint(run / "nope")


def test_rng_state_round_trip():
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(state)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path: Path):
    target = tmp_path / "x.pt"
    save_checkpoint({"step": 1}, target)
    before = target.read_bytes()

    def explode(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, explode)
    assert target.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["x.pt"]
    mask = os.umask(0o022)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0o600


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


class _Foreign:
    pass


def test_bad_files_raise_checkpoint_error(run: Path, tmp_path: Path):
    good = (run / "checkpoints" / "last.pt").read_bytes()
    cases = {
        "missing.pt": (None, "no such checkpoint file"),
        "empty.pt": (b"", "the file is empty"),
        "truncated.pt": (good[: len(good) // 2], "truncated or not a torch checkpoint file"),
        "text.pt": (b"hello, I am not a checkpoint", "truncated or not a torch checkpoint file"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        if data is not None:
            _write(path, data)
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
        assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)

    bare = tmp_path / "bare.pt"
    torch.save(TabularGlow(2, steps=1, hidden=4).state_dict(), bare)
    with pytest.raises(CheckpointError, match=f"{bare}: not a glowflow checkpoint \\(no 'glowflow-checkpoint'"):
        load_checkpoint(bare)

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"format": FORMAT, "payload": _Foreign()}, unsafe)
    with pytest.raises(CheckpointError, match="holds Python objects other than tensors .*refusing to run code"):
        load_checkpoint(unsafe)

    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    newer = tmp_path / "newer.pt"
    torch.save({**ckpt, "version": 99}, newer)
    with pytest.raises(CheckpointError, match="format version 99 is newer than this glowflow reads"):
        load_checkpoint(newer)

    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in ckpt.items() if k != "model"}, partial)
    with pytest.raises(CheckpointError, match="incomplete glowflow checkpoint, missing model"):
        load_checkpoint(partial)


def test_wrong_model_weights(run: Path, tmp_path: Path):
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    other = Glow((1, 8, 8), levels=2, steps=1, hidden=16, num_bins=17)  # same architecture, wider conditioners
    wrong = tmp_path / "wrong.pt"
    torch.save({**ckpt, "model": other.state_dict()}, wrong)
    with pytest.raises(CheckpointError, match=f"{wrong}: the saved weights do not fit the model Glow: .*size mismatch"):
        load_model(wrong)
    torch.save({**ckpt, "model_config": {**ckpt["model_config"], "levels": 0}}, wrong)
    with pytest.raises(CheckpointError, match="cannot rebuild the model from its saved arguments"):
        load_model(wrong)
