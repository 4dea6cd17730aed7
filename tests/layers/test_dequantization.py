import math

import pytest
import torch

from glowflow.layers import UniformDequantization, VariationalDequantization
from glowflow.layers.dequantization import (
    bits_per_dim,
    check_discrete,
    quantize,
    reduce_bits,
    to_continuous,
    to_uint8,
    value_range,
)
from tests.helpers import jacobian_logdet, max_abs, randomize_


@pytest.mark.parametrize("num_bins", [2, 17, 32, 256])
def test_uniform_dequantization_round_trip(num_bins):
    k = torch.randint(0, num_bins, (64, 3, 8, 8))
    layer = UniformDequantization(num_bins)
    for _ in range(20):
        x, logdet = layer(k)
        assert x.dtype == torch.float32
        assert x.min() >= -0.5 and x.max() < 0.5
        assert torch.equal(layer.inverse(x)[0], k)
    assert torch.allclose(logdet, torch.full((64,), -3 * 64 * math.log(num_bins)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_bins", [17, 32, 256, 65536])
def test_bin_edges_are_exact(dtype, num_bins):
    k = torch.arange(num_bins, dtype=dtype)
    for u in (0.0, 1e-30, 0.5, 1.0 - 1e-9, 1.0 - 2**-24, 1.0):
        x = to_continuous(k, u, num_bins)
        assert torch.equal(quantize(x, num_bins), k.long()), u
        assert x.min() >= -0.5 and x.max() < 0.5
    assert torch.equal(to_continuous(k, 0.0, num_bins), k / num_bins - 0.5)


def test_variational_noise_map_logdet_matches_jacobian():
    layer = VariationalDequantization(2, num_bins=32, hidden=8, steps=2).double()
    k = torch.randint(0, 32, (2, 2, 4, 4)).double()
    eps = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    layer.noise(k, eps)  # ActNorm init
    randomize_(layer, 0.05)
    u, logdet = layer.noise(k, eps)
    assert (u > 0).all() and (u < 1).all()
    expected = jacobian_logdet(lambda e, kb: layer.noise(kb, e)[0], eps, k)
    assert max_abs(logdet, expected) < 1e-8


def test_variational_dequantization_forward():
    layer = VariationalDequantization(1, num_bins=256, hidden=8, steps=2)
    k = torch.randint(0, 256, (4, 1, 6, 6))
    x, logdet = layer(k)
    assert torch.equal(layer.inverse(x)[0], k)
    # logdet = -D n log 2 - log q(u|k); log q is a log-density on the unit cube, finite
    assert torch.isfinite(logdet).all()
    x.sum().backward()  # the noise is reparameterised: gradients reach the noise flow
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_check_discrete_rejects_bad_values():
    with pytest.raises(ValueError, match="integer"):
        check_discrete(torch.tensor([0.5, 1.0]), 256)
    with pytest.raises(ValueError, match=r"\[0, 31\]"):
        check_discrete(torch.tensor([0, 32]), 32)
    with pytest.raises(ValueError, match="NaN"):
        check_discrete(torch.tensor([float("nan")]), 256)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        check_discrete(torch.tensor([-1.0]), 256)
    with pytest.raises(ValueError, match="num_bins"):
        check_discrete(torch.tensor([0]), 1)
    assert check_discrete(torch.tensor([0, 255], dtype=torch.uint8), 256).dtype == torch.float32


def test_reduce_bits_and_display():
    k8 = torch.tensor([0, 7, 8, 255])
    assert reduce_bits(k8, 5).tolist() == [0, 0, 1, 31]
    x = to_continuous(reduce_bits(k8, 5).float(), 0.5, 32)
    assert to_uint8(x, 32).tolist() == [0, 0, 8, 255]
    assert to_uint8(to_continuous(k8.float(), 0.5, 256)).tolist() == [0, 7, 8, 255]
    assert to_uint8(to_continuous(torch.tensor([0.0, 8.0, 16.0]), 0.5, 17), 17).tolist() == [0, 128, 255]


def test_bits_per_dim_formula():
    # a uniform density over [-0.5, 0.5)^D has log p = 0: 8-bit data then costs exactly 8 bits per dimension
    d = 12
    log_p_x = torch.zeros(3)
    logdet_deq = torch.full((3,), -d * 8 * math.log(2))
    assert torch.allclose(bits_per_dim(log_p_x + logdet_deq, d), torch.full((3,), 8.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_value_range_reads_min_and_max_and_shows_nan_and_inf(dtype):
    x = torch.arange(24, dtype=torch.float32).view(2, 3, 4).to(dtype) - 5
    assert value_range(x) == (-5.0, 18.0)
    for where in [(0, 0, 0), (1, 2, 3), (1, 0, 2)]:  # first, last, middle: NaN propagates from anywhere
        bad = x.clone()
        bad[where] = math.nan
        assert all(math.isnan(v) for v in value_range(bad))
    bad = x.clone()
    bad[1, 1, 1] = -math.inf
    assert value_range(bad)[0] == -math.inf and value_range(bad)[1] == 18.0
    assert value_range(torch.tensor([[3, 250], [7, 0]], dtype=torch.uint8)) == (0, 250)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_discrete_input_with_a_non_finite_value_is_refused(value):
    k = torch.randint(0, 256, (2, 3, 4, 4)).float()
    k[1, 2, 3, 0] = value
    with pytest.raises(ValueError, match="NaN or inf"):
        check_discrete(k, 256)
