"""glowflow vs normflows' Glow and the original PyTorch ports, side by side, in one run: speed, memory, FLOP rate,
host synchronisations, and glowflow's own scaling.

    python benchmarks/bench.py                       # configs S and M (plus P on a GPU), every section
    python benchmarks/bench.py --peers /work/peers   # also rosinality/glow-pytorch and y0ast/Glow-PyTorch
    python benchmarks/bench.py --configs S --sections compare,memory
    python benchmarks/bench.py --threads 1 --clock cpu   # a busy machine: one thread, timed by process CPU time
    python benchmarks/bench.py --full --json results.json   # adds config P (the paper's CIFAR-10 model) on CPU
    python benchmarks/bench.py --quick               # tiny settings: exercises every code path in about a minute
    python benchmarks/bench.py --timing-allocator default   # speed under glibc's default allocator, as users run

normflows comes with ``pip install -e '.[bench]'``; without it the normflows columns are skipped. The ports are
never part of glowflow: ``--peers DIR`` imports unmodified checkouts from ``DIR`` (see ``_peers.py``).

How it measures (see benchmarks/README.md for the definitions):

* Every case runs in a fresh worker process (this script re-executed with ``--worker``) under fixed glibc
  allocator settings, printed with the tables: timing workers get ``TIMING_TUNABLES`` (large buffers stay in the
  heap instead of being unmapped and re-faulted on every no-grad pass), memory workers ``MEMORY_TUNABLES``
  (buffers >= 64 KiB are mmapped and returned on free, so resident memory follows live memory) and, in a second
  process per case, glibc's default settings (what users run).
  A ``GLIBC_TUNABLES`` already set in the environment is kept for the timing workers; ``--timing-allocator
  default`` times them under glibc's default settings instead, as users run, with each library's evaluation and
  sampling in a worker of its own that runs no training step first (a training step's large buffers raise glibc's
  dynamic mmap threshold, which a process that only scores or samples never sees - unless, like glowflow's first
  pass with autograd off, it raises it itself, which in a shared process would serve the other libraries too).
* Timing: inside one worker the contenders (glowflow, normflows, the ports, glowflow bf16) are built side by side,
  initialised (ActNorm) on a separate batch, warmed up, and then measured in interleaved rounds (order reversed
  every round), one fresh batch per round shared by all contenders; the tables give medians over rounds.
  Interleaving keeps the ratios honest on a machine whose speed drifts. Ratios are against the best other library.
* Memory: one fresh process per case. CPU: resident-set high-water (VmHWM) above the post-build baseline,
  split into the persistent training state (gradients + optimiser state, allocated by the first warm-up step)
  and the transient peak of a training step above it (VmHWM reset through /proc/self/clear_refs after
  warm-up). GPU: torch.cuda.memory_allocated / max_memory_allocated with the same split.
* FLOP rate: FLOPs of one forward + backward from torch.utils.flop_counter.FlopCounterMode (with formulas for the
  oneDNN fused kernels glowflow calls), divided by the median training-step time, as a fraction of the machine's
  float32 matmul rate measured in the same rounds (n x n matmuls, n = 2048, same thread count).
* Host synchronisations: reads of a tensor back to the host (``aten._local_scalar_dense``) in one training step.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _normflows_glow import (  # noqa: E402
    MISMATCHES,
    NORMFLOWS_VERSION,
    build_normflows_glow,
    count_parameters,
    dequantize,
    normflows_bits_per_dim,
)
from _normflows_glow import nf as _nf  # noqa: E402
from _peers import PEER_MISMATCHES, PEERS, build_peer_glow, peer_commit  # noqa: E402

from glowflow import Glow  # noqa: E402

COMPARE_PASSES = ("train", "eval", "sample")
"""The passes a compare worker times, in this order (its ``passes`` spec key picks among them)."""
TIMING_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967295"
MEMORY_TUNABLES = "glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=0"
DEFAULT_MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
TEMPERATURE = 0.7
SAMPLE_N = 16
SECTIONS = ("compare", "memory", "memmodes", "pipeline", "scaling")

# normflows' Invertible1x1Conv calls the deprecated torch.lu; keep the tables readable.
warnings.filterwarnings("ignore", message=r".*torch\.lu is deprecated.*")


@dataclass(frozen=True)
class Config:
    name: str
    shape: tuple[int, int, int]
    levels: int
    steps: int
    hidden: int
    batch: int
    data: str  # "random" (uniform random uint8 pixels) or "mnist" (real MNIST, padded to the shape)
    num_bins: int = 256

    def describe(self) -> str:
        c, h, w = self.shape
        return f"{c}x{h}x{w}, L={self.levels}, K={self.steps}, width {self.hidden}, batch {self.batch}"


CONFIGS = {
    "S": Config("S", (3, 32, 32), 3, 8, 128, 16, "random"),
    "M": Config("M", (1, 32, 32), 2, 16, 256, 32, "mnist"),
    "P": Config("P", (3, 32, 32), 3, 32, 512, 64, "random"),
}
QUICK_CONFIGS = {
    "S": Config("S", (3, 16, 16), 2, 2, 16, 4, "random"),
    "M": Config("M", (1, 32, 32), 2, 2, 16, 4, "mnist"),
    "P": Config("P", (3, 16, 16), 2, 3, 16, 4, "random"),
}


@dataclass(frozen=True)
class Settings:
    """Repetition counts; ``--quick`` shrinks everything."""

    warmup: int = 2  # warm-up steps per contender (the first allocates the optimiser state)
    rounds: int = 5  # measured, interleaved rounds (one step per contender per round)
    eval_rounds: int = 7
    sample_rounds: int = 7
    matmul_n: int = 2048
    memory_warmup: int = 2
    memory_steps: int = 2
    memmode_steps: tuple[int, ...] = (8, 32)
    memmode_rounds: int = 3
    scaling_steps: tuple[int, ...] = (4, 8, 16, 32)
    scaling_sizes: tuple[int, ...] = (16, 32, 64)
    scaling_rounds: int = 3
    pipeline_batches: int = 200


QUICK = Settings(
    warmup=1,
    rounds=2,
    eval_rounds=2,
    sample_rounds=2,
    matmul_n=128,
    memory_warmup=1,
    memory_steps=1,
    memmode_steps=(1, 2),
    memmode_rounds=1,
    scaling_steps=(1, 2),
    scaling_sizes=(8, 16),
    scaling_rounds=1,
    pipeline_batches=5,
)


# ---------------------------------------------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def git_state() -> str | None:
    """``<commit>`` of the repository, ``+dirty`` when tracked files differ from it (None outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment(device: str) -> dict:
    env = {
        "git": git_state(),
        "device": device,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "normflows": NORMFLOWS_VERSION,
        "python": platform.python_version(),
        "avx512_bf16": "avx512_bf16" in cpu_flags(),
        "avx512f": "avx512f" in cpu_flags(),
        "timing_tunables": os.environ.get("GLIBC_TUNABLES") or TIMING_TUNABLES,
        "memory_tunables": MEMORY_TUNABLES,
    }
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        env["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    return env


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------
class Batches:
    """Fresh uint8 batches (B, C, H, W) for a config: random pixels, or random MNIST training images."""

    def __init__(self, cfg: Config, device: str, mnist_dir: Path, seed: int = 0) -> None:
        self.cfg = cfg
        self.device = device
        self.gen = torch.Generator().manual_seed(seed)
        self.images: torch.Tensor | None = None
        self.note = "uniform random uint8 pixels (no real data needed: speed and memory do not depend on content)"
        if cfg.data == "mnist":
            images = load_mnist(mnist_dir, "train", cfg.shape[-1])
            if images is None:
                self.note = f"MNIST not found in {mnist_dir}: uniform random uint8 pixels instead"
            else:
                self.images = images
                self.note = f"MNIST train ({len(images)} images) from {mnist_dir}, zero-padded to {cfg.shape[-1]}"

    def next(self, batch: int | None = None) -> torch.Tensor:
        b = batch or self.cfg.batch
        if self.images is not None:
            k = self.images[torch.randint(0, len(self.images), (b,), generator=self.gen)]
        else:
            k = torch.randint(0, 256, (b, *self.cfg.shape), generator=self.gen, dtype=torch.uint8)
        return k.to(self.device)


def load_mnist(mnist_dir: Path, split: str, size: int) -> torch.Tensor | None:
    """MNIST uint8 (N, 1, size, size), zero-padded from 28x28 (or None when the files are absent)."""
    from glowflow.data import load_dataset, pad_images
    from glowflow.errors import DataError

    try:
        ds = load_dataset("mnist", mnist_dir, split)
    except (DataError, OSError):
        return None
    data = ds.data
    if size != data.shape[-1]:
        data = pad_images(data, size) if size > data.shape[-1] else data[..., :size, :size]
    return data.contiguous()


# ---------------------------------------------------------------------------------------------------------------
# contenders
# ---------------------------------------------------------------------------------------------------------------
LIBS = ("glowflow", "normflows", *PEERS)
"""Every library the bench can run: glowflow, normflows (the ``bench`` extra), the ports of ``--peers``."""


class Contender:
    """One model under test with its training objective, evaluation, sampling and optimiser."""

    def __init__(self, name: str, lib: str, model: torch.nn.Module, cfg: Config, device: str, lr: float = 1e-3) -> None:
        self.name, self.lib, self.cfg, self.device = name, lib, cfg, device
        self.model = model.to(device)
        if lib == "glowflow":  # what glowflow.train uses: Adam with the fused (single-kernel) implementation
            from glowflow.training.optim import make_optimizer

            self.optimizer = make_optimizer("adam", self.model.parameters(), lr)
        else:  # what normflows' examples use; plain Adam for the ports too
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.params = count_parameters(self.model)

    # objective: per-example bits/dim of integer images k (dequantized inside, same formula for every library)
    def objective(self, k: torch.Tensor) -> torch.Tensor:
        if self.lib == "glowflow":
            return self.model(k)
        if self.lib == "normflows":
            return normflows_bits_per_dim(self.model, k, self.cfg.num_bins)
        return self.model.objective(k)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if self.lib == "normflows":
            return self.model.log_prob(x, None)
        return self.model.log_prob(x)

    def sample(self, n: int, temperature: float) -> torch.Tensor:
        if self.lib == "normflows":
            return self.model.sample(n, temperature=temperature)[0]
        return self.model.sample(n, temperature)

    @torch.no_grad()
    def initialize(self, k: torch.Tensor) -> None:
        """Data-dependent ActNorm initialisation on a separate batch (excluded from every measurement)."""
        self.model.train()
        self.objective(k)

    def train_step(self, k: torch.Tensor) -> float:
        loss = self.objective(k).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def train_flops(self, k: torch.Tensor) -> int:
        """FLOPs of one forward + backward of the training objective (FlopCounterMode)."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False, custom_mapping=fused_kernel_flop_formulas())
        with counter:
            loss = self.objective(k).mean()
            loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return int(counter.get_total_flops())

    def host_syncs_per_step(self, k: torch.Tensor) -> int:
        """Reads of a tensor back to the host (``aten._local_scalar_dense``, what ``.item()``, ``bool()``, ``float()``
        and ``.tolist()`` of a 0-dim tensor dispatch to) in one training step: for glowflow the trainer's own step
        (``glowflow.training.step.train_step``: objective, backward, gradient norm and clipping, finiteness guard,
        fused Adam); for the others objective + backward + Adam."""

        class Count(TorchDispatchMode):
            syncs = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
                    Count.syncs += 1
                return func(*args, **(kwargs or {}))

        params = [p for p in self.model.parameters() if p.requires_grad]
        with Count():
            if self.lib == "glowflow":
                from glowflow.training.step import train_step

                train_step(self.model, params, self.optimizer, k, None, grad_clip=50.0)
            else:
                loss = self.objective(k).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        return Count.syncs


class OpTimes(TorchDispatchMode):
    """Wall time and count of every operation dispatched while active, by overload (``torch.ops.aten.mm.default``,
    ...): ``times[func] = [calls, seconds]``. CPU operations are synchronous, so the clock brackets the kernel, and an
    operation's own inner calls (oneDNN beneath ``aten.convolution``) do not reach the mode again: each is timed
    once. ``profile_step.py`` and ``kernel_bound.py`` time with it instead of ``torch.profiler``, under which torch
    2.13's oneDNN calls ran about 2x slower (config M's training step: ``mkldnn._linear_pointwise`` 396 against
    198 ms) and the kernels looked slower in the step than they are."""

    def __init__(self) -> None:
        super().__init__()
        self.times: dict = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        start = time.perf_counter()
        out = func(*args, **kwargs)
        self.record(func, args, kwargs, out, time.perf_counter() - start)
        return out

    def record(self, func, args: tuple, kwargs: dict, out, seconds: float) -> None:
        """Account one call of ``func`` that took ``seconds`` (a subclass may record more of it)."""
        entry = self.times.setdefault(func, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds


KERNEL_OPS = {
    "aten.convolution": "convolution",
    "aten.convolution_backward": "convolution_backward",
    "mkldnn._convolution_pointwise": "_convolution_pointwise",
    "mkldnn._linear_pointwise": "_linear_pointwise",
    "aten.mm": "mm",
    "aten.addmm": "addmm",
    "aten.bmm": "bmm",
    "aten.baddbmm": "baddbmm",
    "aten.conv1d": "conv1d",
    "aten.conv2d": "conv2d",
    "aten.linear": "linear",
    "aten.matmul": "matmul",
}
"""The kernels of a pass, the convolutions and matrix products, by dispatcher op (overload packet name) -> the name
``FlopCounterMode`` counts that op under: what ``profile_step.py`` and ``kernel_bound.py`` set against the other
operations. Under ``torch.inference_mode`` (glowflow's evaluation and sampling) the composite ops (conv2d, linear,
matmul) reach a dispatcher mode themselves instead of as the ``aten.convolution`` / ``aten.addmm`` / ``aten.mm``
they run."""


def is_kernel(func) -> bool:
    """Whether the dispatcher op ``func`` is a convolution or matrix product (:data:`KERNEL_OPS`)."""
    return str(func.overloadpacket) in KERNEL_OPS


def fused_kernel_flop_formulas() -> dict:
    """FLOP formulas for the oneDNN fused-activation kernels glowflow calls directly (``mkldnn._convolution_pointwise``,
    ``mkldnn._linear_pointwise``), which ``FlopCounterMode`` does not know: the FLOPs of the plain convolution /
    matrix product (the activation is not counted, as for the plain kernels)."""
    from torch.utils.flop_counter import conv_flop_count

    def conv(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)

    def linear(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * math.prod(x_shape) * w_shape[0]

    ops = getattr(torch.ops, "mkldnn", None)
    if ops is None or not hasattr(ops, "_convolution_pointwise"):
        return {}
    return {ops._convolution_pointwise: conv, ops._linear_pointwise: linear}  # keyed by overload packet


def make_contender(
    lib: str,
    cfg: Config,
    device: str,
    precision: str = "fp32",
    memory: str = "standard",
    name: str | None = None,
    lr: float = 1e-3,
    peers: str | None = None,
) -> Contender:
    if lib == "glowflow":
        model = Glow(
            cfg.shape, cfg.levels, cfg.steps, cfg.hidden, num_bins=cfg.num_bins, precision=precision, memory=memory
        )
    elif precision != "fp32" or memory != "standard":
        raise ValueError(f"{lib} runs in float32 with standard backpropagation only")
    elif lib == "normflows":
        model = build_normflows_glow(cfg.shape, cfg.levels, cfg.steps, cfg.hidden)
    elif lib in PEERS:
        if peers is None:
            raise ValueError(f"{lib} needs --peers DIR (a directory with its checkout)")
        model = build_peer_glow(Path(peers), lib, cfg.shape, cfg.levels, cfg.steps, cfg.hidden)
    else:
        raise ValueError(f"unknown library {lib!r}; expected one of {LIBS}")
    return Contender(name or lib, lib, model, cfg, device, lr)


# ---------------------------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------------------------
def interleaved(
    fns: dict[str, Callable[[object], object]],
    make_input: Callable[[], object],
    warmup: int,
    rounds: int,
    device: str,
    clock: str = "wall",
) -> dict[str, list[float]]:
    """Warm each function up, then time ``rounds`` interleaved rounds: every round makes one fresh input
    (untimed) and runs every function on it once, in an order reversed from round to round. -> seconds per call.

    ``clock``: ``"wall"`` (``time.perf_counter``) or ``"cpu"`` (``time.process_time``, this process's CPU time: with
    one thread on a CPU it leaves out the time spent waiting for a core on a shared machine)."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    for fn in fns.values():
        for _ in range(warmup):
            fn(make_input())
        sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        inp = make_input()
        sync(device)
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = now()
            fns[name](inp)
            sync(device)
            times[name].append(now() - t0)
    return times


def matmul_fn(n: int, device: str) -> Callable[[object], object]:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)

    def run(_: object) -> None:
        torch.mm(a, b, out=out)

    return run


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def timing_summary(times: list[float], per_call_items: int) -> dict:
    m = median(times)
    return {"median_s": m, "min_s": min(times), "max_s": max(times), "n": len(times), "items_per_s": per_call_items / m}


