"""Which device a run or a command uses."""

from __future__ import annotations

import torch

from glowflow.training.distributed import DistContext


def resolve_device(name: str, ctx: DistContext | None = None) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; under torchrun a CUDA run uses the
    process's ``cuda:LOCAL_RANK``. ValueError for CUDA where there is none, or another name."""
    ctx = ctx or DistContext()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available here (torch.cuda.is_available() is False); "
                             "use --device cpu")  # fmt: skip
        return torch.device("cuda", ctx.local_rank) if ctx.enabled else torch.device(name)
    if name != "cpu":
        raise ValueError(f"unknown device {name!r}; expected cpu, cuda, cuda:N or auto")
    return torch.device("cpu")
