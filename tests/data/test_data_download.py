"""The downloader against a local HTTP server: verified success, bad checksums, broken connections, .part files,
CIFAR-10 archive extraction, and (when ../shared/data is there) the real MNIST files."""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import glowflow.data.downloader as dl
from glowflow.data import download, load_dataset
from glowflow.data.cifar import ARCHIVE as CIFAR_ARCHIVE
from glowflow.data.idx import IDX_FILES
from glowflow.errors import DataError
from tests.data.data_helpers import (
    MNIST_5K_DIR,
    MNIST_DIR,
    http_server,
    idx_bytes,
    md5,
    write_cifar,
    write_mnist,
)


@pytest.fixture(autouse=True)
def _no_mirror_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dl.MIRROR_ENV, raising=False)


def trust(monkeypatch: pytest.MonkeyPatch, name: str, folder: Path) -> None:
    """Make the checksum tables expect the files in ``folder`` (small files written by a test)."""
    for filename in dl.entry(name).files:
        monkeypatch.setitem(dl.entry(name).files, filename, md5((folder / filename).read_bytes()))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".part") or p.name.startswith(".cifar"))


@pytest.fixture
def served(tmp_path: Path):
    """A served folder holding small MNIST-format files in mnist/ and fashion-mnist/; yields (root, base URL)."""
    root = tmp_path / "server"
    write_mnist(root / "mnist", n_train=12, n_test=7, seed=0)
    write_mnist(root / "fashion-mnist", n_train=5, n_test=3, seed=20)
    with http_server(root) as url:
        yield root, url