def worker_compare(spec: dict) -> dict:
    """Config ``spec['config']``: training / evaluation / sampling speed of every contender, FLOPs, matmul rate.
    ``spec['passes']`` (default all three) picks among ``train`` (with the FLOPs, the host syncs and the matmul
    reference), ``eval`` and ``sample``: an inference-only worker runs no training step at all, so glibc's
    allocator meets the inference passes as in a process that only scores or samples."""
    passes = spec.get("passes", COMPARE_PASSES)
    cfg = Config(**{**spec["config"], "shape": tuple(spec["config"]["shape"])})
    st = Settings(**spec["settings"])
    device = spec["device"]
    torch.manual_seed(0)
    batches = Batches(cfg, device, Path(spec["mnist_dir"]))
    contenders = [make_contender(lib, cfg, device, peers=spec.get("peers")) for lib in spec.get("libs", ["glowflow"])]
    if spec.get("bf16"):
        contenders.append(make_contender("glowflow", cfg, device, precision="bf16", name="glowflow-bf16"))
    for c in contenders:
        c.initialize(batches.next())
    # evaluation and sampling run on the initialised weights: their speed does not depend on the values, and a few
    # steps at lr 1e-3 on random pixels can leave a port's sampler with a non-finite scale
    initial = {c.name: {k: v.clone() for k, v in c.model.state_dict().items()} for c in contenders}

    out: dict = {"config": asdict(cfg), "data": batches.note, "env": environment(device), "contenders": {}}
    for c in contenders:
        out["contenders"][c.name] = {"lib": c.lib, "params": c.params}

    if "train" in passes:
        compare_training(contenders, batches, st, device, spec.get("clock", "wall"), out)

    fp32 = [c for c in contenders if c.name in LIBS]
    for c in fp32:
        c.model.load_state_dict(initial[c.name])
        c.model.eval()
    if "eval" in passes:
        compare_evaluation(fp32, batches, st, device, spec.get("clock", "wall"), out)
    if "sample" in passes:
        compare_sampling(fp32, st, device, spec.get("clock", "wall"), out)

    # sanity: both objectives are bits/dim of the same data (untrained models: close to each other, not equal)
    with torch.no_grad():
        k = batches.next()
        for c in contenders:
            out["contenders"][c.name]["bpd_check"] = float(c.objective(k).mean())
    return out


