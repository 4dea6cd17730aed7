"""A level's parameters packed by kind (glowflow.layers.packing, FlowSteps.pack): the same values, gradients and
results as unpacked steps, and packing that survives or is rebuilt after what gives the tensors new storage."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import glowflow.layers.step as step_module
from glowflow import Glow
from glowflow.layers import FlowSequence
from glowflow.layers.packing import TensorStack
from glowflow.layers.step import FlowSteps, _step_tensors
from tests.helpers import check_flow, max_abs, randomize_


def levels(model: torch.nn.Module) -> list[FlowSteps]:
    return [m for m in model.modules() if isinstance(m, FlowSteps)]


def all_held(model: torch.nn.Module) -> bool:
    """Whether every FlowSteps of ``model`` has its 16 kinds packed and each pack still holds its steps' tensors."""
    for level in levels(model):
        per_step = zip(*map(_step_tensors, level.layers), strict=True)
        kinds = dict(zip(step_module.StepParameters._fields, per_step, strict=True))
        if len(level._packs) != len(kinds) or not all(p.holds(kinds[n]) for n, p in level._packs.items()):
            return False
    return bool(levels(model))


def small_glow(dtype: torch.dtype = torch.float64, seed: int = 0) -> Glow:
    torch.manual_seed(seed)
    model = Glow((3, 8, 8), levels=2, steps=3, hidden=8, num_bins=256).to(dtype)
    with torch.no_grad():
        model(torch.randint(0, 256, (8, 3, 8, 8)).to(dtype))  # ActNorm initialisation
        randomize_(model, 0.05)
    return model


def unpacked(monkeypatch) -> None:
    """Make the folding stack every kind again, as before packing (the reference)."""
    monkeypatch.setattr(step_module, "_packed", lambda name, tensors, packs: tensors)


def test_tensor_stack_aliases_its_tensors_and_routes_gradients():
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64)) for _ in range(5)]
    values = [p.detach().clone() for p in ps]
    stack = TensorStack(ps)
    assert all(torch.equal(p.detach(), v) for p, v in zip(ps, values, strict=True))  # values unchanged
    assert all(p.is_leaf and p.is_contiguous() and p.shape == (3, 4) for p in ps)
    assert stack.holds(ps)
    with torch.no_grad():
        ps[2].mul_(2.0)  # an in-place write lands in the stack
    assert torch.equal(stack.data[2], ps[2].detach())
    with torch.no_grad():
        assert stack.stacked(ps) is stack.data
    weights = torch.randn(5, 3, 4, dtype=torch.float64)
    (stack.stacked(ps) * weights).sum().backward()
    assert all(torch.equal(p.grad, w) for p, w in zip(ps, weights, strict=True))
    torch.autograd.gradcheck(lambda *ts: stack.stacked(ts).sin(), tuple(ps))
    ps[1].data = ps[1].detach().clone()  # new storage: no longer held
    assert not stack.holds(ps)


def test_tensor_stack_gives_gradients_to_the_tensors_that_want_them():
    ps = [torch.nn.Parameter(torch.randn(2)) for _ in range(3)]
    stack = TensorStack(ps)
    ps[0].requires_grad_(False)
    stack.stacked(ps).sum().backward()
    assert ps[0].grad is None and all(torch.equal(p.grad, torch.ones(2)) for p in ps[1:])


def test_packable_needs_distinct_tensors_of_one_shape_dtype_and_device():
    a, b = torch.zeros(3), torch.zeros(3)
    assert TensorStack.packable([a, b])
    assert not TensorStack.packable([a])
    assert not TensorStack.packable([a, a])
    assert not TensorStack.packable([a, torch.zeros(4)])
    assert not TensorStack.packable([a, torch.zeros(3, dtype=torch.float64)])


