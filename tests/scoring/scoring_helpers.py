"""The real MNIST-5k digits of the scoring tests, skipped with a reason where ../shared is absent."""

from __future__ import annotations

import pytest

from tests.data.data_helpers import MNIST_5K_DIR as MNIST_5K

needs_mnist_5k = pytest.mark.skipif(not (MNIST_5K / "t10k-images-idx3-ubyte.gz").is_file(),
                                    reason="needs ../shared/data/mnist-5k (real MNIST digits)")  # fmt: skip
