"""Arrays on disk: .npy files and stored .npz members read row by row, never mapped; the .npz conversion."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from glowflow.data import arrays
from glowflow.data.arrays import ArraySource, load_member, locate_array, npz_members, uncompress_npz
from glowflow.errors import DataError
from tests.data.stream_helpers import random_images


@pytest.fixture
def chw() -> np.ndarray:
    return random_images(40, 3, 5)


def _all(src: ArraySource) -> torch.Tensor:
    return src.get(torch.arange(len(src)))[0]


def test_nchw_nhwc_grey_and_flat_layouts_read_the_same_images(tmp_path: Path, chw: np.ndarray):
    np.save(tmp_path / "chw.npy", chw)
    np.save(tmp_path / "hwc.npy", chw.transpose(0, 2, 3, 1))
    np.save(tmp_path / "flat_hwc.npy", chw.transpose(0, 2, 3, 1).reshape(40, -1))
    np.save(tmp_path / "flat_chw.npy", chw.reshape(40, -1))
    np.save(tmp_path / "grey.npy", chw[:, 0])
    expected = torch.from_numpy(chw)
    assert torch.equal(_all(ArraySource(tmp_path / "chw.npy")), expected)
    assert torch.equal(_all(ArraySource(tmp_path / "hwc.npy")), expected)
    assert torch.equal(_all(ArraySource(tmp_path / "flat_hwc.npy", image_shape=(3, 5, 5))), expected)
    assert torch.equal(_all(ArraySource(tmp_path / "flat_chw.npy", image_shape=(3, 5, 5), layout="chw")), expected)
    grey = ArraySource(tmp_path / "grey.npy")
    assert grey.shape == (1, 5, 5) and torch.equal(_all(grey), expected[:, :1])


def test_random_batches_with_repeats_and_labels(tmp_path: Path, chw: np.ndarray):
    np.save(tmp_path / "a.npy", chw)
    labels = np.arange(40) % 3
    src = ArraySource(tmp_path / "a.npy", labels=labels, class_names=["a", "b", "c"])
    idx = torch.tensor([39, 3, 4, 5, 3, 0, 38])  # a run (3, 4, 5), a repeat, both ends
    x, y = src.get(idx)
    assert torch.equal(x, torch.from_numpy(chw)[idx]) and torch.equal(y, torch.from_numpy(labels)[idx])
    assert src.describe() == "a.npy: 40 images, 3x5x5, 256 levels, 3 classes"


def test_long_runs_are_split_into_bounded_reads(tmp_path: Path, chw: np.ndarray, monkeypatch):
    np.save(tmp_path / "a.npy", chw)
    src = ArraySource(tmp_path / "a.npy")
    reads = []
    original = src.file.pread
    monkeypatch.setattr(src.file, "pread", lambda size, offset: reads.append(size) or original(size, offset))
    monkeypatch.setattr(arrays, "MAX_RUN_BYTES", 7 * 75)  # 7 rows of 75 bytes per read
    assert torch.equal(_all(src), torch.from_numpy(chw))
    assert reads == [7 * 75] * 5 + [5 * 75]


def test_tables_come_back_as_float32(tmp_path: Path):
    table = np.random.default_rng(0).normal(size=(9, 4))
    np.save(tmp_path / "t.npy", table)
    np.save(tmp_path / "ints.npy", np.arange(18, dtype=">i4").reshape(9, 2))  # big-endian integers
    src = ArraySource(tmp_path / "t.npy")
    assert src.shape == (4,) and src.num_bins is None
    x, y = src.get([8, 0])
    assert x.dtype == torch.float32 and y is None and torch.equal(x, torch.from_numpy(table[[8, 0]].astype(np.float32)))
    assert torch.equal(_all(ArraySource(tmp_path / "ints.npy"))[4], torch.tensor([8.0, 9.0]))


def test_stored_npz_members_are_read_in_place(tmp_path: Path, chw: np.ndarray):
    np.savez(tmp_path / "b.npz", data=chw.reshape(40, -1), labels=np.arange(40))
    members = npz_members(tmp_path / "b.npz")
    assert set(members) == {"data", "labels"} and members["data"].stored and members["data"].shape == (40, 75)
    src = ArraySource(tmp_path / "b.npz", "data", image_shape=(3, 5, 5), layout="chw")
    assert torch.equal(src.get([7, 1])[0], torch.from_numpy(chw[[7, 1]]))
    assert src.name == "b.npz:data"
    assert np.array_equal(load_member(tmp_path / "b.npz", "labels"), np.arange(40))


def test_npz_member_behind_a_long_local_extra_field(tmp_path: Path, chw: np.ndarray):
    """The data offset comes from the member's local header, whose extra field can differ from the directory's."""
    path = tmp_path / "extra.npz"
    np.save(tmp_path / "x.npy", chw)
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("x.npy")
        info.extra = b"\xfe\xca\x0c\x00" + b"padding!abcd"  # an unknown 12-byte extra block
        zf.writestr(info, (tmp_path / "x.npy").read_bytes())
    assert torch.equal(_all(ArraySource(path)), torch.from_numpy(chw))


def test_deflated_member_is_refused_with_the_conversion(tmp_path: Path, chw: np.ndarray):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, data=chw, labels=np.arange(40))
    assert not npz_members(path)["data"].stored and npz_members(path)["data"].shape == (40, 3, 5, 5)
    with pytest.raises(DataError, match=re.escape(f"python -m glowflow.data.arrays uncompress {path}")):
        ArraySource(path, "data")
    assert np.array_equal(load_member(path, "labels"), np.arange(40))  # small members still load whole


def test_uncompress_in_place_and_into_a_folder(tmp_path: Path, chw: np.ndarray, capsys):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, data=chw, labels=np.arange(40))
    out = tmp_path / "out"
    out.mkdir()
    assert arrays.main(["uncompress", str(path), "--out", str(out)]) == 0
    assert not npz_members(path)["data"].stored  # the original is left as it was
    assert torch.equal(_all(ArraySource(out / "c.npz", "data")), torch.from_numpy(chw))
    assert uncompress_npz(path) == path
    assert torch.equal(_all(ArraySource(path, "data")), torch.from_numpy(chw))
    assert np.array_equal(load_member(path, "labels"), np.arange(40))
    assert arrays.main(["uncompress", str(path)]) == 0
    assert "already uncompressed (2 arrays)" in capsys.readouterr().out
    assert list(tmp_path.glob(".*tmp*")) == []


def test_conversion_errors_are_one_line(tmp_path: Path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    assert arrays.main(["uncompress", str(bad)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad} is not a readable .npz (zip) file")
    assert arrays.main(["uncompress", str(bad), "--out", str(tmp_path / "missing")]) == 2


def test_bad_files_name_themselves(tmp_path: Path, chw: np.ndarray):
    np.save(tmp_path / "a.npy", chw)
    full = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(full[:-10])
    with pytest.raises(DataError, match=r"cut.npy is truncated: its header promises"):
        ArraySource(tmp_path / "cut.npy")
    with pytest.raises(DataError, match="not found"):
        ArraySource(tmp_path / "none.npy")
    (tmp_path / "junk.npy").write_bytes(b"junk" * 10)
    with pytest.raises(DataError, match="junk.npy is not a readable .npy array"):
        ArraySource(tmp_path / "junk.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="Python objects"):
        locate_array(tmp_path / "obj.npy")
    np.save(tmp_path / "f.npy", np.asfortranarray(chw))
    with pytest.raises(DataError, match="Fortran"):
        ArraySource(tmp_path / "f.npy")
    np.savez(tmp_path / "two.npz", a=chw, b=chw)
    with pytest.raises(DataError, match="several arrays"):
        ArraySource(tmp_path / "two.npz")
    with pytest.raises(DataError, match="has no array 'c'"):
        ArraySource(tmp_path / "two.npz", "c")


def test_file_shrinking_after_opening_is_an_error_naming_it(tmp_path: Path, chw: np.ndarray):
    path = tmp_path / "a.npy"
    np.save(path, chw)
    src = ArraySource(path)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    assert torch.equal(src.get([0])[0], torch.from_numpy(chw[:1]))
    with pytest.raises(DataError, match=rf"{re.escape(str(path))} is truncated: reading 75 bytes"):
        src.get([39])


def test_ambiguous_and_unsupported_shapes(tmp_path: Path):
    np.save(tmp_path / "amb.npy", np.zeros((2, 3, 4, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="cannot tell"):
        ArraySource(tmp_path / "amb.npy")
    assert ArraySource(tmp_path / "amb.npy", layout="hwc").shape == (3, 3, 4)
    np.save(tmp_path / "flat.npy", np.zeros((2, 12), dtype=np.uint8))
    with pytest.raises(DataError, match=r"pass image_shape=\(C, H, W\)"):
        ArraySource(tmp_path / "flat.npy")
    with pytest.raises(DataError, match="do not hold images"):
        ArraySource(tmp_path / "flat.npy", image_shape=(3, 2, 3))
    np.save(tmp_path / "vec.npy", np.zeros(5))
    with pytest.raises(DataError, match="one row per example"):
        ArraySource(tmp_path / "vec.npy")


def _rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssFile from Linux's /proc/self/status")
def test_reading_keeps_file_pages_out_of_resident_memory(tmp_path: Path):
    """Batches over the whole of a 32 MiB array add nothing file-backed to the process's resident memory (an
    np.memmap reading the same rows would add up to all 32 MiB of pages it touched)."""
    rows = 32 * 1024
    path = tmp_path / "big.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, 1024))[:] = 7
    src = ArraySource(path, image_shape=(1, 32, 32))
    before = _rss_file_kib()
    g = torch.Generator().manual_seed(0)
    for _ in range(64):
        x, _ = src.get(torch.randint(0, rows, (512,), generator=g))
    assert int(x[0, 0, 0, 0]) == 7
    grown = _rss_file_kib() - before
    assert grown < 2048, f"file-backed resident memory grew by {grown} KiB"
    mapped = np.load(path, mmap_mode="r")
    before = _rss_file_kib()
    for _ in range(64):
        _ = mapped[torch.randint(0, rows, (512,), generator=g).numpy()].sum()
    assert _rss_file_kib() - before > 8 * 1024  # the contrast: the mapping's touched pages are resident
