"""A level of fused steps keeps its folded weights, convolutions prepacked, from one pass with autograd off to the
next (FlowSteps._inference_weights): the same values as folding in every pass, and never stale."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

import glowflow.layers.fused as fused_module
import glowflow.layers.step as step_module
from glowflow import Glow
from glowflow.layers.fused import (
    Col2imWeight,
    Im2colWeight,
    conv_same,
    linear_relu,
    prepack_conv_weight,
    prepack_linear_weight,
)
from tests.helpers import jacobian_logdet, max_abs, randomize_
from tests.layers.test_fast_paths import make_steps

CL = torch.channels_last
PREPACKS = prepack_conv_weight(torch.zeros(16, 10, 3, 3).contiguous(memory_format=CL), (2, 10, 4, 4)).is_mkldnn
needs_prepacking = pytest.mark.skipif(not PREPACKS, reason="oneDNN's direct convolution is not available here")


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 2e-5) -> bool:
    return max_abs(a, b) <= tol * max(1.0, b.abs().max().item())


def _reference(level, x: torch.Tensor, inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The level's pass with autograd on (weights folded afresh, convolutions unpacked)."""
    with torch.enable_grad():
        y, logdet = (level.inverse if inverse else level)(x.clone().requires_grad_())
    return y.detach(), logdet.detach()


def _count_folds(monkeypatch) -> list[int]:
    calls = [0]
    fold = step_module.fold_steps

    def counted(*args, **kwargs):
        calls[0] += 1
        return fold(*args, **kwargs)

    monkeypatch.setattr(step_module, "fold_steps", counted)
    return calls


