"""The table of data sets: for each name, its reader, kind, default training preset and download entry.

Adding a data set is one reader plus one :data:`DATASETS` entry (in ``glowflow/data/datasets.py``); the training
configuration, the command line (``--data NAME``), the downloader and the presets all read this table. See
docs/design.md for a worked example.

Two kinds of reader: ``load`` reads one split whole into a :class:`~glowflow.data.base.Dataset` (every entry has
one); ``open``, for data sets that may not fit in memory, opens both splits as batch sources
(``glowflow/data/sources.py``) that read their examples from the files batch by batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from glowflow.data.base import Dataset
from glowflow.data.image_files import FITS
from glowflow.data.sources import ON_ERROR, BatchSource
from glowflow.registry import Registry

KINDS = ("image", "tabular", "toy")

Loader = Callable[[Path | None, str, bool, int], Dataset]
"""``load(data_dir, split, download, seed) -> Dataset`` (``data_dir`` already expanded, or None)."""


@dataclass(frozen=True)
class ReadOptions:
    """How an ``open`` reader decodes image files (``glowflow/data/image_files.py``): ``size`` ``(H, W)`` of every
    image (None: the first image's), ``fit`` for images of another size (``exact``: an error; ``center-crop``;
    ``resize``), and ``on_error`` for an unreadable one (``raise``, or ``skip``: replaced by the next readable
    example, warned about and counted)."""

    size: tuple[int, int] | None = None
    fit: str = "exact"
    on_error: str = "raise"

    def __post_init__(self) -> None:
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {self.on_error!r}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ValueError(f"size must be (height, width) of positive integers, got {self.size}")

    @property
    def fits_images(self) -> bool:
        """Whether these options resize images (which only readers of encoded image files do)."""
        return self.size is not None or self.fit != "exact"


Opener = Callable[[Path | None, int, ReadOptions], tuple[BatchSource, BatchSource]]
"""``open(data_dir, seed, options) -> (train, test)``: both splits as batch sources (``seed`` seeds a 90/10 split
of files that come as one set)."""


@dataclass
class DownloadEntry:
    """Where a downloadable data set's files come from and how they are checked.

    - ``files``: file name -> its MD5 as published; the files fetched from each mirror.
    - ``mirrors``: base URLs tried in order (``$GLOWFLOW_MIRROR`` or an explicit base URL replaces them).
    - ``decompressed_md5``: for ``.gz`` files, the MD5 of the decompressed content (a re-compressed copy of the
      same data is as good as the original).
    - ``subfolder``: files go to ``data_dir/<name>/`` (True: names that collide between data sets, such as the idx
      files of MNIST and Fashion-MNIST) or ``data_dir`` itself.
    - ``unpack(archive, data_dir) -> paths``: extracts a downloaded archive; ``unpacked(data_dir) -> paths`` lists
      what the reader uses once extracted (a download is skipped when they all exist).
    """

    files: dict[str, str]
    mirrors: tuple[str, ...]
    decompressed_md5: dict[str, str] = field(default_factory=dict)
    subfolder: bool = True
    unpack: Callable[[Path, Path], list[Path]] | None = None
    unpacked: Callable[[Path], list[Path]] | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """One data set glowflow reads.

    - ``kind``: ``"image"`` (uint8 levels, a Glow), ``"tabular"`` or ``"toy"`` (float rows, a TabularGlow).
    - ``load``: the reader (see :data:`Loader`).
    - ``preset``: the training preset used when none is named.
    - ``download``: how to fetch it (None: nothing to download).
    - ``path_is_data``: ``data_dir`` names the data itself (a folder or a file), so it is required.
    - ``open``: the batch-by-batch reader of both splits (see :data:`Opener`), for data sets that may not fit in
      memory; None: ``load`` is the only reader.
    - ``decodes_images``: ``open`` decodes PNG / JPEG files, so :class:`ReadOptions` ``size`` and ``fit`` apply.
    """

    description: str
    kind: str
    load: Loader
    preset: str
    download: DownloadEntry | None = None
    path_is_data: bool = False
    open: Opener | None = None
    decodes_images: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"dataset kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def is_image(self) -> bool:
        return self.kind == "image"


DATASETS: Registry[DatasetSpec] = Registry("data set")
