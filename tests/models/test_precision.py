"""precision="bf16": conditioners under bf16 autocast in training and scoring, invertible path and log-dets in
float32, and float32 conditioners wherever a decode must invert an encode."""

from pathlib import Path

import pytest
import torch

from glowflow import Glow, TabularGlow
from glowflow.layers.dequantization import quantize, to_continuous
from tests.helpers import jacobian_logdet, max_abs, randomize_

MNIST_5K = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist-5k"

pytestmark = pytest.mark.filterwarnings("ignore:precision='bf16' on a CPU:RuntimeWarning")


def test_bf16_round_trip_and_logdet_are_exact():
    torch.manual_seed(0)
    model = Glow((2, 8, 8), levels=2, steps=2, hidden=16, precision="bf16")
    model.encode(torch.rand(64, 2, 8, 8) - 0.5)
    randomize_(model, 0.05)
    x = torch.rand(2, 2, 8, 8) - 0.5
    zs, logdet = model.encode(x)
    assert all(z.dtype == torch.float32 for z in zs) and logdet.dtype == torch.float32
    assert max_abs(model.decode(zs), x) < 1e-5  # the conditioner is a deterministic function of the kept half

    def flat(v, _):
        return torch.cat([z.flatten(1) for z in model.encode(v)[0]], 1)

    assert max_abs(logdet, jacobian_logdet(flat, x)) < 1e-5 * logdet.abs().max().item()
    # scoring runs the conditioners in bf16 (a different function, close to the float32 one) ...
    log_p_bf16 = model.log_prob(x)
    assert max_abs(model.encode(x, exact=False)[1], logdet) > 0
    # ... while encode / decode (exact=True) compute exactly what a float32 model computes
    model.precision = "fp32"
    assert max_abs(model.encode(x)[1], logdet) < 1e-4 * logdet.abs().max().item()
    assert max_abs(model.log_prob(x), log_p_bf16) < 0.05 * log_p_bf16.abs().max().item()
    assert max_abs(model.log_prob(x), log_p_bf16) > 0


def _train_briefly(images: torch.Tensor, precision: str, steps: int = 60) -> Glow:
    torch.manual_seed(0)
    model = Glow((1, 28, 28), levels=2, steps=3, hidden=32, precision=precision)
    with torch.no_grad():
        model(images[:256])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        loss = model(images[torch.randint(0, len(images), (32,))]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.skipif(not (MNIST_5K / "t10k-images-idx3-ubyte.gz").is_file(), reason="needs ../shared/data/mnist-5k")
def test_bf16_trained_model_reconstructs_every_pixel_level():
    from glowflow.data import load_dataset

    images = load_dataset("mnist", MNIST_5K, "train").data[:2048]
    test = load_dataset("mnist", MNIST_5K, "test").data[:64]
    errors = {}
    for precision in ("fp32", "bf16"):
        model = _train_briefly(images, precision)
        x = to_continuous(test.float(), 0.5, 256)  # bin centres of real 8-bit digits
        with torch.no_grad():
            back = model.decode(model.encode(x)[0])
        assert torch.equal(quantize(back, 256), test.long()), precision  # every pixel level recovered
        errors[precision] = max_abs(back, x)
    # measured: fp32 ~1e-6; bf16 with float32 conditioners in encode / decode the same order (was 5e-3 in bf16)
    assert errors["bf16"] < 10 * max(errors["fp32"], 1e-6), errors
    assert errors["bf16"] < 1 / 512, errors  # far inside a grey level


def test_bf16_tabular_round_trip():
    torch.manual_seed(0)
    model = TabularGlow(4, steps=3, hidden=16, precision="bf16")
    model.encode(torch.randn(128, 4))
    randomize_(model, 0.1)
    x = torch.randn(8, 4)
    assert max_abs(model.decode(model.encode(x)[0]), x) < 1e-5


def test_bf16_training_matches_fp32_bpd():
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn provides the bundled 8x8 digits")
    images = torch.tensor(datasets.load_digits().images, dtype=torch.float32).unsqueeze(1)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train, test = images[perm[:1500]], images[perm[1500:]]
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = Glow((1, 8, 8), levels=2, steps=2, hidden=16, num_bins=17, precision=precision)
        with torch.no_grad():
            model(train[:512])
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        for _ in range(150):
            loss = model(train[torch.randint(0, len(train), (32,))]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            torch.manual_seed(1)
            results[precision] = model.bits_per_dim(test, n_samples=4).mean().item()
    # measured: fp32 3.167, bf16 3.164 bits/dim (untrained: 4.3)
    assert results["fp32"] < 3.3, results
    assert abs(results["bf16"] - results["fp32"]) < 0.02, results
