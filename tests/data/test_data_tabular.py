"""The tabular reader: .csv (with / without header) and .npy files, split files, and bad cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from glowflow.data import load_dataset
from glowflow.errors import DataError

TABLE = np.random.default_rng(0).normal(size=(50, 3)).round(4)


def write_csv(path: Path, rows: np.ndarray, header: str | None = None) -> Path:
    lines = [] if header is None else [header]
    lines += [",".join(repr(float(v)) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def rows_of(*datasets: object) -> list[tuple[float, ...]]:
    return sorted(tuple(r) for ds in datasets for r in ds.data.tolist())


@pytest.mark.parametrize("header", [None, "x,y,z", "x,,z"])
def test_csv_split_covers_every_row_once(tmp_path: Path, header: str | None) -> None:
    path = write_csv(tmp_path / "t.csv", TABLE, header)
    train, test = (load_dataset("tabular", path, split=s) for s in ("train", "test"))
    assert (len(train), len(test)) == (45, 5)
    for ds in (train, test):
        assert ds.data.dtype == torch.float32 and ds.shape == (3,) and not ds.is_image
        assert ds.labels is None and ds.num_bins is None and ds.class_names is None
    assert rows_of(train, test) == sorted(tuple(r) for r in TABLE.astype(np.float32).tolist())
    assert torch.equal(load_dataset("tabular", path, split="test").data, test.data)
    assert not torch.equal(load_dataset("tabular", path, split="test", seed=1).data, test.data)


def test_npy_and_csv_agree(tmp_path: Path) -> None:
    np.save(tmp_path / "t.npy", TABLE)
    write_csv(tmp_path / "t.csv", TABLE, "a,b,c")
    for split in ("train", "test"):
        assert torch.equal(
            load_dataset("tabular", tmp_path / "t.npy", split=split).data,
            load_dataset("tabular", tmp_path / "t.csv", split=split).data,
        )
    np.save(tmp_path / "ints.npy", np.arange(12).reshape(6, 2))
    assert load_dataset("tabular", tmp_path / "ints.npy").data.dtype == torch.float32


def test_folder_with_train_and_test_files(tmp_path: Path) -> None:
    write_csv(tmp_path / "train.csv", TABLE[:40], "a,b,c")
    write_csv(tmp_path / "test.csv", TABLE[40:])
    assert torch.equal(load_dataset("tabular", tmp_path).data, torch.from_numpy(TABLE[:40]).float())
    assert torch.equal(load_dataset("tabular", tmp_path, split="test").data, torch.from_numpy(TABLE[40:]).float())
    np.save(tmp_path / "test.npy", TABLE[:3])  # .npy is preferred when both exist
    assert len(load_dataset("tabular", tmp_path, split="test")) == 3
    (tmp_path / "train.csv").unlink()
    with pytest.raises(DataError, match="neither train.npy nor train.csv"):
        load_dataset("tabular", tmp_path)


def test_blank_lines_and_spaces_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a, b\n1, 2\n\n 3,4 \n   \n5,6\n")
    assert load_dataset("tabular", path).data.shape[1] == 2
    ds = torch.cat([load_dataset("tabular", path, split=s).data for s in ("train", "test")])
    assert sorted(ds.tolist()) == [[1, 2], [3, 4], [5, 6]]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("a,b\n1,2\n3,nan\n4,5\n", "row 3, column 2: NaN"),
        ("1,2\n3,4\n-inf,5\n", "row 3, column 1: inf"),
        ("1,2\n3,4\n5,1e39\n", "row 3, column 2: .*out of float32 range"),
        ("a,b\n1,2\n3,x\n4,5\n", "row 3, column 2: non-numeric cell 'x'"),
        ("1,2\n3,\n", "row 2, column 2: non-numeric cell ''"),
        ("1,2\n3,4,5\n", "row 2: 3 columns, expected 2"),
        ("a,b\n", "no data rows"),
        ("", "no data rows"),
    ],
)
def test_bad_csv_names_file_and_row(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=needle) as e:
        load_dataset("tabular", path)
    assert "bad.csv" in str(e.value)


def test_bad_npy(tmp_path: Path) -> None:
    table = TABLE.copy()
    table[7, 1] = np.nan
    np.save(tmp_path / "nan.npy", table)
    with pytest.raises(DataError, match=r"nan.npy, row 7 \(0-based\), column 1"):
        load_dataset("tabular", tmp_path / "nan.npy")
    np.save(tmp_path / "flat.npy", np.zeros(10))
    with pytest.raises(DataError, match="2-D array"):
        load_dataset("tabular", tmp_path / "flat.npy")
    np.save(tmp_path / "obj.npy", np.array([[{"a": 1}, 2]], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="obj.npy"):  # pickled objects are never loaded
        load_dataset("tabular", tmp_path / "obj.npy")
    np.save(tmp_path / "cplx.npy", np.ones((3, 2), np.complex64))
    with pytest.raises(DataError, match="real numbers"):
        load_dataset("tabular", tmp_path / "cplx.npy")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(DataError, match="junk.npy"):
        load_dataset("tabular", tmp_path / "junk.npy")


def test_missing_and_wrong_kind(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_dataset("tabular", tmp_path / "nope.csv")
    (tmp_path / "t.txt").write_text("1,2\n")
    with pytest.raises(DataError, match=".csv or .npy"):
        load_dataset("tabular", tmp_path / "t.txt")
    with pytest.raises(ValueError, match="needs data_dir"):
        load_dataset("tabular")
    write_csv(tmp_path / "one.csv", TABLE[:1])
    with pytest.raises(DataError, match="at least 2"):
        load_dataset("tabular", tmp_path / "one.csv")
