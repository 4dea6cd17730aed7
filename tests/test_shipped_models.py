"""The reference models shipped in the package (``glowflow/weights/<name>``), loaded by name, still compute what they
computed when they were exported: the score of each one's check subset (``check.json``: fixed test examples stored in
``check.safetensors``, with the noise seed) within float32 round-off, an exact decode of encode, and samples.

So a change that silently alters what old weights compute (a layer's arithmetic, the state_dict's names, the
preprocessing, the data readers) fails here.

Tolerance of the recorded score: ``rel=1e-5`` of the subset's mean bits/dim (or NLL in nats). It is the same
computation as when it was recorded, but float32 kernels differ between machines: oneDNN and ATen pick their
convolution, matmul and reduction code by CPU (SSE, AVX2, AVX-512, AMX; Intel or AMD) and thread count, which changes
summation orders. Running the checks of digits and moons under every combination this Zen 4 CPU offers
(``ATEN_CPU_CAPABILITY`` default / avx2 / native avx512 x ``ONEDNN_MAX_CPU_ISA`` SSE41 / AVX2 / native x 1 or 2
threads, 18 runs) moved them by at most 2.4e-8 relative, and that of mnist (ATEN default / avx2 x ONEDNN SSE41 /
AVX2 / native x 1 or 2 threads, 12 runs) by at most 5.5e-9; float32 results on Intel and AMD CPUs are taken to
differ by up to about 1e-6 relative. 1e-5 leaves room for both and still catches what breaks weights: scaling every
parameter of the digits model by 1 + 1e-4 moves its check by 1.3e-4 (of mnist: 6.4e-5), and resetting the last of
its 48 ActNorm layers to the identity by 2.1e-3.
"""

from __future__ import annotations

import json
from fnmatch import fnmatch
from pathlib import Path

import pytest
import safetensors.torch
import torch

import glowflow
from glowflow import Glow, TabularGlow, quantize, to_continuous
from glowflow.data import load_dataset
from glowflow.models.pretrained import WEIGHTS_DIR, read_config, shipped_models
from glowflow.training.evaluate import evaluate
from tests.data.data_helpers import SHARED_DATA

REFERENCE = {"digits": Glow, "moons": TabularGlow, "mnist": Glow}  # the README's; every shipped model is checked
SHIPPED = shipped_models()
REL_TOL = 1e-5
REPO = Path(__file__).resolve().parents[1]


def check_of(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    folder = WEIGHTS_DIR / name
    return json.loads((folder / "check.json").read_text()), safetensors.torch.load_file(folder / "check.safetensors")


def test_the_reference_models_are_shipped():
    assert set(REFERENCE) <= set(SHIPPED)
    for name, cls in REFERENCE.items():
        assert read_config(WEIGHTS_DIR / name)["model_class"] == cls.__name__


@pytest.mark.parametrize("name", SHIPPED)
def test_recorded_score_of_the_check_subset(name: str):
    model = glowflow.load(f"glowflow/{name}")
    assert not model.training and model.is_initialized
    check, inputs = check_of(name)
    metric = "check_bpd" if model.is_image else "check_nll"
    assert read_config(WEIGHTS_DIR / name)["metrics"][metric] == check[metric]  # the card's number is this one
    scored = evaluate(model, inputs["x"], inputs.get("y"), check["n_samples"], seed=check["noise_seed"])
    got = scored["bpd"] if model.is_image else scored["nll"]
    assert got == pytest.approx(check[metric], rel=REL_TOL, abs=0)


@pytest.mark.parametrize("name", SHIPPED)
def test_decode_of_encode_and_samples(name: str):
    model = glowflow.load(f"glowflow/{name}")
    _, inputs = check_of(name)
    x = inputs["x"][:8]
    torch.manual_seed(0)
    with torch.no_grad():
        if isinstance(model, Glow):
            continuous = to_continuous(x.float(), 0.5, model.num_bins)  # bin centres: 0.5 / num_bins from any edge
            back = model.decode(model.encode(continuous)[0])
            assert torch.equal(quantize(back, model.num_bins), x.long())  # every level recovered exactly
            assert (back - continuous).abs().max() < 2e-5  # float32 round-off; measured 7.8e-7 (digits), 4.6e-6 (mnist)
        else:
            back = model.decode(model.encode(x)[0])
            torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)  # float32 round-off; measured 7.2e-7 (moons)
        samples = model.sample(16, temperature=0.7)
    assert samples.shape == (16, *model.data_shape) and bool(torch.isfinite(samples).all())


@pytest.mark.parametrize("name", SHIPPED)
def test_check_inputs_are_the_recorded_test_examples(name: str):
    """The stored inputs are the test examples at the recorded indices, read and preprocessed by today's readers."""
    check, inputs = check_of(name)
    training = read_config(WEIGHTS_DIR / name)["training"]
    data_dir = training["data_dir"]
    if data_dir is not None and not Path(data_dir).is_dir():  # trained elsewhere: CI has ../shared/data beside it
        data_dir = SHARED_DATA / training["data"]
        if not data_dir.is_dir():
            pytest.skip(f"the {training['data']} files are neither at {training['data_dir']} (where the model was "
                        f"trained) nor at {data_dir.resolve()} on this machine")  # fmt: skip
    test = load_dataset(training["data"], data_dir, "test", seed=0)
    raw = test.data[check["indices"]]
    model = glowflow.load(f"glowflow/{name}")
    expected = model.preprocess(raw) if isinstance(model, Glow) else raw
    assert torch.equal(expected, inputs["x"])


def test_every_shipped_file_is_package_data():
    """``pip install .`` (a wheel) carries every file of every shipped model."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib (to read pyproject.toml) needs Python >= 3.11")
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["glowflow"]
    for path in WEIGHTS_DIR.rglob("*"):
        if path.is_file():
            relative = path.relative_to(WEIGHTS_DIR.parent).as_posix()
            assert any(fnmatch(relative, p) for p in patterns), relative


def test_shipped_models_are_a_few_megabytes():
    for name in shipped_models():
        size = sum(p.stat().st_size for p in (WEIGHTS_DIR / name).iterdir())
        assert size < 8 * 2**20, (name, size)