def test_success_then_load(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, url = served
    trust(monkeypatch, "mnist", root / "mnist")
    data = tmp_path / "data"
    paths = download("mnist", data, base_url=url + "mnist", progress=False)  # a missing trailing / is fine
    assert paths == [data / "mnist" / f for f in IDX_FILES]
    for p in paths:
        assert p.read_bytes() == (root / "mnist" / p.name).read_bytes()
    assert leftovers(data) == []
    test = load_dataset("mnist", data, split="test")
    assert len(test) == 7 and test.shape == (1, 28, 28)
    # present and verified: nothing is fetched again (the server is not even asked)
    assert download("mnist", data, base_url="http://127.0.0.1:9/none/", progress=False) == paths


def test_progress_bar_on_stderr(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    root, url = served
    trust(monkeypatch, "mnist", root / "mnist")
    download("mnist", tmp_path / "d", base_url=url + "mnist/", progress=True)
    captured = capsys.readouterr()
    assert "train-images-idx3-ubyte.gz" in captured.err and captured.out == ""


def test_mirror_env_and_name_placeholder(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, url = served
    trust(monkeypatch, "fashion-mnist", root / "fashion-mnist")
    monkeypatch.setenv(dl.MIRROR_ENV, url + "{name}/")
    assert dl.source_urls("fashion-mnist", "x.gz") == [url + "fashion-mnist/x.gz"]
    download("fashion-mnist", tmp_path, progress=False)
    ds = load_dataset("fashion-mnist", tmp_path, split="train")
    assert len(ds) == 5 and ds.class_names[0] == "T-shirt/top"


def test_load_dataset_download_flag(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, url = served
    trust(monkeypatch, "mnist", root / "mnist")
    monkeypatch.setenv(dl.MIRROR_ENV, url + "{name}/")
    monkeypatch.setenv("GLOWFLOW_DATA", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="--download"):
        load_dataset("mnist")
    ds = load_dataset("mnist", download=True)
    assert len(ds) == 12 and (tmp_path / "cache" / "mnist" / "train-images-idx3-ubyte.gz").is_file()


def test_bad_checksum_leaves_nothing(served, tmp_path: Path) -> None:
    _, url = served  # the official MD5s: the small served files cannot match them
    data = tmp_path / "data"
    with pytest.raises(DataError, match="failed its checksum") as e:
        download("mnist", data, base_url=url + "mnist/", progress=False)
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and dl.entry("mnist").files["train-images-idx3-ubyte.gz"] in msg
    assert not (data / "mnist" / "train-images-idx3-ubyte.gz").exists() and leftovers(data) == []
    with pytest.raises(DataError, match="not found"):
        load_dataset("mnist", data)


def test_existing_bad_file_is_replaced(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, url = served
    trust(monkeypatch, "mnist", root / "mnist")
    target = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    target.parent.mkdir()
    target.write_bytes(b"stale")
    download("mnist", tmp_path, base_url=url + "mnist/", progress=False)
    assert target.read_bytes() == (root / "mnist" / target.name).read_bytes()


def test_404_and_unreachable(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = served
    data = tmp_path / "data"
    with pytest.raises(DataError) as e:
        download("mnist", data, base_url=url + "nowhere/", progress=False)
    msg = str(e.value)
    assert f"{url}nowhere/train-images-idx3-ubyte.gz failed (HTTP 404" in msg
    assert f"into {data / 'mnist'}" in msg and "Fetch it manually" in msg
    assert list((data / "mnist").iterdir()) == []
    # several mirrors: every failure is reported; a refused connection is a DataError too
    monkeypatch.setattr(dl.entry("mnist"), "mirrors", ("http://127.0.0.1:9/", url + "nowhere/"))
    with pytest.raises(DataError, match="127.0.0.1:9/train-images-idx3-ubyte.gz failed .*nowhere/.* failed"):
        download("mnist", data, progress=False)


def test_mirror_fallback(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, url = served
    trust(monkeypatch, "mnist", root / "mnist")
    monkeypatch.setattr(dl.entry("mnist"), "mirrors", (url + "nowhere/", url + "mnist/"))
    assert len(download("mnist", tmp_path, progress=False)) == 4


def test_connection_closed_early(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, url = served
    trust(monkeypatch, "mnist", root / "mnist")
    data = tmp_path / "data"
    with pytest.raises(DataError, match=r"connection closed after \d+ of \d+ bytes|Incomplete") as e:
        download("mnist", data, base_url=url + "short/mnist/", progress=False)
    assert "short/mnist/train-images-idx3-ubyte.gz" in str(e.value)
    assert not (data / "mnist" / "train-images-idx3-ubyte.gz").exists() and leftovers(data) == []


def test_part_file_is_never_present(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, url = served
    data = tmp_path / "data"
    (data / "mnist").mkdir(parents=True)
    for f in IDX_FILES:  # complete, valid files, but only as .part: an interrupted download's remains
        shutil.copy(root / "mnist" / f, data / "mnist" / (f + ".part"))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz not found"):
        load_dataset("mnist", data)
    trust(monkeypatch, "mnist", root / "mnist")
    download("mnist", data, base_url=url + "mnist/", progress=False)
    assert leftovers(data) == [] and len(load_dataset("mnist", data)) == 12


def test_decompressed_md5_accepts_a_recompressed_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    content = idx_bytes(np.arange(10, dtype=np.uint8))
    original = gzip.compress(content, compresslevel=9, mtime=0)
    recompressed = gzip.compress(content, compresslevel=1, mtime=12345)
    assert original != recompressed
    name, f = "mnist", "t10k-labels-idx1-ubyte.gz"
    monkeypatch.setitem(dl.entry(name).files, f, md5(original))
    monkeypatch.setitem(dl.entry(name).decompressed_md5, f, md5(content))
    for data in (original, recompressed):
        (tmp_path / f).write_bytes(data)
        assert dl.checksum_problem(name, f, tmp_path / f) is None
    (tmp_path / f).write_bytes(gzip.compress(content + b"x"))
    assert "decompressed MD5" in dl.checksum_problem(name, f, tmp_path / f)
    (tmp_path / f).write_bytes(b"garbage")
    assert "not gzip data" in dl.checksum_problem(name, f, tmp_path / f)


def _require(folder: Path) -> None:
    if not all((folder / f).is_file() for f in IDX_FILES):
        pytest.skip(f"real MNIST files not available in {folder.resolve()} (../shared/data beside the repository)")


def test_real_mnist_verified_by_decompressed_md5(tmp_path: Path) -> None:
    # The shared files are re-gzipped: their .gz MD5s differ from the official ones, their contents do not.
    # The official tables are used untouched.
    _require(MNIST_DIR)
    assert dl.md5_of(MNIST_DIR / "t10k-labels-idx1-ubyte.gz") != dl.entry("mnist").files["t10k-labels-idx1-ubyte.gz"]
    with http_server(MNIST_DIR) as url:
        paths = download("mnist", tmp_path, base_url=url, progress=False)
    assert [p.stat().st_size for p in paths] == [(MNIST_DIR / p.name).stat().st_size for p in paths]
    test = load_dataset("mnist", tmp_path, split="test")
    assert len(test) == 10_000 and torch.bincount(test.labels).sum() == 10_000


def test_real_mnist_5k_files_with_their_own_checksums(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # mnist-5k is a subset, so no official MD5 can match it: the tables are pointed at its own files.
    _require(MNIST_5K_DIR)
    trust(monkeypatch, "mnist", MNIST_5K_DIR)
    monkeypatch.setattr(dl.entry("mnist"), "decompressed_md5", {})
    with http_server(MNIST_5K_DIR) as url:
        download("mnist", tmp_path, base_url=url, progress=False)
    train = load_dataset("mnist", tmp_path)
    assert len(train) == 4000 and torch.equal(torch.bincount(train.labels), torch.full((10,), 400))


def make_cifar_archive(path: Path, tmp: Path, extra: list[tarfile.TarInfo] | None = None) -> dict:
    """A cifar-10-python.tar.gz with small batches under cifar-10-batches-py/ (and optional extra members)."""
    src = tmp / "src"
    written = write_cifar(src / "cifar-10-batches-py", n_train=2, n_test=3)
    (src / "cifar-10-batches-py" / "readme.html").write_text("<html></html>")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return written


def test_cifar_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = tmp_path / "server"
    served.mkdir()
    written = make_cifar_archive(served / CIFAR_ARCHIVE, tmp_path)
    trust(monkeypatch, "cifar10", served)
    data = tmp_path / "data"
    with http_server(served) as url:
        monkeypatch.setenv(dl.MIRROR_ENV, url)
        ds = load_dataset("cifar10", data, split="test", download=True)
    assert torch.equal(ds.data.reshape(3, -1), torch.from_numpy(written["test"][0]))
    assert len(load_dataset("cifar10", data, split="train")) == 10
    assert (data / CIFAR_ARCHIVE).is_file() and (data / "cifar-10-batches-py" / "readme.html").is_file()
    assert leftovers(data) == []
    # already extracted: download() returns the batch files without any network access
    monkeypatch.setenv(dl.MIRROR_ENV, "http://127.0.0.1:9/")
    paths = download("cifar10", data, progress=False)
    assert [p.name for p in paths] == [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    # a verified archive present but not extracted: extracted again, still no network
    shutil.rmtree(data / "cifar-10-batches-py")
    assert download("cifar10", data, progress=False) == paths and all(p.is_file() for p in paths)


def test_cifar_bad_checksum(tmp_path: Path) -> None:
    served = tmp_path / "server"
    served.mkdir()
    make_cifar_archive(served / CIFAR_ARCHIVE, tmp_path)
    data = tmp_path / "data"
    with http_server(served) as url, pytest.raises(DataError, match="c58f30108f718f92721af3b95e74349a"):
        download("cifar10", data, base_url=url, progress=False)
    assert sorted(p.name for p in data.iterdir()) == []


def _link(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


@pytest.mark.parametrize(
    "member", [_file("../escape"), _file("/abs/path"), _link("cifar-10-batches-py/link"), _file("other/dir/x")]
)
def test_cifar_archive_with_unsafe_members_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, member) -> None:
    served = tmp_path / "server"
    served.mkdir()
    make_cifar_archive(served / CIFAR_ARCHIVE, tmp_path, extra=[member])
    trust(monkeypatch, "cifar10", served)
    data = tmp_path / "data"
    with http_server(served) as url, pytest.raises(DataError, match="refusing to extract"):
        download("cifar10", data, base_url=url, progress=False)
    assert not (data / "cifar-10-batches-py").exists() and leftovers(data) == []
    assert not (tmp_path / "escape").exists()


def test_cifar_archive_missing_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = tmp_path / "server"
    (served / "cifar-10-batches-py").mkdir(parents=True)
    (served / "cifar-10-batches-py" / "test_batch").write_bytes(b"x")
    with tarfile.open(served / CIFAR_ARCHIVE, "w:gz") as tar:
        tar.add(served / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    trust(monkeypatch, "cifar10", served)
    with http_server(served) as url, pytest.raises(DataError, match="lacks data_batch_1"):
        download("cifar10", tmp_path / "data", base_url=url, progress=False)


def test_not_downloadable() -> None:
    for name in ("digits", "folder", "tabular", "moons", "imagenet"):
        with pytest.raises(ValueError, match="only mnist, fashion-mnist, cifar10"):
            download(name, "/tmp/unused")


def test_existing_bad_file_is_kept_when_the_download_fails(served, tmp_path: Path) -> None:
    _, url = served
    target = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    target.parent.mkdir()
    target.write_bytes(b"mine")
    with pytest.raises(DataError, match="already there fails its checksum too; it was left untouched"):
        download("mnist", tmp_path, base_url=url + "nowhere/", progress=False)
    assert target.read_bytes() == b"mine"
