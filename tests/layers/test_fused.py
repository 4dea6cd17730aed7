"""The fused fast paths against the plain composition of the same layers, so that a wrong fusion cannot hide behind
the model tests: FlowStep's ActNorm + channel mixing as one affine map, ConvActNorm's and ZeroConv2d's folded
weights, and channels-last inputs against contiguous ones.

Each pair computes the same function in a different order of floating-point operations, so the comparisons use
a bound relative to the size of the values: float64 ~1e-12 (a few ulps of one fused matrix product, ~1e-15, summed
over a couple of layers), float32 ~1e-5 (measured ~1e-7 to ~1e-6; the inverse of a randomised step up to ~1e-5)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from glowflow.layers import ActNorm, AffineCoupling, GlowConvNet, InvertibleConv1x1, InvertibleLinear, Squeeze
from glowflow.layers.conditioners import ConvActNorm, ZeroConv2d
from glowflow.layers.step import FlowStep
from tests.helpers import assert_close, both_layouts, check_flow, randomize_

DTYPES = [torch.float64, torch.float32]
REL = {torch.float64: 1e-12, torch.float32: 1e-5}  # see the module docstring
# the generative direction divides by the coupling's scale and applies W^-1 of a randomised step, which amplifies
# float32 rounding: against a float64 copy of the step, the fused inverse's error is 1e-6 to 7.5e-6 (6 seeds), so
# two float32 paths may differ by ~1.5e-5
REL_INVERSE = {torch.float64: 1e-12, torch.float32: 5e-5}


def _flow_step(mixer_cls: type, lu: bool, channels: int, dtype: torch.dtype) -> FlowStep:
    conditioner = "glow" if mixer_cls is InvertibleConv1x1 else "mlp"
    coupling = AffineCoupling(channels, hidden=8, conditioner=conditioner)
    return FlowStep(ActNorm(channels), mixer_cls(channels, lu=lu), coupling).to(dtype)


def _data(mixer_cls: type, channels: int, dtype: torch.dtype, batch: int = 3) -> torch.Tensor:
    shape = (batch, channels, 5, 6) if mixer_cls is InvertibleConv1x1 else (batch, channels)
    return torch.randn(shape, dtype=dtype)


def _plain_forward(step: FlowStep, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """actnorm -> mixer -> coupling, one layer at a time."""
    logdet = torch.zeros(x.shape[0], dtype=x.dtype)
    for layer in step:
        x, ld = layer(x)
        logdet = logdet + ld
    return x, logdet


def _plain_inverse(step: FlowStep, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logdet = torch.zeros(y.shape[0], dtype=y.dtype)
    for layer in reversed(step.layers):
        y, ld = layer.inverse(y)
        logdet = logdet + ld
    return y, logdet


def _ready_step(mixer_cls: type, lu: bool, dtype: torch.dtype) -> FlowStep:
    """A FlowStep whose ActNorm is initialised (by a first call, the plain path) and whose every parameter is
    randomised, so that neither the ActNorm, the mixer nor the coupling is the identity."""
    step = _flow_step(mixer_cls, lu, 5, dtype)
    step(_data(mixer_cls, 5, dtype, batch=64) * 2 + 1)
    return randomize_(step, 0.2)


def _count_actnorm_calls(step: FlowStep, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every call of the step's ActNorm forward / inverse: the fused path makes none."""
    actnorm = step[0]
    calls: list[str] = []
    for name in ("forward", "inverse"):
        method = getattr(actnorm, name)

        def recorded(*args, _method=method, _name=name, **kwargs):
            calls.append(_name)
            return _method(*args, **kwargs)

        monkeypatch.setattr(actnorm, name, recorded)
    return calls


