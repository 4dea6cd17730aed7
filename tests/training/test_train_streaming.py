"""Training on data read batch by batch from files: the parameters of the in-memory path, exact resume across a
SIGKILL of ``glowflow train``, the batch position in checkpoints, a corrupt image mid-run (one error naming it, or
skipped and counted), the reader processes stopped when a run fails, ImageNet's version printed, and ``glowflow
eval`` streaming."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from glowflow.cli import main as cli_main
from glowflow.data.arrays import ArraySource
from glowflow.data.sources import SkippedExampleWarning
from glowflow.errors import DataError
from glowflow.training import read_metrics, train
from glowflow.training.checkpoint import FORMAT, VERSION
from tests.data.stream_helpers import (
    chrabaszcz_batch,
    random_images,
    reference_batches,
    write_chrabaszcz,
    write_png_folder,
)
from tests.training.train_helpers import TINY, TINY_FLAGS, max_diff, params, python, subprocess_env

N_TRAIN, N_TEST, INIT = 60, 12, 16
RUN = dict(TINY, init_batch_size=INIT, threads=1)  # an ActNorm batch smaller than the split: the steps meet new images


@pytest.fixture(scope="module")
def images() -> dict:
    x = random_images(N_TRAIN + N_TEST, 1, 8, seed=11)
    return {"x": x, "labels": np.arange(N_TRAIN + N_TEST) % 3}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, images: dict) -> Path:
    """train/ and test/ folders of PNGs in class sub-folders (train index i is the i-th file of the listing)."""
    root = tmp_path_factory.mktemp("folder")
    x, y = images["x"], images["labels"]
    write_png_folder(root / "train", x[:N_TRAIN], y[:N_TRAIN])
    write_png_folder(root / "test", x[N_TRAIN:], y[N_TRAIN:])
    return root


def _train_files(root: Path) -> list[Path]:
    return sorted((root / "train").glob("*/*.png"), key=lambda p: (p.parent.name, p.name))


def test_streamed_sources_train_the_parameters_of_the_in_memory_path(tmp_path: Path, images: dict):
    """The same batches and the same noise: a .npy read batch by batch, with or without reader processes, trains
    exactly the model the arrays in memory train (measured difference: 0; the bound allows for nothing but
    float round-off, which the identical computation does not incur)."""
    x = images["x"]
    np.save(tmp_path / "train.npy", x[:N_TRAIN])
    np.save(tmp_path / "test.npy", x[N_TRAIN:])
    kwargs = dict(RUN, iters=6, n_bits=5, pad=12)  # the model's preprocessing applied batch by batch
    memory = train(data=x[:N_TRAIN], test_data=x[N_TRAIN:], out=str(tmp_path / "memory"), **kwargs)
    for workers in (0, 2):
        streamed = train(data=ArraySource(tmp_path / "train.npy"), test_data=ArraySource(tmp_path / "test.npy"),
                         input="stream", workers=workers, out=str(tmp_path / f"stream{workers}"), **kwargs)  # fmt: skip
        assert max_diff(params(memory.model), params(streamed.model)) <= 1e-7
        assert streamed.metrics["test_bpd"] == pytest.approx(memory.metrics["test_bpd"], rel=1e-12)
        assert streamed.untrained["test_bpd"] == pytest.approx(memory.untrained["test_bpd"], rel=1e-12)


def test_a_folder_in_memory_or_streamed_trains_one_model(tmp_path: Path, folder: Path, capsys):
    """--input memory vs --input stream --workers 2 on a class-conditional folder run (labels travel with the
    batches); then glowflow eval reads the run's test split batch by batch, with and without workers."""
    kwargs = dict(RUN, data="folder", data_dir=str(folder), iters=6, conditional=True, eval_size=8)
    memory = train(input="memory", out=str(tmp_path / "memory"), **kwargs)
    streamed = train(input="stream", workers=2, out=str(tmp_path / "stream"), **kwargs)
    assert max_diff(params(memory.model), params(streamed.model)) <= 1e-7  # measured: 0
    out = capsys.readouterr().out
    assert "read batch by batch from the files, 2 reader processes" in out
    assert "a fixed random subset of 8 of the 12 test images" in out
    results = []
    for workers in ("0", "1"):
        assert cli_main(["eval", str(tmp_path / "stream"), "--n-samples", "1", "--workers", workers]) == 0
        results.append(json.loads((tmp_path / "stream" / "eval_test.json").read_text()))
    assert results[0]["examples"] == N_TEST and results[0]["bpd"] == pytest.approx(results[1]["bpd"], rel=1e-12)


