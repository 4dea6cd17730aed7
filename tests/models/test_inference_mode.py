"""The models' no-grad passes run under ``torch.inference_mode`` (``without_autograd_bookkeeping``) and still hand
back ordinary tensors: the same values as with autograd on, usable in place and where autograd records, and no
state of the model left as inference tensors."""

from __future__ import annotations

import copy

import pytest
import torch

from glowflow import Glow, TabularGlow
from tests.helpers import max_abs


def _model(**kwargs) -> Glow:
    torch.manual_seed(0)
    return Glow((3, 8, 8), levels=2, steps=2, hidden=16, **kwargs)


def _initialised(**kwargs) -> tuple[Glow, torch.Tensor]:
    model = _model(**kwargs)
    k = torch.randint(0, 256, (4, 3, 8, 8))
    with torch.no_grad():
        model(k)  # ActNorm initialisation
    return model, k


@pytest.mark.parametrize("mask", ["channel", "checkerboard"])  # the fused steps, and the plain layers
def test_no_grad_results_are_ordinary_tensors_with_the_values_of_autograd_on(mask):
    model, k = _initialised(mask=mask)
    x = (k + 0.5) / 256 - 0.5
    with torch.no_grad():
        lp = model.log_prob(x)
        zs, logdet = model.encode(x)
        back = model.decode(zs)
        bpd = model.bits_per_dim(k)
        samples = model.sample(3, 0.7, generator=torch.Generator().manual_seed(1))
    lp_grad = model.log_prob(x)  # autograd on: not under inference mode
    for t in (lp, *zs, logdet, back, bpd, samples):
        assert not t.is_inference() and not t.requires_grad
    assert max_abs(lp, lp_grad.detach()) < 1e-4 and max_abs(back, x) < 1e-5
    samples += 1.0  # in place, outside inference mode
    zs[0].mul_(0.5)
    lp.sum()  # and usable with autograd on
    assert lp_grad.requires_grad


def test_inside_inference_mode_results_stay_inference_tensors():
    model, k = _initialised()
    with torch.inference_mode():
        lp = model.log_prob((k + 0.5) / 256 - 0.5)
        samples = model.sample(2)
    assert lp.is_inference() and samples.is_inference()


def test_the_first_pass_initialises_under_inference_mode_and_training_follows():
    """ActNorm's data-dependent initialisation written in inference mode: the model then trains (in-place updates
    of ordinary parameters) and deep-copies (no tensor of it left with a graph or as an inference tensor)."""
    model = _model()
    k = torch.randint(0, 256, (4, 3, 8, 8))
    with torch.no_grad():
        model.bits_per_dim(k)
    assert model.is_initialized
    assert not any(t.is_inference() for t in (*model.parameters(), *model.buffers()))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(k).mean().backward()
    optimizer.step()
    copy.deepcopy(model)


def test_matrix_caches_filled_in_inference_mode_serve_gradients_later():
    """The LU 1x1 convolution caches its weight while autograd is off; a cache filled under inference mode holds
    ordinary tensors, so a later pass with frozen parameters can still differentiate with respect to the input."""
    from glowflow.layers.conv1x1 import InvertibleMatrix

    model, k = _initialised(mask="checkerboard")  # plain layers: LUMatrix's cached weights
    x = (k + 0.5) / 256 - 0.5
    with torch.no_grad():
        model.log_prob(x)
        model.decode(model.encode(x)[0])
    kept = [t for m in model.modules() if isinstance(m, InvertibleMatrix) for t in (*m._cache.values(), *m._cache_key)]
    assert len(kept) > 0 and not any(t.is_inference() or t.requires_grad for t in kept)
    model.requires_grad_(False)
    x = x.clone().requires_grad_()
    model.log_prob(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_tabular_model_too():
    torch.manual_seed(0)
    model = TabularGlow(4, steps=2, hidden=8)
    x = torch.randn(16, 4)
    with torch.no_grad():
        model.log_prob(x)  # initialisation
        lp = model.log_prob(x)
        samples = model.sample(5)
    assert not lp.is_inference() and not samples.is_inference()
    assert max_abs(lp, model.log_prob(x).detach()) < 1e-5
