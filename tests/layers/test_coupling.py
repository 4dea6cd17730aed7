import subprocess

import pytest
import torch

from glowflow.layers import AdditiveCoupling, AffineCoupling
from glowflow.layers.coupling import build_conditioner
from tests.helpers import check_flow, max_abs, randomize_
from tests.training.train_helpers import python, subprocess_env

COUPLINGS = [AffineCoupling, AdditiveCoupling]


def _initialised(layer, x, cond=None):
    layer(x, cond)  # data-dependent init of the ActNorms inside the conditioner
    return randomize_(layer, 0.2)


@pytest.mark.parametrize("cls", COUPLINGS)
@pytest.mark.parametrize("mask", ["channel", "checkerboard"])
@pytest.mark.parametrize("conditioner", ["glow", "gated"])
@pytest.mark.parametrize("parity", [0, 1])
def test_image_coupling_round_trip_and_logdet(cls, mask, conditioner, parity):
    x = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    layer = _initialised(cls(5, hidden=8, conditioner=conditioner, mask=mask, parity=parity).double(), x)
    _, logdet = check_flow(layer, x)
    if cls is AdditiveCoupling:
        assert torch.equal(logdet, torch.zeros_like(logdet))
    else:
        assert logdet.abs().min() > 1e-3


@pytest.mark.parametrize("cls", COUPLINGS)
@pytest.mark.parametrize("dim", [2, 5])
@pytest.mark.parametrize("parity", [0, 1])
def test_vector_coupling_round_trip_and_logdet(cls, dim, parity):
    x = torch.randn(3, dim, dtype=torch.float64)
    layer = _initialised(cls(dim, hidden=16, conditioner="mlp", parity=parity).double(), x)
    check_flow(layer, x)


@pytest.mark.parametrize("cls", COUPLINGS)
def test_class_conditioning_vector(cls):
    x = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    cond = torch.nn.functional.one_hot(torch.tensor([0, 2, 1]), 3).double()
    layer = _initialised(cls(4, hidden=8, cond_features=3).double(), x, cond)
    check_flow(layer, x, cond)
    other = torch.nn.functional.one_hot(torch.tensor([1, 1, 1]), 3).double()
    assert max_abs(layer(x, cond)[0], layer(x, other)[0]) > 1e-4  # the label matters


def test_conditioning_map():
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    cond = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    for conditioner in ("glow", "gated"):
        layer = _initialised(AffineCoupling(4, hidden=8, conditioner=conditioner, cond_channels=3).double(), x, cond)
        check_flow(layer, x, cond)


@pytest.mark.parametrize("cls", COUPLINGS)
@pytest.mark.parametrize("mask", ["channel", "checkerboard"])
def test_starts_as_identity(cls, mask):
    x = torch.randn(4, 6, 4, 4)
    y, logdet = cls(6, hidden=8, mask=mask)(x)
    assert torch.equal(y, x)
    assert torch.equal(logdet, torch.zeros(4))


IDENTITY_CHECK = """
import torch
from glowflow.layers import AffineCoupling
x = torch.randn(4, 6, 4, 4)
exact = []
for mask in ("channel", "checkerboard"):
    y, logdet = AffineCoupling(6, hidden=8, mask=mask)(x)
    exact.append(torch.equal(y, x) and bool((logdet == 0).all()))
print(torch.backends.cpu.get_cpu_capability(), *exact)
"""


def test_starts_as_identity_on_the_scalar_cpu_kernels():
    """The scalar ATen kernels (a CPU without AVX2) round logsigmoid(2) differently from the vectorised ones: the
    zero-initialised coupling must still be exactly the identity there, log-det 0 included."""
    env = subprocess_env() | {"ATEN_CPU_CAPABILITY": "default"}
    p = subprocess.run([python(), "-c", IDENTITY_CHECK], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["DEFAULT", "True", "True"]


def test_channel_mask_leaves_conditioning_half_unchanged():
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    for parity, kept in ((0, slice(0, 3)), (1, slice(3, 6))):
        layer = _initialised(AffineCoupling(6, hidden=8, parity=parity).double(), x)
        y, _ = layer(x)
        assert torch.equal(y[:, kept], x[:, kept])
        assert max_abs(y, x) > 1e-3


def test_checkerboard_mask_leaves_conditioning_positions_unchanged():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    layer = _initialised(AffineCoupling(3, hidden=8, mask="checkerboard", parity=0).double(), x)
    y, _ = layer(x)
    i, j = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    fixed = (i + j) % 2 == 0
    assert torch.equal(y[..., fixed], x[..., fixed])
    assert max_abs(y[..., ~fixed], x[..., ~fixed]) > 1e-3


def test_affine_scale_is_bounded():
    layer = AffineCoupling(2, hidden=4, conditioner="mlp")
    with torch.no_grad():
        layer.net.out.bias.fill_(1e4)  # huge raw scale
    _, logdet = layer(torch.randn(3, 2))
    assert torch.isfinite(logdet).all() and (logdet <= 0.13).all()


def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="mask"):
        AffineCoupling(4, mask="diagonal")
    with pytest.raises(ValueError, match="at least 2 channels"):
        AffineCoupling(1)
    with pytest.raises(ValueError, match="checkerboard"):
        AffineCoupling(4, conditioner="mlp", mask="checkerboard")
    with pytest.raises(ValueError, match="conditioner"):
        build_conditioner("resnet", 2, 4, 8)
    with pytest.raises(ValueError, match="precision"):
        AffineCoupling(4, precision="fp8")
    layer = AffineCoupling(4, hidden=8, cond_features=3)
    with pytest.raises(ValueError, match="conditioning vector"):
        layer(torch.randn(2, 4, 4, 4))


def test_custom_conditioner_factory():
    class Net(torch.nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv = torch.nn.Conv2d(cin, cout, 3, padding=1)

        def forward(self, x, cond=None):
            return self.conv(x)

    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    layer = AffineCoupling(4, conditioner=Net).double()
    check_flow(layer, x)
