"""TrainBatches and eval_batches: the in-memory loop's batches from every kind of source, with and without worker
processes, sharded by rank, resumed exactly, and failing cleanly on bad data."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from glowflow.data.arrays import ArraySource
from glowflow.data.image_files import ImageFolderSource
from glowflow.data.shards import TarShardSource
from glowflow.data.sources import SkippedExampleWarning, SourceBatch, TensorSource
from glowflow.data.streaming import TrainBatches, eval_batches, eval_subset
from glowflow.errors import DataError
from tests.data.stream_helpers import random_images, reference_batches, write_png_folder, write_shards

N, BATCH, INIT, SEED, STEPS = 30, 8, 12, 7, 6


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """One small labelled data set as a tensor, a .npy array, a PNG folder and tar shards."""
    root = tmp_path_factory.mktemp("streaming")
    x = random_images(N, 3, 6, seed=3)
    y = np.arange(N) % 5
    np.save(root / "x.npy", x)
    write_png_folder(root / "folder", x)
    write_shards(root / "shards", x, y, per_shard=7)
    return {"x": torch.from_numpy(x), "y": torch.from_numpy(y), "root": root}


def make_source(kind: str, data: dict):
    root = data["root"]
    if kind == "tensor":
        return TensorSource(data["x"], data["y"], 256)
    if kind == "npy":
        return ArraySource(root / "x.npy", labels=data["y"])
    if kind == "folder":
        return ImageFolderSource(root / "folder")  # unlabelled
    return TarShardSource(root / "shards")


def test_in_memory_path_is_bit_identical_to_the_loop(data: dict):
    """workers=0 on a tensor source is the loop's own code: the same generator calls, the same gathers."""
    x, y = data["x"], data["y"]
    init, steps = reference_batches(N, BATCH, INIT, SEED, STEPS)
    batches = TrainBatches(TensorSource(x, y, 256), BATCH, INIT, SEED)
    xi, yi = batches.init_batch()
    assert torch.equal(xi, x[init]) and torch.equal(yi, y[init]) and torch.equal(batches.indices, init)
    for idx in steps:
        xb, yb = batches.next()
        assert torch.equal(xb, x[idx]) and torch.equal(yb, y[idx])
    g = torch.Generator().manual_seed(SEED)  # the state is that of the loop's generator after the same draws
    torch.randperm(N, generator=g)
    for _ in range(STEPS):
        torch.randint(0, N, (BATCH,), generator=g)
    assert torch.equal(batches.state_dict()["generator"], g.get_state())


