"""A whole Glow gives the same latents, log-det, log-density and reconstruction for contiguous and channels-last
inputs (and latents). The model converts to channels-last at its boundary, so the two differ at most by the
round-off of kernels that see differently strided tensors: bounds of 1e-12 (float64) and 1e-5 (float32)
relative to the size of the values."""

import pytest
import torch

from glowflow import Glow
from tests.helpers import assert_close, both_layouts, randomize_

REL = {torch.float64: 1e-12, torch.float32: 1e-5}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(
    "kwargs", [{}, {"mask": "checkerboard"}, {"conditioner": "gated"}], ids=["channel", "checkerboard", "gated"]
)
def test_glow_agrees_on_both_layouts(kwargs, dtype):
    model = Glow((3, 8, 8), levels=2, steps=2, hidden=8, num_classes=2, **kwargs).to(dtype)
    model.encode(torch.rand(32, 3, 8, 8, dtype=dtype) - 0.5, torch.arange(32) % 2)  # ActNorm initialisation
    randomize_(model, 0.05)
    x, y = torch.rand(2, 3, 8, 8, dtype=dtype) - 0.5, torch.tensor([0, 1])
    rel = REL[dtype]

    (zs, logdet), (zs_cl, logdet_cl) = (model.encode(v, y) for v in both_layouts(x))
    for i, (z, z_cl) in enumerate(zip(zs, zs_cl, strict=True)):
        assert_close(z_cl, z, rel, f"latent {i} of a channels-last input")
    assert_close(logdet_cl, logdet, rel, "log-det of a channels-last input")
    assert logdet.abs().min() > 1.0
    log_p, log_p_cl = (model.log_prob(v, y) for v in both_layouts(x))
    assert_close(log_p_cl, log_p, rel, "log-density of a channels-last input")

    decoded = model.decode(zs, y)
    decoded_cl = model.decode([both_layouts(z)[1] for z in zs], y)
    assert_close(decoded_cl, decoded, rel, "decode of channels-last latents")
    assert_close(decoded, x, rel, "round trip")
