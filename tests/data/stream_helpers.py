"""Writers of small files in the exact formats the streaming readers take, and the reference batch sequence."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def random_images(n: int, channels: int = 3, size: int = 8, seed: int = 0) -> np.ndarray:
    """uint8 (n, C, H, W) using all of 0..255."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, channels, size, size), dtype=np.uint8)
    x.reshape(-1)[:2] = (0, 255)
    return x


def png_bytes(chw: np.ndarray) -> bytes:
    """One (C, H, W) uint8 image as PNG (mode L for one channel, RGB for three)."""
    arr = chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_png_folder(root: Path, images: np.ndarray, labels: np.ndarray | None = None) -> list[Path]:
    """``images`` as ``root/000000.png`` ... (or ``root/class_<k>/...`` by ``labels``), in index order."""
    paths = []
    for i, chw in enumerate(images):
        folder = root if labels is None else root / f"class_{int(labels[i])}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:06d}.png"
        path.write_bytes(png_bytes(chw))
        paths.append(path)
    return paths


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(
    folder: Path, images: np.ndarray, labels: np.ndarray | None = None, per_shard: int = 5, prefix: str = "shard"
) -> list[Path]:
    """WebDataset shards ``prefix-000000.tar`` ... with ``<key>.png`` (and ``<key>.cls``) per sample, in order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, start in enumerate(range(0, len(images), per_shard)):
        path = folder / f"{prefix}-{s:06d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(start, min(len(images), start + per_shard)):
                key = f"sample{i:06d}"
                _add(tar, f"{key}.png", png_bytes(images[i]))
                if labels is not None:
                    _add(tar, f"{key}.cls", str(int(labels[i])).encode())
        paths.append(path)
    return paths


def write_png_tar(path: Path, images: np.ndarray) -> Path:
    """One tar of PNG files under a folder named like the tar (as ``train_32x32.tar`` holds ``train_32x32/...``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i, chw in enumerate(images):
            _add(tar, f"{path.stem}/{i:07d}.png", png_bytes(chw))
    return path


def chrabaszcz_batch(images: np.ndarray, labels_1based: np.ndarray, with_mean: bool) -> dict[str, np.ndarray]:
    """A Chrabaszcz et al. batch: ``data`` (N, 3 r^2) uint8 holding the R, G, B planes, ``labels`` 1..1000 and,
    in train batches, ``mean`` (3 r^2,)."""
    batch = {"data": images.reshape(len(images), -1), "labels": labels_1based.astype(np.int64)}
    if with_mean:
        batch["mean"] = batch["data"].mean(0)
    return batch


def write_chrabaszcz(
    folder: Path, images: np.ndarray, labels0: np.ndarray, n_files: int, compressed: bool = False
) -> list[Path]:
    """``train_data_batch_1.npz`` ... ``train_data_batch_<n_files>.npz`` splitting ``images`` (N, 3, r, r) with
    0-based ``labels0`` (stored 1-based, as published)."""
    folder.mkdir(parents=True, exist_ok=True)
    save = np.savez_compressed if compressed else np.savez
    paths = []
    for k, part in enumerate(np.array_split(np.arange(len(images)), n_files), 1):
        path = folder / f"train_data_batch_{k}.npz"
        save(path, **chrabaszcz_batch(images[part], labels0[part] + 1, with_mean=True))
        paths.append(path)
    return paths


def reference_batches(
    n: int, batch_size: int, init_batch_size: int, seed: int, steps: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The in-memory training loop's global batch indices: the ActNorm batch and ``steps`` step batches."""
    g = torch.Generator().manual_seed(seed)
    init = torch.randperm(n, generator=g)[: min(n, init_batch_size)]
    return init, [torch.randint(0, n, (batch_size,), generator=g) for _ in range(steps)]