def compare_training(contenders: list[Contender], batches: Batches, st: Settings, device: str, clock: str, out: dict):
    """FLOPs and host syncs of a training step, then the steps timed with the float32 matmul reference: into ``out``."""
    # FLOPs of one forward + backward (before timing: FlopCounterMode must not overlap the timed steps)
    flop_batch = batches.next()
    for c in contenders:
        out["contenders"][c.name]["train_flops"] = c.train_flops(flop_batch)
        out["contenders"][c.name]["host_syncs_per_step"] = c.host_syncs_per_step(batches.next())

    # training: forward + backward + optimiser step, plus the float32 matmul reference in the same rounds
    fns: dict[str, Callable[[object], object]] = {c.name: c.train_step for c in contenders}
    fns["matmul"] = matmul_fn(st.matmul_n, device)
    times = interleaved(fns, batches.next, st.warmup, st.rounds, device, clock)
    mm = timing_summary(times.pop("matmul"), 2 * st.matmul_n**3)
    out["matmul"] = {"n": st.matmul_n, "gflops": mm["items_per_s"] / 1e9, **mm}
    for c in contenders:
        r = timing_summary(times[c.name], c.cfg.batch)
        flops = out["contenders"][c.name]["train_flops"]
        r["gflops"] = flops / r["median_s"] / 1e9
        r["fraction_of_matmul"] = r["gflops"] / out["matmul"]["gflops"]
        out["contenders"][c.name]["train"] = r


