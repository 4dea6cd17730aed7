"""Tiny trained runs shared by the scoring tests (a few seconds each, once per session)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from train_helpers import TINY, TINY_TOY  # noqa: E402

from glowflow.training import train  # noqa: E402

# CI has ../shared beside the clone; the library itself never assumes it.
MNIST_5K = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist-5k"
needs_mnist_5k = pytest.mark.skipif(not (MNIST_5K / "t10k-images-idx3-ubyte.gz").is_file(),
                                    reason="needs ../shared/data/mnist-5k (real MNIST digits)")  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    """The suite shares two cores with other work; the tiny models of these tests run fastest on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(out: Path, **settings) -> Path:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(out=str(out), **settings)
    finally:
        torch.set_num_threads(before)
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
