"""scikit-learn's bundled 8x8 digits (1,797 images, 17 grey levels): the offline data set of the README's command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from glowflow.data.base import Dataset, labels_tensor

TEST_SIZE = 297
NUM_BINS = 17


def load_digits(data_dir: Path | None, split: str, download: bool, seed: int) -> Dataset:
    """1,500 train / 297 test images (1, 8, 8), levels 0..16, 10 classes. The split is fixed (``default_rng(0)``,
    whatever ``seed``), so that test numbers stay comparable between runs; ``data_dir`` is not used."""
    from sklearn.datasets import load_digits as sklearn_digits  # scikit-learn is slow to import: only when asked

    bunch = sklearn_digits()
    images = bunch.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8), values 0..16
    perm = np.random.default_rng(0).permutation(len(images))
    n_train = len(images) - TEST_SIZE
    chosen = perm[:n_train] if split == "train" else perm[n_train:]
    return Dataset(
        "digits",
        split,
        torch.from_numpy(np.ascontiguousarray(images[chosen])),
        labels_tensor(bunch.target[chosen]),
        NUM_BINS,
        [str(i) for i in range(10)],
    )