def compare_evaluation(fp32: list[Contender], batches: Batches, st: Settings, device: str, clock: str, out: dict):
    """The evaluation pass timed (log-density without autograd, the same dequantized batch for every contender)."""

    def eval_fn(c: Contender) -> Callable[[object], object]:
        def run(x: object) -> None:
            with torch.no_grad():
                c.log_prob(x)

        return run

    def make_x() -> torch.Tensor:
        return dequantize(batches.next())

    times = interleaved({c.name: eval_fn(c) for c in fp32}, make_x, st.warmup, st.eval_rounds, device, clock)
    for c in fp32:
        out["contenders"][c.name]["eval"] = timing_summary(times[c.name], c.cfg.batch)


def compare_sampling(fp32: list[Contender], st: Settings, device: str, clock: str, out: dict):
    """The latency of SAMPLE_N samples at temperature TEMPERATURE."""

    def sample_fn(c: Contender) -> Callable[[object], object]:
        def run(_: object) -> None:
            with torch.no_grad():
                c.sample(SAMPLE_N, TEMPERATURE)

        return run

    times = interleaved({c.name: sample_fn(c) for c in fp32}, lambda: None, st.warmup, st.sample_rounds, device, clock)
    for c in fp32:
        out["contenders"][c.name]["sample"] = timing_summary(times[c.name], SAMPLE_N)


# ---------------------------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------------------------
def proc_status_kib() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0])
    return out


def reset_hwm() -> bool:
    """Reset the resident-set high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def saved_activation_bytes(c: Contender, k: torch.Tensor) -> int | None:
    """Bytes of the distinct non-parameter storages autograd saves for backward in one training forward
    (allocator-independent cross-check of the transient peak); None where the hooks cannot see them."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in c.model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            s = t.untyped_storage()
            if s.data_ptr() not in param_ptrs:
                seen[s.data_ptr()] = s.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = c.objective(k).mean()
        loss.backward()
    except RuntimeError:
        return None
    finally:
        c.optimizer.zero_grad(set_to_none=True)
    return sum(seen.values())


class MemoryMeter:
    """Current and peak memory in bytes: CPU resident set (VmRSS / VmHWM, the high-water mark reset through
    /proc/self/clear_refs) or CUDA allocated memory (memory_allocated / max_memory_allocated)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.method = (
            "torch.cuda.memory_allocated / max_memory_allocated" if device == "cuda" else "VmRSS / VmHWM (clear_refs)"
        )

    def current(self) -> int:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.memory_allocated()
        return proc_status_kib()["VmRSS"] * 1024

    def reset_peak(self) -> bool:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return True
        return reset_hwm()

    def peak(self) -> int:
        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return proc_status_kib()["VmHWM"] * 1024


def worker_memory(spec: dict) -> dict:
    """One case per process. Phases, each measured as growth of the current memory:

    1. post-build baseline: model and optimiser built, ActNorm initialised (no-grad forward on its own batch);
    2. runtime initialisation: one forward + backward whose gradients are then freed (one-time costs of the
       runtime - oneDNN primitives, autograd engine - that neither library controls);
    3. persistent training state: ``memory_warmup`` training steps (allocate gradients + Adam's moments);
    4. transient peak: the peak reset, then ``memory_steps`` training steps; peak minus the memory before them.
    """
    cfg = Config(**{**spec["config"], "shape": tuple(spec["config"]["shape"])})
    st = Settings(**spec["settings"])
    device = spec["device"]
    torch.manual_seed(0)
    batches = Batches(cfg, device, Path(spec["mnist_dir"]))
    c = make_contender(
        spec["lib"], cfg, device, spec.get("precision", "fp32"), spec.get("memory", "standard"), peers=spec.get("peers")
    )
    c.initialize(batches.next())
    ks = [batches.next() for _ in range(st.memory_warmup + st.memory_steps + 2)]
    meter = MemoryMeter(device)
    out: dict = {"lib": spec["lib"], "config": asdict(cfg), "memory_mode": spec.get("memory", "standard")}
    out.update(params=c.params, method=meter.method, glibc_tunables=os.environ.get("GLIBC_TUNABLES"))
    out["expected_persistent_mib"] = 3 * c.params * 4 / 2**20  # grads + Adam's two moments, float32

    base = meter.current()
    loss = c.objective(ks.pop()).mean()
    loss.backward()
    c.optimizer.zero_grad(set_to_none=True)
    del loss
    runtime = meter.current()
    for k in ks[: st.memory_warmup]:
        c.train_step(k)
    after = meter.current()
    out["peak_reset"] = meter.reset_peak()
    for k in ks[st.memory_warmup : -1]:
        c.train_step(k)
    peak = max(meter.peak(), after)
    mib = 2**20
    out["baseline_mib"] = base / mib
    out["runtime_init_mib"] = (runtime - base) / mib
    out["persistent_mib"] = (after - runtime) / mib
    # without a peak reset the high-water mark covers the whole process: only the total is an (upper) bound
    out["transient_mib"] = (peak - after) / mib if out["peak_reset"] else None
    out["peak_mib"] = (peak - base) / mib
    saved = saved_activation_bytes(c, ks[-1])
    out["saved_activations_mib"] = None if saved is None else saved / mib
    return out


# ---------------------------------------------------------------------------------------------------------------
# glowflow only: memory modes, data pipeline, scaling
# ---------------------------------------------------------------------------------------------------------------
def worker_memmodes(spec: dict) -> dict:
    """Training img/s of glowflow's memory modes at each depth in ``memmode_steps`` (config S otherwise)."""
    base = Config(**{**spec["config"], "shape": tuple(spec["config"]["shape"])})
    st = Settings(**spec["settings"])
    device = spec["device"]
    torch.manual_seed(0)
    batches = Batches(base, device, Path(spec["mnist_dir"]))
    contenders = []
    for k in st.memmode_steps:
        cfg = replace(base, steps=k)
        for mode in ("standard", "checkpoint", "invertible"):
            contenders.append(make_contender("glowflow", cfg, device, memory=mode, name=f"K={k} {mode}"))
    for c in contenders:
        c.initialize(batches.next())
    times = interleaved(
        {c.name: c.train_step for c in contenders},
        batches.next,
        st.warmup,
        st.memmode_rounds,
        device,
        spec.get("clock", "wall"),
    )
    return {c.name: {"steps": c.cfg.steps, **timing_summary(times[c.name], base.batch)} for c in contenders}


def worker_pipeline(spec: dict) -> dict:
    """img/s of the input pipeline: in-memory uint8 data set -> random batch indices -> gather -> dequantize."""
    cfg = Config(**{**spec["config"], "shape": tuple(spec["config"]["shape"])})
    st = Settings(**spec["settings"])
    device = spec["device"]
    batches = Batches(cfg, device, Path(spec["mnist_dir"]))
    if batches.images is None:  # an in-memory data set of the same size as MNIST's training split
        batches.images = torch.randint(0, 256, (60000, *cfg.shape), dtype=torch.uint8)
    n = len(batches.images)
    gen = torch.Generator().manual_seed(0)

    def one() -> torch.Tensor:
        idx = torch.randint(0, n, (cfg.batch,), generator=gen)
        return dequantize(batches.images[idx].to(device))

    for _ in range(5):
        one()
    times = []
    for _ in range(st.pipeline_batches):
        t0 = time.perf_counter()
        one()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"config": cfg.name, "data": batches.note, **timing_summary(times, cfg.batch)}


