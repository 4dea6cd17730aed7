"""Short training runs that must actually learn: measured likelihoods, not just 'it runs'."""

import math

import pytest
import torch

from glowflow import Glow, TabularGlow


def _eight_gaussians() -> torch.distributions.Distribution:
    angles = torch.arange(8) * (2 * math.pi / 8)
    centers = 2.0 * torch.stack([angles.cos(), angles.sin()], 1)
    components = torch.distributions.Independent(torch.distributions.Normal(centers, 0.35), 1)
    return torch.distributions.MixtureSameFamily(torch.distributions.Categorical(torch.ones(8)), components)


def test_tabular_glow_fits_a_2d_density():
    torch.manual_seed(0)
    target = _eight_gaussians()
    train, test = target.sample((20_000,)), target.sample((5_000,))
    model = TabularGlow(2, steps=8, hidden=64)
    with torch.no_grad():
        untrained = model.log_prob(train[:1000]).mean().item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 800)
    for _ in range(800):
        loss = -model.log_prob(train[torch.randint(0, len(train), (256,))]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        fitted = model.log_prob(test).mean().item()
    true = target.log_prob(test).mean().item()  # -2.74 nats
    assert fitted > untrained + 0.5  # measured: -3.60 -> -2.85 nats
    assert true - fitted < 0.2, (fitted, true)  # measured: 0.10 nats below the true density


def test_glow_learns_real_digits():
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn provides the bundled 8x8 digits")
    torch.manual_seed(0)
    images = torch.tensor(datasets.load_digits().images, dtype=torch.float32).unsqueeze(1)  # 17 grey levels
    perm = torch.randperm(len(images))
    train, test = images[perm[:1500]], images[perm[1500:]]
    model = Glow((1, 8, 8), levels=2, steps=4, hidden=32, num_bins=17)
    with torch.no_grad():
        model.bits_per_dim(train[:512])  # ActNorm initialisation on a larger batch
        untrained = model.bits_per_dim(test).mean().item()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(300):
        loss = model.bits_per_dim(train[torch.randint(0, len(train), (64,))]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        trained = model.bits_per_dim(test, n_samples=4).mean().item()
    # measured: 4.34 bits/dim untrained -> 2.57 after 300 steps (uniform over 17 levels: log2(17) = 4.09)
    assert trained < untrained - 1.2, (untrained, trained)
    assert trained < 3.0