def test_a_glow_level_is_packed_and_computes_what_unpacked_steps_compute(monkeypatch):
    model = small_glow()
    assert all_held(model)
    x = torch.randint(0, 256, (4, 3, 8, 8)).double()

    def results():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same dequantization noise
        loss = model(x).sum()
        loss.backward()
        zs, _ = model.encode(x / 256 - 0.5)
        with torch.no_grad():
            back = model.decode(zs)
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, back

    loss, grads, back = results()
    unpacked(monkeypatch)
    ref_loss, ref_grads, ref_back = results()
    assert max_abs(loss, ref_loss) < 1e-10
    assert grads.keys() == ref_grads.keys()
    assert max(max_abs(grads[n], ref_grads[n]) for n in grads) < 1e-10
    assert max_abs(back, ref_back) < 1e-10


def test_optimizer_steps_reach_the_packed_weights():
    """After Adam's in-place updates the fused level still computes what its plain layers compute."""
    model = small_glow()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randint(0, 256, (4, 3, 8, 8)).double()
    for _ in range(3):
        opt.zero_grad()
        model(x).mean().backward()
        opt.step()
    assert all_held(model)
    level = levels(model)[0]
    h = torch.randn(4, 12, 4, 4, dtype=torch.float64)
    fused_y, fused_ld = level(h)
    plain_y, plain_ld = FlowSequence(*[FlowSequence(*s.layers) for s in level.layers])(h)
    assert max_abs(fused_y, plain_y) < 1e-10 and max_abs(fused_ld, plain_ld) < 1e-9


def bpd(model: Glow, x: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(3)  # the same dequantization noise every call
    return model(x)


def test_conversions_and_copies_pack_again_with_their_own_storage():
    model = small_glow(torch.float32)
    x = torch.randint(0, 256, (4, 3, 8, 8)).double()
    ref = bpd(model.double(), x)  # Module.to and its kin give new storage, then pack again
    assert all_held(model)
    clone = copy.deepcopy(model)
    assert all_held(clone)
    assert max_abs(bpd(clone, x), ref) < 1e-10
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(1.0)  # the copy's storage is its own
    assert max_abs(bpd(model, x), ref) < 1e-12
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    assert all_held(restored) and max_abs(bpd(restored, x), ref) < 1e-10


@pytest.mark.parametrize("assign", [False, True])
def test_load_state_dict_keeps_or_rebuilds_the_packing(assign):
    source, target = small_glow(seed=1), small_glow(seed=2)
    x = torch.randint(0, 256, (4, 3, 8, 8)).double()
    target.load_state_dict(source.state_dict(), assign=assign)
    assert all_held(target)
    assert max_abs(bpd(target, x), bpd(source, x)) < 1e-10


def test_a_tensor_given_new_storage_by_hand_falls_back_to_stacking():
    model = small_glow()
    x = torch.randint(0, 256, (4, 3, 8, 8)).double()
    step = levels(model)[0].layers[1]
    bias = step.layers[0].bias
    bias.data = bias.detach() + 0.5  # not through the pack
    assert not all_held(model)
    level = levels(model)[0]
    h = torch.randn(4, 12, 4, 4, dtype=torch.float64)
    fused_y, _ = level(h)
    plain_y, _ = FlowSequence(*[FlowSequence(*s.layers) for s in level.layers])(h)
    assert max_abs(fused_y, plain_y) < 1e-10
    assert torch.isfinite(model(x)).all()


def test_a_conversion_that_changes_nothing_keeps_the_packs():
    model = small_glow()
    before = {id(p) for level in levels(model) for p in level._packs.values()}
    model.to(torch.float64)  # already float64 on the CPU: the tensors keep their storage
    assert all_held(model)
    assert {id(p) for level in levels(model) for p in level._packs.values()} == before
    model.float()  # new storage for the floating-point tensors: packed again, in float32
    assert all_held(model)
    assert all(p.data.dtype == torch.float32 for level in levels(model) for p in level._packs.values())


def test_a_packed_level_keeps_the_layer_contract():
    """Round trip, inverse log-det and the forward log-det against the full autograd Jacobian, on a packed level."""
    model = small_glow()
    assert all_held(model)
    check_flow(levels(model)[0], torch.randn(2, 12, 2, 2, dtype=torch.float64), rt_tol=1e-10, ld_tol=1e-8)
