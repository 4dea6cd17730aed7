import math

import torch

from glowflow.layers import GaussianPrior, Split
from glowflow.layers.priors import standard_normal_log_prob
from tests.helpers import check_flow, max_abs, randomize_


def test_standard_normal_log_prob():
    z = torch.randn(3, 2, 2, dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1)
    assert max_abs(standard_normal_log_prob(z), expected) < 1e-12


def test_split_round_trip_and_logdet():
    split = randomize_(Split(6).double(), 0.2)
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    y, logdet = check_flow(split, x)
    assert torch.equal(y[:, :3], x[:, :3])
    assert logdet.abs().min() > 1e-3


def test_split_is_a_conditional_gaussian():
    split = randomize_(Split(4).double(), 0.3)
    x = torch.randn(5, 4, 2, 2, dtype=torch.float64)
    y, logdet = split(x)
    mean, log_scale = split._params(x[:, :2], None)
    expected = torch.distributions.Normal(mean, log_scale.exp()).log_prob(x[:, 2:]).flatten(1).sum(1)
    assert max_abs(standard_normal_log_prob(y[:, 2:]) + logdet, expected) < 1e-10


def test_split_with_class_conditioning():
    split = randomize_(Split(4, cond_features=3).double(), 0.2)
    x = torch.randn(2, 4, 2, 2, dtype=torch.float64)
    cond = torch.eye(3, dtype=torch.float64)[[0, 2]]
    check_flow(split, x, cond)


def test_gaussian_prior_round_trip_and_density():
    prior = randomize_(GaussianPrior((3, 2, 2), cond_features=4).double(), 0.3)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    cond = torch.eye(4, dtype=torch.float64)[[1, 3]]
    y, logdet = check_flow(prior, x, cond)
    mean, log_scale = prior._params(cond)
    expected = torch.distributions.Normal(mean, log_scale.exp()).log_prob(x).flatten(1).sum(1)
    assert max_abs(standard_normal_log_prob(y) + logdet, expected) < 1e-10


def test_gaussian_prior_vectors_start_standard_normal():
    prior = GaussianPrior((5,))
    x = torch.randn(4, 5)
    y, logdet = prior(x)
    assert torch.equal(y, x) and torch.equal(logdet, torch.zeros(4))
    assert abs(standard_normal_log_prob(torch.zeros(1, 5)).item() + 2.5 * math.log(2 * math.pi)) < 1e-6