@pytest.mark.parametrize("kind", ["tensor", "npy", "folder", "shards"])
@pytest.mark.parametrize("workers", [0, 2])
def test_every_source_and_worker_count_gives_the_same_batches(data: dict, kind: str, workers: int):
    x, y = data["x"], data["y"]
    init, steps = reference_batches(N, BATCH, INIT, SEED, STEPS)
    with TrainBatches(make_source(kind, data), BATCH, INIT, SEED, workers=workers) as batches:
        xi, _ = batches.init_batch()
        assert torch.equal(xi, x[init])
        for idx in steps:
            xb, yb = batches.next()
            assert torch.equal(xb, x[idx]) and torch.equal(batches.indices, idx)
            assert (yb is None) if kind == "folder" else torch.equal(yb, y[idx])


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_take_contiguous_slices_of_the_global_batch(data: dict, workers: int):
    source = make_source("npy", data)
    init, steps = reference_batches(N, BATCH, INIT, SEED, STEPS)
    ranks = [TrainBatches(source, BATCH, INIT, SEED, rank, 2, workers=workers) for rank in range(2)]
    assert torch.equal(torch.cat([r.init_batch()[0] for r in ranks]), data["x"][init])
    for idx in steps:
        parts = [r.next() for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), data["x"][idx])
        assert torch.equal(ranks[0].indices, idx[: BATCH // 2]) and torch.equal(ranks[1].indices, idx[BATCH // 2 :])
    for r in ranks:
        r.close()
    with pytest.raises(ValueError, match="must divide by the number of processes"):
        TrainBatches(source, 9, INIT, SEED, 0, 2)


def test_workers_leave_the_global_random_stream_alone(data: dict):
    """The training's dequantization noise comes from torch's global generator: starting the workers (which a
    resumed run does again) must not draw from it, or runs with workers would see other noise."""
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    with TrainBatches(make_source("npy", data), BATCH, INIT, SEED, workers=1) as batches:
        batches.init_batch()
        batches.next()
        list(eval_batches(make_source("npy", data), torch.arange(8), 4, workers=1))
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize(("before", "after"), [(2, 2), (2, 0), (0, 2)])
def test_resume_continues_after_the_last_consumed_batch(data: dict, tmp_path: Path, before: int, after: int):
    """Workers read ahead of the loop; the saved position is still that of the last batch the loop took."""
    source = make_source("shards", data)
    _, steps = reference_batches(N, BATCH, INIT, SEED, STEPS)
    first = TrainBatches(source, BATCH, INIT, SEED, workers=before, prefetch=3)
    first.init_batch()
    for _ in range(2):
        first.next()
    time.sleep(0.2 if before else 0)  # let the workers run ahead
    torch.save(first.state_dict(), tmp_path / "state.pt")
    first.next()  # consumed after the save: the resumed run must draw it again
    first.close()
    second = TrainBatches(source, BATCH, INIT, SEED, workers=after)
    second.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for idx in steps[2:]:
        assert torch.equal(second.next()[0], data["x"][idx])
    assert second.state_dict()["batches"] == STEPS and second.init_done
    second.close()


def test_state_is_checked(data: dict):
    source = make_source("tensor", data)
    batches = TrainBatches(source, BATCH, INIT, SEED)
    with pytest.raises(RuntimeError, match="draw init_batch\\(\\) first"):
        batches.next()
    batches.init_batch()
    with pytest.raises(RuntimeError, match="already drawn"):
        batches.init_batch()
    state = batches.state_dict()
    smaller = TrainBatches(TensorSource(data["x"][:-1], None, 256), BATCH, INIT, SEED)
    with pytest.raises(DataError, match=f"data set of {N} examples, this one has {N - 1}"):
        smaller.load_state_dict(state)
    with pytest.raises(ValueError, match="batches of 8, not 4"):
        TrainBatches(source, 4, INIT, SEED).load_state_dict(state)
    with pytest.raises(ValueError, match="not a TrainBatches state"):
        batches.load_state_dict({"generator": state["generator"]})
    with pytest.raises(ValueError, match="not a TrainBatches state .*not a torch.uint8 tensor"):
        batches.load_state_dict(state | {"generator": [1, 2]})
    assert TrainBatches(source, BATCH, INIT, SEED, labels=False).init_batch()[1] is None
    on_device = TensorSource(torch.empty(4, 1, 2, 2, dtype=torch.uint8, device="meta"), num_bins=256)
    with pytest.raises(ValueError, match="held on meta: read it in the main process"):
        TrainBatches(on_device, 2, 2, SEED, workers=1)


def test_eval_shares_cover_each_index_once_in_order(data: dict):
    source = make_source("npy", data)
    subset = eval_subset(N, 17)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(subset, torch.randperm(N, generator=g)[:17].sort().values) and torch.equal(
        subset, eval_subset(N, 17)
    )
    assert torch.equal(eval_subset(N, None), torch.arange(N)) and torch.equal(eval_subset(N, 99), torch.arange(N))
    shares = []
    for rank in range(3):
        plain = list(eval_batches(source, subset, 4, rank, 3))
        ahead = list(eval_batches(source, subset, 4, rank, 3, workers=2))
        assert [len(b[0]) for b in plain] == ([4, 2] if rank < 2 else [4, 1]) and all(
            torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(plain, ahead, strict=True)
        )
        shares.append(torch.cat([b[0] for b in plain]))
        assert torch.equal(shares[-1], data["x"][subset[rank::3]])  # as glowflow.training.evaluate splits
    assert sum(len(s) for s in shares) == 17
    assert list(eval_batches(source, torch.arange(0), 4)) == []


def _corrupt_folder(root: Path, x: np.ndarray) -> Path:
    paths = write_png_folder(root, x)
    paths[4].write_bytes(b"garbage")
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_image_stops_the_run_with_one_error_naming_it(data: dict, tmp_path: Path, workers: int):
    folder = _corrupt_folder(tmp_path / "bad", data["x"].numpy())
    start = time.perf_counter()
    batches = TrainBatches(ImageFolderSource(folder), N, N, SEED, workers=workers)  # batches of 30 of 30 images
    fresh = batches.state_dict()
    with pytest.raises(DataError, match=r"cannot decode image .*bad/000004\.png"):
        batches.init_batch()  # read in this process
    assert torch.equal(batches.state_dict()["generator"], fresh["generator"])  # a retry draws the same batch
    batches.load_state_dict(fresh | {"init_done": True})  # as a resumed run
    positions = []
    with pytest.raises(DataError, match=r"cannot decode image .*bad/000004\.png"):
        for _ in range(STEPS):
            positions.append(batches.state_dict())
            batches.next()
    assert torch.equal(batches.state_dict()["generator"], positions[-1]["generator"])
    assert batches.state_dict()["batches"] == positions[-1]["batches"]
    with pytest.raises(DataError, match=r"000004\.png"):
        list(eval_batches(ImageFolderSource(folder), torch.arange(N), 8, workers=workers))
    assert time.perf_counter() - start < 30


def test_skipped_images_are_warned_counted_and_saved(data: dict, tmp_path: Path):
    x = data["x"].numpy()
    folder = _corrupt_folder(tmp_path / "bad", x)
    source = ImageFolderSource(folder, on_error="skip")
    _, steps = reference_batches(N, BATCH, INIT, SEED, STEPS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = TrainBatches(source, BATCH, INIT, SEED, workers=2)
        batches.init_batch()
        for idx in steps:
            xb, _ = batches.next()
            expected = torch.where(idx == 4, 5, idx)  # example 4 is replaced by example 5
            assert torch.equal(xb, data["x"][expected])
        batches.close()
    drawn = int((torch.randperm(N, generator=torch.Generator().manual_seed(SEED))[:INIT] == 4).sum()) + sum(
        int((idx == 4).sum()) for idx in steps
    )
    assert drawn > 0 and batches.skipped == drawn and batches.state_dict()["skipped"] == drawn
    skip_warnings = [w for w in caught if issubclass(w.category, SkippedExampleWarning)]
    assert len(skip_warnings) == drawn and "000004.png" in str(skip_warnings[0].message)


class _DiesInWorkers(TensorSource):
    """Reads fine in the main process and kills the worker process that reads it."""

    def read(self, indices: torch.Tensor) -> SourceBatch:
        if torch.utils.data.get_worker_info() is not None:
            os._exit(3)
        return super().read(indices)


class _Stalls(TensorSource):
    def read(self, indices: torch.Tensor) -> SourceBatch:
        if torch.utils.data.get_worker_info() is not None:
            time.sleep(1.5)
        return super().read(indices)


def test_a_dead_or_stalled_worker_is_an_error_not_a_hang(data: dict):
    dying = TrainBatches(_DiesInWorkers(data["x"], None, 256), BATCH, INIT, SEED, workers=1)
    dying.init_batch()
    with pytest.raises(DataError, match="worker processes failed.*workers=0"):
        dying.next()
    stalled = TrainBatches(_Stalls(data["x"], None, 256), BATCH, INIT, SEED, workers=1, prefetch=1, timeout=0.3)
    stalled.init_batch()
    with pytest.raises(DataError, match=r"no batch within 0.3 s"):
        stalled.next()
    stalled.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (pinned memory and copies to it)")
def test_batches_arrive_on_the_gpu_through_pinned_memory(data: dict):
    init, steps = reference_batches(N, BATCH, INIT, SEED, 2)
    with TrainBatches(make_source("npy", data), BATCH, INIT, SEED, workers=1, device="cuda") as batches:
        xi, yi = batches.init_batch()
        assert xi.is_cuda and torch.equal(xi.cpu(), data["x"][init]) and torch.equal(yi.cpu(), data["y"][init])
        for idx in steps:
            xb, yb = batches.next()
            assert xb.is_cuda and yb.is_cuda and torch.equal(xb.cpu(), data["x"][idx])
    x, _ = next(eval_batches(make_source("npy", data), torch.arange(4), 4, workers=1, device="cuda"))
    assert x.is_cuda and torch.equal(x.cpu(), data["x"][:4])