MIXERS = [(cls, lu) for cls in (InvertibleConv1x1, InvertibleLinear) for lu in (True, False)]
MIXER_IDS = [f"{cls.__name__}-{'lu' if lu else 'dense'}" for cls, lu in MIXERS]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize(("mixer_cls", "lu"), MIXERS, ids=MIXER_IDS)
def test_flow_step_fused_forward_and_inverse_match_the_plain_composition(mixer_cls, lu, dtype, monkeypatch):
    step = _ready_step(mixer_cls, lu, dtype)
    x = _data(mixer_cls, 5, dtype)
    y_plain, ld_plain = _plain_forward(step, x)
    calls = _count_actnorm_calls(step, monkeypatch)
    y, ld = step(x)
    assert calls == [], "the initialised FlowStep did not take its fused path"
    rel = REL[dtype]
    assert_close(y, y_plain, rel, "fused forward")
    assert_close(ld, ld_plain, rel, "fused forward log-det")
    assert ld_plain.abs().min() > 1.0  # the ActNorm and the mixer change volume: the log-det is not trivially 0

    x_plain, ld_inv_plain = _plain_inverse(step, y_plain)
    assert calls == ["inverse"]
    calls.clear()
    for grad_enabled in (True, False, False):  # a fresh W^-1; one computed and cached with autograd off; the cached one
        with torch.set_grad_enabled(grad_enabled):
            x_back, ld_inv = step.inverse(y_plain)
        assert calls == []
        assert_close(x_back, x_plain, REL_INVERSE[dtype], f"fused inverse (grad {grad_enabled})")
        assert_close(x_back, x, REL_INVERSE[dtype], f"fused round trip (grad {grad_enabled})")
        assert_close(ld_inv, ld_inv_plain, rel, f"fused inverse log-det (grad {grad_enabled})")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize(("mixer_cls", "lu"), MIXERS, ids=MIXER_IDS)
