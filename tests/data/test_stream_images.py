"""Image folders decoded batch by batch, and the tar shards that share their decoding: listing without opening,
fitting to a size, labels, and unreadable files (one error naming the file, or skipped and counted)."""

from __future__ import annotations

import io
import re
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glowflow.data import image_files
from glowflow.data.image_files import ImageFolderSource, decode_image
from glowflow.data.shards import TarShardSource
from glowflow.data.sources import SkippedExampleWarning, TensorSource
from glowflow.errors import DataError
from tests.data.stream_helpers import png_bytes, random_images, write_png_folder, write_shards


@pytest.fixture
def imgs() -> np.ndarray:
    return random_images(12, 3, 6)


def test_folder_reads_images_in_name_order(tmp_path: Path, imgs: np.ndarray):
    write_png_folder(tmp_path / "f", imgs)
    src = ImageFolderSource(tmp_path / "f")
    assert len(src) == 12 and src.shape == (3, 6, 6) and src.labels is None and src.num_bins == 256
    idx = torch.tensor([11, 0, 4, 4])
    assert torch.equal(src.get(idx)[0], torch.from_numpy(imgs)[idx])


def test_folder_opens_one_file_to_start(tmp_path: Path, imgs: np.ndarray, monkeypatch):
    write_png_folder(tmp_path / "f", imgs)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda f, *a, **k: opened.append(f) or real_open(f, *a, **k))
    ImageFolderSource(tmp_path / "f")  # the first image's header gives size and channels
    ImageFolderSource(tmp_path / "f", size=(6, 6), channels=3)
    assert len(opened) == 1


def test_class_folders_give_labels(tmp_path: Path, imgs: np.ndarray):
    labels = np.array([2, 0, 1] * 4)
    write_png_folder(tmp_path / "f", imgs, labels)
    src = ImageFolderSource(tmp_path / "f")
    assert src.class_names == ["class_0", "class_1", "class_2"]
    order = np.argsort(labels, kind="stable")  # listed class by class, names sorted within
    x, y = src.get(torch.arange(12))
    assert torch.equal(x, torch.from_numpy(imgs[order])) and torch.equal(y, torch.from_numpy(labels[order]))
    fixed = ImageFolderSource(tmp_path / "f", class_names=["class_2", "class_1", "class_0", "class_9"])
    assert torch.equal(fixed.labels, 2 - torch.from_numpy(labels[order]))
    with pytest.raises(ValueError, match="not among the class names"):
        ImageFolderSource(tmp_path / "f", class_names=["class_0"])


