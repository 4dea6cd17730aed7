"""Two CPU processes (gloo on 127.0.0.1): both ranks end with identical parameters, the result matches a
single-process run with the same total batch, ``torchrun -m glowflow train`` works with rank 0 alone writing, and
two ranks training on tar shards read batch by batch take disjoint halves of every global batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from glowflow.training import read_metrics, train
from tests.data.stream_helpers import random_images, reference_batches, write_shards
from tests.training.train_helpers import TINY, TINY_TOY, free_port, max_diff, params, python, subprocess_env

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or sys.platform == "win32", reason="needs torch.distributed with gloo"
)

# Every rank joins the group itself (train() then adopts it), runs the same trainings and saves its parameters.
SCRIPT = """
import json, os, sys
import torch
import torch.distributed as dist
torch.set_num_threads(1)
from glowflow.training import train
out, runs = sys.argv[1], json.loads(sys.argv[2])
dist.init_process_group("gloo")
rank = dist.get_rank()
for name, kwargs in runs.items():
    result = train(out=os.path.join(out, name), **kwargs)
    torch.save(result.model.state_dict(), os.path.join(out, f"{name}-rank{rank}.pt"))
# train() ended on a barrier whose Work this process still holds (freed by gloo's worker thread at exit, it aborted
# the process now and then): see glowflow.training.distributed._last_barrier.
from glowflow.training import distributed
assert distributed._last_barrier is not None and distributed._last_barrier.is_completed()
dist.destroy_process_group()
"""

RUNS = {"toy": dict(TINY_TOY, iters=6), "digits": dict(TINY, iters=6)}


def _launch(tmp_path: Path) -> None:
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    port = free_port()
    procs = []
    for rank in range(2):
        env = subprocess_env() | {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                                  "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
        procs.append(subprocess.Popen([python(), str(script), str(tmp_path), json.dumps(RUNS)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=180)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text[-3000:]


def test_two_processes_match_one(tmp_path: Path):
    _launch(tmp_path)
    for name in RUNS:
        rank0 = torch.load(tmp_path / f"{name}-rank0.pt", weights_only=True)
        rank1 = torch.load(tmp_path / f"{name}-rank1.pt", weights_only=True)
        for k in rank0:
            assert torch.equal(rank0[k], rank1[k]), (name, k)  # DDP keeps the ranks bit-identical
        records = read_metrics(tmp_path / name / "metrics.jsonl")  # rank 0 alone wrote it
        assert [r["step"] for r in records] == [0, 2, 4, 6]
        assert not (tmp_path / name / "checkpoints" / "last.pt.tmp").exists()

    # The toy data has no dequantization noise: with the same total batch of 16 (2 x 8 here), the two-process
    # run computes the same gradient as one process up to float summation order. Measured difference after 6
    # Adam steps: 6e-8; the bound (~100x) leaves room for Adam amplifying round-off in near-zero gradients.
    single = train(out=str(tmp_path / "single-toy"), **RUNS["toy"])
    ddp = {k: v for k, v in torch.load(tmp_path / "toy-rank0.pt", weights_only=True).items() if v.is_floating_point()}
    assert max_diff(params(single.model), ddp) < 1e-5
    ddp_metrics = read_metrics(tmp_path / "toy" / "metrics.jsonl")
    assert ddp_metrics[-1]["test_nll"] == pytest.approx(single.metrics["test_nll"], abs=1e-5)
    # Images: each process draws its own dequantization noise, so the runs differ by that noise only
    # (measured: 7e-5 bits/dim after 6 steps).
    single = train(out=str(tmp_path / "single-digits"), **RUNS["digits"])
    ddp_metrics = read_metrics(tmp_path / "digits" / "metrics.jsonl")
    assert ddp_metrics[0]["test_bpd"] == pytest.approx(single.untrained["test_bpd"], abs=0.01)
    assert ddp_metrics[-1]["test_bpd"] == pytest.approx(single.metrics["test_bpd"], abs=0.01)


def test_torchrun_cli(tmp_path: Path):
    out = tmp_path / "run"
    torchrun = [python(), "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                "--master_addr=127.0.0.1", f"--master_port={free_port()}"]  # fmt: skip
    cmd = torchrun + ["-m", "glowflow", "train", "--data", "moons", "--out", str(out), "--iters", "4",
                      "--steps", "1", "--hidden", "8", "--batch-size", "16", "--init-batch-size", "64",
                      "--eval-every", "2", "--log-every", "2", "--sample-every", "0", "--no-progress"]  # fmt: skip
    p = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "on cpu x 2 processes" in p.stdout and p.stdout.count("run directory:") == 1
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [0, 2, 4]
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 4 and len(ckpt["rng"]["ranks"]) == 2 and ckpt["progress"]["world_size"] == 2


# One rank of `torchrun script.py SHARDS OUT`: glowflow.train on tar shards read batch by batch by one reader
# process per rank; a spy records the indices of every batch the loop takes.
STREAM_SCRIPT = """
import json, os, sys
import torch
torch.set_num_threads(1)
import glowflow.data.streaming as streaming
from glowflow.training import train
shards, out, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
seen = []
for name in ("init_batch", "next"):
    def spy(self, original=getattr(streaming.TrainBatches, name)):
        batch = original(self)
        seen.append(self.indices.clone())
        return batch
    setattr(streaming.TrainBatches, name, spy)
result = train(data="shards", data_dir=shards, input="stream", workers=1, out=os.path.join(out, "run"), **kwargs)
torch.save({"indices": seen, "params": result.model.state_dict()}, os.path.join(out, f"rank{os.environ['RANK']}.pt"))
"""


def test_two_processes_read_disjoint_halves_of_every_streamed_batch(tmp_path: Path):
    n = 50  # a 45 / 5 split of the shards' samples
    write_shards(tmp_path / "shards", random_images(n, 1, 8, seed=9), np.arange(n) % 4, per_shard=16)
    script = tmp_path / "stream_rank.py"
    script.write_text(STREAM_SCRIPT)
    kwargs = dict(TINY, iters=4, init_batch_size=24, conditional=True, eval_every=2)
    cmd = [python(), "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(script), str(tmp_path / "shards"), str(tmp_path),
           json.dumps(kwargs)]  # fmt: skip
    p = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    init, steps = reference_batches(45, 16, 24, 0, 4)  # the global batches of the training split, seed 0
    half = 8
    assert torch.equal(ranks[0]["indices"][0], init[:12]) and torch.equal(ranks[1]["indices"][0], init[12:])
    for k, idx in enumerate(steps, 1):
        assert torch.equal(ranks[0]["indices"][k], idx[:half]) and torch.equal(ranks[1]["indices"][k], idx[half:])
    assert len(ranks[0]["indices"]) == len(ranks[1]["indices"]) == 5
    for key, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][key]), key  # DDP keeps the ranks bit-identical
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [0, 2, 4]
