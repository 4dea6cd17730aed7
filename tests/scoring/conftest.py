"""Tiny trained runs shared by the scoring tests (a few seconds each, once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from glowflow.training import train
from tests.helpers import one_thread
from tests.scoring.scoring_helpers import MNIST_5K
from tests.training.train_helpers import TINY, TINY_TOY


def _train(out: Path, **settings) -> Path:
    with one_thread():  # session fixtures run before the autouse one-thread fixture
        train(out=str(out), **settings)
    return out


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """Glow L=2 K=1 width 8 on the 8x8 digits (17 levels), 30 steps."""
    return _train(tmp_path_factory.mktemp("scoring") / "digits", **{**TINY, "iters": 30, "lr": 3e-3})


@pytest.fixture(scope="session")
def background_run(digits_run: Path, tmp_path_factory) -> Path:
    """The likelihood-ratio background model of ``digits_run`` (mutation rate 0.2), 30 steps."""
    schedule = {k: v for k, v in TINY.items() if k not in ("levels", "steps", "hidden")}
    return _train(tmp_path_factory.mktemp("scoring") / "background", **schedule, iters=30, lr=3e-3,
                  background_for=str(digits_run))  # fmt: skip


@pytest.fixture(scope="session")
def conditional_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("scoring") / "cond", **{**TINY, "iters": 4, "conditional": True})


@pytest.fixture(scope="session")
def moons_run(tmp_path_factory) -> Path:
    """TabularGlow on the 2-D moons."""
    return _train(tmp_path_factory.mktemp("scoring") / "moons", **{**TINY_TOY, "iters": 30})


@pytest.fixture(scope="session")
def mnist_run(tmp_path_factory) -> Path:
    """Glow L=2 K=1 width 8 on MNIST-5k at 5 bits, padded to 32x32: the preprocessing every codec must undo."""
    if not (MNIST_5K / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs ../shared/data/mnist-5k (real MNIST digits)")
    return _train(tmp_path_factory.mktemp("scoring") / "mnist", **{**TINY, "iters": 4, "eval_every": 0},
                  data="mnist", data_dir=str(MNIST_5K), n_bits=5, pad=32, eval_size=64)  # fmt: skip