@needs_prepacking
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize(("c_in", "c_out", "size"), [(6, 16, 8), (12, 24, 4), (16, 48, 2), (128, 16, 4)])
def test_a_prepacked_weight_gives_the_convolution_for_inputs_of_any_shape(c_in, c_out, size, relu):
    torch.manual_seed(0)
    weight = torch.randn(c_out, c_in, 3, 3).contiguous(memory_format=CL) * 0.2
    bias = torch.randn(c_out)
    packed = prepack_conv_weight(weight, (4, c_in, size, size))
    assert packed.is_mkldnn and packed.shape == weight.shape
    with torch.no_grad():
        for shape in [(4, c_in, size, size), (3, c_in, size, size), (2, c_in, 2 * size, size)]:
            x = torch.randn(shape).contiguous(memory_format=CL)
            expected = F.conv2d(x, weight, bias, padding=1)
            expected = expected.relu() if relu else expected
            out = conv_same(x, packed, bias, relu=relu)
            assert out.shape == expected.shape and _close(out, expected, 1e-5), shape
            assert _close(out, conv_same(x, weight, bias, relu=relu), 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_prepacked_linear_weight_gives_the_product_for_any_number_of_rows(dtype, monkeypatch):
    """The 1x1 convolution's weight in oneDNN's layout (prepacked for 64 rows): ``relu(x W^T + b)`` for other row
    counts too, as the plain weight gives it."""
    monkeypatch.setattr(fused_module, "MKL_INFERENCE_PRODUCTS", False)  # oneDNN's products, as with AVX-512
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bfloat16 for oneDNN")
    torch.manual_seed(0)
    weight, bias = (torch.randn(24, 16) * 0.3).to(dtype), torch.randn(24).to(dtype)
    packed = prepack_linear_weight(weight, 64)
    if not packed.is_mkldnn:
        pytest.skip("oneDNN's products are not available here")
    assert packed.shape == weight.shape and packed.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    with torch.no_grad():
        for rows in (64, 7, 300):
            x = torch.randn(rows, 16).to(dtype)
            expected = torch.relu(x.double() @ weight.double().t() + bias.double())
            got = linear_relu(x, packed, bias, inference=True)
            assert got.shape == (rows, 24) and got.dtype == dtype
            assert _close(got.double(), expected, tol) and _close(got, linear_relu(x, weight, bias, True), tol)


def test_a_linear_weight_stays_as_it_is_where_onednn_s_product_would_not_serve(monkeypatch):
    weight = torch.randn(8, 8)
    double = weight.double()
    assert prepack_linear_weight(double, 64) is double  # float64: not oneDNN's
    recording = weight.clone().requires_grad_()
    assert prepack_linear_weight(recording, 64) is recording  # autograd records
    monkeypatch.setattr(fused_module, "MKL_INFERENCE_PRODUCTS", True)  # an AVX2 CPU: MKL's products
    assert prepack_linear_weight(weight, 64) is weight


@pytest.mark.parametrize(
    ("c_out", "c_in", "dtype"),
    [(16, 2, torch.float64), (16, 8, torch.float64)],  # im2col, direct: not oneDNN's
)
def test_weights_of_the_other_forms_stay_as_they_are(c_out, c_in, dtype):
    weight = torch.randn(c_out, c_in, 3, 3, dtype=dtype)
    assert prepack_conv_weight(weight, (2, c_in, 4, 4)) is weight
    for recording in (torch.randn(16, 8, 3, 3, requires_grad=True), torch.randn(4, 16, 3, 3, requires_grad=True)):
        assert prepack_conv_weight(recording, (2, recording.shape[1], 4, 4)) is recording  # autograd records


@pytest.mark.parametrize("mkl", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize(("c_in", "c_out"), [(2, 16), (16, 4)])  # im2col, col2im
def test_im2col_and_col2im_weights_prepack_their_products(c_in, c_out, relu, mkl, monkeypatch):
    """float32 weights of the im2col / col2im forms come back with their products' weights in oneDNN's layout where
    its products serve (not with MKL's, :data:`MKL_INFERENCE_PRODUCTS`), and give the convolution for inputs of any
    shape."""
    monkeypatch.setattr(fused_module, "MKL_INFERENCE_PRODUCTS", mkl)
    torch.manual_seed(0)
    weight, bias = torch.randn(c_out, c_in, 3, 3) * 0.2, torch.randn(c_out)
    prepared = prepack_conv_weight(weight, (4, c_in, 6, 6))
    onednn = prepack_linear_weight(torch.zeros(4, 4), 8).is_mkldnn  # oneDNN's products here, not MKL's
    if c_in == 2:
        assert (isinstance(prepared, Im2colWeight) and prepared.packed.is_mkldnn) if onednn else prepared is weight
    else:
        assert isinstance(prepared, Col2imWeight) and (prepared.packed is not None) == onednn
        assert prepared.packed is None or prepared.packed.is_mkldnn
    with torch.no_grad():
        for shape in [(4, c_in, 6, 6), (3, c_in, 5, 7)]:
            x = torch.randn(shape).contiguous(memory_format=CL)
            expected = F.conv2d(x, weight, bias, padding=1)
            expected = expected.relu() if relu else expected
            assert _close(conv_same(x, prepared, bias, relu=relu, inference=True), expected, 1e-5), shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_col2im_weight_is_prepared_once_with_the_convolution_s_values(dtype):
    torch.manual_seed(0)
    weight, bias = torch.randn(4, 16, 3, 3, dtype=dtype), torch.randn(4, dtype=dtype)  # few output channels
    prepared = prepack_conv_weight(weight, (2, 16, 4, 4))
    assert isinstance(prepared, Col2imWeight) and prepared.shape == weight.shape and prepared.dtype == dtype
    x = torch.randn(3, 16, 5, 6, dtype=dtype).contiguous(memory_format=CL)
    with torch.no_grad():
        expected = F.conv2d(x, weight, bias, padding=1)
        assert _close(conv_same(x, prepared, bias), expected, 1e-12 if dtype == torch.float64 else 1e-5)


@needs_prepacking
@pytest.mark.parametrize("coupling", ["affine", "additive"])
def test_kept_weights_serve_the_next_passes_with_the_values_of_folding_every_pass(coupling, monkeypatch):
    level = make_steps(3, coupling, torch.float32, channels=20, hidden=16)[0]
    x = torch.randn(3, 20, 4, 4).contiguous(memory_format=CL)
    folds = _count_folds(monkeypatch)
    with torch.no_grad():
        y, logdet = level(x)
        assert level._kept is not None and folds[0] == 1
        assert all(s.net.conv1.is_mkldnn and s.net.out.is_mkldnn for s in level._kept.steps)
        assert all(s.net.conv2.is_mkldnn for s in level._kept.steps) or fused_module.MKL_INFERENCE_PRODUCTS
        y2, logdet2 = level(x)
        assert folds[0] == 1  # kept: not folded again
        x_back, logdet_back = level.inverse(y)  # the other direction folds its own
        x_back2, _ = level.inverse(y)
        assert folds[0] == 2
    y_ref, logdet_ref = _reference(level, x)
    assert _close(y, y_ref) and _close(logdet, logdet_ref)
    assert torch.equal(y, y2) and torch.equal(logdet, logdet2)
    assert _close(x_back, x, 1e-5) and torch.equal(x_back, x_back2)
    assert _close(logdet_back, -logdet)


def _change_data(level):
    conv1 = level[1].layers[2].net.conv1.conv.weight
    conv1.data.mul_(1.5)  # through .data: the version counter does not move


def _change_in_place(level):
    with torch.no_grad():
        level[0].layers[0].bias.add_(0.25)  # an ActNorm bias


def _change_by_an_optimizer(level):
    optimizer = torch.optim.Adam(level.parameters(), lr=0.01)
    y, logdet = level(torch.randn(3, 20, 4, 4))
    (y.square().sum() - logdet.sum()).backward()
    optimizer.step()


def _change_by_loading(level):
    other = make_steps(3, "affine", torch.float32, channels=20, hidden=16, seed=1)[0]
    level.load_state_dict(other.state_dict())


def _change_an_lu_buffer(level):
    level[2].layers[1].matrix.sign_s.data[0] *= -1


@needs_prepacking
@pytest.mark.parametrize(
    "change", [_change_data, _change_in_place, _change_by_an_optimizer, _change_by_loading, _change_an_lu_buffer]
)
@pytest.mark.parametrize("inverse", [False, True])
def test_kept_weights_follow_every_change_of_the_parameters(change, inverse):
    level = make_steps(3, "affine", torch.float32, channels=20, hidden=16)[0]
    run = level.inverse if inverse else level
    x = torch.randn(3, 20, 4, 4).contiguous(memory_format=CL)
    with torch.no_grad():
        before, _ = run(x)
        assert level._kept is not None
    change(level)
    fresh = copy.deepcopy(level)  # a copy keeps nothing: it folds the changed parameters afresh
    assert fresh._kept is None
    with torch.no_grad():
        after, logdet = run(x)  # the same direction and shape as before: only the parameters tell
        expected, expected_logdet = (fresh.inverse if inverse else fresh)(x)
    assert max_abs(after, before) > 1e-3  # the change is real
    assert _close(after, expected, 1e-6) and _close(logdet, expected_logdet, 1e-6)


@needs_prepacking
def test_kept_weights_follow_a_kind_that_is_stacked_afresh_in_every_pass(monkeypatch):
    """A tensor moved off its pack (``.data`` re-pointed) is stacked with its kind in every pass, a new tensor each
    time: the kept weights still serve while the values are unchanged and are refolded when they change."""
    level = make_steps(3, "affine", torch.float32, channels=20, hidden=16)[0]
    bias = level[1].layers[0].bias  # an ActNorm bias
    bias.data = bias.data.clone()  # its pack no longer holds it
    x = torch.randn(3, 20, 4, 4).contiguous(memory_format=CL)
    folds = _count_folds(monkeypatch)
    with torch.no_grad():
        y, _ = level(x)
        assert torch.equal(level(x)[0], y) and folds[0] == 1  # kept
        bias.add_(0.25)
        y_changed, logdet = level(x)
    assert folds[0] == 2 and max_abs(y_changed, y) > 1e-3
    y_ref, logdet_ref = _reference(level, x)
    assert _close(y_changed, y_ref) and _close(logdet, logdet_ref)


@needs_prepacking
def test_kept_weights_are_refolded_for_another_input_shape_and_dropped_by_training_and_moves():
    level = make_steps(3, "affine", torch.float32, channels=20, hidden=16)[0]
    with torch.no_grad():
        for batch, size in [(3, 4), (5, 4), (2, 8), (3, 4)]:
            x = torch.randn(batch, 20, size, size).contiguous(memory_format=CL)
            y, logdet = level(x)
            assert level._kept.key[-1] == x.shape
            y_ref, logdet_ref = _reference(level, x)
            assert _close(y, y_ref) and _close(logdet, logdet_ref)
    pickle.loads(pickle.dumps(level))  # the opaque oneDNN tensors are not part of the state
    assert copy.deepcopy(level)._kept is None
    level.double()
    assert level._kept is None
    x64 = torch.randn(3, 20, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        y64, _ = level(x64)
    assert y64.dtype == torch.float64 and _close(y64, _reference(level, x64)[0], 1e-12)
    level.float()
    with torch.no_grad():
        level(x.float())
    assert level._kept is not None
    level(x)  # autograd on: training is about to change the parameters
    assert level._kept is None


def test_a_level_with_few_channels_keeps_its_col2im_weights():
    level = make_steps(3, "affine", torch.float32, channels=4)[0]  # im2col / col2im conditioner convolutions
    x = torch.randn(3, 4, 4, 4).contiguous(memory_format=CL)
    with torch.no_grad():
        y, logdet = level(x)
        assert level._kept is not None and all(isinstance(s.net.out, Col2imWeight) for s in level._kept.steps)
        x_back, _ = level.inverse(y)
    y_ref, logdet_ref = _reference(level, x)
    assert _close(y, y_ref) and _close(logdet, logdet_ref) and _close(x_back, x, 1e-5)


def test_nothing_is_kept_where_no_convolution_is_prepacked():
    level = make_steps(3, "affine", torch.float64, channels=20, hidden=16)[0]  # float64: direct, plain weights
    with torch.no_grad():
        level(torch.randn(3, 20, 4, 4, dtype=torch.float64))
    assert level._kept is None


@needs_prepacking
def test_a_glow_scores_round_trips_and_samples_with_kept_weights_after_its_parameters_change():
    torch.manual_seed(0)
    model = Glow((3, 8, 8), levels=1, steps=3, hidden=16)
    k = torch.randint(0, 256, (6, 3, 8, 8))
    x = (k + torch.rand(k.shape)) / 256 - 0.5
    model.log_prob(x)  # ActNorm initialisation
    with torch.no_grad():
        zs = model.encode(x)[0]
    for _ in range(2):  # each pass runs after the same pass with other parameters
        with torch.no_grad():
            randomize_(model, 0.02)
            fresh = copy.deepcopy(model)
            lp, lp_again = model.log_prob(x), model.log_prob(x)
            assert torch.equal(lp, lp_again) and _close(lp, fresh.log_prob(x), 1e-6)
            assert _close(model.decode(zs), fresh.decode(zs), 1e-6)
            zs = model.encode(x)[0]
            assert _close(model.decode(zs), x, 1e-5)
    for _ in range(2):
        torch.manual_seed(1)
        samples = model.sample(4, 0.7)
        torch.manual_seed(1)
        assert _close(samples, copy.deepcopy(model).sample(4, 0.7), 1e-6)
        with torch.no_grad():
            randomize_(model, 0.02)
    kept = model.levels[0].layers[1]._kept  # made under the inference mode of sample: ordinary tensors all the same
    assert kept is not None and not any(t.is_inference() for t in (*kept.copies, kept.mix_logdet, kept.steps[0].mix))


@pytest.mark.parametrize(("dtype", "channels", "tol"), [(torch.float64, 4, 1e-9), (torch.float32, 20, 1e-4)])
def test_kept_weights_log_det_is_the_autograd_jacobian_s_and_the_map_inverts(dtype, channels, tol):
    """The passes with autograd off, on kept weights (col2im matrices in float64, oneDNN's prepacked convolutions in
    float32): their log-det against log|det| of the full Jacobian of the plain layers, and the round trip."""
    level, plain = make_steps(2, "affine", dtype, channels=channels, hidden=16)
    x = torch.randn(2, channels, 2, 2, dtype=dtype).contiguous(memory_format=CL)
    with torch.no_grad():
        level(x)  # keeps the weights
        y, logdet = level(x)
        assert level._kept is not None
        x_back, logdet_back = level.inverse(y)
    plain64 = copy.deepcopy(plain).double()  # the Jacobian in float64, of the same parameters
    expected = jacobian_logdet(lambda inp, c: plain64(inp)[0], x.double())
    assert max_abs(logdet.double(), expected) < tol * max(1.0, expected.abs().max().item())
    assert max_abs(x_back, x) < (1e-10 if dtype == torch.float64 else 1e-5)
    assert max_abs(logdet_back, -logdet) < tol * max(1.0, logdet.abs().max().item())
