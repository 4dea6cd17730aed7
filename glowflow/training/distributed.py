"""Running one training over several processes with ``torch.distributed`` (``torchrun --nproc_per_node=N``).

The recipe (see ``glowflow/training/loop.py``):

* ``torchrun`` sets ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``; with
  ``WORLD_SIZE > 1`` :func:`setup` joins the process group (NCCL on CUDA, gloo on CPU), unless the caller already
  did, in which case the caller's group is used and left alone.
* Every rank draws the same global batch indices from the shared, seeded batch generator and keeps its own
  contiguous slice (:func:`shard`): the union over ranks is exactly the single-process batch.
* ActNorm's data-dependent initialisation all-reduces its statistics, so all ranks run the init forward together
  before the model is wrapped in ``DistributedDataParallel``, which then averages the gradients.
* Decisions that must agree across ranks (skip a faulty step, stop on a signal) are all-reduced every step.
* Only rank 0 writes files, logs and draws the progress bar.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # whether setup() created the process group (and cleanup() destroys it)
    device: torch.device = torch.device("cpu")  # where collective operations' tensors live (CUDA for NCCL)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def setup(device: str) -> DistContext:
    """Join (or adopt) the process group when ``WORLD_SIZE > 1``; otherwise a single-process context.
    ``device`` is the configured device (``"cuda"`` picks NCCL and ``cuda:LOCAL_RANK``)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), False)
    world = env_world_size()
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise ValueError(f"WORLD_SIZE={world} but {var} is not set: launch with torchrun --nproc_per_node=N")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, True)


def cleanup(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shard(indices: Tensor, ctx: DistContext) -> Tensor:
    """This rank's contiguous slice of a global batch of indices (the batch size divides by the world size)."""
    if not ctx.enabled:
        return indices
    per = indices.shape[0] // ctx.world_size
    return indices[ctx.rank * per : (ctx.rank + 1) * per]


def all_reduce_sum(t: Tensor, ctx: DistContext) -> Tensor:
    if ctx.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_true(flag: bool, ctx: DistContext) -> bool:
    """Whether ``flag`` is true on any process (every process must call this at the same point)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([float(flag)], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return bool(t.item() > 0)


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj``, in rank order (on every rank)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


# The last barrier's Work, kept until the next barrier or the process's end. gloo's barrier refers to every
# collective still in flight when it was called; whichever thread drops the last reference to it frees those
# collectives' tensors, which needs the GIL. Dropped by gloo's worker thread while the main thread is already
# finalizing the interpreter, that thread is killed mid-free and the process aborts ("terminate called without
# an active exception", SIGABRT; 7 of 320 two-rank test runs that exit right after training, 0 of 200 since). Kept
# here, the last reference is this module's (the worker lets go of its own as soon as the barrier completes), and the
# thread that drops it, at the next barrier or at exit, holds the GIL.
_last_barrier: dist.Work | None = None


def barrier(ctx: DistContext) -> None:
    """Every process waits here until all have arrived."""
    global _last_barrier
    if ctx.enabled:
        work = dist.barrier(async_op=True)
        work.wait()
        _last_barrier = work
