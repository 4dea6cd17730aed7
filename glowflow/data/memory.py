"""Data already in memory - NumPy arrays, tensors, or a ``torch.utils.data.Dataset`` - as :class:`Dataset` splits,
checked as strictly as the file readers check their files.

Images are integer arrays (N, C, H, W) or (N, H, W) (one channel) of levels ``0..num_bins-1``; rows are float
arrays (N, D). Everything else is a ``ValueError`` that says what was expected.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from glowflow.data.base import Dataset, split_indices

NAME = "memory"


def _tensor(x: Any, what: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().cpu()
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise ValueError(f"{what}: expected a numeric array, got dtype object")
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, torch.utils.data.Dataset):
        return _from_torch_dataset(x, what)[0]
    raise ValueError(f"{what}: expected a NumPy array, a tensor or a torch.utils.data.Dataset, got {type(x).__name__}")


def _from_torch_dataset(ds: torch.utils.data.Dataset, what: str) -> tuple[Tensor, Tensor | None]:
    """Materialise a map-style dataset whose items are ``x`` or ``(x, label)``."""
    try:
        n = len(ds)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{what}: the torch Dataset must have a length (a map-style dataset)") from None
    if n == 0:
        raise ValueError(f"{what}: the torch Dataset is empty")
    xs, ys = [], []
    for i in range(n):
        item = ds[i]
        if isinstance(item, (tuple, list)):
            if len(item) != 2:
                raise ValueError(f"{what}: item {i} must be x or (x, label), got a sequence of {len(item)}")
            xs.append(torch.as_tensor(item[0]))
            ys.append(int(item[1]))
        else:
            xs.append(torch.as_tensor(item))
    if ys and len(ys) != n:
        raise ValueError(f"{what}: some items carry a label and some do not")
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) != 1:
        raise ValueError(f"{what}: items differ in shape ({', '.join(map(str, sorted(shapes)[:3]))}, ...)")
    return torch.stack(xs), (torch.tensor(ys, dtype=torch.long) if ys else None)


def split_labels(data: Any, labels: Any, what: str) -> tuple[Tensor, Tensor | None]:
    """``(x, labels)`` from the user's data and labels (labels may also come from a torch Dataset's items)."""
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, Tensor):
        x, y = _from_torch_dataset(data, what)
        if labels is not None:
            y = _labels(labels, len(x), what)
        return x, y
    x = _tensor(data, what)
    return x, None if labels is None else _labels(labels, len(x), what)


def _labels(labels: Any, n: int, what: str) -> Tensor:
    y = labels if isinstance(labels, Tensor) else torch.as_tensor(np.asarray(labels))
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        if not (y.is_floating_point() and bool((y == y.round()).all())):
            raise ValueError(f"{what} labels must be integers, got {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"{what} labels must have shape ({n},), got {tuple(y.shape)}")
    y = y.long()
    if n and int(y.min()) < 0:
        raise ValueError(f"{what} labels must be class indices >= 0, got {int(y.min())}")
    return y


def as_dataset(
    x: Tensor, labels: Tensor | None, split: str, num_bins: int | None, class_names: list[str] | None, what: str
) -> Dataset:
    """One split of in-memory data as a :class:`Dataset` (checked; images become uint8, rows float32)."""
    if x.dim() == 3 and not x.is_floating_point():
        x = x[:, None]  # (N, H, W) -> one channel
    if x.dim() == 4:
        if x.is_floating_point() or x.dtype == torch.bool or x.is_complex():
            raise ValueError(f"{what}: images must hold integer levels (uint8 or an integer dtype), got {x.dtype}")
        if num_bins is None:
            num_bins = 256
        if not 2 <= num_bins <= 256:
            raise ValueError(f"num_bins must lie in 2..256 for in-memory images, got {num_bins}")
        if len(x) == 0:
            raise ValueError(f"{what}: no images")
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= num_bins:
            raise ValueError(f"{what}: pixel levels must lie in [0, {num_bins - 1}] (num_bins={num_bins}); got "
                             f"{lo}..{hi}")  # fmt: skip
        data = x.to(torch.uint8)
    elif x.dim() == 2:
        if not x.is_floating_point():
            x = x.double()
        if len(x) == 0:
            raise ValueError(f"{what}: no rows")
        data = x.float()
        bad = ~torch.isfinite(data)
        if bool(bad.any()):
            row, col = (int(v) for v in bad.nonzero()[0])
            raise ValueError(f"{what}: row {row}, column {col} is NaN, inf or out of float32 range")
        num_bins = None
    else:
        raise ValueError(
            f"{what}: expected images (N, C, H, W) / (N, H, W) of integer levels or rows (N, D) of numbers, got shape "
            f"{tuple(x.shape)} ({x.dtype})"
        )
    if labels is not None and class_names is not None and int(labels.max()) >= len(class_names):
        raise ValueError(f"{what} labels reach {int(labels.max())} but only {len(class_names)} class names are given")
    return Dataset(NAME, split, data.contiguous(), labels, num_bins, class_names)


def in_memory_splits(
    data: Any,
    labels: Any = None,
    test_data: Any = None,
    test_labels: Any = None,
    test_fraction: float = 0.1,
    num_bins: int | None = None,
    class_names: list[str] | None = None,
    seed: int = 0,
) -> tuple[Dataset, Dataset]:
    """The train and test splits of in-memory data: ``test_data`` if given, else a deterministic
    ``test_fraction`` of ``data`` (seeded by ``seed``)."""
    x, y = split_labels(data, labels, "data")
    if test_data is None:
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
        if test_labels is not None:
            raise ValueError("test_labels given without test_data")
        n_test = max(1, round(test_fraction * len(x)))
        train_idx = torch.from_numpy(split_indices(len(x), "train", seed, "the in-memory data", n_test))
        test_idx = torch.from_numpy(split_indices(len(x), "test", seed, "the in-memory data", n_test))
        tx, ty = x[test_idx], None if y is None else y[test_idx]
        x, y = x[train_idx], None if y is None else y[train_idx]
    else:
        tx, ty = split_labels(test_data, test_labels, "test_data")
        if (y is None) != (ty is None):
            raise ValueError("labels must be given for both data and test_data, or for neither")
    train = as_dataset(x, y, "train", num_bins, class_names, "data")
    test = as_dataset(tx, ty, "test", num_bins, class_names, "test_data")
    if train.shape != test.shape or train.is_image != test.is_image:
        raise ValueError(
            f"data and test_data differ: {train.shape} {train.data.dtype} vs {test.shape} {test.data.dtype}"
        )
    return train, test
