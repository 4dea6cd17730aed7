"""Ground-truth checks shared by the tests: full-Jacobian log-determinants, parameter randomisation, comparisons
with a stated precision, memory layouts, and a one-thread context for the tiny models."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn


def jacobian_logdet(fn: Callable[[Tensor, Tensor | None], Tensor], x: Tensor, cond: Tensor | None = None) -> Tensor:
    """log|det| of the full Jacobian of ``fn(x, cond)`` (a map of one batch to a tensor with the same number of
    elements per example), computed per example with ``torch.autograd.functional.jacobian``. Shape (B,)."""
    out = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1]
        cb = None if cond is None else cond[b : b + 1]

        def flat(inp: Tensor, cb: Tensor | None = cb) -> Tensor:
            return fn(inp, cb).reshape(-1)

        jac = torch.autograd.functional.jacobian(flat, xb)
        d = xb.numel()
        jac = jac.reshape(-1, d)
        assert jac.shape == (d, d), f"map is not dimension-preserving: Jacobian {tuple(jac.shape)}"
        out.append(torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(out)


@torch.no_grad()
def randomize_(module: nn.Module, scale: float = 0.1, generator: torch.Generator | None = None) -> nn.Module:
    """Add N(0, scale^2) noise to every floating-point parameter, so zero-initialised layers stop being the
    identity and tests exercise non-trivial maps."""
    for p in module.parameters():
        if p.is_floating_point():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device))
    return module


def max_abs(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item()


def check_flow(
    layer: nn.Module, x: Tensor, cond: Tensor | None = None, rt_tol: float = 1e-10, ld_tol: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """Assert the layer contract on ``x``: shapes, exact round trip, inverse log-det = -forward log-det, and the
    forward log-det equal to log|det| of the full autograd Jacobian. Returns the forward ``(y, logdet)``."""
    y, logdet = layer(x, cond)
    assert logdet.shape == (x.shape[0],), logdet.shape
    x_back, logdet_inv = layer.inverse(y, cond)
    assert x_back.shape == x.shape
    assert max_abs(x_back, x) < rt_tol, f"round trip error {max_abs(x_back, x):.3g}"
    assert max_abs(logdet_inv, -logdet) < ld_tol, "inverse log-det is not minus the forward log-det"
    expected = jacobian_logdet(lambda inp, c: layer(inp, c)[0], x, cond)
    assert max_abs(logdet, expected) < ld_tol * max(1.0, expected.abs().max().item()), (
        f"log-det {logdet.tolist()} != autograd Jacobian {expected.tolist()}"
    )
    return y, logdet


def assert_close(actual: Tensor, expected: Tensor, rel: float, what: str) -> None:
    """Assert ``max|actual - expected| <= rel * max(1, max|expected|)``: a bound relative to the size of the values
    (not elementwise, so entries near zero do not need their own absolute tolerance). ``what`` names the
    comparison in the failure message."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = max(1.0, expected.abs().max().item())
    err = max_abs(actual, expected) / scale
    assert err <= rel, f"{what}: relative error {err:.3g} > {rel:.3g}"


def both_layouts(x: Tensor) -> list[Tensor]:
    """``x`` (B, C, H, W) in contiguous (NCHW) and in channels-last (NHWC) memory layout, detached."""
    x, x_cl = x.detach().contiguous(), x.detach().contiguous(memory_format=torch.channels_last)
    assert not x_cl.is_contiguous(), "a layout test needs C > 1 and H * W > 1"
    return [x, x_cl]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one intra-op thread, then restore the previous count. The tiny models of the tests run
    fastest so (the suite shares two cores with other work), and their float results do not depend on how many
    cores the machine has (a parallel reduction splits its sum by thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


REPO = Path(__file__).resolve().parents[1]


def load_script(folder: str, name: str) -> ModuleType:
    """Import ``REPO/folder/NAME.py`` from its file, registered as ``NAME``: the name under which the scripts of
    benchmarks/ import one another (``budget`` imports ``bench``, both import ``_normflows_glow``)."""
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(REPO / folder / f"{name}.py"):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
