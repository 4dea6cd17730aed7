"""glowflow.train end to end on tiny settings: the run directory, metrics, learning, tabular units, and exact
resumption (N steps == N/2 steps + resume to N)."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch

import glowflow
from glowflow.errors import CheckpointError
from glowflow.training import TrainConfig, load_checkpoint, load_model, read_metrics, save_checkpoint, train
from glowflow.training.data import prepare_data
from tests.training.train_helpers import TINY, TINY_TOY, max_diff, params, tiny

TIMING_KEYS = ("time", "examples_per_s")


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_run_directory_and_metrics(tmp_path: Path):
    out = tmp_path / "run"
    result = glowflow.train(out=str(out), iters=8, **TINY)  # the lazy top-level export
    assert result.step == 8 and result.stopped_by is None and result.run_dir == out
    config = json.loads((out / "config.json").read_text())
    assert config == result.config.to_dict() and config["iters"] == 8 and config["preset"] == "digits"
    assert TrainConfig(**config) == result.config
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 2, 4, 6, 8]
    assert all("loss" in r for r in records)
    assert [r["step"] for r in records if "test_bpd" in r] == [0, 4, 8]
    assert records[-1]["test_bpd"] == pytest.approx(result.metrics["test_bpd"])
    assert records[0]["test_bpd"] == pytest.approx(result.untrained["test_bpd"])
    assert records[-1]["lr"] == pytest.approx(result.config.lr) and records[-1]["skipped"] == 0
    assert records[-1]["examples_per_s"] > 0 and records[-1]["grad_norm"] > 0
    for name in ("samples.png", "curve.png", "samples/step_000008.png", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporary files
    model, ckpt, path = load_model(out)
    assert path == out / "checkpoints" / "best.pt" and ckpt["step"] == result.best["step"]
    assert ckpt["best"]["value"] == pytest.approx(min(r["test_bpd"] for r in records if "test_bpd" in r))
    assert model.is_initialized and model.num_bins == 17


def test_samples_that_overflow_are_reported_and_the_run_goes_on(tmp_path: Path, capsys):
    """Sampling at a temperature whose latents overflow float32 (NonFiniteError): each sampling step says so in one
    line, writes no picture, and the run ends as usual; the closing list of outputs names only what was written."""
    out = tmp_path / "run"
    result = train(out=str(out), **tiny(iters=4, sample_every=2, temperatures=[1e300]))
    assert result.step == 4 and result.stopped_by is None
    said = capsys.readouterr().out
    for step in (2, 4):
        assert f"step {step}: could not draw samples (NonFiniteError: sampling at temperature 1e+300" in said
    assert not (out / "samples.png").exists() and (out / "checkpoints" / "last.pt").is_file()
    assert f"outputs: {out}/curve.png, metrics.jsonl, checkpoints/" in said


def test_training_learns(tmp_path: Path):
    result = train(out=str(tmp_path / "r"), **tiny(iters=60, lr=3e-3, eval_every=60, checkpoint_every=0, log_every=20))
    # measured: 4.63 untrained -> 3.78 bits/dim after 60 steps
    assert result.metrics["test_bpd"] < result.untrained["test_bpd"] - 0.5


def test_resume_continues_exactly(tmp_path: Path):
    full = train(out=str(tmp_path / "full"), iters=8, **TINY)
    half_dir = tmp_path / "half"
    half = train(out=str(half_dir), iters=4, **TINY)
    assert half.step == 4
    # a line written after the checkpoint (a crash between logging and saving) must not survive the resume
    with open(half_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 6, "loss": 99.0}) + "\n")
    # the training time adds up over resumes from the time the checkpoint holds (set to 1000 s here, to see it)
    ckpt = load_checkpoint(half_dir / "checkpoints" / "last.pt")
    assert 0 < ckpt["progress"]["elapsed"] <= half.elapsed
    ckpt["progress"]["elapsed"] = 1000.0
    save_checkpoint(ckpt, half_dir / "checkpoints" / "last.pt")
    start = time.perf_counter()
    resumed = train(out=str(half_dir), resume=True, iters=8)
    assert 1000.0 < resumed.elapsed <= 1000.0 + (time.perf_counter() - start)
    assert resumed.step == 8
    # The checkpoint restores parameters, Adam moments, RNG streams and batch order bit for bit, and the resumed
    # steps run the same code path (training never uses the no-grad W^-1 cache): 0 on CPU (measured). The bound
    # only admits run-to-run nondeterministic kernels, as on a CUDA machine (device="auto").
    assert max_diff(params(full.model), params(resumed.model)) <= 1e-6
    a = _without_timing(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    b = _without_timing(read_metrics(half_dir / "metrics.jsonl"))
    assert [r["step"] for r in b] == [0, 2, 4, 6, 8]  # no duplicated or missing steps
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=1e-6, abs=1e-6), (ra["step"], k)
    assert resumed.untrained == pytest.approx(full.untrained)


def test_cosine_schedule_logs_its_rates_and_resumes_exactly_after_a_crash(tmp_path: Path):
    """``lr_schedule="cosine"`` over ``iters``: the logged rates follow ``schedule_factor``, and a run that stopped
    with an error after its step-4 checkpoint, resumed with the same ``iters``, ends where an uninterrupted one does."""
    from glowflow.training.optim import schedule_factor

    cfg = tiny(iters=8, lr_schedule="cosine", lr=4e-3)
    full = train(out=str(tmp_path / "full"), **cfg)
    rates = {r["step"]: r["lr"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if r["step"] > 0}
    assert rates == pytest.approx({t: 4e-3 * schedule_factor(t, 2, "cosine", 8) for t in (2, 4, 6, 8)})

    def crash(step, loss):
        if step == 6:
            raise RuntimeError("simulated crash")
        return loss

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(out=str(tmp_path / "crashed"), loss_hook=crash, **cfg)
    resumed = train(out=str(tmp_path / "crashed"), resume=True)
    assert resumed.step == 8 and resumed.config.lr_schedule == "cosine"
    assert max_diff(params(full.model), params(resumed.model)) <= 1e-6  # as in test_resume_continues_exactly


def test_resume_toy_and_extend(tmp_path: Path):
    full = train(out=str(tmp_path / "full"), iters=8, **TINY_TOY)
    train(out=str(tmp_path / "half"), iters=4, **TINY_TOY)
    resumed = train(out=str(tmp_path / "half"), resume=True, iters=8, eval_every=2)  # schedules may change
    assert max_diff(params(full.model), params(resumed.model)) <= 1e-6  # as in test_resume_continues_exactly
    config = json.loads((tmp_path / "half" / "config.json").read_text())
    assert config["iters"] == 8 and config["eval_every"] == 2


def test_resume_refusals(tmp_path: Path):
    out = tmp_path / "r"
    train(out=str(out), iters=2, **TINY)
    with pytest.raises(ValueError, match=r"already holds a training run .*pass --resume to continue it"):
        train(out=str(out), iters=2, **TINY)
    with pytest.raises(ValueError, match="hidden is 8 there and cannot change to 16"):
        train(out=str(out), resume=True, hidden=16)
    with pytest.raises(ValueError, match="--resume needs the run directory"):
        train(resume=True)
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        train(out=str(tmp_path / "nowhere"), resume=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        train(out=str(tmp_path / "empty"), resume=True)
    same = train(out=str(out), resume=True)  # already at --iters: nothing to do, nothing changes
    assert same.step == 2


def test_tabular_likelihood_in_original_units(tmp_path: Path):
    """The model owns its standardisation: the loaded model's log_prob of raw rows is what training reports."""
    result = train(out=str(tmp_path / "toy"), iters=4, **TINY_TOY)
    model, ckpt, _ = load_model(tmp_path / "toy", prefer="last")
    cfg = TrainConfig(**ckpt["config"])
    raw_test = prepare_data(cfg).test_x  # rows in their own units
    assert raw_test.abs().max() > 2  # (the moons are not standardised data)
    with torch.no_grad():
        nll = -model.log_prob(raw_test).double().mean().item()
    assert result.metrics["test_nll"] == pytest.approx(nll, rel=1e-5)
    assert result.metrics["test_bpd"] == pytest.approx(nll / (2 * math.log(2)), rel=1e-6)
    std = model.standardize.std
    assert torch.allclose(std, prepare_data(cfg).train_x.double().std(0).float(), rtol=1e-5)
    records = read_metrics(tmp_path / "toy" / "metrics.jsonl")
    assert "test_nll" in records[-1] and "test_bpd" in records[-1]
    assert (tmp_path / "toy" / "samples.png").is_file()  # density map + samples


