"""The fused step of flow (glowflow.layers.fused) against the plain composition of its layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

import glowflow.layers.fused as fused_module
from glowflow.export import FrozenMatrix
from glowflow.layers import FlowSequence
from glowflow.layers.fused import (
    _fold_rows,
    _relu_backward_,
    channel_sum,
    conv1x1_weight_gradient,
    conv_relu,
    conv_same,
    conv_same_backward,
    fold_actnorm,
    fold_gain,
    fold_mixing,
    fold_unmixing,
    glow_step,
    glow_steps,
    linear_relu,
    lu_inverse_weight,
    lu_weight,
    matmul,
    mix_channels,
    rows_product,
    scale_rows,
)
from glowflow.layers.step import FlowStep, FlowSteps, glow_step_weights
from glowflow.models.base import make_step
from tests.helpers import check_flow, max_abs, randomize_

CL = torch.channels_last


def make_steps(k: int, coupling: str, dtype: torch.dtype, channels: int = 4, hidden: int = 8, seed: int = 0):
    """K initialised, randomised Glow steps (fused) and the same layers as a plain sequence of sequences."""
    torch.manual_seed(seed)
    steps = [
        make_step(channels, hidden, coupling=coupling, permutation="lu", conditioner="glow").to(dtype) for _ in range(k)
    ]
    fused = FlowSteps(*steps)
    with torch.no_grad():
        fused(torch.randn(8, channels, 4, 4, dtype=dtype))  # ActNorm initialisation (plain path)
    for s in steps:
        randomize_(s, 0.05)
    plain = FlowSequence(*[FlowSequence(*s.layers) for s in steps])
    return fused, plain


def grads(module, x, out_grads):
    """Gradients of sum(out_grads . outputs) w.r.t. x and every parameter."""
    x = x.detach().clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    y, logdet = module(x)
    ((y * out_grads[0]).sum() + (logdet * out_grads[1]).sum()).backward()
    return y.detach(), logdet.detach(), x.grad, {n: p.grad.clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("coupling", ["affine", "additive"])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("channels", [4, 20])  # 4: im2col / col2im conditioner convs; 20: oneDNN's direct ones
def test_fused_steps_match_the_plain_layers(coupling, dtype, tol, channels):
    fused, plain = make_steps(3, coupling, dtype, channels=channels)
    assert all(s.fused_step() for s in fused)
    x = torch.randn(3, channels, 4, 4, dtype=dtype).contiguous(memory_format=CL)
    g = (torch.randn(3, channels, 4, 4, dtype=dtype), torch.randn(3, dtype=dtype))
    y1, ld1, gx1, gp1 = grads(fused, x, g)
    y2, ld2, gx2, gp2 = grads(plain, x, g)
    scale = max(1.0, y2.abs().max().item())
    assert max_abs(y1, y2) < tol * scale and max_abs(ld1, ld2) < tol * max(1.0, ld2.abs().max().item())
    assert max_abs(gx1, gx2) < tol * max(1.0, gx2.abs().max().item())
    for name in gp2:  # parameters are shared: the plain sequence names them layers.i.layers.j...
        assert max_abs(gp1[name], gp2[name]) < tol * max(1.0, gp2[name].abs().max().item()), name
    with torch.no_grad():
        x1, ld_inv1 = fused.inverse(y1)
        x2, ld_inv2 = plain.inverse(y1)
        y_eval, ld_eval = fused(x)  # autograd off: the same forward without saving anything
    assert max_abs(x1, x) < tol * 10 and max_abs(x1, x2) < tol * 10
    assert max_abs(ld_inv1, -ld1) < tol * max(1.0, ld1.abs().max().item())
    assert max_abs(y_eval, y1) < tol * scale and max_abs(ld_eval, ld1) < tol * max(1.0, ld1.abs().max().item())


@pytest.mark.parametrize("coupling", ["affine", "additive"])
def test_fused_step_contract_float64(coupling):
    fused, _ = make_steps(1, coupling, torch.float64)
    check_flow(fused[0], torch.randn(2, 4, 4, 4, dtype=torch.float64), rt_tol=1e-12, ld_tol=1e-10)


@pytest.mark.parametrize("channels", [4, 20])
def test_fused_step_backward_passes_gradcheck(channels):
    fused, _ = make_steps(1, "affine", torch.float64, channels=channels, hidden=4)
    w = glow_step_weights(list(fused), inverse=False)
    inputs = [
        torch.randn(2, channels, 2, 3, dtype=torch.float64).contiguous(memory_format=CL),
        w.mix[0],
        w.mix_bias[0],
        *(t[0] for t in w.net.tensors()),
    ]
    inputs = [t.detach().clone().requires_grad_() for t in inputs]

    def fn(x, mix, mix_bias, *net):
        weights = type(w)(mix, mix_bias, w.mix_logdet[0].detach(), type(w.net)(*net))
        return glow_step(x, weights, affine=True)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, fast_mode=True)


@pytest.mark.parametrize("coupling", ["affine", "additive"])
@pytest.mark.parametrize("channels", [4, 20])
def test_a_level_of_fused_steps_passes_gradcheck(coupling, channels):
    """``glow_steps``: K steps as one autograd node, gradients of the input and of every stacked weight."""
    fused, _ = make_steps(2, coupling, torch.float64, channels=channels, hidden=4)
    w = glow_step_weights(list(fused), inverse=False)
    x = torch.randn(2, channels, 2, 3, dtype=torch.float64).contiguous(memory_format=CL)
    inputs = [t.detach().clone().requires_grad_() for t in (x, w.mix, w.mix_bias, *w.net.tensors())]

    def fn(x, mix, mix_bias, *net):
        weights = type(w)(mix, mix_bias, w.mix_logdet.detach(), type(w.net)(*net))
        return glow_steps(x, weights, affine=coupling == "affine")

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, fast_mode=True)
    y, ld = fn(*inputs)
    with torch.no_grad():
        y_eval, ld_eval = fn(*inputs)  # autograd off: the K forwards of glow_step
    assert max_abs(y, y_eval) < 1e-12 and max_abs(ld, ld_eval) < 1e-10
    grads = torch.autograd.grad(y.sum() + ld.sum(), inputs[1:])
    x_free = inputs[0].detach()  # the level's input needs no gradient: the weights' are the same
    y2, ld2 = fn(x_free, *inputs[1:])
    grads2 = torch.autograd.grad(y2.sum() + ld2.sum(), inputs[1:])
    assert all(max_abs(a, b) < 1e-12 for a, b in zip(grads, grads2, strict=True))


def test_differentiating_the_fused_backward_again_raises():
    """The fused steps' backward is derived by hand and not itself differentiable: a second derivative through it
    (``create_graph=True``) is refused with an error rather than computed wrong."""
    fused, _ = make_steps(2, "affine", torch.float64, channels=4, hidden=4)
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    y, logdet = fused(x)
    (g,) = torch.autograd.grad(logdet.sum() + y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()


def test_inverse_with_autograd_matches_plain():
    fused, plain = make_steps(2, "affine", torch.float64)
    y = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    g = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    results = []
    for module in (fused, plain):
        yy = y.clone().requires_grad_()
        x, logdet = module.inverse(yy)
        ((x * g).sum() + logdet.sum()).backward()
        results.append((x.detach(), yy.grad))
    assert max_abs(results[0][0], results[1][0]) < 1e-12 and max_abs(results[0][1], results[1][1]) < 1e-12


def test_fresh_fused_step_is_the_mixing():
    """A zero-initialised conditioner gives t = 0 and s = sigmoid(2) / sigmoid(2) = 1 (up to one rounding)."""
    torch.manual_seed(0)
    step = make_step(4, 8, coupling="affine", permutation="lu", conditioner="glow")
    x = torch.randn(4, 4, 4, 4)
    with torch.no_grad():
        step(x)  # initialise
        y, logdet = step(x)
        actnorm, mixer, _ = step.layers
        h, logdet_mix = mixer(actnorm(x)[0])
    assert step.fused_step()
    w = glow_step_weights([step], inverse=False)
    assert max_abs(y, mix_channels(x, w.mix[0], w.mix_bias[0])) < 1e-6 * y.abs().max().item()
    assert max_abs(y, h) < 1e-5
    assert max_abs(logdet, 16 * (actnorm.log_scale.sum() + mixer.matrix.log_abs_det()).expand(4)) < 1e-4


def test_bf16_conditioner_fast_path_matches_autocast_and_exact_mode_matches_fp32():
    fused, plain = make_steps(2, "affine", torch.float32)
    x = torch.randn(3, 4, 4, 4).contiguous(memory_format=CL)
    with torch.no_grad():
        y32, ld32 = fused(x)
        for s in fused:
            s.layers[2].precision = "bf16"
        y16, ld16 = fused(x)
        y16_plain, ld16_plain = plain(x)
        for s in fused:
            s.layers[2].exact = True
        y_exact, _ = fused(x)
    assert max_abs(y16, y16_plain) < 2e-2 and max_abs(ld16, ld16_plain) < 2e-1  # bf16 round-off: ~3 digits
    assert 0 < max_abs(y16, y32) < 5e-2  # the conditioner really ran in bf16
    assert max_abs(y_exact, y32) < 1e-6
    y = y16.clone().requires_grad_()
    for s in fused:
        s.layers[2].exact = False
    x_back, _ = fused.inverse(y)  # bf16 inverse: same conditioner input as forward only up to round-off
    assert max_abs(x_back, x) < 5e-2


def test_bf16_training_gradients_as_close_to_fp32_as_autocast():
    """bf16 conditioners in the fused backward err from float32 no more than the plain layers under autocast."""
    fused, plain = make_steps(2, "affine", torch.float32)
    x = torch.randn(3, 4, 4, 4).contiguous(memory_format=CL)
    g = (torch.randn(3, 4, 4, 4), torch.randn(3))
    _, _, gx32, gp32 = grads(fused, x, g)
    for s in fused:
        s.layers[2].precision = "bf16"
    _, _, gx16, gp16 = grads(fused, x, g)
    _, _, gx_ac, gp_ac = grads(plain, x, g)
    assert max_abs(gx16, gx32) <= 2 * max_abs(gx_ac, gx32) + 1e-3 * gx32.abs().max().item()
    for name, g32 in gp32.items():
        assert gp16[name].dtype == torch.float32
        assert max_abs(gp16[name], g32) <= 2 * max_abs(gp_ac[name], g32) + 1e-3 * g32.abs().max().item(), name


def test_bf16_conditioner_weights_are_cast_once_per_level(monkeypatch):
    """FlowSteps casts the K stacked conditioner weights to bf16 once (forward and inverse), not once per step; the
    fused steps' parameter gradients come back in float32."""
    import glowflow.layers.fused as fused_module

    fused, _ = make_steps(3, "affine", torch.float32)
    for s in fused:
        s.layers[2].precision = "bf16"
    casts = []
    cast = fused_module.ConditionerWeights.cast
    monkeypatch.setattr(
        fused_module.ConditionerWeights, "cast", lambda self, dtype: casts.append(dtype) or cast(self, dtype)
    )
    x = torch.randn(3, 4, 4, 4).contiguous(memory_format=CL)
    y, logdet = fused(x)
    assert casts == [torch.bfloat16]
    (y.square().sum() + logdet.sum()).backward()
    assert casts == [torch.bfloat16]
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in fused.parameters() if p.requires_grad)
    with torch.no_grad():
        fused.inverse(y)
    assert casts == [torch.bfloat16, torch.bfloat16]


