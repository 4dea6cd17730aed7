"""PackedAdam: torch's fused Adam over the packed parameters of the steps of flow, in one piece per pack."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from glowflow import Glow
from glowflow.training.optim import (
    LearningRate,
    PackedAdam,
    make_optimizer,
    schedule_factor,
    skip_if_not_finite,
    warmup_factor,
)


@pytest.fixture
def model() -> Glow:
    torch.manual_seed(0)
    m = Glow((3, 8, 8), levels=2, steps=3, hidden=16)
    with torch.no_grad():
        m(torch.randint(0, 256, (4, 3, 8, 8)))  # ActNorm initialisation
    return m


class KernelCalls:
    """Records how many tensors each call of torch's fused Adam kernel updates."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        kernel = torch._fused_adam_

        def spy(params, *args, **kwargs):
            self.sizes.append(len(params))
            return kernel(params, *args, **kwargs)

        monkeypatch.setattr(torch, "_fused_adam_", spy)


def backward(model: Glow, seed: int) -> None:
    """Gradients of the mean bits/dim of a random batch (the fused steps' backward: packed gradients)."""
    g = torch.Generator().manual_seed(seed)
    model.zero_grad(set_to_none=True)
    model(torch.randint(0, 256, (4, 3, 8, 8), generator=g)).mean().backward()


def copy_grads(src: Glow, dst: Glow) -> None:
    for a, b in zip(src.parameters(), dst.parameters(), strict=True):
        b.grad = None if a.grad is None else a.grad.clone()


def assert_same_training(a: Glow, opt_a, b: Glow, opt_b) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)
        sa, sb = opt_a.state[p], opt_b.state[q]
        assert sa.keys() == sb.keys(), name
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], rtol=1e-6, atol=1e-9, msg=f"{name} {key}")


def test_make_optimizer_adam_is_packed_adam(model):
    opt = make_optimizer("adam", model.parameters(), 1e-3)
    assert isinstance(opt, PackedAdam) and isinstance(opt, torch.optim.Adam) and opt.defaults["fused"]


def test_updates_equal_torch_adam_in_fewer_pieces(model, monkeypatch):
    reference, start = copy.deepcopy(model), copy.deepcopy(model)
    opt, ref_opt = PackedAdam(model.parameters(), lr=1e-2), torch.optim.Adam(reference.parameters(), lr=1e-2)
    calls = KernelCalls(monkeypatch)
    n_params = len(list(model.parameters()))
    for step in range(4):
        backward(model, step)
        copy_grads(model, reference)
        calls.sizes.clear()
        opt.step()
        assert calls.sizes and all(s < n_params / 2 for s in calls.sizes), (calls.sizes, n_params)
        ref_opt.step()
    assert_same_training(model, opt, reference, ref_opt)
    now, then = model.state_dict(), start.state_dict()
    moved = max(float((now[key] - then[key]).abs().max()) for key in now if now[key].is_floating_point())
    assert moved > 1e-2  # 4 steps of lr 1e-2 did move the parameters


def test_state_dict_is_torch_format_and_resumes_either_way(model):
    reference = copy.deepcopy(model)
    opt, ref_opt = PackedAdam(model.parameters(), lr=1e-2), torch.optim.Adam(reference.parameters(), lr=1e-2)
    for step in range(3):
        backward(model, step)
        copy_grads(model, reference)
        opt.step()
        ref_opt.step()
    saved = opt.state_dict()
    steps = [s["step"] for s in saved["state"].values()]
    assert len({id(t) for t in steps}) == len(steps) and all(float(t) == 3.0 for t in steps)
    assert saved["state"].keys() == ref_opt.state_dict()["state"].keys()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": saved}, buffer)

    def restored(kind):
        buffer.seek(0)
        ckpt = torch.load(buffer, weights_only=True)
        m = Glow((3, 8, 8), levels=2, steps=3, hidden=16)
        m.load_state_dict(ckpt["model"])
        o = PackedAdam(m.parameters(), lr=1e-2) if kind == "packed" else torch.optim.Adam(m.parameters(), lr=1e-2)
        o.load_state_dict(ckpt["optimizer"])
        return m, o

    packed, packed_opt = restored("packed")
    plain, plain_opt = restored("torch")
    for step in range(3, 6):
        backward(model, step)
        for m in (reference, packed, plain):
            copy_grads(model, m)
        for o in (opt, ref_opt, packed_opt, plain_opt):
            o.step()
    assert_same_training(model, opt, reference, ref_opt)
    assert_same_training(model, opt, packed, packed_opt)
    assert_same_training(model, opt, plain, plain_opt)


