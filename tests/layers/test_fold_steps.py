"""The folded weights of a level's K steps (glowflow.layers.fused.fold_steps, the one autograd node with a
hand-derived backward) against the composition of the single folding functions that autograd differentiates
(glowflow.layers.step._composed_step_weights): same values in both directions, same gradients for every parameter,
packed or not, with some parameters frozen."""

from __future__ import annotations

from functools import partial

import pytest
import torch

import glowflow.layers.step as step_module
from glowflow import Glow
from glowflow.layers.fused import StepParameters, fold_steps, padded_out_channels
from glowflow.layers.step import FlowSteps, _step_tensors, glow_step_weights
from tests.helpers import max_abs, randomize_


def random_level(seed: int = 0, dtype: torch.dtype = torch.float64, affine: bool = True) -> FlowSteps:
    """The first level of a small Glow (12 channels, 3 steps, hidden 8) with every parameter random."""
    torch.manual_seed(seed)
    coupling = "affine" if affine else "additive"
    model = Glow((3, 8, 8), levels=2, steps=3, hidden=8, num_bins=256, coupling=coupling).to(dtype)
    with torch.no_grad():
        model(torch.randint(0, 256, (8, 3, 8, 8)).to(dtype))  # ActNorm initialisation
        randomize_(model, 0.3)
    return next(m for m in model.modules() if isinstance(m, FlowSteps))


def kinds(level: FlowSteps) -> StepParameters:
    return StepParameters(*zip(*map(_step_tensors, level.layers), strict=True))


def composed(level: FlowSteps, inverse: bool):
    return step_module._composed_step_weights(kinds(level), inverse, level.layers[0].affine, level._packs)


def outputs(w) -> list[torch.Tensor]:
    return [w.mix, w.mix_bias, w.mix_logdet, *w.net.tensors()]


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("affine", [True, False])
def test_values_equal_the_composed_folding(inverse, affine):
    level = random_level(affine=affine)
    with torch.no_grad():
        new, ref = (
            outputs(glow_step_weights(list(level.layers), inverse, level._packs)),
            outputs(composed(level, inverse)),
        )
    for a, b in zip(new, ref, strict=True):
        assert a.shape == b.shape
        assert max_abs(a, b) < 1e-12
    conv1, out = new[3], new[7]
    assert all(conv1[k].is_contiguous(memory_format=torch.channels_last) for k in range(3))
    assert all(out[k].is_contiguous(memory_format=torch.channels_last) for k in range(3))
    c_out = level.layers[0]._parts()[2].net.out.conv.weight.shape[0]
    rows = padded_out_channels(c_out, out.device)
    assert out.shape[1] == rows and new[8].shape[1] == rows
    assert torch.count_nonzero(out[:, c_out:]) == 0 and torch.count_nonzero(new[8][:, c_out:]) == 0


def gradients(level: FlowSteps, fold, upstream) -> dict[str, torch.Tensor | None]:
    for p in level.parameters():
        p.grad = None
    loss = sum((o * g).sum() for o, g in zip(outputs(fold()), upstream, strict=True))
    loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in level.named_parameters()}


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_gradients_equal_autograd_of_the_composed_folding(packed, affine, monkeypatch):
    level = random_level(seed=1, affine=affine)
    if not packed:
        monkeypatch.setattr(step_module, "_packed", lambda name, tensors, packs: tensors)
    torch.manual_seed(2)
    with torch.no_grad():
        upstream = [torch.randn_like(o) for o in outputs(composed(level, False))]
    new = gradients(level, lambda: glow_step_weights(list(level.layers), False, level._packs), upstream)
    ref = gradients(level, lambda: composed(level, False), upstream)
    assert new.keys() == ref.keys()
    for name, g in ref.items():
        assert g is not None, name
        assert new[name].shape == g.shape and new[name].is_contiguous(), name
        assert max_abs(new[name], g) < 1e-10 * max(1.0, g.abs().max().item()), name


def test_frozen_parameters_get_no_gradient_and_the_others_the_same():
    level = random_level(seed=3)
    frozen = {"layers.0.layers.0.bias", "layers.2.layers.2.net.conv2.conv.weight", "layers.1.layers.1.matrix.log_s"}
    for name, p in level.named_parameters():
        if name in frozen or name.endswith("net.out.logs"):
            p.requires_grad_(False)
    torch.manual_seed(4)
    with torch.no_grad():
        upstream = [torch.randn_like(o) for o in outputs(composed(level, False))]
    new = gradients(level, lambda: glow_step_weights(list(level.layers), False, level._packs), upstream)
    ref = gradients(level, lambda: composed(level, False), upstream)
    for name, g in ref.items():
        if name in frozen or name.endswith("net.out.logs"):
            assert g is None and new[name] is None, name
        else:
            assert max_abs(new[name], g) < 1e-10 * max(1.0, g.abs().max().item()), name


def test_gradcheck_of_the_folding_node():
    level = random_level(seed=5)
    originals = list(level.parameters())
    values = tuple(p.detach().clone().requires_grad_(True) for p in originals)

    def fold(*vals):
        by_id = {id(p): v for p, v in zip(originals, vals, strict=True)}
        steps = StepParameters(*(tuple(by_id.get(id(t), t) for t in ts) for ts in kinds(level)))
        return tuple(outputs(fold_steps(steps, partial(step_module._read_stacks, 3, {}), False, True)))

    assert torch.autograd.gradcheck(fold, values, fast_mode=True)


def test_inverse_direction_with_autograd_takes_the_composed_folding():
    level = random_level(seed=6)
    steps = kinds(level)
    with pytest.raises(ValueError, match="forward direction only"):
        fold_steps(steps, partial(step_module._read_stacks, 3, {}), True, True)
    w = glow_step_weights(list(level.layers), True, level._packs)  # autograd on: differentiable all the same
    w.mix.sum().backward()
    assert level.layers[0]._parts()[1].matrix.lower.grad is not None


def test_second_derivative_raises_instead_of_being_wrong():
    level = random_level(seed=7)
    w = glow_step_weights(list(level.layers), False, level._packs)
    p = level.layers[0]._parts()[0].bias
    (g,) = torch.autograd.grad(w.mix_bias.square().sum(), p, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), p)
