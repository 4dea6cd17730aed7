"""precision="auto": bf16 conditioners where the device computes bf16 natively, float32 elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from glowflow.training import TrainConfig, devices, train
from tests.training.train_helpers import TINY, TINY_TOY

pytestmark = pytest.mark.filterwarnings("ignore:precision='bf16' on a CPU:RuntimeWarning")

CPU = torch.device("cpu")


def test_native_bf16_on_cpu_is_onednn_s_answer():
    assert devices.native_bf16(CPU) is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_follows_the_hardware(monkeypatch, native, expected):
    monkeypatch.setattr(devices, "native_bf16", lambda device: native)
    assert devices.resolve_precision("auto", CPU) == expected
    assert devices.resolve_precision("fp32", CPU) == "fp32" and devices.resolve_precision("bf16", CPU) == "bf16"


def test_auto_is_a_config_choice_and_bad_names_are_refused():
    assert TrainConfig(precision="auto").validate().precision == "auto"
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16").validate()


@pytest.mark.parametrize("native", [True, False])
def test_a_run_with_auto_builds_the_resolved_model(tmp_path: Path, monkeypatch, native):
    monkeypatch.setattr(devices, "native_bf16", lambda device: native)
    result = train(out=str(tmp_path / "run"), iters=2, precision="auto", **TINY)
    assert result.config.precision == "auto"  # the run keeps asking for auto (a resume re-resolves it)
    assert result.model.precision == ("bf16" if native else "fp32")
    assert result.model.config["precision"] == result.model.precision  # what the checkpoint rebuilds


def test_auto_is_the_training_default():
    assert TrainConfig().precision == "auto"


@pytest.mark.parametrize(("name", "is_image", "native", "expected"), [
    ("auto", True, True, "bf16"),
    ("auto", True, False, "fp32"),
    ("auto", False, True, "fp32"),  # tabular / toy models: the precision rule was measured on images
    ("bf16", False, False, "bf16"),
    ("fp32", True, True, "fp32"),
])  # fmt: skip
def test_model_precision_by_data_kind_and_hardware(monkeypatch, name, is_image, native, expected):
    from glowflow.training.model import model_precision

    monkeypatch.setattr(devices, "native_bf16", lambda device: native)
    assert model_precision(name, is_image, CPU) == expected


@pytest.mark.parametrize("native", [True, False])
def test_a_default_toy_run_trains_in_float32_and_model_for_data_resolves_auto(tmp_path: Path, monkeypatch, native):
    from glowflow.training import model_for_data, prepare_data

    monkeypatch.setattr(devices, "native_bf16", lambda device: native)
    result = train(out=str(tmp_path / "run"), iters=2, **TINY_TOY)
    assert result.config.precision == "auto" and result.model.precision == "fp32"
    cfg = TrainConfig(**TINY)  # the digits preset's model, precision left at its default
    assert model_for_data(cfg, prepare_data(cfg)).precision == ("bf16" if native else "fp32")