def test_flow_step_fused_gradients_match_the_plain_composition(mixer_cls, lu, dtype):
    step = _ready_step(mixer_cls, lu, dtype)
    x = _data(mixer_cls, 5, dtype).requires_grad_()
    params = [p for p in step.parameters() if p.requires_grad]
    weights = torch.randn_like(x)  # a loss whose gradient reaches every output element with a different weight

    def gradients(forward) -> list[torch.Tensor]:
        y, logdet = forward(x)
        return list(torch.autograd.grad((y * weights).sum() + logdet.sum(), [x, *params]))

    fused, plain = gradients(step), gradients(lambda v: _plain_forward(step, v))
    names = ["input"] + [name for name, p in step.named_parameters() if p.requires_grad]
    for name, g, g_plain in zip(names, fused, plain, strict=True):
        assert_close(g, g_plain, REL[dtype], f"gradient of {name}")
    assert all(g.abs().max() > 0 for g in plain)  # every parameter takes part


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("with_shift", [False, True], ids=["no-shift", "shift"])
@pytest.mark.parametrize("kernel", [3, 1], ids=["3x3-conv", "1x1-matmul"])
def test_conv_actnorm_matches_conv_then_actnorm(kernel, with_shift, dtype):
    layer = ConvActNorm(3, 5, kernel).to(dtype)
    conv = nn.Conv2d(3, 5, kernel, padding=kernel // 2, bias=False).to(dtype)
    norm = ActNorm(5).to(dtype)

    def reference(x: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
        """``ActNorm(conv(x) + shift)`` as two separate layers."""
        h = conv(x)
        return norm(h if shift is None else h + shift)[0]

    x = torch.randn(4, 3, 6, 5, dtype=dtype) * 2 + 0.5
    shift = torch.randn(4, 5, 1, 1, dtype=dtype) if with_shift else None
    with torch.no_grad():
        conv.weight.copy_(layer.conv.weight)
    # first call: both ActNorms initialise from the pre-normalisation statistics of the same batch
    first, first_ref = layer(x, shift), reference(x, shift)
    rel = REL[dtype]
    assert_close(layer.norm.bias, norm.bias, rel, "initial ActNorm bias")
    assert_close(layer.norm.log_scale, norm.log_scale, rel, "initial ActNorm log-scale")
    assert_close(first, first_ref, rel, "first (initialising) call")

    randomize_(layer, 0.3)
    with torch.no_grad():
        conv.weight.copy_(layer.conv.weight)
        norm.bias.copy_(layer.norm.bias)
        norm.log_scale.copy_(layer.norm.log_scale)
    x = torch.randn(2, 3, 6, 5, dtype=dtype)
    shift = torch.randn(2, 5, 1, 1, dtype=dtype) if with_shift else None
    assert_close(layer(x, shift), reference(x, shift), rel, "folded conv + ActNorm")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("kernel", [3, 1])
def test_zero_conv_folded_gain_matches_conv_then_gain(kernel, dtype):
    layer = randomize_(ZeroConv2d(3, 4, kernel).to(dtype), 0.3)
    x = torch.randn(2, 3, 5, 6, dtype=dtype)
    expected = F.conv2d(x, layer.conv.weight, layer.conv.bias, padding=kernel // 2) * torch.exp(3 * layer.logs)
    assert expected.abs().max() > 0.1
    assert_close(layer(x), expected, REL[dtype], "folded output gain")


# ---- channels-last inputs against contiguous ones ------------------------------------------------------------
def test_squeeze_agrees_on_both_layouts_in_both_directions():
    # a reshape moves values without arithmetic, so both layouts give exactly the same numbers
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    outputs = [Squeeze()(v)[0] for v in both_layouts(x)]
    assert torch.equal(outputs[0], outputs[1])
    assert outputs[0].is_contiguous() and outputs[1].is_contiguous(memory_format=torch.channels_last)
    for y in both_layouts(outputs[0]):
        back, logdet = Squeeze().inverse(y)
        assert torch.equal(back, x) and torch.equal(logdet, torch.zeros(2, dtype=torch.float64))
        assert back.is_contiguous(memory_format=torch.channels_last) == (not y.is_contiguous())
    check_flow(Squeeze(), both_layouts(x)[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_glow_conv_net_agrees_on_bothboth_layouts(dtype):
    net = GlowConvNet(3, 4, hidden=8).to(dtype)
    net(torch.randn(16, 3, 5, 6, dtype=dtype))  # ActNorm initialisation
    randomize_(net, 0.2)
    h, h_cl = (net(v) for v in both_layouts(torch.randn(2, 3, 5, 6, dtype=dtype)))
    assert h.abs().max() > 0.1
    assert_close(h_cl, h, REL[dtype], "GlowConvNet on channels-last input")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("mask", ["channel", "checkerboard"])
def test_coupling_agrees_on_bothboth_layouts(mask, dtype):
    layer = AffineCoupling(5, hidden=8, mask=mask).to(dtype)
    layer(torch.randn(16, 5, 4, 6, dtype=dtype))
    randomize_(layer, 0.2)
    forward = [layer(v) for v in both_layouts(torch.randn(2, 5, 4, 6, dtype=dtype))]
    (y, ld), (y_cl, ld_cl) = forward
    rel = REL[dtype]
    assert_close(y_cl, y, rel, "coupling forward on channels-last input")
    assert_close(ld_cl, ld, rel, "coupling log-det on channels-last input")
    (x, ld_inv), (x_cl, ld_inv_cl) = (layer.inverse(v) for v in both_layouts(y))
    assert_close(x_cl, x, rel, "coupling inverse on channels-last input")
    assert_close(ld_inv_cl, ld_inv, rel, "coupling inverse log-det on channels-last input")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_flow_step_agrees_on_bothboth_layouts(dtype):
    step = _ready_step(InvertibleConv1x1, True, dtype)
    (y, ld), (y_cl, ld_cl) = (step(v) for v in both_layouts(_data(InvertibleConv1x1, 5, dtype)))
    rel = REL[dtype]
    assert_close(y_cl, y, rel, "FlowStep forward on channels-last input")
    assert_close(ld_cl, ld, rel, "FlowStep log-det on channels-last input")
    (x, _), (x_cl, _) = (step.inverse(v) for v in both_layouts(y))
    assert_close(x_cl, x, rel, "FlowStep inverse on channels-last input")