@pytest.mark.parametrize(
    ("kwargs", "fused"),
    [
        (dict(coupling="affine", permutation="lu", conditioner="glow"), True),
        (dict(coupling="affine", permutation="conv", conditioner="glow"), False),  # dense 1x1 conv
        (dict(coupling="affine", permutation="lu", conditioner="gated"), False),
        (dict(coupling="affine", permutation="lu", conditioner="glow", mask="checkerboard"), False),
        (dict(coupling="affine", permutation="lu", conditioner="glow", cond_features=3), False),
        (dict(coupling="affine", permutation="shuffle", conditioner="glow"), False),
    ],
)
def test_which_steps_take_the_fused_path(kwargs, fused):
    step = make_step(4, 8, **kwargs)
    cond = torch.eye(3)[[0, 1]] if kwargs.get("cond_features") else None
    with torch.no_grad():
        step(torch.randn(2, 4, 4, 4), cond)
    assert step.fused_step() is fused


def test_a_step_whose_lu_matrix_is_swapped_leaves_the_fused_path():
    # glowflow.export traces a copy whose matrices are fixed buffers (FrozenMatrix): no LU factors to fold
    fused, plain = make_steps(2, "affine", torch.float64)
    x = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        y_ref, ld_ref = plain(x)
        for step in fused:
            step.layers[1].matrix = FrozenMatrix(step.layers[1].matrix)
        y, ld = fused(x)
        x_back, ld_inv = fused.inverse(y)
    assert not any(step.fused_step() for step in fused)
    assert max_abs(y, y_ref) < 1e-12 and max_abs(ld, ld_ref) < 1e-12 * max(1.0, ld_ref.abs().max().item())
    assert max_abs(x_back, x) < 1e-12 and max_abs(ld_inv, -ld) < 1e-12 * max(1.0, ld.abs().max().item())