def test_conditional_needs_labels(tmp_path: Path):
    with pytest.raises(ValueError, match="--conditional needs class labels, and the 'moons' data set has none"):
        train(out=str(tmp_path / "c"), iters=1, conditional=True, **TINY_TOY)


def test_n_bits_needs_8_bit_data(tmp_path: Path):
    with pytest.raises(ValueError, match="--n-bits reduces 8-bit images .* digits has 17 levels"):
        train(out=str(tmp_path / "c"), iters=1, n_bits=5, **TINY)


def test_eval_on_a_fixed_subset(tmp_path: Path):
    result = train(out=str(tmp_path / "s"), iters=2, eval_size=50, **TINY)
    _, ckpt, _ = load_model(tmp_path / "s")
    assert ckpt["data"]["test_note"] == "a fixed random subset of 50 of the 297 test images"
    assert "test_bpd" in result.metrics


@pytest.mark.filterwarnings("ignore:precision='bf16' on a CPU")
def test_bf16_precision(tmp_path: Path):
    fp32 = train(out=str(tmp_path / "fp32"), iters=4, **TINY)
    bf16 = train(out=str(tmp_path / "bf16"), iters=4, precision="bf16", **TINY)
    assert bf16.model.precision == "bf16" and bf16.config.precision == "bf16"
    # bf16 conditioners, fp32 invertible path: the same likelihood to a few hundredths of a bit per dimension
    assert bf16.metrics["test_bpd"] == pytest.approx(fp32.metrics["test_bpd"], abs=0.03)


def test_tensorboard(tmp_path: Path):
    pytest.importorskip("tensorboard", reason="the 'tensorboard' extra: pip install 'glowflow[tensorboard]'")
    train(out=str(tmp_path / "tb"), iters=2, tensorboard=True, **TINY)
    assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))


def test_tensorboard_missing_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(ImportError, match=r"--tensorboard needs the tensorboard package: pip install 'glowflow\["):
        train(out=str(tmp_path / "tb"), iters=1, tensorboard=True, **TINY)


def test_threads_are_set_for_the_run_and_restored(tmp_path: Path):
    torch.set_num_threads(2)
    seen = []

    def hook(step: int, loss: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return loss

    train(out=str(tmp_path / "t"), iters=2, threads=1, loss_hook=hook, **TINY)
    assert seen == [1, 1] and torch.get_num_threads() == 2
