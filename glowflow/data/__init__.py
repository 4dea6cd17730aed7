"""Data sets for glowflow: readers for MNIST / Fashion-MNIST (idx), CIFAR-10 (python batches), image folders,
tabular files and scikit-learn's digits, 2-D toy densities, and a verified downloader.

    from glowflow.data import load_dataset
    train = load_dataset("mnist", "~/data", split="train", download=True)
    train.data      # torch.uint8 (60000, 1, 28, 28), levels 0..255; train.num_bins == 256
    train.labels    # torch.long (60000,)

Images are returned as discrete levels ``0..num_bins-1``, never scaled; see ``glowflow/layers/dequantization.py``.
:data:`DATASETS` is the table of every data set (reader, kind, default preset, download entry); :func:`open_dataset`
gives both splits as batch sources (``glowflow/data/sources.py``), read from the files batch by batch where the
data set may not fit in memory (image folders, tar shards, ImageNet 32 / 64).
"""

from glowflow.data.base import Dataset, default_data_dir
from glowflow.data.datasets import load_dataset, open_dataset
from glowflow.data.downloader import download
from glowflow.data.registry import DATASETS, DatasetSpec, DownloadEntry, ReadOptions
from glowflow.data.toy import TOY_DENSITIES, sample_toy
from glowflow.preprocessing import pad_images

__all__ = [
    "DATASETS",
    "TOY_DENSITIES",
    "Dataset",
    "DatasetSpec",
    "DownloadEntry",
    "ReadOptions",
    "default_data_dir",
    "download",
    "load_dataset",
    "open_dataset",
    "pad_images",
    "sample_toy",
]
