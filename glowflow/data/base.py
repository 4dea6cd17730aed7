"""The :class:`Dataset` container every reader returns, and where data lives by default.

Images come back as their discrete levels (uint8, ``0..num_bins-1``), never scaled: turning them into the flow's
continuous input is the dequantizer's job (``glowflow/layers/dequantization.py``). Tabular and toy data are
continuous float32 and have ``num_bins=None``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from glowflow.errors import DataError

SPLITS = ("train", "test")
TEST_FRACTION = 0.1


@dataclass(eq=False)
class Dataset:
    """One split of a data set, fully in memory.

    - ``data``: images as torch.uint8 ``(N, C, H, W)`` holding integer levels ``0..num_bins-1``; tabular and
      toy data as torch.float32 ``(N, D)``.
    - ``labels``: torch.long ``(N,)`` class indices, or None.
    - ``num_bins``: discrete levels per dimension (256 for 8-bit images, 17 for the sklearn digits); None for
      continuous data.
    - ``class_names``: one name per class index, or None.
    """

    name: str
    split: str
    data: Tensor
    labels: Tensor | None
    num_bins: int | None
    class_names: list[str] | None

    def __post_init__(self) -> None:
        if self.data.dim() == 4:
            if self.data.dtype != torch.uint8 or self.num_bins is None:
                raise ValueError(f"image data must be uint8 with num_bins set, got {self.data.dtype}")
        elif self.data.dim() != 2 or not self.data.is_floating_point():
            raise ValueError(f"data must be (N, C, H, W) uint8 or (N, D) float, got {self.data.dtype} {self.shape}")
        if self.labels is not None:
            if self.labels.dtype != torch.long or self.labels.shape != (len(self.data),):
                raise ValueError(
                    f"labels must be torch.long of shape ({len(self.data)},), "
                    f"got {self.labels.dtype} {tuple(self.labels.shape)}"
                )

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one example: ``(C, H, W)`` for images, ``(D,)`` for tabular / toy data."""
        return tuple(self.data.shape[1:])

    @property
    def num_classes(self) -> int | None:
        """Number of classes (from ``class_names``, else from the largest label), or None without labels."""
        if self.class_names is not None:
            return len(self.class_names)
        if self.labels is None or len(self.labels) == 0:
            return None
        return int(self.labels.max()) + 1

    @property
    def is_image(self) -> bool:
        """True for ``(N, C, H, W)`` image data."""
        return self.data.dim() == 4

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, split={self.split!r}, n={len(self)}, shape={self.shape}, "
            f"dtype={self.data.dtype}, num_bins={self.num_bins}, num_classes={self.num_classes})"
        )


def default_data_dir() -> Path:
    """``$GLOWFLOW_DATA`` if set (and non-empty), else ``~/.cache/glowflow``."""
    env = os.environ.get("GLOWFLOW_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "glowflow"


def split_indices(n: int, split: str, seed: int, what: str, n_test: int | None = None) -> np.ndarray:
    """Deterministic split of ``n`` items: a ``default_rng(seed)`` permutation, train = its first part, test = its
    last ``n_test`` (default ``max(1, round(0.1 n))``, the 90/10 split)."""
    if n < 2:
        raise DataError(f"{what} holds {n} item(s); at least 2 are needed to split it into train and test")
    if n_test is None:
        n_test = max(1, round(TEST_FRACTION * n))
    n_test = min(max(1, n_test), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return perm[: n - n_test] if split == "train" else perm[n - n_test :]


def labels_tensor(y: np.ndarray) -> Tensor:
    """Class indices as torch.long (N,)."""
    return torch.from_numpy(np.asarray(y, dtype=np.int64))