def test_fused_path_stores_fewer_activations_than_the_plain_layers():
    fused, plain = make_steps(2, "affine", torch.float32, channels=8, hidden=8)
    batch, size = 5, 16
    x = torch.randn(batch, 8, size, size).contiguous(memory_format=CL)

    def saved_activation_bytes(module) -> int:
        storages: dict[int, int] = {}

        def pack(t):
            if t.shape[0] in (batch, batch * size * size):  # activations, not (folded) weights
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x)
        return sum(storages.values())

    # per step: plain ~7.5 tensors of C channels besides the two hidden ones, fused 3 (x and y shared, input, scale)
    assert saved_activation_bytes(fused) < 0.8 * saved_activation_bytes(plain)


# ---- the helpers --------------------------------------------------------------------------------------------------
def test_fold_actnorm_and_gain_equal_the_unfolded_maps():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    w, b, s = torch.randn(6, 3, 3, 3, dtype=torch.float64), torch.randn(6, dtype=torch.float64), torch.randn(6).double()
    wf, bf = fold_actnorm(w, b, s)
    expected = (F.conv2d(x, w, padding=1) + b.view(1, -1, 1, 1)) * s.exp().view(1, -1, 1, 1)
    assert max_abs(F.conv2d(x, wf, bf, padding=1), expected) < 1e-12
    logs = torch.randn(6, 1, 1, dtype=torch.float64)
    wg, bg = fold_gain(w, b, logs)
    assert max_abs(F.conv2d(x, wg, bg, padding=1), F.conv2d(x, w, b, padding=1) * (3 * logs).exp()) < 1e-12
    # batched over a leading K dimension, as FlowSteps uses them
    wk, bk = fold_actnorm(torch.stack([w, 2 * w]), torch.stack([b, b]), torch.stack([s, -s]))
    assert max_abs(wk[1], fold_actnorm(2 * w, b, -s)[0]) < 1e-12 and max_abs(bk[0], bf) < 1e-12