def test_loads_torch_adams_state(model, monkeypatch):
    reference = copy.deepcopy(model)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=1e-2, fused=True)
    for step in range(2):
        backward(reference, step)
        ref_opt.step()
    model.load_state_dict(reference.state_dict())
    opt = PackedAdam(model.parameters(), lr=1e-2)
    opt.load_state_dict(copy.deepcopy(ref_opt.state_dict()))
    calls = KernelCalls(monkeypatch)
    ours = []
    for step in range(2, 4):
        backward(model, step)
        copy_grads(model, reference)
        calls.sizes.clear()
        opt.step()
        ours += calls.sizes
        ref_opt.step()
    assert_same_training(model, opt, reference, ref_opt)
    assert ours and all(s < len(list(model.parameters())) / 2 for s in ours), ours


def test_gradients_laid_out_otherwise_take_the_per_parameter_path(model):
    reference = copy.deepcopy(model)
    opt, ref_opt = PackedAdam(model.parameters(), lr=1e-2), torch.optim.Adam(reference.parameters(), lr=1e-2)
    steps = list(model.levels[0].layers[1].layers)  # a level's FlowSteps: its steps' tensors are packed
    frozen = steps[0].layers[0].bias  # an ActNorm bias: one slice of its pack
    other = steps[1].layers[0].bias
    for step in range(4):
        backward(model, step)
        if step == 1:  # one gradient a tensor of its own, another missing: this pack is updated per parameter
            other.grad = other.grad.clone()
            frozen.grad = None
        copy_grads(model, reference)
        opt.step()
        ref_opt.step()
    assert_same_training(model, opt, reference, ref_opt)
    assert float(opt.state[frozen]["step"]) == 3.0 and float(opt.state[other]["step"]) == 4.0


def test_a_step_flagged_not_finite_changes_nothing(model):
    opt = PackedAdam(model.parameters(), lr=1e-2)
    backward(model, 0)
    opt.step()
    before = copy.deepcopy((model.state_dict(), opt.state_dict()))
    backward(model, 1)
    assert skip_if_not_finite(opt, torch.tensor(False))
    opt.step()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[0][key]), key
    for i, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(value, before[1]["state"][i][key]), (i, key)


def test_loading_a_state_into_the_live_optimizer_replaces_its_packed_state(model):
    """A rollback: the running optimiser loads an earlier state_dict and continues from it."""
    reference = copy.deepcopy(model)
    opt, ref_opt = PackedAdam(model.parameters(), lr=1e-2), torch.optim.Adam(reference.parameters(), lr=1e-2)

    def train(steps):
        for step in steps:
            backward(model, step)
            copy_grads(model, reference)
            opt.step()
            ref_opt.step()

    train(range(3))
    snapshot = copy.deepcopy((model.state_dict(), opt.state_dict(), ref_opt.state_dict()))
    train(range(3, 5))
    model.load_state_dict(snapshot[0])
    reference.load_state_dict(snapshot[0])
    opt.load_state_dict(snapshot[1])
    ref_opt.load_state_dict(snapshot[2])
    train(range(5, 7))
    assert_same_training(model, opt, reference, ref_opt)
    assert all(float(s["step"]) == 5.0 for s in opt.state_dict()["state"].values())


@pytest.mark.parametrize("warmup", [0, 3, 10])
def test_constant_schedule_is_the_warm_up_alone(warmup):
    assert [schedule_factor(e, warmup) for e in range(20)] == [warmup_factor(e, warmup) for e in range(20)]


@pytest.mark.parametrize(("warmup", "iters"), [(0, 10), (3, 10), (5, 6), (12, 10), (0, 1)])
def test_cosine_schedule_warms_up_then_anneals_towards_zero(warmup, iters):
    """Step t's factor (epoch t - 1): the warm-up up to ``warmup``, then ``(1 + cos(pi p)) / 2`` with
    ``p = (t - warmup) / (iters - warmup + 1)`` (warm-up clamped to iters - 1), decreasing, positive at the last
    step and held there after it."""
    f = [schedule_factor(e, warmup, "cosine", iters) for e in range(iters + 3)]
    warm = min(warmup, iters - 1)
    for t in range(1, iters + 1):
        p = max(t - warm, 0) / (iters - warm + 1)
        assert f[t - 1] == pytest.approx(warmup_factor(t - 1, warmup) * 0.5 * (1 + math.cos(math.pi * p)))
    after = f[warm:iters]
    assert all(a > b for a, b in zip(after, after[1:], strict=False)) and f[iters - 1] > 0
    assert f[iters] == f[iters + 2] == f[iters - 1]


def test_schedule_refusals():
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'linear'"):
        schedule_factor(0, 0, "linear", 10)
    with pytest.raises(ValueError, match="needs the run's length"):
        LearningRate(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), 0, schedule="cosine")


def test_learning_rate_follows_the_schedule_and_the_rollback_scale():
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.5)
    rule = LearningRate(opt, warmup=2, schedule="cosine", iters=6)
    seen = []
    for _ in range(6):
        seen.append(rule.current)
        opt.step()
        rule.step()
    assert seen == pytest.approx([0.5 * schedule_factor(e, 2, "cosine", 6) for e in range(6)])
    rule.rescale(0.5)  # a rollback halves the rate at once
    assert rule.current == pytest.approx(0.25 * schedule_factor(6, 2, "cosine", 6))
