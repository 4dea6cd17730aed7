"""The fault guard, by injecting faults through ``train(loss_hook=...)``: a NaN loss, a NaN gradient and a
singular 1x1 convolution skip the step (nothing changes, the skip is logged); repeated faults roll back to the
last good checkpoint with a lower learning rate; too many rollbacks stop the run with a clear error.

The loop reads the steps back at its logging steps (every ``log_every`` = 2 steps here), so a rollback that became
due at step s happens at the first logging step >= s."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import glowflow.training.loop as loop
from glowflow.errors import SingularWeightError
from glowflow.training import FaultGuard, TrainingError, load_checkpoint, read_metrics, train
from tests.training.train_helpers import TINY, max_diff, params, tiny


@pytest.fixture
def models(monkeypatch: pytest.MonkeyPatch) -> list:
    """The models train() builds, so that hooks can look at their parameters."""
    built: list = []
    real = loop.model_for_data

    def record(cfg, data):
        built.append(real(cfg, data))
        return built[-1]

    monkeypatch.setattr(loop, "model_for_data", record)
    return built


def _events(out: Path) -> list[dict]:
    return [e for r in read_metrics(out / "metrics.jsonl") for e in r.get("events", [])]


def test_guard_counts():
    g = FaultGuard(max_faults=2, max_rollbacks=1, lr_factor=0.5)
    assert not g.fault() and g.fault()  # the second in a row asks for a rollback
    g.rollback()
    assert (g.consecutive, g.skipped, g.rollbacks, g.lr_scale) == (0, 2, 1, 0.5)
    g.fault()
    g.ok()
    assert g.consecutive == 0 and g.skipped == 3
    with pytest.raises(TrainingError, match="giving up"):
        g.rollback()
    h = FaultGuard()
    h.load_state_dict(g.state_dict())
    assert h.state_dict() == g.state_dict()


@pytest.mark.parametrize("kind", ["nan_loss", "nan_grad", "singular"])
def test_a_faulty_step_is_skipped_and_changes_nothing(tmp_path: Path, models: list, kind: str):
    snapshots: dict[int, dict] = {}

    def hook(step: int, loss: torch.Tensor) -> torch.Tensor:
        snapshots[step] = params(models[0])  # the parameters this step starts from
        if step != 3:
            return loss
        if kind == "nan_loss":
            return loss * float("nan")
        if kind == "nan_grad":  # finite value, NaN gradient: d sqrt(x)/dx at 0 is inf, times 0
            return loss + (loss.sum() * 0.0).sqrt()
        raise SingularWeightError("injected: the dense 1x1 convolution is singular")

    out = tmp_path / kind
    result = train(out=str(out), iters=6, loss_hook=hook, **TINY)
    assert result.skipped == 1 and result.rollbacks == 0
    assert max_diff(snapshots[3], snapshots[4]) == 0  # the skipped step did not move anything
    assert max_diff(snapshots[2], snapshots[3]) > 0  # (the steps around it did)
    reason = {"nan_loss": "non-finite loss", "nan_grad": "non-finite gradient", "singular": "singular 1x1 convolution"}
    events = _events(out)
    assert len(events) == 1 and events[0]["step"] == 3 and events[0]["kind"] == "skipped"
    assert events[0]["reason"].startswith(reason[kind])
    records = read_metrics(out / "metrics.jsonl")
    assert [r["skipped"] for r in records] == [0, 0, 1, 1]  # steps 0, 2, 4, 6
    assert all(r["loss"] is not None for r in records)


def test_repeated_faults_roll_back_with_a_lower_lr(tmp_path: Path, models: list):
    snapshots: dict[int, dict] = {}
    bad = {5, 6, 7}  # three in a row with max_faults=3: due at step 7, done at the logging step 8

    def hook(step: int, loss: torch.Tensor) -> torch.Tensor:
        snapshots[step] = params(models[0])
        return loss * float("nan") if step in bad else loss

    out = tmp_path / "r"
    result = train(out=str(out), loss_hook=hook, **tiny(iters=10, max_faults=3, checkpoint_every=4))
    assert result.skipped == 3 and result.rollbacks == 1
    rollback = [e for e in _events(out) if e["kind"] == "rollback"]
    assert rollback == [{"step": 8, "kind": "rollback", "to_step": 4, "lr_scale": 0.5}]
    # the faulty steps left the parameters of step 5 as they were: those of the checkpoint at step 4
    assert max_diff(snapshots[5], snapshots[8]) == 0
    records = {r["step"]: r for r in read_metrics(out / "metrics.jsonl")}
    assert records[10]["lr"] == pytest.approx(0.5 * result.config.lr)  # after warm-up, halved
    assert records[4]["lr"] == pytest.approx(result.config.lr)
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["guard"]["rollbacks"] == 1 and ckpt["guard"]["lr_scale"] == 0.5


def test_rollback_restores_the_checkpoint_state(tmp_path: Path, models: list):
    """Faults after good steps: the rollback really goes back (parameters of the checkpoint, not the last step)."""
    snapshots: dict[int, dict] = {}

    def hook(step: int, loss: torch.Tensor) -> torch.Tensor:
        snapshots[step] = params(models[0])
        return loss * float("nan") if step in (7, 8) else loss

    out = tmp_path / "r"
    train(out=str(out), loss_hook=hook, **tiny(iters=9, max_faults=2, checkpoint_every=4))
    # steps 5 and 6 trained, 7 and 8 faulted -> back to step 4's checkpoint before step 9
    assert max_diff(snapshots[5], snapshots[9]) == 0
    assert max_diff(snapshots[7], snapshots[9]) > 0


def test_too_many_rollbacks_stop_with_a_clear_error(tmp_path: Path):
    out = tmp_path / "r"
    with pytest.raises(TrainingError) as e:
        train(out=str(out), iters=50, loss_hook=lambda s, loss: loss * float("nan") if s >= 3 else loss,
              max_faults=2, max_rollbacks=1, **TINY)  # fmt: skip
    msg = str(e.value)
    assert "training stopped at step 6" in msg and "after 1 rollback " in msg
    assert f"last good checkpoint is {out / 'checkpoints' / 'last.pt'}" in msg and "--lr" in msg
    # the last good checkpoint: written at step 4 right after the rollback (the state of step 0, lr halved)
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["step"] == 4 and ckpt["guard"]["rollbacks"] == 1 and ckpt["guard"]["consecutive"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    kinds = [e["kind"] for e in _events(out)]
    assert kinds == ["skipped", "skipped", "rollback", "skipped", "skipped"]