def test_scale_rows_of_a_list_stacks_and_passes_gradcheck():
    torch.manual_seed(0)
    weights = [torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    scale = torch.rand(2, 3, dtype=torch.float64, requires_grad=True)
    stacked = scale_rows(weights, scale)
    assert max_abs(stacked, torch.stack(weights) * scale.view(2, 3, 1, 1, 1)) < 1e-15
    assert torch.autograd.gradcheck(lambda s, *w: scale_rows(list(w), s), (scale, *weights), fast_mode=True)


def test_lu_weights_and_folded_mixing_invert_each_other_batched():
    torch.manual_seed(0)
    k, n = 3, 5
    perm = torch.stack([torch.eye(n, dtype=torch.float64)[torch.randperm(n)] for _ in range(k)])
    lower, upper = torch.randn(k, n, n, dtype=torch.float64), torch.randn(k, n, n, dtype=torch.float64)
    sign, log_s = torch.randn(k, n).sign().double(), torch.randn(k, n, dtype=torch.float64) * 0.3
    w = lu_weight(perm, lower, upper, sign, log_s)
    w_inv = lu_inverse_weight(perm, lower, upper, sign, log_s)
    assert max_abs(w @ w_inv, torch.eye(n, dtype=torch.float64).expand(k, n, n)) < 1e-10
    assert max_abs(torch.linalg.slogdet(w).logabsdet, log_s.sum(-1)) < 1e-10
    bias, log_scale = torch.randn(k, n, dtype=torch.float64), torch.randn(k, n, dtype=torch.float64)
    a, c = fold_mixing(w, bias, log_scale)
    a_inv, c_inv = fold_unmixing(w_inv, bias, log_scale)
    x = torch.randn(4, n, dtype=torch.float64)
    for i in range(k):
        h = mix_channels(x, a[i], c[i])
        assert max_abs(h, ((x + bias[i]) * log_scale[i].exp()) @ w[i].T) < 1e-12
        assert max_abs(mix_channels(h, a_inv[i], c_inv[i]), x) < 1e-10


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_fused_relu_kernels_match_the_plain_composition(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6).to(dtype).contiguous(memory_format=CL)
    w, b = torch.randn(5, 3, 3, 3).to(dtype), torch.randn(5).to(dtype)
    tol = 1e-5 if dtype != torch.bfloat16 else 5e-2
    with torch.no_grad():
        assert max_abs(conv_relu(x, w, b).float(), F.relu(F.conv2d(x, w, b, padding=1)).float()) < tol
        rows, w2, b2 = torch.randn(7, 5).to(dtype), torch.randn(4, 5).to(dtype), torch.randn(4).to(dtype)
        assert max_abs(linear_relu(rows, w2, b2).float(), F.relu(F.linear(rows, w2, b2)).float()) < tol
    # with autograd recording the helpers fall back to differentiable operations
    xg = x.detach().float().requires_grad_()
    conv_relu(xg, w.float(), b.float()).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def conv_case(c_in: int, c_out: int, k: int):
    """A float64 "same" convolution (channels-last input and output gradient) with its conv2d reference:
    ``(x, w, b, g, conv2d(x, w, b), autograd gradients of x, w, b for g)``."""
    torch.manual_seed(0)
    x = torch.randn(2, c_in, 5, 6, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    w = torch.randn(c_out, c_in, k, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c_out, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, c_out, 5, 6, dtype=torch.float64).contiguous(memory_format=CL)
    expected = F.conv2d(x, w, b, padding=k // 2)
    return x, w, b, g, expected, torch.autograd.grad(expected, (x, w, b), g)


@pytest.mark.parametrize(("c_in", "c_out"), [(3, 16), (16, 5), (16, 12)])  # im2col, col2im, direct
@pytest.mark.parametrize("k", [1, 3])
def test_conv_same_and_its_backward_equal_conv2d(c_in, c_out, k):
    x, w, b, g, expected, expected_grads = conv_case(c_in, c_out, k)
    with torch.no_grad():
        out = conv_same(x, w, b)
        grads = conv_same_backward(g, x, w)
        out_relu = conv_same(x, w, b, relu=True)
    assert max_abs(out, expected) < 1e-12 and max_abs(out_relu, expected.relu()) < 1e-12
    for got, want in zip(grads, expected_grads, strict=True):
        assert max_abs(got, want) < 1e-12
    # with autograd recording, the same computation is differentiable
    auto = torch.autograd.grad(conv_same(x, w, b), (x, w, b), g)
    assert all(max_abs(a, e) < 1e-12 for a, e in zip(auto, expected_grads, strict=True))


@pytest.mark.parametrize(("c_in", "c_out"), [(3, 16), (16, 5), (16, 12)])  # im2col, col2im, direct
@pytest.mark.parametrize("k", [1, 3])
def test_conv_same_and_its_backward_in_float32(c_in, c_out, k):
    """The float32 forms (im2col's weight gradient is oneDNN's convolution backward there, not the product) equal
    the float64 convolution to float32 rounding, values and gradients."""
    x, w, b, g, expected, expected_grads = conv_case(c_in, c_out, k)
    x32, w32, b32, g32 = (t.detach().float() for t in (x, w, b, g))
    with torch.no_grad():
        out = conv_same(x32, w32, b32)
        grads = conv_same_backward(g32, x32, w32)
    assert out.dtype == torch.float32 and max_abs(out, expected) < 1e-5 * expected.abs().max()
    for got, want in zip(grads, expected_grads, strict=True):
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert max_abs(got, want) < 1e-5 * want.abs().max()


@pytest.mark.parametrize(("c_out", "bound"), [(12, 8), (12, 24), (24, 12), (24, 24)])
def test_the_backward_takes_col2im_up_to_its_own_bound(c_out, bound, monkeypatch):
    """A float32 convolution to 12 or 24 channels: its forward stays direct (more than FEW_OUTPUT_CHANNELS), its
    backward takes the col2im form (unfold of the output gradient) exactly when FEW_OUTPUT_CHANNELS_BACKWARD >= c_out
    (AVX2's bound is 24), and either way values and gradients are the float64 convolution's to float32 rounding."""
    import glowflow.layers.fused as fused

    unfolded = []
    unfold_rows = fused._unfold_rows

    def unfold_spy(t, k):
        unfolded.append(t)
        return unfold_rows(t, k)

    monkeypatch.setattr(fused, "FEW_OUTPUT_CHANNELS", 8)
    monkeypatch.setattr(fused, "FEW_OUTPUT_CHANNELS_BACKWARD", bound)
    monkeypatch.setattr(fused, "_unfold_rows", unfold_spy)
    x, w, b, g, expected, expected_grads = conv_case(16, c_out, 3)
    x32, w32, b32, g32 = (t.detach().float() for t in (x, w, b, g))
    with torch.no_grad():
        out = conv_same(x32, w32, b32)
        assert not unfolded
        grads = conv_same_backward(g32, x32, w32)
    assert [t is g32 for t in unfolded] == ([True] if bound >= c_out else [])
    assert max_abs(out, expected) < 1e-5 * expected.abs().max()
    for got, want in zip(grads, expected_grads, strict=True):
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert max_abs(got, want) < 1e-5 * want.abs().max()


@pytest.mark.parametrize("amx", [True, False])
@pytest.mark.parametrize(("c_in", "c_out"), [(2, 16), (16, 4)])
def test_bf16_convolutions_with_few_channels(c_in, c_out, amx, monkeypatch):
    """On a CPU with AMX the bf16 convolutions and their data gradients are oneDNN's direct ones, never the im2col /
    col2im forms (faster there); only the weight gradient of a convolution with few output channels is the col2im
    product of the unfolded output gradient. Without AMX bf16 takes the rows forms as float32 does. Either way the
    result and the gradients are the convolution's to bf16 precision."""
    import glowflow.layers.fused as fused

    unfolded, rows_forms = [], []

    def unfold_spy(t, k):
        unfolded.append(t)
        return unfold_rows(t, k)

    def rows_spy(f):
        def spy(*args):
            if amx:
                raise AssertionError("a rows form of the convolution was taken in bf16 on AMX")
            rows_forms.append(f.__name__)
            return f(*args)

        return spy

    unfold_rows = fused._unfold_rows
    monkeypatch.setattr(fused, "_cpu_has_amx", lambda: amx)
    monkeypatch.setattr(fused, "_unfold_rows", unfold_spy)
    monkeypatch.setattr(fused, "_fold_rows", rows_spy(fused._fold_rows))
    monkeypatch.setattr(fused, "matmul", rows_spy(fused.matmul))
    torch.manual_seed(0)
    x = torch.randn(2, c_in, 6, 6).contiguous(memory_format=CL).requires_grad_()
    w, b = torch.randn(c_out, c_in, 3, 3, requires_grad=True), torch.randn(c_out, requires_grad=True)
    g = torch.randn(2, c_out, 6, 6).contiguous(memory_format=CL)
    expected = F.conv2d(x, w, b, padding=1)
    expected_grads = torch.autograd.grad(expected, (x, w, b), g)
    bf = [t.detach().bfloat16() for t in (x, w, b, g)]
    few_in = c_in <= fused.FEW_INPUT_CHANNELS
    with torch.no_grad():
        out = conv_same(bf[0], bf[1], bf[2])
        if amx:
            assert not unfolded
        else:
            assert [t is bf[0] for t in unfolded] == ([True] if few_in else [])
            assert rows_forms == ([] if few_in else ["matmul", "_fold_rows"])
        unfolded.clear()
        grads = conv_same_backward(bf[3], bf[0], bf[1])
    if amx:
        assert [t is bf[3] for t in unfolded] == ([True] if c_out <= fused.FEW_OUTPUT_CHANNELS else [])
    else:
        assert [t is (bf[0] if few_in else bf[3]) for t in unfolded] == [True]
    scale = expected.abs().max()
    assert max_abs(out.float(), expected) < 0.02 * scale
    for got, want in zip(grads, expected_grads, strict=True):
        assert max_abs(got.float(), want) < 0.02 * want.abs().max()
    # the bias gradient: the float32 sum rounded once to bf16 (channel_sum's, or the same inside oneDNN's backward)
    assert grads[2].dtype == torch.float32
    assert max_abs(grads[2], channel_sum(bf[3], (0, 2, 3))) <= 2.0**-8 * grads[2].abs().max()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_channel_sum_accumulates_in_float32_and_rounds_bf16_once(dtype):
    """Bias gradients: float32 / float64 sums in their dtype; a bf16 gradient's sum accumulated in float32, rounded
    once to bf16 (within one bf16 rounding of the exact sum, where bf16 accumulation misses by far more), returned
    as float32."""
    torch.manual_seed(0)
    grad = (torch.randn(64, 24, 32, 32) + 0.3).to(dtype).contiguous(memory_format=CL)
    exact = grad.double().sum((0, 2, 3))
    got = channel_sum(grad, (0, 2, 3))
    assert got.dtype == torch.promote_types(dtype, torch.float32) and got.shape == (24,)
    rel = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2.0**-8}[dtype]
    assert ((got.double() - exact).abs() / exact.abs()).max() <= rel
    if dtype == torch.bfloat16:
        assert max_abs(got, exact.to(torch.bfloat16).float()) <= max_abs(exact.to(torch.bfloat16).float(), exact)
        running = torch.zeros(24, dtype=torch.bfloat16)
        for b in grad.unbind(0):  # bf16 accumulation, for contrast
            running += b.sum((1, 2))
        assert ((running.double() - exact).abs() / exact.abs()).max() > 4 * 2.0**-8


@pytest.mark.parametrize("intel", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["rows", "channels_last", "contiguous", "strided rows"])
def test_channel_sum_of_every_layout_equals_the_reduction(dtype, layout, intel, monkeypatch):
    """The product with ones (rows, channels-last images, on an Intel CPU) and the reduction (any other layout, or
    another vendor's CPU) give the same sums; a shorter batch after a longer one reads a prefix of the kept ones, and
    the kept vector is never written."""
    from glowflow.layers import fused

    monkeypatch.setattr(fused, "_mkl_gemv_is_fast", lambda: intel)
    torch.manual_seed(0)
    for n in (7, 300, 5):
        if layout in ("rows", "strided rows"):
            grad, dims = torch.randn(n, 24 if layout == "rows" else 48, dtype=dtype), (0,)
            grad = grad if layout == "rows" else grad[:, ::2]
        else:
            grad, dims = torch.randn(n, 24, 4, 3, dtype=dtype), (0, 2, 3)
            grad = grad.contiguous(memory_format=CL) if layout == "channels_last" else grad
        taken = fused._channel_rows(grad, dims) is not None
        assert taken == (intel and layout in ("rows", "channels_last"))
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert max_abs(channel_sum(grad, dims), grad.sum(dims)) < tol * grad.abs().sum(dims).max()
    assert all(bool((ones == 1).all()) and ones.shape[0] >= 300 for ones in fused._ONES.values())


@pytest.mark.parametrize("size", [(5, 7), (1, 2), (2, 1)])
@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fold_rows_is_col2im_plus_bias(k, dtype, size):
    """``_fold_rows`` adds every row's k x k patch (columns in (i, j, c) order) around its position, as ``F.fold``
    does with (c, i, j) columns, plus the bias; the result is channels-last. Images smaller than the kernel too."""
    torch.manual_seed(0)
    (b, c), (h, w) = (2, 3), size
    rows, bias = torch.randn(b * h * w, k * k * c, dtype=dtype), torch.randn(c, dtype=dtype)
    like = torch.empty(b, c, h, w, dtype=dtype)
    cij = rows.view(b, h * w, k, k, c).permute(0, 4, 2, 3, 1).reshape(b, c * k * k, h * w)
    expected = F.fold(cij, (h, w), k, padding=k // 2)
    got = _fold_rows(rows, like, k, bias)
    assert got.shape == (b, c, h, w) and got.is_contiguous(memory_format=CL)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert max_abs(got, expected + bias.view(1, -1, 1, 1)) < tol
    assert max_abs(_fold_rows(rows, like, k), expected) < tol


@pytest.mark.parametrize("k", [1, 3, 5])
def test_fold_rows_gradients_are_the_unfold(k):
    """Where autograd records, ``_fold_rows``' backward (``_Fold``: the unfold of the output gradient) gives the
    gradients of rows and bias that autograd of ``F.fold`` gives, and passes gradcheck (float64)."""
    torch.manual_seed(1)
    b, c, h, w = 2, 3, 4, 6
    like = torch.empty(b, c, h, w, dtype=torch.float64)
    rows = torch.randn(b * h * w, k * k * c, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(c, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(b, c, h, w, dtype=torch.float64)
    (_fold_rows(rows, like, k, bias) * weights).sum().backward()
    got = rows.grad.clone(), bias.grad.clone()
    rows.grad = bias.grad = None
    cij = rows.view(b, h * w, k, k, c).permute(0, 4, 2, 3, 1).reshape(b, c * k * k, h * w)
    ((F.fold(cij, (h, w), k, padding=k // 2) + bias.view(1, -1, 1, 1)) * weights).sum().backward()
    assert max_abs(got[0], rows.grad) < 1e-12 and max_abs(got[1], bias.grad) < 1e-12
    assert torch.autograd.gradcheck(lambda r, s: _fold_rows(r, like, k, s), (rows.detach().requires_grad_(),
                                    bias.detach().requires_grad_()))  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_relu_backward_in_place_keeps_the_gradient_where_the_output_is_positive(dtype):
    """``grad * (out > 0)`` in place; bf16 runs on int16 views of the bits, which must select the same entries:
    +0 and -0 outputs (oneDNN's ReLU writes -0 for negative inputs) drop the gradient, positive ones keep it."""
    torch.manual_seed(0)
    rows = torch.randn(4, 5, 5, 6).relu().to(dtype)
    rows.view(-1)[::5] = -0.0
    out = rows.permute(0, 3, 1, 2)  # channels-last, as in the fused step
    grad = torch.randn(4, 6, 5, 5).to(dtype).contiguous(memory_format=CL)
    expected = torch.where(out > 0, grad, torch.zeros_like(grad))
    got = _relu_backward_(grad, out)
    assert got.data_ptr() == grad.data_ptr() and got.dtype == dtype
    assert torch.equal(got, expected)  # a selection: no rounding involved
    assert (got[out <= 0] == 0).all() and (got[out > 0] != 0).all()


@pytest.mark.parametrize(("p", "q"), [(40, 9), (9, 40), (16, 16)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rows_product_is_a_transposed_times_b_in_either_orientation(p, q, dtype):
    """``rows_product(a, b) = a^T b`` whichever operand is narrower (the narrower one becomes the product's rows)."""
    torch.manual_seed(0)
    a, b = torch.randn(300, p, dtype=dtype), torch.randn(300, q, dtype=dtype)
    got = rows_product(a, b)
    assert got.shape == (p, q)
    expected = a.double().t() @ b.double()
    assert max_abs(got, expected) < (1e-10 if dtype == torch.float64 else 1e-4) * expected.abs().max()
    assert got.is_contiguous() == (q >= p)


@pytest.mark.parametrize(("threads", "n"), [(2, 4096), (3, 6144), (2, 4097), (1, 4096)])
@pytest.mark.parametrize(("p", "q"), [(40, 9), (9, 40), (16, 16)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_rows_product_in_row_blocks_per_thread_is_a_transposed_times_b(threads, n, p, q, dtype):
    """With >= 2048 rows per thread the rows are cut into one block per thread and the blocks' products summed (the
    first two cases); with rows that do not divide, or one thread, it is one product: ``a^T b`` either way."""
    torch.manual_seed(0)
    a, b = torch.randn(n, p, dtype=dtype), torch.randn(n, q, dtype=dtype)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = rows_product(a, b)
    finally:
        torch.set_num_threads(before)
    expected = a.double().t() @ b.double()
    assert got.shape == (p, q) and got.dtype == dtype
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2}[dtype]
    assert max_abs(got, expected) < tol * expected.abs().max()
    assert got.is_contiguous() == (q >= p)


@pytest.mark.parametrize(("n", "p", "q"), [(8192, 256, 36), (4097, 18, 256), (300, 1, 7), (5, 9, 40)])
def test_conv1x1_weight_gradient_is_a_transposed_times_b(n, p, q):
    """oneDNN's 1x1-convolution weight gradient of the rows viewed as (1, C, N, 1) images is ``a^T b``."""
    torch.manual_seed(0)
    a, b = torch.randn(n, p), torch.randn(n, q)
    got = conv1x1_weight_gradient(a, b)
    expected = a.double().t() @ b.double()
    assert got.shape == (p, q) and got.dtype == torch.float32 and got.is_contiguous()
    assert max_abs(got, expected) < 1e-5 * expected.abs().max()


@pytest.mark.parametrize(("intel", "block", "dtype", "n", "taken"), [
    (False, 16, torch.float32, 8192, True),  # Zen 5's case
    (False, 16, torch.float32, 256, False),  # below ONEDNN_WEIGHT_GRADIENT_MACS
    (True, 16, torch.float32, 8192, False),  # MKL's tuned paths on an Intel CPU
    (False, 8, torch.float32, 8192, False),  # AVX2 only: not measured, MKL's product stays
    (False, 16, torch.float64, 8192, False),
])  # fmt: skip
def test_rows_product_takes_the_onednn_weight_gradient_where_its_rule_says(intel, block, dtype, n, taken, monkeypatch):
    monkeypatch.setattr(fused_module, "_mkl_gemv_is_fast", lambda: intel)
    monkeypatch.setattr(fused_module, "CPU_OUTPUT_CHANNEL_BLOCK", block)
    torch.manual_seed(0)
    a, b = torch.randn(n, 128, dtype=dtype), torch.randn(n, 128, dtype=dtype)
    with _Ops() as ops:
        got = rows_product(a, b)
    assert ("aten.convolution_backward" in ops.names) == (taken and torch.backends.mkldnn.is_available())
    expected = a.double().t() @ b.double()
    assert max_abs(got, expected) < 1e-5 * expected.abs().max()


@pytest.mark.parametrize("coupling", ["affine", "additive"])
def test_a_level_of_fused_steps_has_the_same_float32_gradients_with_the_onednn_weight_gradient(coupling, monkeypatch):
    """The fused steps' backward with every weight-gradient product taken by :func:`conv1x1_weight_gradient` (the
    rule forced on, any CPU) against MKL's products: the same gradients up to float32 rounding."""
    product = fused_module.conv1x1_weight_gradient
    fused, _ = make_steps(2, coupling, torch.float32, channels=8, hidden=32)
    w = glow_step_weights(list(fused), inverse=False)
    x = torch.randn(4, 8, 8, 8).contiguous(memory_format=CL)
    inputs = [t.detach().clone().requires_grad_() for t in (x, w.mix, w.mix_bias, *w.net.tensors())]

    def grads() -> tuple[Tensor, ...]:
        weights = type(w)(inputs[1], inputs[2], w.mix_logdet.detach(), type(w.net)(*inputs[3:]))
        y, ld = glow_steps(inputs[0], weights, affine=coupling == "affine")
        return torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() + ld.sum(), inputs)

    monkeypatch.setattr(fused_module, "ONEDNN_WEIGHT_GRADIENT_MACS", 2**63)
    plain = grads()
    monkeypatch.setattr(fused_module, "ONEDNN_WEIGHT_GRADIENT_MACS", 0)
    monkeypatch.setattr(fused_module, "_mkl_gemv_is_fast", lambda: False)
    monkeypatch.setattr(fused_module, "CPU_OUTPUT_CHANNEL_BLOCK", 16)
    calls = []
    monkeypatch.setattr(fused_module, "conv1x1_weight_gradient", lambda a, b: calls.append(1) or product(a, b))
    onednn = grads()
    assert len(calls) >= 4 or not torch.backends.mkldnn.is_available()  # each step's 1x1 and output convolution
    for got, want in zip(onednn, plain, strict=True):
        assert max_abs(got, want) < 1e-5 * want.abs().max()


@pytest.mark.parametrize(("c_in", "c_out"), [(3, 16), (16, 5)])  # im2col, col2im
@pytest.mark.parametrize("k", [1, 3])
def test_conv_same_and_its_backward_equal_conv2d_under_torch_compile(c_in, c_out, k):
    """While torch.compile traces, im2col is k*k concatenated windows instead of an overlapping strided view
    (``_unfold_rows``): the same values as eager mode, forward, hand-derived backward and autograd."""
    torch._dynamo.reset()
    x, w, b, g, expected, expected_grads = conv_case(c_in, c_out, k)

    def no_grad(x, w, b, g):
        with torch.no_grad():
            return conv_same(x, w, b), *conv_same_backward(g, x, w)

    out, *grads = torch.compile(no_grad, backend="aot_eager", fullgraph=True)(x, w, b, g)
    assert max_abs(out, expected) < 1e-12
    assert all(max_abs(a, e) < 1e-12 for a, e in zip(grads, expected_grads, strict=True))
    traced = torch.compile(conv_same, backend="aot_eager", fullgraph=True)(x, w, b)
    auto = torch.autograd.grad(traced, (x, w, b), g)
    assert max_abs(traced, expected) < 1e-12
    assert all(max_abs(a, e) < 1e-12 for a, e in zip(auto, expected_grads, strict=True))
    torch._dynamo.reset()


def test_a_fused_step_is_a_plain_flowstep_in_its_state_dict():
    fused, _ = make_steps(2, "affine", torch.float32)
    keys = set(fused.state_dict())
    plain = FlowSequence(*[make_step(4, 8, coupling="affine", permutation="lu", conditioner="glow") for _ in range(2)])
    assert keys == set(plain.state_dict())
    assert isinstance(fused[0], FlowStep)


def test_fused_relu_kernels_fall_back_where_onednn_has_none(monkeypatch):
    """oneDNN has no bf16 inner-product / convolution kernels on CPUs without AVX-512 ("could not create a
    primitive descriptor"): the fused ReLU kernels then fall back to the plain composition for that dtype, for
    good, instead of failing the step."""
    import glowflow.layers.fused as fused

    def missing(*args, **kwargs):
        raise RuntimeError("could not create a primitive descriptor for the inner product forward propagation")

    monkeypatch.setattr(fused, "_NO_FUSED_KERNEL", set())
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", missing)
    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", missing)
    torch.manual_seed(0)
    x, w, b = torch.randn(6, 5), torch.randn(3, 5), torch.randn(3)
    img, k, kb = torch.randn(2, 4, 5, 5), torch.randn(3, 4, 3, 3), torch.randn(3)
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            rows = fused.linear_relu(x.to(dtype), w.to(dtype), b.to(dtype))
            torch.testing.assert_close(rows, torch.relu(x.to(dtype) @ w.to(dtype).T + b.to(dtype)))
            maps = fused.conv_relu(img.to(dtype), k.to(dtype), kb.to(dtype))
            torch.testing.assert_close(maps, torch.relu(F.conv2d(img.to(dtype), k.to(dtype), kb.to(dtype), padding=1)))
    assert fused._NO_FUSED_KERNEL == {torch.float32, torch.bfloat16}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matmul_equals_the_plain_product_for_every_layout(dtype):
    """oneDNN's product (float32 on CPU, autograd off) and the torch.mm fallback (float64, a transposed operand,
    autograd recording) against ``a @ b``."""
    torch.manual_seed(0)
    a, b = torch.randn(300, 40, dtype=dtype), torch.randn(40, 24, dtype=dtype)
    expected = a.double() @ b.double()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    with torch.no_grad():
        for x, w in ((a, b), (a, b.t().contiguous().t()), (a.t().contiguous().t(), b)):
            assert max_abs(matmul(x, w), expected) < tol * expected.abs().max().item()
    a.requires_grad_()
    out = matmul(a, b)
    assert out.requires_grad and max_abs(out, expected) < tol * expected.abs().max().item()


def test_matmul_of_mixed_dtypes_does_not_disable_the_onednn_kernels():
    """A dtype mismatch is the caller's error (torch.mm raises), not a kernel this CPU lacks: it must not switch the
    oneDNN kernels off for the rest of the process."""
    from glowflow.layers import fused

    before = set(fused._NO_FUSED_KERNEL)
    with torch.no_grad(), pytest.raises(RuntimeError):
        matmul(torch.randn(4, 3), torch.randn(3, 2, dtype=torch.float64))
    assert fused._NO_FUSED_KERNEL == before


@pytest.mark.parametrize("block", [None, 8, 16])
def test_padded_out_channels_give_the_same_level(monkeypatch, block):
    """The out conv's zero filters (``padded_out_channels``) change neither the map, its log-det nor the gradients,
    and the in-place inverse (``overwrite``) inverts it: checked against the plain layers in float64."""
    from glowflow.layers import fused
    from glowflow.models import Glow

    monkeypatch.setattr(fused, "CPU_OUTPUT_CHANNEL_BLOCK", block)
    torch.manual_seed(0)
    model = Glow((3, 8, 8), levels=2, steps=3, hidden=16).double()
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64) - 0.5
    with torch.no_grad():
        model.log_prob(x)  # ActNorm initialisation
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert fused.padded_out_channels(12, torch.device("cpu")) == (12 if block is None else 16)
    lp = model.log_prob(x)
    lp.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        zs, _ = model.encode(x)
        back = model.decode(zs)
    assert max_abs(back, x) < 1e-10
    monkeypatch.setattr(fused, "CPU_OUTPUT_CHANNEL_BLOCK", None)
    model.zero_grad()
    lp_plain = model.log_prob(x)
    lp_plain.sum().backward()
    assert max_abs(lp, lp_plain) < 1e-9
    assert max(max_abs(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True)) < 1e-9


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_first_hidden_activation_stored_or_recomputed_gives_the_same_gradients(monkeypatch, keep, dtype, tol):
    """The fused step's backward with its first hidden activation stored (``keeps_first_hidden``) and recomputed:
    both equal the plain layers' gradients, and storing it saves one more activation per step."""
    from glowflow.layers import fused

    monkeypatch.setattr(fused, "KEEP_FIRST_HIDDEN_FLOPS_PER_BYTE", 0 if keep else float("inf"))
    steps, plain = make_steps(2, "affine", dtype, channels=20)
    x = torch.randn(3, 20, 4, 4, dtype=dtype).contiguous(memory_format=CL)
    g = (torch.randn(3, 20, 4, 4, dtype=dtype), torch.randn(3, dtype=dtype))
    y1, ld1, gx1, gp1 = grads(steps, x, g)
    y2, ld2, gx2, gp2 = grads(plain, x, g)
    assert max_abs(y1, y2) < tol * max(1.0, y2.abs().max().item())
    assert max_abs(gx1, gx2) < tol * max(1.0, gx2.abs().max().item())
    for name in gp2:
        assert max_abs(gp1[name], gp2[name]) < tol * max(1.0, gp2[name].abs().max().item()), name
    shapes = []  # of the saved tensors
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        steps(x.requires_grad_())
    assert shapes.count((3, 8, 4, 4)) == (4 if keep else 2)  # hidden: a2 of each step, and a1 where kept
    assert shapes.count((3, 10, 4, 4)) == 2  # half the channels: each step's scale, not the conditioner's input


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), (torch.float32, 2e-5), (torch.bfloat16, None)])
def test_im2col_columns_kept_for_the_backward_give_the_same_gradients(monkeypatch, dtype, tol):
    """A level whose first convolutions take the im2col form (2 of 4 channels into the conditioner) stores each
    step's columns for the backward pass where its weight gradient is their product (``keeps_columns``: float64,
    bf16), which also recomputes the first hidden activation from them, instead of unfolding the input twice more;
    float32 stores none. Either way the same gradients as unfolding again, and as the plain layers' (float64 /
    float32). bf16 runs the rows forms (no AMX)."""
    from glowflow.layers import fused

    monkeypatch.setattr(fused, "_cpu_has_amx", lambda: False)
    steps, plain = make_steps(2, "affine", torch.float32 if dtype == torch.bfloat16 else dtype, channels=4)
    if dtype == torch.bfloat16:
        for s in steps:
            s.layers[2].precision = "bf16"
    x = torch.randn(3, 4, 6, 6, dtype=steps.layers[0].layers[0].bias.dtype).contiguous(memory_format=CL)
    g = (torch.randn_like(x), torch.randn(3, dtype=x.dtype))
    unfolded = []
    unfold_rows = fused._unfold_rows
    monkeypatch.setattr(fused, "_unfold_rows", lambda t, k: unfolded.append(t.shape) or unfold_rows(t, k))
    shapes = []  # of the saved tensors
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        kept = grads(steps, x, g)
    stored = dtype != torch.float32
    assert shapes.count((3 * 6 * 6, 9 * 2)) == (2 if stored else 0)  # each step's columns
    # each conditioner input unfolded in the forward pass, then for the recomputation (and the product) unless stored
    assert unfolded.count((3, 2, 6, 6)) == (2 if stored else 4)
    monkeypatch.setattr(fused, "keeps_columns", lambda cols: None)
    unfolded.clear()
    again = grads(steps, x, g)
    assert unfolded.count((3, 2, 6, 6)) == (6 if stored else 4)
    references = [again] if tol is None else [again, grads(plain, x, g)]
    for reference in references:
        *outputs, params = reference
        for got, want in [*zip(kept[:3], outputs, strict=True), *((kept[3][n], params[n]) for n in params)]:
            assert max_abs(got, want) <= (tol or 1e-6) * max(1.0, want.abs().max().item())


def test_im2col_columns_are_stored_where_the_backward_multiplies_them():
    from glowflow.layers.fused import keeps_columns

    cols32, cols64, cols16 = torch.ones(36, 18), torch.ones(36, 18, dtype=torch.float64), torch.ones(36, 18).bfloat16()
    assert keeps_columns(None) is None  # no im2col convolution
    assert keeps_columns(cols32) is None  # float32's weight gradient is oneDNN's, from the input
    assert keeps_columns(cols64) is cols64 and keeps_columns(cols16) is cols16  # the product's operand


def test_first_hidden_activation_is_kept_where_recomputing_it_is_dear():
    from glowflow.layers.fused import keeps_first_hidden

    a1_fp32, a1_bf16 = torch.empty(1, 128, 8, 8), torch.empty(1, 128, 8, 8, dtype=torch.bfloat16)
    conv1 = {c: torch.empty(128, c, 3, 3) for c in (2, 4, 6, 12, 24)}
    assert [keeps_first_hidden(conv1[c], a1_fp32) for c in (2, 4, 6, 12, 24)] == [False] * 4 + [True]
    bf16 = [keeps_first_hidden(conv1[c].bfloat16(), a1_bf16) for c in (2, 4, 6, 12, 24)]
    assert bf16 == [False] * 3 + [True] * 2


def test_intel_cpu_by_name_then_by_the_kernel_vendor(monkeypatch, tmp_path):
    """The vendor rule of ``channel_sum``: an Intel name decides; otherwise /proc/cpuinfo's vendor_id, and a CPU
    that cannot be told (no such file) is not taken for an Intel one."""
    import builtins

    from glowflow.layers import fused

    assert fused._intel_cpu({"cpu_name": "Intel(R) Xeon(R) Platinum"})
    real_open = builtins.open
    for vendor, expected in (("GenuineIntel", True), ("AuthenticAMD", False)):
        info = tmp_path / f"cpuinfo-{vendor}"
        info.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\nmodel name\t: Some CPU\n")
        monkeypatch.setattr(builtins, "open", lambda path, *a, info=info, **k: real_open(info, *a, **k))
        assert fused._intel_cpu({"cpu_name": "Some CPU"}) is expected

    def missing(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(builtins, "open", missing)
    assert fused._intel_cpu({}) is False


class _Ops(TorchDispatchMode):
    """The names of the operators a block dispatches."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mkl", [False, True])
def test_inference_products_take_mkl_by_the_rule_with_the_same_values(mkl, monkeypatch):
    """``inference`` products go to MKL where :data:`MKL_INFERENCE_PRODUCTS` says so (AVX2-only CPUs), to oneDNN
    otherwise; a training step's (``inference`` False) always to oneDNN; the values are the plain products'."""
    from glowflow.layers import fused

    monkeypatch.setattr(fused, "MKL_INFERENCE_PRODUCTS", mkl)
    torch.manual_seed(0)
    rows, w, b = torch.randn(300, 40), torch.randn(24, 40), torch.randn(24)
    expected = F.relu(F.linear(rows.double(), w.double(), b.double()))
    onednn = "mkldnn._linear_pointwise"
    with torch.no_grad():
        for inference in (False, True):
            with _Ops() as ops:
                out, product = linear_relu(rows, w, b, inference), matmul(rows, w.t().contiguous(), inference)
            assert max_abs(out, expected) < 1e-5 * expected.abs().max().item()
            assert max_abs(product, rows.double() @ w.double().t()) < 1e-4
            if torch.backends.mkldnn.is_available():
                assert (onednn in ops.names) == (not (mkl and inference)), (inference, ops.names)


@pytest.mark.parametrize("channels", [4, 20])  # im2col / col2im products and the direct convolutions' 1x1 product
def test_a_level_scores_and_inverts_alike_with_either_product_library(channels, monkeypatch):
    from glowflow.layers import fused

    level = make_steps(3, "affine", torch.float32, channels=channels, hidden=16)[0]
    x = torch.randn(3, channels, 4, 4).contiguous(memory_format=CL)
    results = []
    for mkl in (False, True):
        monkeypatch.setattr(fused, "MKL_INFERENCE_PRODUCTS", mkl)
        level.pack()  # drop the kept weights: each library's pass from the start
        with torch.no_grad():
            y, logdet = level(x)
            x_back, _ = level.inverse(y)
        results.append((y, logdet))
        assert max_abs(x_back, x) < 1e-5
    (y0, ld0), (y1, ld1) = results
    assert max_abs(y0, y1) < 1e-5 * max(1.0, y0.abs().max().item())
    assert max_abs(ld0, ld1) < 1e-5 * max(1.0, ld0.abs().max().item())
