import pytest
import torch

from glowflow.errors import SingularWeightError
from glowflow.layers import InvertibleConv1x1, InvertibleLinear
from glowflow.layers.conv1x1 import DenseMatrix, LUMatrix, random_rotation
from tests.helpers import check_flow, max_abs, randomize_


@pytest.mark.parametrize("lu", [True, False])
def test_conv_round_trip_and_logdet(lu):
    layer = randomize_(InvertibleConv1x1(5, lu=lu).double(), 0.3)
    with torch.no_grad():  # make sure the map changes volume
        (layer.matrix.log_s.add_(0.2) if lu else layer.matrix.w.mul_(1.2))
    _, logdet = check_flow(layer, torch.randn(3, 5, 3, 2, dtype=torch.float64))
    slogdet = torch.linalg.slogdet(layer.matrix.weight()).logabsdet
    assert torch.allclose(logdet, 3 * 2 * slogdet.expand(3))
    assert logdet.abs().min() > 1.0


@pytest.mark.parametrize("lu", [True, False])
def test_linear_round_trip_and_logdet(lu):
    layer = randomize_(InvertibleLinear(6, lu=lu).double(), 0.3)
    check_flow(layer, torch.randn(4, 6, dtype=torch.float64))


def test_random_rotation_init_is_orthogonal():
    w = LUMatrix(7).double().weight()
    assert max_abs(w @ w.T, torch.eye(7, dtype=torch.float64)) < 1e-6
    q = random_rotation(7)
    assert max_abs(q @ q.T, torch.eye(7, dtype=torch.float64)) < 1e-12


def test_lu_and_dense_agree_on_the_same_weight():
    lu_layer = randomize_(InvertibleConv1x1(6, lu=True).double(), 0.3)
    dense_layer = InvertibleConv1x1(6, lu=False).double()
    with torch.no_grad():
        dense_layer.matrix.w.copy_(lu_layer.matrix.weight())
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    (y1, ld1), (y2, ld2) = lu_layer(x), dense_layer(x)
    assert max_abs(y1, y2) < 1e-12 and max_abs(ld1, ld2) < 1e-10
    (x1, _), (x2, _) = lu_layer.inverse(y1), dense_layer.inverse(y1)
    assert max_abs(x1, x) < 1e-12 and max_abs(x2, x) < 1e-12


def test_lu_logdet_is_sum_of_log_s():
    m = randomize_(LUMatrix(5).double(), 0.5)
    assert torch.allclose(m.log_abs_det(), torch.linalg.slogdet(m.weight()).logabsdet)
    assert torch.allclose(m.log_abs_det(), m.log_s.sum())


def test_lu_stays_invertible_under_many_optimiser_steps():
    torch.manual_seed(1)
    layer = InvertibleLinear(4, lu=True).double()
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    data = torch.randn(512, 4, dtype=torch.float64) * torch.tensor([3.0, 0.5, 2.0, 1.0], dtype=torch.float64)
    for _ in range(600):
        y, logdet = layer(data)
        loss = ((y.square().sum(1) - 4) ** 2).mean() - 0.01 * logdet.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = layer.matrix.weight().detach()
    assert max_abs(torch.linalg.slogdet(w).logabsdet, layer.matrix.log_abs_det().detach()) < 1e-10
    assert torch.linalg.cond(w) < 1e6
    x = torch.randn(16, 4, dtype=torch.float64)
    assert max_abs(layer.inverse(layer(x)[0])[0], x) < 1e-10


def test_near_singular_dense_weight_is_reported():
    layer = InvertibleConv1x1(4, lu=False)
    with torch.no_grad():
        layer.matrix.w.copy_(torch.eye(4))
        layer.matrix.w[3] = layer.matrix.w[2] * (1 + 1e-7)  # two (almost) identical rows
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(SingularWeightError, match="singular"):
        layer(x)
    with pytest.raises(SingularWeightError):
        with torch.no_grad():
            layer.inverse(x)


def test_dense_matrix_has_no_general_inverse_on_the_lu_path(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("general matrix inverse called")

    monkeypatch.setattr(torch.linalg, "inv", forbidden)
    monkeypatch.setattr(torch, "inverse", forbidden)
    layer = InvertibleConv1x1(4, lu=True)
    y, _ = layer(torch.randn(2, 4, 3, 3))
    layer.inverse(y)


@pytest.mark.parametrize("matrix_cls", [LUMatrix, DenseMatrix])
def test_cache_is_used_without_grad_and_invalidated_by_any_parameter_change(matrix_cls):
    m = matrix_cls(5).double()
    with torch.no_grad():
        w_inv = m.inverse_weight()
        assert m.inverse_weight() is w_inv  # cached
        for p in m.parameters():
            p.data.add_(0.1 * torch.randn_like(p))  # through .data: no version-counter bump
        w_inv2 = m.inverse_weight()
    assert w_inv2 is not w_inv
    assert max_abs(w_inv2 @ m.weight().detach(), torch.eye(5, dtype=torch.float64)) < 1e-10
    # with autograd on, values are fresh and differentiable
    assert m.inverse_weight().requires_grad
