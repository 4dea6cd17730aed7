"""Downloading MNIST, Fashion-MNIST and CIFAR-10, with MD5 verification and atomic placement.

Layout under ``data_dir`` (what :func:`glowflow.data.load_dataset` looks for first):

- ``data_dir/mnist/`` and ``data_dir/fashion-mnist/``: the four idx ``.gz`` files (the two data sets use the same
  file names, hence one folder each);
- ``data_dir/cifar-10-python.tar.gz`` and, extracted from it, ``data_dir/cifar-10-batches-py/``.

Every file is streamed to ``<target>.part`` beside its target, verified, and only then renamed onto the target with
``os.replace``, so an interrupted or bad download never leaves a file that looks present. A file passes when the MD5
of its bytes is the official one (:data:`MD5`) or, for a gzip file, when the MD5 of its decompressed content is
(:data:`MD5_DECOMPRESSED`: a re-compressed copy of the same data is as good as the original).

Where from: ``base_url`` if given, else the environment variable ``GLOWFLOW_MIRROR``, else the public locations in
:data:`MIRRORS`, tried in order. A base URL may contain ``{name}``, replaced by the data set's name, so one mirror can
serve MNIST and Fashion-MNIST (whose file names are the same) from two folders; ``file://`` URLs work too.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import Any

from glowflow.data import cifar
from glowflow.errors import DataError

IDX_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
DOWNLOADABLE: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10")
MIRROR_ENV = "GLOWFLOW_MIRROR"

MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}

# MD5 of each file as published.
MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {CIFAR_ARCHIVE: "c58f30108f718f92721af3b95e74349a"},
}

# MD5 of the decompressed content of a .gz file (accepted as well: mirrors may re-compress the same data).
MD5_DECOMPRESSED: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
    },
}

TIMEOUT_S = 60.0
CHUNK = 1 << 20


def _check_name(name: str) -> None:
    if name not in DOWNLOADABLE:
        raise ValueError(f"cannot download {name!r}: only {', '.join(DOWNLOADABLE)} are downloadable")


def base_urls(name: str, base_url: str | None = None) -> list[str]:
    """The base URLs to try for ``name``, in order: ``base_url``, else ``$GLOWFLOW_MIRROR``, else the public ones.
    ``{name}`` is replaced by the data set's name; every URL ends in ``/``."""
    _check_name(name)
    override = base_url or os.environ.get(MIRROR_ENV) or None
    bases = [override] if override else list(MIRRORS[name])
    bases = [b.replace("{name}", name) for b in bases]
    return [b if b.endswith("/") else b + "/" for b in bases]


def source_urls(name: str, filename: str, base_url: str | None = None) -> list[str]:
    """Full URLs of ``filename`` of data set ``name``, in the order they are tried."""
    return [b + filename for b in base_urls(name, base_url)]


def target_dir(name: str, data_dir: str | os.PathLike) -> Path:
    """Where :func:`download` puts the downloaded files of ``name``: ``data_dir/<name>`` for the idx data sets
    (whose file names collide), ``data_dir`` itself for the CIFAR-10 archive."""
    _check_name(name)
    return Path(data_dir) if name == "cifar10" else Path(data_dir) / name


