"""Downloading MNIST, Fashion-MNIST and CIFAR-10, with MD5 verification and atomic placement.

Layout under ``data_dir`` (what :func:`glowflow.data.load_dataset` looks for first):

- ``data_dir/mnist/`` and ``data_dir/fashion-mnist/``: the four idx ``.gz`` files (the two data sets use the same
  file names, hence one folder each);
- ``data_dir/cifar-10-python.tar.gz`` and, extracted from it, ``data_dir/cifar-10-batches-py/``.

What to fetch comes from the data set's :class:`~glowflow.data.registry.DownloadEntry` in the data set table. Every
file is streamed to ``<target>.part`` beside its target, verified, and only then renamed onto the target with
``os.replace``, so an interrupted or bad download never leaves a file that looks present. A file passes when the MD5
of its bytes is the official one (the entry's ``files``) or, for a gzip file, when the MD5 of its decompressed
content is (its ``decompressed_md5``: a re-compressed copy of the same data is as good as the original).

Where from: ``base_url`` if given, else the environment variable ``GLOWFLOW_MIRROR``, else the entry's ``mirrors``,
tried in order. A base URL may contain ``{name}``, replaced by the data set's name, so one mirror can serve MNIST and
Fashion-MNIST (whose file names are the same) from two folders; ``file://`` URLs work too.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from http.client import HTTPException
from pathlib import Path
from typing import Any

from glowflow.data.base import default_data_dir
from glowflow.data.registry import DATASETS, DownloadEntry
from glowflow.errors import DataError
from glowflow.progress import Progress, is_terminal

MIRROR_ENV = "GLOWFLOW_MIRROR"
TIMEOUT_S = 60.0
CHUNK = 1 << 20


def downloadable() -> tuple[str, ...]:
    """The data sets that can be downloaded."""
    return tuple(name for name, spec in DATASETS.items() if spec.download is not None)


def entry(name: str) -> DownloadEntry:
    """The download entry of data set ``name``; ValueError for one that cannot be downloaded."""
    spec = DATASETS.get(name) if name in DATASETS else None
    if spec is None or spec.download is None:
        raise ValueError(f"cannot download {name!r}: only {', '.join(downloadable())} are downloadable")
    return spec.download


def base_urls(name: str, base_url: str | None = None) -> list[str]:
    """The base URLs to try for ``name``, in order: ``base_url``, else ``$GLOWFLOW_MIRROR``, else the public ones.
    ``{name}`` is replaced by the data set's name; every URL ends in ``/``."""
    override = base_url or os.environ.get(MIRROR_ENV) or None
    bases = [override] if override else list(entry(name).mirrors)
    bases = [b.replace("{name}", name) for b in bases]
    return [b if b.endswith("/") else b + "/" for b in bases]


def source_urls(name: str, filename: str, base_url: str | None = None) -> list[str]:
    """Full URLs of ``filename`` of data set ``name``, in the order they are tried."""
    return [b + filename for b in base_urls(name, base_url)]


def target_dir(name: str, data_dir: str | os.PathLike) -> Path:
    """Where :func:`download` puts the downloaded files of ``name``: ``data_dir/<name>`` when the entry's file names
    collide with another data set's (the idx files of MNIST and Fashion-MNIST), else ``data_dir`` itself."""
    return Path(data_dir) / name if entry(name).subfolder else Path(data_dir)


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
    e = entry(name)
    expected = e.files[filename]
    got = md5_of(path)
    if got == expected:
        return None
    expected_raw = e.decompressed_md5.get(filename)
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
    """A tqdm byte counter on stderr when it is a terminal, else plain lines (:class:`~glowflow.progress.Progress`);
    silent when ``enabled`` is false."""
    if not is_terminal(sys.stderr):
        return Progress(total, unit="B", desc=desc, enabled=enabled)
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


def download(
    name: str, data_dir: str | os.PathLike | None, base_url: str | None = None, progress: bool = True
) -> list[Path]:
    """Download data set ``name`` (one with a download entry: ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``)
    into ``data_dir`` (None: :func:`glowflow.data.default_data_dir`). Returns the paths that the reader uses.

    Each file of the entry is kept if already there with a good checksum, else downloaded and verified
    (MNIST / Fashion-MNIST: the four idx ``.gz`` files into ``data_dir/<name>/``). An entry with an archive
    (CIFAR-10: ``cifar-10-python.tar.gz`` into ``data_dir``) is extracted (into ``data_dir/cifar-10-batches-py/``),
    and skipped when the extracted files are already all there; the extracted files are returned.

    ``base_url`` (or ``$GLOWFLOW_MIRROR``) replaces the public locations. ``progress`` shows a tqdm bar on stderr.
    Raises DataError naming the URL and the target folder if a download fails or does not verify, ValueError for
    a name that cannot be downloaded.
    """
    e = entry(name)
    root = default_data_dir() if data_dir is None else Path(data_dir).expanduser()
    dest = target_dir(name, root)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the data folder {dest}: {err}") from err
    if e.unpacked is not None:
        ready = e.unpacked(dest)
        if all(p.is_file() for p in ready):
            return ready
    paths = [_ensure(name, filename, dest, base_url, progress) for filename in e.files]
    if e.unpack is None:
        return paths
    return [out for archive in paths for out in e.unpack(archive, dest)]


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
    e = entry(name)
    if e.unpack is not None:
        archive = next(iter(e.files))
        how = f"fetch {source_urls(name, archive)[0]} and extract it into {target_dir(name, data_dir)}"
    else:
        how = f"fetch it from {source_urls(name, filename)[0]} into {target_dir(name, data_dir)}"
    return f"{filename} not found in {where}; run with --download (glowflow train --data {name} --download) or {how}"
