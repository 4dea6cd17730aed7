"""Names moved in the refactor keep working for one release, with a DeprecationWarning naming the new home."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

import glowflow.runs
from glowflow.models import Glow
from glowflow.training import TrainConfig, build_model, model_for_data, prepare_data


def test_training_tools_is_an_alias_of_runs():
    sys.modules.pop("glowflow.training.tools", None)
    with pytest.warns(DeprecationWarning, match="glowflow.training.tools moved to glowflow.runs"):
        tools = importlib.import_module("glowflow.training.tools")
    assert tools.open_run is glowflow.runs.open_run
    assert set(glowflow.runs.__all__) <= set(dir(tools))


def test_training_build_model_is_model_for_data():
    cfg = TrainConfig(preset="digits", levels=1, steps=1, hidden=4)
    data = prepare_data(cfg)
    torch.manual_seed(0)
    new = model_for_data(cfg, data)
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning, match="now glowflow.training.model_for_data"):
        old = build_model(cfg, data)
    assert isinstance(old, Glow) and old.num_bins == new.num_bins == 17
    for (name, a), (_, b) in zip(new.state_dict().items(), old.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # the same construction run twice
