"""The streaming batches across processes: exact resume after a SIGKILL, and two ranks under torchrun."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from glowflow.data.arrays import ArraySource
from glowflow.data.streaming import TrainBatches, eval_subset
from tests.data.stream_helpers import random_images, reference_batches, write_shards

REPO = Path(__file__).resolve().parents[2]
N, BATCH, INIT, SEED = 200, 8, 12, 7
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and torchrun's gloo launcher")


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _digest(x: torch.Tensor) -> str:
    return hashlib.sha1(x.contiguous().numpy().tobytes()).hexdigest()


# Iterates the batches with two workers reading ahead, saves the position after batch SAVE_AT, takes three more
# batches (which the saved position must not include), says so and waits to be killed.
CHILD = f"""
import hashlib, os, sys, time
import torch
torch.set_num_threads(1)
from glowflow.data.arrays import ArraySource
from glowflow.data.streaming import TrainBatches
array, state_path, save_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
batches = TrainBatches(ArraySource(array), {BATCH}, {INIT}, {SEED}, workers=2, prefetch=4)
batches.init_batch()
for step in range(1, save_at + 4):
    x, _ = batches.next()
    print("batch", step, hashlib.sha1(x.numpy().tobytes()).hexdigest(), flush=True)
    if step == save_at:
        torch.save(batches.state_dict(), state_path + ".tmp")
        os.replace(state_path + ".tmp", state_path)
print("waiting", flush=True)
time.sleep(600)
"""


def test_resume_after_sigkill_sees_the_batches_of_an_uninterrupted_run(tmp_path: Path):
    x = random_images(N, 3, 8, seed=5)
    np.save(tmp_path / "x.npy", x)
    save_at, total = 5, 12
    _, steps = reference_batches(N, BATCH, INIT, SEED, total)
    expected = [_digest(torch.from_numpy(x)[idx]) for idx in steps]

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    state = tmp_path / "position.pt"
    child = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "x.npy"), str(state), str(save_at)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    seen = []
    try:
        for line in child.stdout:
            if line.startswith("waiting"):
                break
            if line.startswith("batch"):
                seen.append(line.split()[2])
        os.killpg(child.pid, signal.SIGKILL)  # the child and its loader workers, mid-run
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert seen == expected[: save_at + 3]  # the child consumed three batches past the save

    resumed = TrainBatches(ArraySource(tmp_path / "x.npy"), BATCH, INIT, SEED, workers=2)
    resumed.load_state_dict(torch.load(state, weights_only=True))
    assert [_digest(resumed.next()[0]) for _ in range(save_at, total)] == expected[save_at:]
    resumed.close()


# One rank of a torchrun job: its training and evaluation batches, saved for the test to compare.
RANK = f"""
import sys
import torch
import torch.distributed as dist
torch.set_num_threads(1)
from glowflow.data.shards import TarShardSource
from glowflow.data.streaming import TrainBatches, eval_batches, eval_subset
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
source = TarShardSource(sys.argv[1])
batches = TrainBatches(source, {BATCH}, {INIT}, {SEED}, rank, world, workers=1)
init_x, _ = batches.init_batch()
steps = [batches.next() for _ in range(4)]
subset = eval_subset(len(source), 50)
evaluation = [x for x, _ in eval_batches(source, subset, 16, rank, world, workers=1)]
batches.close()
torch.save({{"init": init_x, "x": [s[0] for s in steps], "y": [s[1] for s in steps], "eval": torch.cat(evaluation)}},
           f"{{sys.argv[2]}}/rank{{rank}}.pt")
dist.barrier()
dist.destroy_process_group()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed with gloo")
def test_two_ranks_under_torchrun_split_every_batch(tmp_path: Path):
    x = random_images(N, 3, 8, seed=6)
    labels = np.arange(N) % 10
    write_shards(tmp_path / "shards", x, labels, per_shard=64)
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script), str(tmp_path / "shards"),
           str(tmp_path)]  # fmt: skip
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    init, steps = reference_batches(N, BATCH, INIT, SEED, 4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels)
    assert torch.equal(torch.cat([r["init"] for r in ranks]), xt[init])
    for k, idx in enumerate(steps):
        assert torch.equal(ranks[0]["x"][k], xt[idx[: BATCH // 2]])  # disjoint halves of the one global batch
        assert torch.equal(ranks[1]["x"][k], xt[idx[BATCH // 2 :]])
        assert torch.equal(torch.cat([r["y"][k] for r in ranks]), yt[idx])
    subset = eval_subset(N, 50)
    assert torch.equal(ranks[0]["eval"], xt[subset[0::2]]) and torch.equal(ranks[1]["eval"], xt[subset[1::2]])
