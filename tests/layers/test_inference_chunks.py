"""Passes with autograd off run each conditioner on batch chunks (fused.inference_conditioner): the chunk sizes, and
the same values as the whole batch at once, for a level and for a whole Glow."""

from __future__ import annotations

import copy

import pytest
import torch

import glowflow.layers.fused as fused
from glowflow import Glow
from glowflow.layers.fused import ConditionerWeights, _conditioner, inference_chunk, inference_conditioner
from tests.helpers import jacobian_logdet, max_abs, randomize_
from tests.layers.test_fast_paths import make_steps

CL = torch.channels_last
MIB = 2**20


def _chunk_images(monkeypatch, per_image: int, images: int) -> list[int]:
    """Limit the chunks to ``images`` images of ``per_image`` hidden bytes; returns the batch sizes the conditioner
    is then called with (appended as it runs)."""
    monkeypatch.setattr(fused, "INFERENCE_CHUNK_BYTES", images * per_image)
    seen: list[int] = []
    conditioner = fused._conditioner

    def recorded(x_a, *args, **kwargs):
        seen.append(x_a.shape[0])
        return conditioner(x_a, *args, **kwargs)

    monkeypatch.setattr(fused, "_conditioner", recorded)
    return seen


@pytest.mark.parametrize(
    ("shape", "hidden", "dtype", "expected"),
    [
        ((10, 6, 16, 16), 128, torch.float32, 10),  # 128 KiB an image: the 10 fit in 4 MiB
        ((100, 6, 16, 16), 128, torch.float32, 32),
        ((100, 6, 16, 16), 128, torch.bfloat16, 64),  # half the bytes, twice the images
        ((100, 2, 16, 16), 256, torch.float32, 16),
        ((100, 24, 4, 4), 128, torch.float32, 100),
        ((3, 6, 64, 64), 512, torch.float32, 1),  # 8 MiB an image: one at a time, never none
    ],
)
def test_a_chunk_holds_as_many_images_as_fit_the_limit(shape, hidden, dtype, expected):
    assert fused.INFERENCE_CHUNK_BYTES == 4 * MIB
    assert inference_chunk(torch.empty(shape, dtype=dtype), hidden, dtype) == expected


def test_other_devices_take_the_whole_batch():
    assert inference_chunk(torch.empty(100, 6, 16, 16, device="meta"), 128, torch.float32) == 100


def _conditioner_weights(c_a: int, hidden: int, c_out: int, dtype: torch.dtype) -> ConditionerWeights:
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return (0.2 * torch.randn(*shape, generator=g)).to(dtype)

    return ConditionerWeights(
        rand(hidden, c_a, 3, 3).contiguous(memory_format=CL), rand(hidden), rand(hidden, hidden), rand(hidden),
        rand(c_out, hidden, 3, 3).contiguous(memory_format=CL), rand(c_out),
    )  # fmt: skip


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize(("c_a", "c_out"), [(6, 16), (2, 4)])  # oneDNN's direct convs; im2col and col2im forms
def test_the_conditioner_in_chunks_gives_the_whole_batch_s_output(monkeypatch, dtype, tol, c_a, c_out):
    torch.manual_seed(0)
    hidden, size = 16, 4
    net = _conditioner_weights(c_a, hidden, c_out, dtype)
    x_a = torch.randn(7, c_a, size, size, dtype=dtype).contiguous(memory_format=CL)
    with torch.no_grad():
        whole = _conditioner(x_a, net, dtype, inference=True)[-1]
        seen = _chunk_images(monkeypatch, size * size * hidden * dtype.itemsize, images=3)
        out = inference_conditioner(x_a, net, dtype)
    assert seen == [3, 3, 1]
    assert out.shape == whole.shape and out.is_contiguous(memory_format=CL)
    assert max_abs(out, whole) <= tol * whole.abs().max().item()


@pytest.mark.parametrize("coupling", ["affine", "additive"])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 2e-5), (torch.float64, 1e-12)])
def test_a_level_in_chunks_gives_the_whole_batch_s_passes(monkeypatch, coupling, dtype, tol):
    level, _ = make_steps(3, coupling, dtype, channels=4, hidden=8)
    x = torch.randn(5, 4, 4, 4, dtype=dtype)
    with torch.no_grad():
        y, logdet = level(x)
        back, inv_logdet = level.inverse(y)
        seen = _chunk_images(monkeypatch, 4 * 4 * 8 * dtype.itemsize, images=2)
        y_c, logdet_c = level(x)
        back_c, inv_logdet_c = level.inverse(y_c)
    assert seen == [2, 2, 1] * 6  # three steps each way
    assert max_abs(y_c, y) <= tol and max_abs(logdet_c, logdet) <= tol * logdet.abs().max().item()
    assert max_abs(back_c, back) <= tol and max_abs(inv_logdet_c, inv_logdet) <= tol * logdet.abs().max().item()
    assert max_abs(back_c, x) <= 10 * tol  # the round trip, in chunks both ways


@pytest.mark.parametrize("coupling", ["affine", "additive"])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-4), (torch.float64, 1e-9)])
def test_a_level_s_log_det_in_chunks_is_log_det_of_the_plain_layers_jacobian(monkeypatch, coupling, dtype, tol):
    level, plain = make_steps(2, coupling, dtype, channels=4, hidden=8)
    x = torch.randn(3, 4, 4, 4, dtype=dtype)
    with torch.no_grad():
        seen = _chunk_images(monkeypatch, 4 * 4 * 8 * dtype.itemsize, images=2)
        y, logdet = level(x)
        x_back, logdet_back = level.inverse(y)
    assert seen == [2, 1] * 4
    plain64 = copy.deepcopy(plain).double()  # the Jacobian in float64, of the same parameters
    expected = jacobian_logdet(lambda inp, c: plain64(inp)[0], x.double())
    assert max_abs(logdet.double(), expected) <= tol * max(1.0, expected.abs().max().item())
    assert max_abs(logdet_back, -logdet) <= tol * max(1.0, logdet.abs().max().item())
    assert max_abs(x_back, x) <= (1e-10 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 2e-5), (torch.float64, 1e-11)])
def test_a_glow_s_scores_samples_and_round_trip_in_chunks(monkeypatch, dtype, tol):
    torch.manual_seed(0)
    model = Glow((3, 8, 8), levels=2, steps=2, hidden=16).to(dtype)
    with torch.no_grad():
        model(torch.randint(0, 256, (8, 3, 8, 8)))  # ActNorm initialisation
        randomize_(model, 0.05)
        x = (torch.rand(9, 3, 8, 8, dtype=dtype) - 0.5).clamp(-0.49, 0.49)
        log_prob = model.log_prob(x)
        torch.manual_seed(1)
        samples = model.sample(9, temperature=0.7)
        seen = _chunk_images(monkeypatch, 4 * 4 * 16 * dtype.itemsize, images=4)  # level 1: 4 images at a time
        log_prob_c = model.log_prob(x)
        torch.manual_seed(1)
        samples_c = model.sample(9, temperature=0.7)
        z = model.encode(x)[0]
        back = model.decode(z)
    assert [4, 4, 1] == seen[:3] and max(seen) <= 9 and len(seen) > 8
    assert max_abs(log_prob_c, log_prob) <= tol * log_prob.abs().max().item()
    assert max_abs(samples_c, samples) <= tol * max(1.0, samples.abs().max().item())
    assert max_abs(back, x) <= 10 * tol
