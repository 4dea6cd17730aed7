"""The image-folder reader on PNG / JPEG files written here with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from glowflow.data import load_dataset
from glowflow.errors import DataError

Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed; the folder data set needs it")


def grey(path: Path, value: int, size: tuple[int, int] = (6, 4)) -> Path:
    """A greyscale PNG of ``size`` (width, height) whose pixels are ``value`` except pixel (0, 0) = 255 - value."""
    arr = np.full(size[::-1], value, np.uint8)
    arr[0, 0] = 255 - value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="L").save(path)
    return path


def colour(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> Path:
    arr = np.empty((size[1], size[0], 3), np.uint8)
    arr[:] = rgb
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="RGB").save(path, quality=95)
    return path


def test_class_subfolders_labels_and_split(tmp_path: Path) -> None:
    # class c, image i has value 10 * c + i: every image is identifiable after loading
    for c, name in enumerate(["cat", "dog", "eel"]):
        for i in range(7):
            grey(tmp_path / name / f"{i:02d}.png", 10 * c + i)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    train = load_dataset("folder", tmp_path, split="train")
    test = load_dataset("folder", tmp_path, split="test")
    assert (len(train), len(test)) == (19, 2)  # 10% of 21, rounded
    for ds in (train, test):
        assert ds.data.dtype == torch.uint8 and ds.shape == (1, 4, 6) and ds.num_bins == 256
        assert ds.class_names == ["cat", "dog", "eel"] and ds.num_classes == 3
        values = ds.data[:, 0, 1, 1].long()
        assert torch.equal(ds.labels, values // 10)  # label = class of the file it came from
        assert torch.equal(ds.data[:, 0, 0, 0].long(), 255 - values)  # lossless, oriented (row 0, column 0)
    seen = torch.cat([train.data[:, 0, 1, 1], test.data[:, 0, 1, 1]]).long()
    assert sorted(seen.tolist()) == sorted(10 * c + i for c in range(3) for i in range(7))
    again = load_dataset("folder", tmp_path, split="test")
    assert torch.equal(again.data, test.data)
    other = {tuple(load_dataset("folder", tmp_path, split="test", seed=s).data[:, 0, 1, 1].tolist()) for s in range(5)}
    assert len(other) > 1  # the seed picks the split


def test_flat_folder_has_no_labels_and_keeps_one_test_image(tmp_path: Path) -> None:
    for i in range(3):
        grey(tmp_path / f"img{i}.png", i)
    train, test = (load_dataset("folder", tmp_path, split=s) for s in ("train", "test"))
    assert (len(train), len(test)) == (2, 1) and train.labels is None and train.class_names is None
    assert train.num_classes is None
    grey(tmp_path / "only" / "one.png", 0)
    with pytest.raises(DataError, match="at least 2"):
        load_dataset("folder", tmp_path / "only")


def test_jpeg_rgb(tmp_path: Path) -> None:
    colours = [(200, 30, 90), (10, 240, 120), (128, 128, 0)]
    for i, rgb in enumerate(colours):
        colour(tmp_path / f"c{i}.jpg", rgb)
    colour(tmp_path / "c3.JPEG", (0, 0, 255))
    ds = load_dataset("folder", tmp_path, split="train")
    assert ds.shape == (3, 4, 6) and len(ds) == 3
    means = {tuple(int(v) for v in img.float().mean((1, 2)).round()) for img in ds.data}
    everything = colours + [(0, 0, 255)]
    for m in means:  # each image matches one of the colours, up to JPEG error, channel order R, G, B
        assert min(max(abs(a - b) for a, b in zip(m, c, strict=True)) for c in everything) <= 4


def test_mixed_grey_and_colour_become_rgb(tmp_path: Path) -> None:
    grey(tmp_path / "a.png", 77)
    colour(tmp_path / "b.png", (1, 2, 3))
    Image.fromarray(np.full((4, 6), 5, np.uint8)).convert("P").save(tmp_path / "c.png")  # palette image
    train, test = (load_dataset("folder", tmp_path, split=s) for s in ("train", "test"))
    data = torch.cat([train.data, test.data])
    assert data.shape == (3, 3, 4, 6)
    pixels = {tuple(img[:, 1, 1].tolist()) for img in data}
    assert pixels == {(77, 77, 77), (1, 2, 3), (5, 5, 5)}  # grey replicated into R, G, B; PNG is lossless


def test_size_mismatch_names_both_files(tmp_path: Path) -> None:
    grey(tmp_path / "a.png", 1, size=(6, 4))
    grey(tmp_path / "b.png", 1, size=(6, 4))
    grey(tmp_path / "c.png", 1, size=(8, 8))
    with pytest.raises(DataError, match="images differ in size") as e:
        load_dataset("folder", tmp_path)
    assert "a.png is 6x4" in str(e.value) and "c.png is 8x8" in str(e.value)


def test_no_images_and_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_dataset("folder", tmp_path / "empty")
    with pytest.raises(DataError, match="not found"):
        load_dataset("folder", tmp_path / "nope")
    with pytest.raises(ValueError, match="needs data_dir"):
        load_dataset("folder")


def test_loose_images_beside_class_folders_are_ambiguous(tmp_path: Path) -> None:
    grey(tmp_path / "a.png", 1)
    grey(tmp_path / "cls" / "b.png", 1)
    with pytest.raises(DataError, match="both directly"):
        load_dataset("folder", tmp_path)


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    grey(tmp_path / "a.png", 1)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="broken.png"):
        load_dataset("folder", tmp_path)


def test_train_test_subfolders_share_one_class_index(tmp_path: Path) -> None:
    for name in ("ant", "bee", "cow"):
        for i in range(2):
            grey(tmp_path / "train" / name / f"{i}.png", 40)
    grey(tmp_path / "test" / "bee" / "x.png", 50)  # the test split lacks "ant" and "cow"
    grey(tmp_path / "test" / "cow" / "y.png", 60)
    train, test = (load_dataset("folder", tmp_path, split=s) for s in ("train", "test"))
    assert len(train) == 6 and len(test) == 2
    assert train.class_names == test.class_names == ["ant", "bee", "cow"]
    assert sorted(train.labels.tolist()) == [0, 0, 1, 1, 2, 2] and test.labels.tolist() == [1, 2]
    assert test.data[:, 0, 1, 1].tolist() == [50, 60]


def test_train_test_subfolders_unlabelled_and_inconsistent(tmp_path: Path) -> None:
    grey(tmp_path / "train" / "a.png", 1)
    grey(tmp_path / "train" / "b.png", 2)
    grey(tmp_path / "test" / "c.png", 3)
    assert len(load_dataset("folder", tmp_path)) == 2 and load_dataset("folder", tmp_path, split="test").labels is None
    grey(tmp_path / "test2" / "cls" / "c.png", 3)
    (tmp_path / "test").rename(tmp_path / "test_old")
    (tmp_path / "test2").rename(tmp_path / "test")
    with pytest.raises(DataError, match="both use class sub-folders"):
        load_dataset("folder", tmp_path)
    (tmp_path / "test").rename(tmp_path / "elsewhere")
    with pytest.raises(DataError, match="no test/ folder"):
        load_dataset("folder", tmp_path)


def test_train_test_sizes_must_agree(tmp_path: Path) -> None:
    grey(tmp_path / "train" / "a.png", 1, size=(6, 4))
    grey(tmp_path / "test" / "b.png", 1, size=(4, 4))
    with pytest.raises(DataError, match="differ in size"):
        load_dataset("folder", tmp_path, split="train")
