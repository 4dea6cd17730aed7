"""Reader for tabular data: a ``.csv`` file of numbers (with an optional header row; comma-, semicolon- or
tab-separated, detected from the first line) or a 2-D ``.npy`` array. Returns float32 ``(N, D)``; NaN, inf and
non-numeric cells are errors naming file and row."""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from glowflow.data.base import Dataset, split_indices
from glowflow.errors import DataError

DELIMITERS = (",", ";", "\t")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _is_header(row: list[str]) -> bool:
    """A first row is a header if one of its non-empty cells is not a number."""
    return any(c.strip() and not _is_number(c) for c in row)


def sniff_delimiter(first_line: str) -> str:
    """The delimiter of a csv file from its first line: the one of :data:`DELIMITERS` that splits it into the most
    cells (a comma if none occurs: one column)."""
    counts = {d: first_line.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


def _parse_rows(path: Path, rows: list[list[str]]) -> np.ndarray:
    """Slow, exact parse of a csv, cell by cell, for precise errors. Rows are numbered as lines of the file."""
    values: list[list[float]] = []
    width = None
    start = 1
    if rows and _is_header(rows[0]):
        start = 2
        rows = rows[1:]
    for lineno, row in enumerate(rows, start):
        if not row or all(not c.strip() for c in row):
            continue
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise DataError(f"{path}, row {lineno}: {len(row)} columns, expected {width} like the rows above")
        parsed = []
        for col, cell in enumerate(row, 1):
            try:
                v = float(cell)
            except ValueError:
                raise DataError(f"{path}, row {lineno}, column {col}: non-numeric cell {cell!r}") from None
            with np.errstate(over="ignore"):
                finite = bool(np.isfinite(np.float32(v)))
            if not finite:
                what = "NaN" if v != v else ("inf" if not np.isfinite(v) else f"{v!r}, out of float32 range")
                raise DataError(f"{path}, row {lineno}, column {col}: {what}; clean or drop such rows first")
            parsed.append(v)
        values.append(parsed)
    if not values:
        raise DataError(f"{path} holds no data rows")
    return np.asarray(values, dtype=np.float32)


def read_csv(path: str | os.PathLike) -> np.ndarray:
    """Read a csv file of numbers into float32 ``(N, D)``. The delimiter (comma, semicolon or tab) is detected from
    the first line; a first row with a non-numeric cell is a header and skipped; blank lines are skipped. DataError
    (with file, row and column) for non-numeric cells, NaN/inf, ragged rows or a file without data."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            delimiter = sniff_delimiter(f.readline())
            f.seek(0)
            first = next(csv.reader(f, delimiter=delimiter), [])
        # Fast path for clean files; anything unusual goes through the exact parser, which says where it is.
        with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data": the exact parser reports it
            data = np.loadtxt(
                path, delimiter=delimiter, skiprows=int(_is_header(first)), ndmin=2, comments=None, encoding="utf-8"
            ).astype(np.float32)
        if data.size and np.isfinite(data).all():
            return data
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path} as a csv file: {e}") from e
    except ValueError:
        pass
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter=delimiter))
    return _parse_rows(path, rows)


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """Read a 2-D numeric ``.npy`` array (no pickles) into float32 ``(N, D)``. DataError for other shapes or
    dtypes and for NaN/inf (naming the first bad row, 0-based)."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read {path} as a .npy array: {e}") from e
    if not isinstance(arr, np.ndarray) or arr.ndim != 2:
        raise DataError(f"{path} must hold a 2-D array (N, D), got shape {getattr(arr, 'shape', None)}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"{path} must hold real numbers, got dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{path} holds an empty array of shape {arr.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        data = arr.astype(np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{path}, row {row} (0-based), column {col}: {arr[row, col]!r} is NaN, inf or out of float32 range"
        )
    return data


def read_table(path: str | os.PathLike) -> np.ndarray:
    """Read a ``.csv`` or ``.npy`` file (by extension) into float32 ``(N, D)``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tabular data file {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_csv(path)
    if suffix == ".npy":
        return read_npy(path)
    raise DataError(f"{path}: tabular data must be a .csv or .npy file")


def load_tabular(data_dir: Path | None, split: str, download: bool, seed: int) -> Dataset:
    """The ``split`` of a table: ``data_dir`` is a ``.csv`` / ``.npy`` file (split 90/10 with ``seed``) or a folder
    holding ``train`` and ``test`` files (``.npy`` or ``.csv``)."""
    if data_dir is None:
        raise ValueError("the 'tabular' data set needs data_dir: a .csv/.npy file or a folder of them")
    path = data_dir
    if path.is_dir():
        candidates = [path / f"{split}{ext}" for ext in (".npy", ".csv")]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataError(
                f"neither {split}.npy nor {split}.csv found in {path}; the tabular data set takes a .csv or .npy "
                "file (split 90/10) or a folder holding train.csv and test.csv (or .npy)"
            )
        data = read_table(found)
    elif path.is_file():
        table = read_table(path)
        data = table[split_indices(len(table), split, seed, f"tabular file {path}")]
    else:
        raise DataError(f"tabular data {path} not found (expected a .csv or .npy file, or a folder of them)")
    return Dataset("tabular", split, torch.from_numpy(np.ascontiguousarray(data)), None, None, None)