def worker_scaling(spec: dict) -> dict:
    """glowflow training-step cost against depth K (image size fixed) and image size (K fixed)."""
    base = Config(**{**spec["config"], "shape": tuple(spec["config"]["shape"])})
    st = Settings(**spec["settings"])
    device = spec["device"]
    torch.manual_seed(0)
    cases: dict[str, Config] = {}
    for k in st.scaling_steps:
        cases[f"K={k}, {base.shape[-1]}px"] = replace(base, steps=k)
    for size in st.scaling_sizes:
        cases.setdefault(f"K={base.steps}, {size}px", replace(base, shape=(base.shape[0], size, size)))
    out = {}
    contenders = {name: make_contender("glowflow", cfg, device, name=name) for name, cfg in cases.items()}
    sources = {name: Batches(cfg, device, Path(spec["mnist_dir"])) for name, cfg in cases.items()}
    for name, c in contenders.items():
        c.initialize(sources[name].next())
        out[name] = {"steps": c.cfg.steps, "size": c.cfg.shape[-1], "flops": c.train_flops(sources[name].next())}

    def step_fn(name: str) -> Callable[[object], object]:
        def run(ks: object) -> None:
            contenders[name].train_step(ks[name])  # type: ignore[index]

        return run

    fns = {name: step_fn(name) for name in contenders}

    def make_input() -> dict[str, torch.Tensor]:  # one fresh batch per contender and round, outside the timer
        return {name: src.next() for name, src in sources.items()}

    times = interleaved(fns, make_input, st.warmup, st.scaling_rounds, device, spec.get("clock", "wall"))
    for name in contenders:
        r = timing_summary(times[name], base.batch)
        out[name].update(r)
        out[name]["gflops"] = out[name]["flops"] / r["median_s"] / 1e9
    return out


def worker_profile(spec: dict) -> dict:
    """torch.profiler top ops (by self time) of ``profile_steps`` training steps of each library on a config."""
    from torch.profiler import ProfilerActivity, profile

    cfg = Config(**{**spec["config"], "shape": tuple(spec["config"]["shape"])})
    device = spec["device"]
    torch.manual_seed(0)
    batches = Batches(cfg, device, Path(spec["mnist_dir"]))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    sort_by = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    out = {}
    for lib in spec.get("libs", ["glowflow"]):
        c = make_contender(lib, cfg, device, peers=spec.get("peers"))
        c.initialize(batches.next())
        for _ in range(2):
            c.train_step(batches.next())
        ks = [batches.next() for _ in range(spec.get("profile_steps", 2))]
        sync(device)
        with profile(activities=activities) as prof:
            for k in ks:
                c.train_step(k)
            sync(device)
        out[lib] = prof.key_averages().table(sort_by=sort_by, row_limit=spec.get("rows", 10))
    return out


WORKERS = {
    "profile": worker_profile,
    "compare": worker_compare,
    "memory": worker_memory,
    "memmodes": worker_memmodes,
    "pipeline": worker_pipeline,
    "scaling": worker_scaling,
}