def md5_of(path: str | os.PathLike) -> str:
    """Hex MD5 of a file's bytes."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def md5_decompressed(path: str | os.PathLike) -> str | None:
    """Hex MD5 of a gzip file's decompressed content, or None if it is not (valid) gzip data."""
    h = hashlib.md5(usedforsecurity=False)
    try:
        with gzip.open(path, "rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
    except (OSError, EOFError, zlib.error):
        return None
    return h.hexdigest()


def checksum_problem(name: str, filename: str, path: str | os.PathLike) -> str | None:
    """None if ``path`` (the file ``filename`` of data set ``name``) has a known-good MD5; else a sentence saying
    what was found and what was expected."""
    expected = MD5[name][filename]
    got = md5_of(path)
    if got == expected:
        return None
    expected_raw = MD5_DECOMPRESSED.get(name, {}).get(filename)
    if expected_raw is None:
        return f"MD5 {got}, expected {expected}"
    got_raw = md5_decompressed(path)
    if got_raw == expected_raw:
        return None
    raw = "not gzip data" if got_raw is None else f"decompressed MD5 {got_raw}"
    return f"MD5 {got} ({raw}); expected {expected} (or decompressed {expected_raw})"


class _DownloadFailed(Exception):
    """One URL failed (network, HTTP status, short read): try the next mirror."""


class _BadChecksum(Exception):
    """One URL delivered a file with the wrong MD5: try the next mirror."""


def _progress_bar(total: int | None, desc: str, enabled: bool) -> Any:
    """A tqdm byte counter on stderr (disabled, i.e. silent, when ``enabled`` is false)."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, disable=not enabled
    )


def _stream(url: str, part: Path, progress: bool) -> None:
    """Copy ``url`` into ``part``; raise _DownloadFailed on any network problem or a short read."""
    from glowflow import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"glowflow/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, part.open("wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.strip().isdigit() else None
            received = 0
            bar = _progress_bar(total, part.name[: -len(".part")], progress)
            try:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            finally:
                bar.close()
    except urllib.error.HTTPError as e:
        raise _DownloadFailed(f"HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise _DownloadFailed(str(e.reason)) from e
    except (OSError, HTTPException, ValueError) as e:  # resets, timeouts, IncompleteRead, malformed URLs
        raise _DownloadFailed(f"{type(e).__name__}: {e}") from e
    if total is not None and received != total:
        raise _DownloadFailed(f"connection closed after {received} of {total} bytes")


def fetch(urls: list[str], target: Path, check: Callable[[Path], str | None], progress: bool = True) -> Path:
    """Download the first of ``urls`` that works to ``target`` via ``target.part``: ``check(part)`` returns None
    for a good file or a description of what is wrong; only a good file is renamed onto ``target``. A mirror that
    fails (network or checksum) is followed by the next. DataError if none delivers a good file; no ``.part`` file
    and no bad ``target`` are left behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    failures: list[str] = []
    bad_checksum = False
    for url in urls:
        try:
            _stream(url, part, progress)
            problem = check(part)
            if problem is not None:
                raise _BadChecksum(problem)
            os.replace(part, target)
            return target
        except _DownloadFailed as e:
            failures.append(f"{url} failed ({e})")
        except _BadChecksum as e:
            bad_checksum = True
            failures.append(f"{url} delivered a file that failed its checksum: {e}")
        finally:
            part.unlink(missing_ok=True)
    detail = "; ".join(failures)
    if bad_checksum:
        raise DataError(
            f"could not get a verified {target.name}: {detail}. Nothing was saved. The file may have been corrupted "
            f"in transit (try again) or the mirror serves different data; fetch it from {urls[0]} into "
            f"{target.parent} yourself if you trust that copy"
        )
    raise DataError(
        f"could not download {target.name}: {detail}. Fetch it manually from {urls[0]} into {target.parent}, "
        f"or point ${MIRROR_ENV} (or base_url) at a mirror that has it"
    )


def _extract_cifar(archive: Path, data_dir: Path) -> list[Path]:
    """Extract the batch files of ``archive`` into ``data_dir/cifar-10-batches-py/`` (each file atomically).
    Only regular files directly inside ``cifar-10-batches-py/`` are taken; links, devices, absolute or ``..``
    paths are refused. Returns the paths of the extracted files."""
    folder = data_dir / cifar.FOLDER
    needed = (*cifar.TRAIN_FILES, *cifar.TEST_FILES, cifar.META_FILE)
    staging = Path(tempfile.mkdtemp(prefix=".cifar-10-extract-", dir=data_dir))
    try:
        extracted: dict[str, Path] = {}
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar:
                    parts = PurePosixPath(member.name).parts
                    if parts[:1] == (".",):
                        parts = parts[1:]
                    if member.isdir() and parts == (cifar.FOLDER,):
                        continue
                    if not member.isfile() or len(parts) != 2 or parts[0] != cifar.FOLDER or parts[1] == "..":
                        raise DataError(f"{archive}: unexpected member {member.name!r}; refusing to extract it")
                    source = tar.extractfile(member)
                    assert source is not None  # regular files always have a stream
                    with source, (staging / parts[1]).open("wb") as out:
                        shutil.copyfileobj(source, out, CHUNK)
                    extracted[parts[1]] = staging / parts[1]
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise DataError(f"{archive} is not a readable tar.gz archive ({e}); delete it and download again") from e
        missing = [f for f in needed if f not in extracted]
        if missing:
            raise DataError(f"{archive} lacks {', '.join(missing)} under {cifar.FOLDER}/; it is not CIFAR-10")
        folder.mkdir(parents=True, exist_ok=True)
        for fname, path in extracted.items():
            os.replace(path, folder / fname)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [folder / f for f in needed]


def download(
    name: str, data_dir: str | os.PathLike | None, base_url: str | None = None, progress: bool = True
) -> list[Path]:
    """Download data set ``name`` (``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``) into ``data_dir``
    (None: :func:`glowflow.data.default_data_dir`). Returns the paths that the reader uses.

    - MNIST / Fashion-MNIST: the four idx ``.gz`` files into ``data_dir/<name>/``. A file already there that
      passes its checksum is kept; one that fails is replaced by a verified download.
    - CIFAR-10: ``cifar-10-python.tar.gz`` (MD5-verified) into ``data_dir``, extracted to
      ``data_dir/cifar-10-batches-py/``; skipped when the extracted batch files are already all there.
      Returns the seven extracted files (five train batches, ``test_batch``, ``batches.meta``).

    ``base_url`` (or ``$GLOWFLOW_MIRROR``) replaces the public locations. ``progress`` shows a tqdm bar on stderr.
    Raises DataError naming the URL and the target folder if a download fails or does not verify, ValueError for
    a name that cannot be downloaded.
    """
    from glowflow.data.datasets import default_data_dir

    _check_name(name)
    root = default_data_dir() if data_dir is None else Path(data_dir).expanduser()
    dest = target_dir(name, root)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the data folder {dest}: {e}") from e

    if name == "cifar10":
        batches = [dest / cifar.FOLDER / f for f in (*cifar.TRAIN_FILES, *cifar.TEST_FILES, cifar.META_FILE)]
        if all(p.is_file() for p in batches):
            return batches
        archive = _ensure(name, CIFAR_ARCHIVE, dest, base_url, progress)
        return _extract_cifar(archive, dest)
    return [_ensure(name, filename, dest, base_url, progress) for filename in IDX_FILES]


def _ensure(name: str, filename: str, dest: Path, base_url: str | None, progress: bool) -> Path:
    """``dest/filename`` with a verified checksum: kept if already good, else downloaded. A file already there
    that fails its checksum is only ever replaced by a verified download, never deleted."""
    target = dest / filename
    existed = target.is_file()
    if existed and checksum_problem(name, filename, target) is None:
        return target
    try:
        return fetch(
            source_urls(name, filename, base_url), target, lambda p: checksum_problem(name, filename, p), progress
        )
    except DataError as e:
        if not existed:
            raise
        raise DataError(
            f"{e}. Note: the {target} already there fails its checksum too; it was left untouched, but it is not "
            f"the official {filename}"
        ) from e


def missing_message(name: str, filename: str, searched: list[Path], data_dir: Path) -> str:
    """The DataError text for a data file that is not on disk: where it was looked for, and the two ways to get it
    (``--download``, or fetching it by hand into the folder where it would be found)."""
    where = " or ".join(str(d) for d in searched)
    if name == "cifar10":
        how = f"fetch {source_urls(name, CIFAR_ARCHIVE)[0]} and extract it into {data_dir}"
    else:
        how = f"fetch it from {source_urls(name, filename)[0]} into {target_dir(name, data_dir)}"
    return f"{filename} not found in {where}; run with --download (glowflow train --data {name} --download) or {how}"