def _kill_when(out: Path, proc: subprocess.Popen, step: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.communicate()}")
        if any(r["step"] >= step for r in read_metrics(out / "metrics.jsonl")):
            os.killpg(proc.pid, signal.SIGKILL)  # the run and its reader processes, mid-step
            proc.wait(timeout=30)
            return
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("training did not reach the step in time")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups and SIGKILL")
def test_resume_after_sigkill_of_glowflow_train_is_exact(tmp_path: Path, folder: Path):
    out = tmp_path / "run"
    cmd = [python(), "-m", "glowflow", "train", "--data", "folder", "--data-dir", str(folder), "--input", "stream",
           "--workers", "2", "--out", str(out), *TINY_FLAGS, "--init-batch-size", str(INIT), "--iters", "100000",
           "--checkpoint-every", "4", "--eval-every", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    _kill_when(out, proc, 6)
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    step = saved["step"]
    assert step >= 4 and saved["batches"]["batches"] == step and saved["batches"]["size"] == N_TRAIN
    resumed = train(out=str(out), resume=True, iters=step + 6, workers=0)  # readers may change on resume
    uninterrupted = {**RUN, "iters": step + 6, "checkpoint_every": 4, "eval_every": 0}
    full = train(data="folder", data_dir=str(folder), input="stream", out=str(tmp_path / "full"), **uninterrupted)
    assert resumed.step == full.step == step + 6
    assert max_diff(params(full.model), params(resumed.model)) <= 1e-7  # measured: 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(0, step + 7, 2))


def test_checkpoints_without_the_batch_position_resume_exactly(tmp_path: Path):
    """Files written before the position was saved hold the generator alone (rng.batch): they resume as before;
    a position for another data set is refused."""
    full = train(out=str(tmp_path / "full"), iters=8, **RUN)
    half = tmp_path / "half"
    train(out=str(half), iters=4, **RUN)
    path = half / "checkpoints" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["format"] == FORMAT and ckpt["version"] == VERSION
    assert torch.equal(ckpt["batches"]["generator"], ckpt["rng"]["batch"]) and ckpt["batches"]["batches"] == 4
    del ckpt["batches"]
    torch.save(ckpt, path)
    resumed = train(out=str(half), resume=True, iters=8)
    assert max_diff(params(full.model), params(resumed.model)) <= 1e-7  # measured: 0

    x = random_images(40, 1, 8, seed=3)
    train(data=x, out=str(tmp_path / "arrays"), iters=2, **RUN)
    with pytest.raises(DataError, match="batch position is for a data set of 36 examples, this one has 31"):
        train(data=x[:35], out=str(tmp_path / "arrays"), resume=True, iters=4)


def _first_new_index(n: int, batch_size: int, seed: int, after: int) -> tuple[int, int]:
    """An index the ActNorm batch and steps 1..after-1 never draw, and the first step that does."""
    init, steps = reference_batches(n, batch_size, INIT, seed, 200)
    seen = set(init.tolist())
    for s, idx in enumerate(steps, 1):
        new = [i for i in idx.tolist() if i not in seen]
        if s >= after and new:
            return new[0], s
        seen |= set(idx.tolist())
    raise AssertionError("no index first drawn late enough")


@pytest.fixture
def corrupt(tmp_path: Path, folder: Path) -> dict:
    """A copy of the folder with one training image that the run first meets at step >= 3 overwritten."""
    import shutil

    root = tmp_path / "corrupt"
    shutil.copytree(folder, root)
    k, step = _first_new_index(N_TRAIN, RUN["batch_size"], 0, after=3)
    bad = _train_files(root)[k]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return {"root": root, "index": k, "step": step, "file": bad}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX exit codes")
def test_a_corrupt_image_mid_run_stops_the_cli_with_one_line_naming_it(tmp_path: Path, corrupt: dict):
    cmd = [python(), "-m", "glowflow", "train", "--data", "folder", "--data-dir", str(corrupt["root"]), "--input",
           "stream", "--workers", "2", "--out", str(tmp_path / "run"), *TINY_FLAGS, "--init-batch-size", str(INIT),
           "--iters", "40", "--eval-every", "0"]  # fmt: skip
    p = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "glowflow train: error: cannot decode image" in p.stderr and str(corrupt["file"]) in p.stderr
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert steps[-1] < corrupt["step"] <= steps[-1] + RUN["log_every"]  # it stopped at the step that needs the image


def test_a_corrupt_image_is_skipped_warned_and_counted(tmp_path: Path, corrupt: dict):
    iters = corrupt["step"] + 4
    _, steps = reference_batches(N_TRAIN, RUN["batch_size"], INIT, 0, iters)
    expected = sum(int((idx == corrupt["index"]).sum()) for idx in steps)  # every draw of it is replaced
    with pytest.warns(SkippedExampleWarning, match=f"{corrupt['file']}.*replaced by example {corrupt['index'] + 1}"):
        result = train(data="folder", data_dir=str(corrupt["root"]), input="stream", workers=2, on_error="skip",
                       out=str(tmp_path / "run"), iters=iters, **RUN)  # fmt: skip
    assert result.skipped_examples == expected >= 1
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert records[-1]["skipped_examples"] == expected and records[0]["skipped_examples"] == 0
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["batches"]["skipped"] == expected
    with pytest.raises(DataError, match=f"cannot decode image {corrupt['file']}"):  # in memory: when it is loaded
        train(data="folder", data_dir=str(corrupt["root"]), input="memory", out=str(tmp_path / "memory"), **RUN)


def test_the_reader_processes_end_with_a_failed_run(tmp_path: Path, folder: Path):
    def fail(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step == 3:
            assert multiprocessing.active_children()  # the readers are at work
            raise RuntimeError("a failure in the training step")
        return loss

    with pytest.raises(RuntimeError, match="a failure in the training step") as failure:
        train(data="folder", data_dir=str(folder), input="stream", workers=2, out=str(tmp_path / "run"), iters=8,
              loss_hook=fail, **RUN)  # fmt: skip
    assert failure.traceback  # the frames (and the batches) are still referenced: the loop itself stopped them
    assert multiprocessing.active_children() == []


def test_imagenet32_names_its_version_when_training(tmp_path: Path, capsys):
    x = random_images(40, 3, 32, seed=7)
    labels0 = np.arange(40) % 1000
    write_chrabaszcz(tmp_path / "imagenet32", x[:32], labels0[:32], n_files=2)
    np.savez(tmp_path / "imagenet32" / "val_data.npz", **chrabaszcz_batch(x[32:], labels0[32:] + 1, with_mean=False))
    with pytest.warns(UserWarning, match="not comparable with published numbers"):
        result = train(data="imagenet32", data_dir=str(tmp_path / "imagenet32"), out=str(tmp_path / "run"),
                       preset="none", iters=2, **{**RUN, "batch_size": 8})  # fmt: skip
    out = capsys.readouterr().out
    assert "data: imagenet32: 32 train / 8 test images, 3x32x32, 256 levels per channel" in out
    assert "files: ImageNet 32x32 train, Chrabaszcz et al. 2017" in out and "detected from npz arrays" in out
    assert result.step == 2 and np.isfinite(result.metrics["test_bpd"])
    with pytest.warns(UserWarning, match="not comparable"):
        assert cli_main(["eval", str(tmp_path / "run"), "--n-samples", "1"]) == 0
    assert "files: ImageNet 32x32 test, Chrabaszcz et al. 2017" in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_batches_on_cuda(images: dict):
    """A split in memory moves to the GPU without workers; with workers it stays on the host, pinned by the
    loader, and the batches are the same."""
    from glowflow.data.sources import TensorSource
    from glowflow.training.batches import training_batches
    from glowflow.training.config import TrainConfig
    from glowflow.training.data import TrainingData
    from glowflow.training.distributed import DistContext

    x = torch.from_numpy(images["x"])
    data = TrainingData("memory", TensorSource(x, num_bins=256), TensorSource(x[:4], num_bins=256), torch.arange(4),
                        256, None)  # fmt: skip
    init, steps = reference_batches(len(x), 16, INIT, 0, 3)
    for workers in (0, 1):
        cfg = TrainConfig(batch_size=16, init_batch_size=INIT, workers=workers)
        with training_batches(data, cfg, DistContext(), torch.device("cuda")) as batches:
            assert batches.source.x.is_cuda == (workers == 0)
            assert torch.equal(batches.init_batch()[0].cpu(), x[init])
            for idx in steps:
                xb, _ = batches.next()
                assert xb.is_cuda and torch.equal(xb.cpu(), x[idx])