# ---------------------------------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------------------------------
def run_worker(spec: dict, tunables: str | None, in_process: bool) -> dict:
    """Run one case in a fresh process (this script with --worker) under ``GLIBC_TUNABLES=tunables`` (None: glibc's
    default allocator settings, ``GLIBC_TUNABLES`` removed from the environment)."""
    if in_process:
        return WORKERS[spec["kind"]](spec)
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec['kind']} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"worker {spec['kind']} printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(x: float | None, spec: str = ".3g") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return format(x, spec)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def check(value: float | None, op: str, target: float) -> str:
    if value is None:
        return "-"
    ok = value >= target if op == ">=" else value <= target
    return f"{op} {target:g}: {'yes' if ok else 'NO'}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=None, help="comma-separated among S, M, P (default S,M; +P on GPU)")
    parser.add_argument("--full", action="store_true", help="also run config P (the paper's CIFAR-10 model) on CPU")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--json", type=Path, default=None, help="write every result to this JSON file")
    parser.add_argument("--quick", action="store_true", help="tiny models and few repetitions (smoke test)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--rounds", type=int, default=None, help="measured rounds of the comparison (default 5)")
    parser.add_argument("--plot", type=Path, default=None, help="scaling plot (default benchmarks/scaling.png)")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler top ops (config S)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in every case")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time with the wall clock or with the process's CPU time (for a busy machine, with --threads 1)",
    )
    parser.add_argument("--mnist-dir", type=Path, default=DEFAULT_MNIST_DIR)
    parser.add_argument("--no-normflows", action="store_true", help="leave normflows out")
    parser.add_argument(
        "--peers",
        type=Path,
        default=None,
        help="directory with checkouts of the original ports (glow-pytorch = rosinality, Glow-PyTorch = y0ast), "
        "benchmarked beside glowflow and normflows; see benchmarks/_peers.py",
    )
    parser.add_argument(
        "--timing-allocator",
        choices=("tuned", "default"),
        default="tuned",
        help="glibc allocator settings of the timing cases: tuned (TIMING_TUNABLES, or GLIBC_TUNABLES when set) or "
        "default (glibc's own, what users run: large buffers unmapped and paged in again between passes)",
    )
    parser.add_argument("--in-process", action="store_true", help="run the cases in this process (tests only)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        spec = json.loads(args.worker)
        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        result = WORKERS[spec["kind"]](spec)
        print("RESULT " + json.dumps(result), flush=True)
        return result

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    configs_table = QUICK_CONFIGS if args.quick else CONFIGS
    settings = QUICK if args.quick else Settings()
    if args.rounds:
        settings = replace(settings, rounds=args.rounds)
    names = args.configs.split(",") if args.configs else ["S", "M"] + (["P"] if args.full or device == "cuda" else [])
    sections = [s for s in args.sections.split(",") if s]
    for s in sections:
        if s not in SECTIONS:
            parser.error(f"unknown section {s!r}; choose from {SECTIONS}")
    for n in names:
        if n not in configs_table:
            parser.error(f"unknown config {n!r}; choose from {tuple(configs_table)}")
    with_nf = _nf is not None and not args.no_normflows
    peers = [p for p in PEERS if args.peers is not None and (args.peers / PEERS[p][0]).is_dir()]
    if args.peers is not None and not peers:
        parser.error(f"--peers {args.peers}: no checkout of {', '.join(d for d, _ in PEERS.values())} there")
    libs = ["glowflow"] + (["normflows"] if with_nf else []) + peers
    timing_tunables = os.environ.get("GLIBC_TUNABLES") or TIMING_TUNABLES
    if args.timing_allocator == "default":
        timing_tunables = None
    plot_path = args.plot if args.plot is not None else (None if args.quick else HERE / "scaling.png")

    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)  # the cases run with it; also reported in the header
    common = {"device": device, "settings": asdict(settings), "mnist_dir": str(args.mnist_dir), "threads": args.threads}
    common["peers"] = None if args.peers is None else str(args.peers)
    common["clock"] = args.clock
    results: dict = {"env": environment(device), "settings": asdict(settings), "quick": args.quick, "configs": {}}
    results["in_process"] = args.in_process
    results["env"]["timing_tunables"] = timing_tunables
    results["libs"] = libs
    results["clock"] = args.clock
    results["env"]["peers"] = {p: peer_commit(args.peers, p) for p in peers}
    results["mismatches"] = list(MISMATCHES) + [m for m in PEER_MISMATCHES if m.split(":")[0] in peers]
    t_start = time.time()

    for n in names:
        cfg = configs_table[n]
        res: dict = {"config": asdict(cfg)}
        results["configs"][n] = res
        if "compare" in sections:
            log(f"[{time.time() - t_start:6.0f}s] compare {n}: {cfg.describe()}")
            spec = {**common, "kind": "compare", "config": asdict(cfg), "libs": libs, "bf16": True}
            if timing_tunables is None:  # as users run: each library scores and samples in a process of its own
                alone = [{**spec, "libs": [lib], "bf16": False, "passes": ["eval", "sample"]} for lib in libs]
                inference = [run_worker(one, None, args.in_process) for one in alone]
                res["compare"] = run_worker({**spec, "passes": ["train"]}, None, args.in_process)
                for name, c in (item for result in inference for item in result["contenders"].items()):
                    res["compare"]["contenders"][name].update({k: c[k] for k in ("eval", "sample") if k in c})
                res["compare"]["inference_process"] = "own, one per library"
            else:
                res["compare"] = run_worker(spec, timing_tunables, args.in_process)
        if "memory" in sections:
            # "memory": allocator settings under which RSS follows live memory (the split into phases is exact);
            # "memory_default": glibc's default settings, what users run (CPU only)
            res["memory"], res["memory_default"] = {}, {}
            for lib in libs:
                log(f"[{time.time() - t_start:6.0f}s] memory {n} {lib}")
                spec = {**common, "kind": "memory", "config": asdict(cfg), "lib": lib}
                tunables = MEMORY_TUNABLES if device == "cpu" else timing_tunables
                res["memory"][lib] = run_worker(spec, tunables, args.in_process)
                if device == "cpu":
                    res["memory_default"][lib] = run_worker(spec, None, args.in_process)

    base = configs_table["S"]
    if "memmodes" in sections:
        results["memmodes"] = {"memory": {}}
        for k in settings.memmode_steps:
            for mode in ("standard", "checkpoint", "invertible"):
                log(f"[{time.time() - t_start:6.0f}s] memory modes: K={k} {mode} (memory)")
                spec = {**common, "kind": "memory", "config": asdict(replace(base, steps=k)), "lib": "glowflow"}
                spec["memory"] = mode
                tunables = MEMORY_TUNABLES if device == "cpu" else timing_tunables
                results["memmodes"]["memory"][f"K={k} {mode}"] = run_worker(spec, tunables, args.in_process)
        log(f"[{time.time() - t_start:6.0f}s] memory modes (speed)")
        spec = {**common, "kind": "memmodes", "config": asdict(base)}
        results["memmodes"]["speed"] = run_worker(spec, timing_tunables, args.in_process)
    if "pipeline" in sections:
        results["pipeline"] = {}
        for n in names:
            log(f"[{time.time() - t_start:6.0f}s] data pipeline {n}")
            spec = {**common, "kind": "pipeline", "config": asdict(configs_table[n])}
            results["pipeline"][n] = run_worker(spec, timing_tunables, args.in_process)
    if "scaling" in sections:
        log(f"[{time.time() - t_start:6.0f}s] scaling (glowflow, config S otherwise)")
        spec = {**common, "kind": "scaling", "config": asdict(base)}
        results["scaling"] = run_worker(spec, timing_tunables, args.in_process)
    if args.profile:
        log(f"[{time.time() - t_start:6.0f}s] profile (config S)")
        spec = {**common, "kind": "profile", "config": asdict(base), "libs": libs}
        results["profile"] = run_worker(spec, timing_tunables, args.in_process)
    results["wall_s"] = time.time() - t_start
    torch.set_num_threads(threads_before)

    print(report(results, configs_table))
    if "scaling" in results and plot_path is not None:
        env = results["env"]
        caption = (
            f"{env['cpu']}, {env['threads']} threads, torch {env['torch']}, glowflow at {env['git']}, "
            + time.strftime("%Y-%m-%d")
        )
        plot_scaling(results["scaling"], base, plot_path, caption)
        print(f"\nscaling plot: {plot_path}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"results: {args.json}")
    return results


# ---------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------
TARGETS = {
    "train": (">=", 1.5),  # glowflow / fastest peer, float32
    "eval": (">=", 1.5),
    "sample": ("<=", 0.6),  # latency
    "bf16": (">=", 3.0),  # glowflow bf16 / fastest peer float32, on hardware with native bf16
    "memory": ("<=", 0.6),  # training peak RSS above the post-build baseline, default allocator, / leanest peer
    "flop_rate": {"S": 0.45, "M": 0.6},  # training GFLOP/s / float32 matmul GFLOP/s
    "syncs": ("<=", 0),  # host synchronisations inside glowflow's training step
}
"""The targets of glowflow issue 14, checked in the report (ratios against the best of the other libraries)."""


def best_peer(values: dict[str, float | None], higher_is_better: bool) -> tuple[str | None, float | None]:
    """The best library other than glowflow by ``values`` (fastest / leanest) and its value."""
    peers = {lib: v for lib, v in values.items() if lib != "glowflow" and v is not None}
    if not peers:
        return None, None
    lib = (max if higher_is_better else min)(peers, key=peers.get)
    return lib, peers[lib]


def compare_tables(results: dict, configs_table: dict[str, Config]) -> list[str]:
    """The comparison table (one column per library, glowflow against the best other library) and its notes."""
    libs = results.get("libs", ["glowflow"])
    env = results["env"]
    header = ["config", "metric", *libs, "glowflow / best other", "target"]
    rows: list[list[str]] = []
    notes: list[str] = []

    def row(n: str, label: str, values: dict, higher: bool, target: tuple | None = None, spec: str = ".3g") -> None:
        peer, pv = best_peer(values, higher)
        r = ratio(values.get("glowflow"), pv)
        cells = [fmt(values.get(lib), spec) for lib in libs]
        rows.append([n, label, *cells, f"{fmt(r)} ({peer})" if peer else "-", check(r, *target) if target else ""])

    for n, res in results["configs"].items():
        cfg = configs_table[n]
        cmp_ = res.get("compare")
        if cmp_:
            notes.append(f"{n} = {cfg.describe()}; data: {cmp_['data']}")
            cs = cmp_["contenders"]

            def get(*keys, lib_map=cs):
                out = {}
                for lib in libs:
                    v = lib_map.get(lib)
                    for k in keys:
                        v = v.get(k) if isinstance(v, dict) else None
                    out[lib] = v
                return out

            params = get("params")
            rows.append([n, "parameters", *[f"{params[lib]:,}" if params[lib] else "-" for lib in libs], "", ""])
            flops = {lib: (v / cfg.batch / 1e9 if v else None) for lib, v in get("train_flops").items()}
            row(n, "GFLOP / image (fwd + bwd)", flops, True)
            row(n, "train img/s (fp32)", get("train", "items_per_s"), True, TARGETS["train"])
            if "glowflow-bf16" in cs:
                bf16 = {**get("train", "items_per_s"), "glowflow": cs["glowflow-bf16"]["train"]["items_per_s"]}
                native = "native bf16" if env.get("avx512_bf16") or env["device"] == "cuda" else "bf16 EMULATED"
                row(n, f"train img/s, glowflow bf16 ({native}) vs fp32", bf16, True, TARGETS["bf16"])
            row(n, "eval img/s (log_prob, no grad)", get("eval", "items_per_s"), True, TARGETS["eval"])
            ms = {lib: (v * 1e3 if v else None) for lib, v in get("sample", "median_s").items()}
            row(n, f"sample {SAMPLE_N} at T={TEMPERATURE} (ms)", ms, False, TARGETS["sample"])
            frac = get("train", "fraction_of_matmul")
            gflops = get("train", "gflops")
            target = TARGETS["flop_rate"].get(n)
            cells = [f"{gflops[lib]:.1f} = {100 * frac[lib]:.0f}%" if frac[lib] else "-" for lib in libs]
            rows.append(
                [
                    n,
                    f"train GFLOP/s as % of fp32 matmul ({cmp_['matmul']['gflops']:.1f} GFLOP/s)",
                    *cells,
                    "",
                    check(frac["glowflow"], ">=", target) if target else "",
                ]
            )
            syncs = get("host_syncs_per_step")
            rows.append([n, "host syncs per training step", *[fmt(syncs[lib], "d") for lib in libs], "", ""])
            rows[-1][-1] = check(syncs["glowflow"], *TARGETS["syncs"])
        mem_default, mem = res.get("memory_default", {}), res.get("memory", {})
        if mem_default:
            values = {lib: mem_default.get(lib, {}).get("peak_mib") for lib in libs}
            row(n, "train peak RSS above baseline, default allocator (MiB)", values, False, TARGETS["memory"], ".1f")
        if mem:
            for key, label in (
                ("peak_mib", "train peak RSS above baseline, precise allocator (MiB)"),
                ("runtime_init_mib", "  of which runtime one-time init (MiB)"),
                ("persistent_mib", "  of which persistent: grads + Adam state (MiB)"),
                ("transient_mib", "  of which transient peak of a step (MiB)"),
                ("saved_activations_mib", "  autograd-saved activations, cross-check (MiB)"),
            ):
                row(n, label, {lib: mem.get(lib, {}).get(key) for lib in libs}, False, None, ".1f")
    if not rows:
        return []
    out = [table(header, rows), ""]
    out += [f"- {x}" for x in notes]
    out.append(
        "- same objective for all: bits/dim of the integer images, uniform dequantization x = (k + u)/256 - 0.5, "
        "(-log p(x) + D log 256) / (D log 2); glowflow through model(k), the others through their own log-density "
        "of the batch dequantized the same way; Adam, lr 1e-3 (glowflow's fused Adam, plain Adam for the others); "
        "ActNorm initialised on a separate batch; memory rows: one fresh process per case (see benchmarks/README.md)"
    )
    out.append(
        "- ratios: glowflow against the best other library of the row (fastest, or leanest); targets of glowflow "
        "issue 14; host syncs: reads back to the host (aten._local_scalar_dense) in one training step, glowflow's "
        "through its trainer's train_step"
    )
    out.append("- what cannot be matched:")
    out += [f"  - {x}" for x in results["mismatches"]]
    return out


def report(results: dict, configs_table: dict[str, Config]) -> str:
    env = results["env"]
    out = []
    libs = results.get("libs", ["glowflow"])
    versions = {"normflows": env["normflows"], **env.get("peers", {})}
    title = "glowflow vs " + (", ".join(f"{lib} {versions.get(lib) or ''}".strip() for lib in libs[1:]) or "nothing")
    out.append(f"## {title}" + ("  [--quick: tiny settings, numbers meaningless]" if results["quick"] else ""))
    out.append("")
    out.append(
        f"device {env['device']}"
        + (f" ({env.get('gpu')})" if env["device"] == "cuda" else "")
        + f"; CPU {env['cpu']} ({env['cpu_count']} logical cores, avx512_bf16: "
        + f"{'yes' if env['avx512_bf16'] else 'no'}); torch {env['torch']}, {env['threads']} threads "
        + f"(torch.get_num_threads()); python {env['python']}; glowflow at {env['git']}"
    )
    timing = env["timing_tunables"] or (
        "unset (glibc's default allocator; evaluation and sampling timed in a fresh process that trains nothing, one "
        "per library, as a scoring or sampling run is)"
    )
    out.append(f"GLIBC_TUNABLES timing cases: {timing}")
    out.append(
        f'GLIBC_TUNABLES memory cases: {env["memory_tunables"]} ("precise" rows), and unset (glibc\'s default '
        'allocator, "default allocator" rows)'
    )
    st = results["settings"]
    out.append(
        f"medians over {st['rounds']} interleaved training rounds ({st['eval_rounds']} eval, {st['sample_rounds']} "
        f"sampling) after {st['warmup']} warm-up steps per model; one fresh batch per round; "
        + ("timed by the process's CPU time (--clock cpu); " if results.get("clock") == "cpu" else "wall-clock times; ")
        + ("all cases in this process (--in-process)" if results.get("in_process") else "every case in a fresh process")
    )
    out.append("")

    out += compare_tables(results, configs_table)

    if "memmodes" in results:
        mm = results["memmodes"]
        out.append("")
        out.append("### glowflow memory modes (config S, varying K)")
        out.append("")
        rows = []
        ks = sorted({v["steps"] for v in mm["speed"].values()})
        for k in ks:
            std_mem = mm["memory"][f"K={k} standard"]["peak_mib"]
            std_speed = mm["speed"][f"K={k} standard"]["items_per_s"]
            for mode in ("standard", "checkpoint", "invertible"):
                m, s = mm["memory"][f"K={k} {mode}"], mm["speed"][f"K={k} {mode}"]
                rows.append(
                    [
                        f"K={k}",
                        mode,
                        fmt(m["peak_mib"], ".1f"),
                        fmt(m["persistent_mib"], ".1f"),
                        fmt(m["transient_mib"], ".1f"),
                        fmt(ratio(m["peak_mib"], std_mem)),
                        fmt(s["items_per_s"]),
                        fmt(ratio(std_speed, s["items_per_s"])),
                    ]
                )
        out.append(
            table(
                [
                    "depth",
                    "mode",
                    "peak MiB",
                    "persistent MiB",
                    "transient MiB",
                    "peak / standard",
                    "train img/s",
                    "time / standard",
                ],
                rows,
            )
        )
        if len(ks) >= 2:
            lo, hi = ks[0], ks[-1]
            inv_hi, inv_lo = mm["memory"][f"K={hi} invertible"], mm["memory"][f"K={lo} invertible"]
            std_hi = mm["memory"][f"K={hi} standard"]
            speed = mm["speed"]
            lines = [
                ("invertible peak, K={hi} / K={lo}", ratio(inv_hi["peak_mib"], inv_lo["peak_mib"]), "<=", 1.3),
                (
                    "invertible transient (activations), K={hi} / K={lo}",
                    ratio(inv_hi["transient_mib"], inv_lo["transient_mib"]),
                    "<=",
                    1.3,
                ),
                ("invertible / standard peak at K={hi}", ratio(inv_hi["peak_mib"], std_hi["peak_mib"]), "<=", 0.35),
                (
                    "invertible / standard transient at K={hi}",
                    ratio(inv_hi["transient_mib"], std_hi["transient_mib"]),
                    "<=",
                    0.35,
                ),
                (
                    "invertible step time / standard at K={hi}",
                    ratio(speed[f"K={hi} standard"]["items_per_s"], speed[f"K={hi} invertible"]["items_per_s"]),
                    "<=",
                    1.7,
                ),
            ]
            out.append("")
            for label, value, op, target in lines:
                out.append(f"- {label.format(hi=hi, lo=lo)}: {fmt(value)} ({check(value, op, target)})")
            out.append(
                "- peak = runtime init + persistent (grads + Adam state, which grow with the parameters, i.e. with K) "
                "+ transient; the transient is what activation storage controls"
            )

    if "pipeline" in results:
        out.append("")
        out.append("### data pipeline (in-memory uint8 -> random indices -> gather -> dequantize)")
        out.append("")
        rows = []
        for n, p in results["pipeline"].items():
            train = results["configs"].get(n, {}).get("compare", {}).get("contenders", {}).get("glowflow", {})
            t = train.get("train", {}).get("items_per_s")
            r = ratio(p["items_per_s"], t)
            data = "MNIST" if p["data"].startswith("MNIST train") else "random uint8"
            rows.append([n, data, fmt(p["items_per_s"], ".4g"), fmt(t), fmt(r, ".4g"), check(r, ">=", 10)])
        out.append(table(["config", "data", "pipeline img/s", "glowflow train img/s", "ratio", "target"], rows))

    if "scaling" in results:
        out.append("")
        out.append("### glowflow training-step cost vs depth and image size (config S otherwise)")
        out.append("")
        sc = results["scaling"]
        ref = sc.get(f"K={configs_table['S'].steps}, {configs_table['S'].shape[-1]}px")
        rows = []
        for r in sc.values():
            rows.append(
                [
                    str(r["steps"]),
                    str(r["size"]),
                    fmt(r["median_s"] * 1e3, ".4g"),
                    fmt(ratio(r["median_s"], ref["median_s"]) if ref else None),
                    fmt(r["flops"] / 1e9, ".4g"),
                    fmt(ratio(r["flops"], ref["flops"]) if ref else None),
                    fmt(r["gflops"], ".3g"),
                ]
            )
        out.append(
            table(
                ["K", "image size", "ms / step", "time / reference", "GFLOP / step", "FLOPs / reference", "GFLOP/s"],
                rows,
            )
        )
    for lib, text in results.get("profile", {}).items():
        out.append("")
        out.append(f"### torch.profiler, {lib}, config S, training steps (top ops by self time)")
        out.append("")
        out.append("```")
        out.append(text.strip())
        out.append("```")
    out.append("")
    out.append(f"total wall time {results['wall_s']:.0f} s")
    return "\n".join(out)


def plot_scaling(sc: dict, base: Config, path: Path, caption: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    by_k = sorted((r for r in sc.values() if r["size"] == base.shape[-1]), key=lambda r: r["steps"])
    by_size = sorted((r for r in sc.values() if r["steps"] == base.steps), key=lambda r: r["size"])
    for ax, rows, key, xlabel in (
        (axes[0], by_k, "steps", f"steps of flow per level K ({base.shape[-1]}x{base.shape[-1]} images)"),
        (axes[1], by_size, "size", f"image size (K={base.steps})"),
    ):
        xs = [r[key] for r in rows]
        ys = [r["median_s"] * 1e3 for r in rows]
        ax.plot(xs, ys, "o-", label="measured ms / step")
        anchor = next((i for i, r in enumerate(rows) if r["steps"] == base.steps and r["size"] == base.shape[-1]), 0)
        if rows:  # proportional to FLOPs, anchored at the base config
            f0, y0 = rows[anchor]["flops"], ys[anchor]
            ax.plot(xs, [y0 * r["flops"] / f0 for r in rows], "--", color="grey", label="proportional to FLOPs")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training step (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(
        f"glowflow training step, {base.shape[0]} channels, L={base.levels}, width {base.hidden}, batch {base.batch}"
    )
    fig.text(0.5, 0.01, caption, ha="center", fontsize=8, color="grey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
