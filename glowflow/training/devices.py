"""Which device a run or a command uses, and the conditioner precision that suits it."""

from __future__ import annotations

import torch

from glowflow.checks import DEVICE_WORDS, device_problem
from glowflow.training.distributed import DistContext


def resolve_device(name: str, ctx: DistContext | None = None) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; under torchrun a CUDA run uses the
    process's ``cuda:LOCAL_RANK``. ValueError for CUDA where there is none, a GPU index past the last GPU, or another
    name."""
    ctx = ctx or DistContext()
    if device_problem(name) is not None:
        raise ValueError(f"unknown device {name!r}; expected {DEVICE_WORDS}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here (torch.cuda.is_available() is False); "
                         "use --device cpu")  # fmt: skip
    if ctx.enabled:
        return torch.device("cuda", ctx.local_rank)
    device = torch.device(name)
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(f"--device {name}: there is no such GPU here ({count} GPU{'s' if count != 1 else ''}: "
                         f"cuda:0..cuda:{count - 1})")  # fmt: skip
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA device with bf16 support, or a CPU whose oneDNN has bf16
    instructions (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(name: str, device: torch.device) -> str:
    """``"auto"`` -> ``"bf16"`` where :func:`native_bf16`, else ``"fp32"``; ``"fp32"`` / ``"bf16"`` as given."""
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return name