def test_folder_layout_errors(tmp_path: Path, imgs: np.ndarray):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderSource(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        ImageFolderSource(tmp_path / "empty")
    write_png_folder(tmp_path / "mixed", imgs[:2])
    write_png_folder(tmp_path / "mixed", imgs[:2], np.array([0, 1]))
    with pytest.raises(DataError, match="both directly"):
        ImageFolderSource(tmp_path / "mixed")


def test_grey_images_and_forced_channels(tmp_path: Path, imgs: np.ndarray):
    write_png_folder(tmp_path / "g", imgs[:, :1])
    grey = ImageFolderSource(tmp_path / "g")
    assert grey.shape == (1, 6, 6) and torch.equal(grey.get([3])[0], torch.from_numpy(imgs[3:4, :1]))
    rgb = ImageFolderSource(tmp_path / "g", channels=3)
    assert torch.equal(rgb.get([3])[0], torch.from_numpy(imgs[3:4, :1]).expand(1, 3, 6, 6))


def _stripes(width: int, height: int) -> bytes:
    """RGB image: left third red (255, 0, 0), middle green, right third blue."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    third = width // 3
    arr[:, :third, 0] = 255
    arr[:, third : 2 * third, 1] = 255
    arr[:, 2 * third :, 2] = 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_fitting_other_sizes():
    wide = _stripes(96, 32)  # three 32x32 squares: red, green, blue
    crop = decode_image(wide, "wide.png", 3, (8, 8), "center-crop")
    assert crop.shape == (3, 8, 8) and crop[1].min() == 255 and crop[0].max() == 0 and crop[2].max() == 0
    squash = decode_image(wide, "wide.png", 3, (8, 12), "resize")  # 12 wide: 4 columns per stripe
    assert squash.shape == (3, 8, 12)
    assert squash[0, :, :4].min() == 255 and squash[1, :, 4:8].min() == 255 and squash[2, :, 8:].min() == 255
    up = decode_image(_stripes(3, 1), "tiny.png", 3, (2, 6), "resize")  # enlarging: bicubic
    assert up.shape == (3, 2, 6) and up[0, :, 0].min() > 200 and up[2, :, -1].min() > 200
    with pytest.raises(DataError, match=r"image wide.png is 96x32, not 8x8 \(width x height\)"):
        decode_image(wide, "wide.png", 3, (8, 8), "exact")


def test_jpeg_is_drafted_to_the_target_and_fitted():
    arr = np.full((256, 512, 3), (10, 200, 30), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    out = decode_image(buf.getvalue(), "big.jpg", 3, (16, 16), "center-crop")
    assert out.shape == (3, 16, 16)
    assert np.abs(out.reshape(3, -1).mean(1) - [10, 200, 30]).max() < 4  # JPEG keeps a flat colour to a few levels
    grey = decode_image(buf.getvalue(), "big.jpg", 1, (8, 16), "resize")
    assert grey.shape == (1, 8, 16)


def test_folder_fits_mixed_sizes_when_asked(tmp_path: Path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.png").write_bytes(_stripes(96, 32))
    (tmp_path / "m" / "b.png").write_bytes(_stripes(30, 30))
    with pytest.raises(DataError, match=r"b.png is 30x30, not 96x32"):
        ImageFolderSource(tmp_path / "m").get([1])
    src = ImageFolderSource(tmp_path / "m", size=(8, 8), fit="center-crop")
    assert src.get([0, 1])[0].shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="fit must be one of"):
        ImageFolderSource(tmp_path / "m", fit="pad")


def _corrupt_folder(tmp_path: Path, imgs: np.ndarray) -> Path:
    paths = write_png_folder(tmp_path / "c", imgs)
    paths[3].write_bytes(paths[3].read_bytes()[:40])  # truncated PNG
    paths[4].write_bytes(b"this is not an image")
    return tmp_path / "c"


def test_corrupt_image_is_one_error_naming_the_file(tmp_path: Path, imgs: np.ndarray):
    src = ImageFolderSource(_corrupt_folder(tmp_path, imgs))
    assert torch.equal(src.get([2, 5])[0], torch.from_numpy(imgs[[2, 5]]))
    with pytest.raises(DataError, match=r"cannot decode image .*c/000003\.png"):
        src.get([1, 3])
    with pytest.raises(DataError, match=r"cannot decode image .*c/000004\.png"):
        src.get([4])


def test_skipping_replaces_with_the_next_readable_example(tmp_path: Path, imgs: np.ndarray):
    src = ImageFolderSource(_corrupt_folder(tmp_path, imgs), on_error="skip")
    batch = src.read(torch.tensor([3, 0, 4]))
    assert torch.equal(batch.x, torch.from_numpy(imgs[[5, 0, 5]]))  # 3 -> 4 (unreadable) -> 5; 4 -> 5
    assert len(batch.skipped) == 3
    assert re.search(r"000003\.png.*replaced by example 4", batch.skipped[0])
    with pytest.warns(SkippedExampleWarning, match="000004.png"):
        x, _ = src.get([4])
    assert torch.equal(x, torch.from_numpy(imgs[[5]]))


def test_too_many_unreadable_in_a_row(tmp_path: Path, imgs: np.ndarray, monkeypatch):
    monkeypatch.setattr(image_files, "MAX_SUBSTITUTES", 1)
    src = ImageFolderSource(_corrupt_folder(tmp_path, imgs), on_error="skip")
    with pytest.raises(DataError, match="2 unreadable images in a row from .*000003.png on"):
        src.read(torch.tensor([3]))


# ---- tar shards ----------------------------------------------------------------------------------------------


def test_shards_read_the_same_examples_as_memory(tmp_path: Path, imgs: np.ndarray):
    labels = np.arange(12) % 4
    paths = write_shards(tmp_path / "s", imgs, labels, per_shard=5)  # 5 + 5 + 2
    src = TarShardSource(tmp_path / "s")
    mem = TensorSource(torch.from_numpy(imgs), torch.from_numpy(labels), 256)
    idx = torch.tensor([11, 0, 5, 4, 10, 10])
    assert len(src) == 12 and src.name == "3 shards in " + str(tmp_path / "s")
    x, y = src.get(idx)
    assert torch.equal(x, mem.get(idx)[0]) and torch.equal(y, mem.get(idx)[1])
    single = TarShardSource(paths[1])
    assert len(single) == 5 and torch.equal(single.get([0])[0], mem.get([5])[0])
    assert TarShardSource([paths[2], paths[0]]).example_name(2).endswith("shard-000000.tar:sample000000.png")


def test_shards_without_labels_and_other_members(tmp_path: Path, imgs: np.ndarray):
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w") as tar:
        for i in (0, 1):
            for name, data in ((f"dir/k{i}.json", b"{}"), (f"dir/k{i}.png", png_bytes(imgs[i]))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    src = TarShardSource(path)
    assert src.labels is None and torch.equal(src.get([1, 0])[0], torch.from_numpy(imgs[[1, 0]]))


def _cut(path: Path, member: int, into_data: bool) -> None:
    """Cut a tar file inside member ``member``'s data (``into_data``) or inside its header."""
    with tarfile.open(path) as tar:
        m = tar.getmembers()[member]
    end = m.offset_data + m.size // 2 if into_data else m.offset + 100
    path.write_bytes(path.read_bytes()[:end])


@pytest.mark.parametrize("into_data", [True, False])
def test_truncated_shard_is_refused_at_start_naming_it(tmp_path: Path, imgs: np.ndarray, into_data: bool):
    paths = write_shards(tmp_path / "s", imgs, per_shard=6)
    _cut(paths[1], 4, into_data)
    with pytest.raises(DataError, match=rf"tar shard {re.escape(str(paths[1]))} is truncated"):
        TarShardSource(tmp_path / "s")


def test_shard_cut_short_mid_run_is_an_error_naming_it_or_skipped(tmp_path: Path, imgs: np.ndarray):
    paths = write_shards(tmp_path / "s", imgs, per_shard=6)
    src = TarShardSource(tmp_path / "s")
    skipping = TarShardSource(tmp_path / "s", on_error="skip")
    _cut(paths[1], 5, into_data=True)  # the shard shrinks after the index was built: sample 11 is cut short
    with pytest.raises(
        DataError, match=rf"tar shard {re.escape(str(paths[1]))}, member sample000011.png: .* truncated"
    ):
        src.get([11])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x, _ = skipping.get([11])
    assert torch.equal(x, torch.from_numpy(imgs[[0]]))  # 11 wraps around to example 0
    assert len(caught) == 1 and issubclass(caught[0].category, SkippedExampleWarning)


def test_compressed_and_inconsistent_shards(tmp_path: Path, imgs: np.ndarray):
    import gzip

    path = write_shards(tmp_path / "s", imgs, per_shard=12)[0]
    gz = tmp_path / "s.tar"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(DataError, match="gzip-compressed.*gunzip -k"):
        TarShardSource(gz)
    (tmp_path / "junk.tar").write_bytes(b"\x00junk" * 300)
    with pytest.raises(DataError, match="junk.tar is truncated or not a tar file"):
        TarShardSource(tmp_path / "junk.tar")
    mixed = tmp_path / "mixed"
    write_shards(mixed, imgs[:4], np.arange(4), per_shard=4, prefix="a")
    write_shards(mixed, imgs[:4], None, per_shard=4, prefix="b")
    with pytest.raises(DataError, match="some of the shards"):
        TarShardSource(mixed)
    bad_cls = tmp_path / "cls.tar"
    with tarfile.open(bad_cls, "w") as tar:
        for name, data in (("k.png", png_bytes(imgs[0])), ("k.cls", b"cat")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="k.cls holds b'cat', not a class number"):
        TarShardSource(bad_cls)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .tar shards"):
        TarShardSource(tmp_path / "empty")


def test_a_replaced_example_brings_its_own_label(tmp_path: Path, imgs: np.ndarray):
    labels = np.array([0] * 6 + [1] * 6)
    paths = write_png_folder(tmp_path / "f", imgs, labels)
    paths[5].write_bytes(b"broken")  # the last image of class_0: replaced by the first of class_1
    src = ImageFolderSource(tmp_path / "f", on_error="skip")
    batch = src.read(torch.tensor([5, 4]))
    assert torch.equal(batch.x, torch.from_numpy(imgs[[6, 4]])) and batch.y.tolist() == [1, 0]
