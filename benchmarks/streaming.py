"""The streaming input path, measured: how fast the readers deliver training batches, against how fast the presets
train, and how much resident memory a run over a large memory-mapped array holds.

    python benchmarks/streaming.py                       # all sections (~8 min on 2 cores; writes ~4.5 GB, deleted)
    python benchmarks/streaming.py --rss-gb 0 --json out.json
    python benchmarks/streaming.py --sections run-memory # only the training runs' resident memory
    python benchmarks/streaming.py --quick               # tiny sizes, every code path (~1 min)

Sections (see benchmarks/README.md for the results and how to read them):

* readers: images/s of ``TrainBatches.next()`` (batch 64, random indices with replacement, as in training) with 0,
  1 and 2 worker processes, for a PNG folder, tar shards of the same PNGs and a ``.npy`` array, at MNIST size
  (1x28x28: real MNIST images when ``--mnist-dir`` holds them) and CIFAR size (3x32x32: uniform random pixels, the
  worst case for PNG: incompressible), plus a ~4 GB array (``--rss-gb``) at CIFAR size. Each case: the first 3
  batches (worker start-up) untimed, then batches for at least ``--seconds``. The files were just written, so they
  are read from the page cache (a cold disk adds its random-read latency per batch).
* tar index: members per second of building the shard index (tar headers only).
* training: images/s of a training step (forward, backward, fused Adam) of the ``digits``, ``mnist`` and
  ``cifar10`` presets' models at their batch size, on this machine (median of ``--train-steps`` steps after one).
* memory: resident memory of iterating ``--rss-batches`` training batches, each case in a fresh process: an
  in-memory set of 10,000 CIFAR-size images, the same as a ``.npy`` read by ``ArraySource``, the ~4 GB array by
  ``ArraySource`` (0 and 2 workers), and, for contrast, the ~4 GB array indexed as an ``np.memmap``. VmRSS after
  setup and VmHWM (peak) of the main process; with workers, the summed proportional set size (PSS) of the main
  process and its workers, sampled every 100 batches.
* run-memory: resident memory of whole training runs (``glowflow.train``: ``--run-steps`` steps of a small Glow,
  L=2 K=2 width 32, batch 64, evaluations at the start and the end on 1,000 test images, final samples and
  checkpoint), each in a fresh process: the 10,000 CIFAR-size images as arrays in memory (the in-memory path), the
  same 10,000 as a ``.npy`` read batch by batch (``input="stream"``), and the ~4 GB array read batch by batch with
  0 and 2 reader processes. VmRSS before ``train`` (the arrays of the in-memory case loaded) and VmHWM (peak) at
  the end; with workers, the peak summed PSS of the process tree, sampled every 50 steps.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(HERE), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

from glowflow.data.arrays import ArraySource  # noqa: E402
from glowflow.data.image_files import ImageFolderSource  # noqa: E402
from glowflow.data.shards import TarShardSource, index_shard  # noqa: E402
from glowflow.data.sources import TensorSource  # noqa: E402
from glowflow.data.streaming import TrainBatches  # noqa: E402

BATCH = 64
WORKERS = (0, 1, 2)
SIZES = {"MNIST-size 1x28x28": (1, 28), "CIFAR-size 3x32x32": (3, 32)}
MEMORY_CASES = {
    "memory": "in-memory tensor of 10,000 CIFAR-size images (TensorSource)",
    "pread-small": "the same 10,000 as a .npy (ArraySource)",
    "pread-large": "the large .npy (ArraySource)",
    "pread-large-workers": "the large .npy (ArraySource), 2 workers",
    "memmap": "the large .npy as an np.memmap, fancy-indexed (the pitfall)",
}
PRESET_SHAPES = {"digits": ((1, 8, 8), 17), "mnist": ((1, 28, 28), 256), "cifar10": ((3, 32, 32), 256)}
RUN_CASES = {
    "run-memory": "10,000 CIFAR-size images as arrays in memory (the in-memory path)",
    "run-stream-small": "the same 10,000 as a .npy, read batch by batch",
    "run-stream-large": "the large .npy, read batch by batch",
    "run-stream-large-workers": "the large .npy, read batch by batch, 2 reader processes",
}
RUN_MODEL = dict(levels=2, steps=2, hidden=32, batch_size=64, init_batch_size=256, warmup=50, eval_every=0,
                 eval_samples=1, eval_batch_size=250, sample_every=0, sample_n=16, temperatures=[0.7],
                 checkpoint_every=0, log_every=50, progress=False, threads=1, preset="none")  # fmt: skip
SECTIONS = ("readers", "training", "memory", "run-memory")


# ---- data ----------------------------------------------------------------------------------------------------
def images_for(channels: int, size: int, n: int, mnist_dir: Path) -> tuple[np.ndarray, str]:
    """uint8 (n, C, size, size): MNIST training images for 1x28x28 when available, else uniform random pixels."""
    if (channels, size) == (1, 28):
        from glowflow.data import load_dataset
        from glowflow.errors import DataError

        try:
            data = load_dataset("mnist", mnist_dir, "train").data.numpy()
            reps = -(-n // len(data))
            return np.concatenate([data] * reps)[:n], f"MNIST train images from {mnist_dir}"
        except (DataError, OSError):
            pass
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8), "uniform random pixels"


def png(chw: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0)).save(buf, format="PNG")
    return buf.getvalue()


def write_files(x: np.ndarray, root: Path, per_shard: int = 1000) -> None:
    """``root/x.npy``, ``root/png/<i>.png`` and ``root/shards/shard-<k>.tar`` (WebDataset layout)."""
    (root / "png").mkdir(parents=True)
    (root / "shards").mkdir()
    np.save(root / "x.npy", x)
    encoded = [png(chw) for chw in x]
    for i, data in enumerate(encoded):
        (root / "png" / f"{i:07d}.png").write_bytes(data)
    for k, start in enumerate(range(0, len(x), per_shard)):
        with tarfile.open(root / "shards" / f"shard-{k:06d}.tar", "w") as tar:
            for i in range(start, min(len(x), start + per_shard)):
                info = tarfile.TarInfo(f"{i:07d}.png")
                info.size = len(encoded[i])
                tar.addfile(info, io.BytesIO(encoded[i]))


def write_large_array(path: Path, gib: float, shape: tuple[int, ...]) -> int:
    """A ``.npy`` of about ``gib`` GiB of uint8 images (a 64 MiB random block repeated); returns the count."""
    per = int(np.prod(shape))
    n = int(gib * 2**30) // per
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *shape))
    block = np.random.default_rng(1).integers(0, 256, (max(1, 2**26 // per), *shape), dtype=np.uint8)
    for start in range(0, n, len(block)):
        stop = min(n, start + len(block))
        out[start:stop] = block[: stop - start]
    out.flush()
    del out
    return n


# ---- measurements --------------------------------------------------------------------------------------------
def reader_rate(source, workers: int, seconds: float) -> float:
    """Images/s of TrainBatches.next() after 3 untimed batches (worker start-up), over at least ``seconds``."""
    with TrainBatches(source, BATCH, BATCH, seed=0, workers=workers, prefetch=4) as batches:
        batches.init_batch()
        for _ in range(3):
            batches.next()
        n, start = 0, time.perf_counter()
        while n < 20 or time.perf_counter() - start < seconds:
            batches.next()
            n += 1
        return n * BATCH / (time.perf_counter() - start)


def index_rate(shards: Path) -> float:
    paths = sorted(shards.glob("*.tar"))
    start = time.perf_counter()
    members = sum(len(index_shard(p)[0]) for p in paths)
    return members / (time.perf_counter() - start)


def train_rate(preset: str, steps: int, batch: int | None, threads_override: int | None) -> dict:
    """Images/s of training steps of a preset's model (median over ``steps`` after one warm-up step), at the
    preset's batch size and thread count unless ``batch`` / ``threads_override`` say otherwise."""
    from glowflow.models import Glow
    from glowflow.training.config import resolve_config
    from glowflow.training.loop import make_optimizer
    from glowflow.training.model import model_precision

    cfg = resolve_config(preset=preset)
    shape, bins = PRESET_SHAPES[preset]
    b = batch or cfg.batch_size
    threads = torch.get_num_threads()
    if threads_override or cfg.threads:
        torch.set_num_threads(threads_override or cfg.threads)
    try:
        torch.manual_seed(0)
        model = Glow(
            shape, levels=cfg.levels, steps=cfg.steps, hidden=cfg.hidden, coupling=cfg.coupling,
            permutation=cfg.permutation, conditioner=cfg.conditioner, mask=cfg.mask, num_bins=bins,
            dequantization=cfg.dequantization, precision=model_precision(cfg.precision, True, torch.device("cpu")),
            memory=cfg.memory,
        )  # fmt: skip
        opt = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
        with torch.no_grad():
            model(torch.randint(0, bins, (b, *shape), dtype=torch.uint8))  # ActNorm initialisation
        times = []
        for i in range(steps + 1):
            k = torch.randint(0, bins, (b, *shape), dtype=torch.uint8)
            t0 = time.perf_counter()
            loss = model(k).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i:
                times.append(time.perf_counter() - t0)
        step = statistics.median(times)
        return {"preset": preset, "levels": cfg.levels, "steps": cfg.steps, "hidden": cfg.hidden, "batch": b,
                "threads": torch.get_num_threads(), "ms_per_step": 1000 * step, "img_per_s": b / step}  # fmt: skip
    finally:
        torch.set_num_threads(threads)


def status_kib(pid: int | str = "self") -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0])
    return out


def pss_kib(pid: int | str) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def tree_pss_kib() -> int:
    """PSS of this process and its children (the loader's workers)."""
    children = Path(f"/proc/self/task/{os.getpid()}/children").read_text().split()
    total = pss_kib("self")
    for c in children:
        try:
            total += pss_kib(c)
        except OSError:  # a worker that just exited
            pass
    return total


def rss_case(case: str, path: str, batches: int) -> dict:
    """One memory case, in this (fresh) process: see the module docstring."""
    workers = 2 if case.endswith("-workers") else 0
    if case == "memory":
        x = torch.from_numpy(np.load(path))
        source = TensorSource(x, None, 256)
    elif case.startswith("pread"):
        source = ArraySource(path)
    else:
        source = np.load(path, mmap_mode="r")
    before = status_kib()
    peak_tree = 0
    g = torch.Generator().manual_seed(0)
    if case == "memmap":
        for _ in range(batches):
            idx = torch.randint(0, len(source), (BATCH,), generator=g).numpy()
            _ = torch.from_numpy(np.ascontiguousarray(source[idx]))
    else:
        with TrainBatches(source, BATCH, BATCH, seed=0, workers=workers, prefetch=4) as tb:
            tb.init_batch()
            for i in range(batches):
                tb.next()
                if workers and i % 100 == 0:
                    peak_tree = max(peak_tree, tree_pss_kib())
    after = status_kib()
    return {"case": case, "examples": len(source), "rss_before_mib": before["VmRSS"] / 1024,
            "rss_after_mib": after["VmRSS"] / 1024, "peak_rss_mib": after["VmHWM"] / 1024,
            "peak_tree_pss_mib": peak_tree / 1024 if workers else None}  # fmt: skip


def run_case(case: str, path: str, test_path: str, steps: int, out: str) -> dict:
    """One training run of the run-memory section, in this (fresh) process: see the module docstring."""
    from glowflow.data.arrays import ArraySource
    from glowflow.training import train

    workers = 2 if case.endswith("-workers") else 0
    if case == "run-memory":
        data: dict = {"data": np.load(path), "test_data": np.load(test_path)}
    else:
        data = {"data": ArraySource(path), "test_data": ArraySource(test_path), "input": "stream"}
    before = status_kib()
    peak_tree = [0]

    def sample_pss(step: int, loss: torch.Tensor) -> torch.Tensor:
        if workers and (step == 1 or step % 50 == 0):
            peak_tree[0] = max(peak_tree[0], tree_pss_kib())
        return loss

    start = time.perf_counter()
    result = train(out=out, iters=steps, workers=workers, eval_size=1000, loss_hook=sample_pss, **data, **RUN_MODEL)
    seconds = time.perf_counter() - start
    after = status_kib()
    return {"case": case, "examples": len(data["data"]), "steps": result.step, "seconds": seconds,
            "test_bpd": result.metrics["test_bpd"], "rss_before_mib": before["VmRSS"] / 1024,
            "peak_rss_mib": after["VmHWM"] / 1024,
            "peak_tree_pss_mib": peak_tree[0] / 1024 if workers else None}  # fmt: skip


def fresh_process(args: list[str]) -> dict:
    """This script run with ``args`` in a fresh process; its last output line, as JSON."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_rss_case(case: str, path: Path, batches: int) -> dict:
    return fresh_process(["--rss-case", case, "--rss-path", str(path), "--rss-batches", str(batches)])


def run_run_case(case: str, path: Path, test_path: Path, steps: int, out: Path) -> dict:
    return fresh_process(["--run-case", case, "--rss-path", str(path), "--run-test", str(test_path),
                          "--run-steps", str(steps), "--run-out", str(out)])  # fmt: skip


# ---- report --------------------------------------------------------------------------------------------------
def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def fmt(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def report(res: dict) -> str:
    env = res["environment"]
    load = f"; load average {env['load_average_start']:.1f} at the start, {env['load_average_end']:.1f} at the end"
    out = [f"CPU {env['cpu']} ({env['cpu_count']} logical cores); torch {env['torch']}, python {env['python']}; "
           f"glowflow at {env['git']}; batch {BATCH}; files in the page cache{load}"]  # fmt: skip
    if res["readers"]:
        rows = [[r["data"], r["reader"], f"{r['examples']:,}"] + [fmt(r["img_per_s"][str(w)]) for w in WORKERS]
                for r in res["readers"]]  # fmt: skip
        out += ["", "#### readers: training batches per second x 64 (images/s)", "",
                table(["data", "reader", "examples"] + [f"{w} workers" for w in WORKERS], rows)]  # fmt: skip
    for note in res["notes"]:
        out.append(f"- {note}")
    if res.get("tar_index_members_per_s"):
        out.append(f"- tar index: {fmt(res['tar_index_members_per_s'])} members/s (headers only)")
    if res["training"]:
        rows = [[t["preset"], f"Glow L={t['levels']} K={t['steps']} width {t['hidden']}", str(t["batch"]),
                 str(t["threads"]), fmt(t["ms_per_step"]), fmt(t["img_per_s"])] for t in res["training"]]  # fmt: skip
        out += ["", "#### training rate of the presets' models on this machine", "",
                table(["preset", "model", "batch", "threads", "ms / step", "images/s"], rows)]  # fmt: skip
        if res["readers"]:
            slowest = min(min(r["img_per_s"].values()) for r in res["readers"])
            fastest = max(t["img_per_s"] for t in res["training"])
            out.append(f"- slowest reader case / fastest preset: {fmt(slowest)} / {fmt(fastest)} images/s = "
                       f"{slowest / fastest:.3g}x")  # fmt: skip
    if res["memory"]:
        rows = [[MEMORY_CASES[m["case"]], f"{m['examples']:,}", fmt(m["rss_before_mib"]), fmt(m["peak_rss_mib"]),
                 fmt(m["peak_tree_pss_mib"])] for m in res["memory"]]  # fmt: skip
        out += [
            "",
            f"#### resident memory over {res['rss_batches']:,} training batches (MiB)",
            "",
            table(["case", "examples", "RSS after setup", "peak RSS (VmHWM)", "peak PSS with workers"], rows),
        ]
        base = next(m for m in res["memory"] if m["case"] == "memory")["peak_rss_mib"]
        for m in res["memory"]:
            if m["case"] != "memory":
                change = m["peak_rss_mib"] - base
                out.append(f"- {MEMORY_CASES[m['case']]}: peak RSS {change:+.0f} MiB against the in-memory set")
    if res.get("runs"):
        rows = [[RUN_CASES[r["case"]], f"{r['examples']:,}", str(r["steps"]), fmt(1000 * r["seconds"] / r["steps"]),
                 f"{r['test_bpd']:.3f}", fmt(r["rss_before_mib"]), fmt(r["peak_rss_mib"]), fmt(r["peak_tree_pss_mib"])]
                for r in res["runs"]]  # fmt: skip
        out += ["", "#### resident memory of training runs (glowflow.train, MiB)", "",
                table(["run", "examples", "steps", "ms / step (all in)", "test bpd", "RSS before train",
                       "peak RSS (VmHWM)", "peak PSS with workers"], rows)]  # fmt: skip
        base = next(r for r in res["runs"] if r["case"] == "run-memory")["peak_rss_mib"]
        for r in res["runs"]:
            if r["case"] != "run-memory":
                out.append(f"- {RUN_CASES[r['case']]}: peak RSS {r['peak_rss_mib'] - base:+.0f} MiB against the "
                           "in-memory run")  # fmt: skip
    return "\n".join(out)


# ---- main ----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: every code path in seconds")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"which of {', '.join(SECTIONS)} to run")
    ap.add_argument("--png-images", type=int, default=5000, help="images in the PNG folder / tar shards")
    ap.add_argument("--npy-images", type=int, default=60000, help="images in the .npy array")
    ap.add_argument("--rss-gb", type=float, default=4.0, help="size of the large array in GiB (0: skip it)")
    ap.add_argument("--rss-batches", type=int, default=5000, help="training batches per memory case")
    ap.add_argument("--run-steps", type=int, default=300, help="training steps per run-memory case")
    ap.add_argument("--seconds", type=float, default=1.5, help="minimum timed seconds per reader case")
    ap.add_argument("--train-steps", type=int, default=3, help="timed training steps per preset (0: skip)")
    ap.add_argument("--presets", default="digits,mnist,cifar10")
    ap.add_argument("--train-batch", default="", help="batch sizes other than the presets', e.g. cifar10=16")
    ap.add_argument("--threads", type=int, default=None, help="training threads (default: the preset's / torch's)")
    ap.add_argument("--mnist-dir", type=Path, default=REPO / ".." / "shared" / "data" / "mnist")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the generated files (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None)
    for hidden in ("--rss-case", "--rss-path", "--run-case", "--run-test", "--run-out"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_case:
        print(json.dumps(rss_case(args.rss_case, args.rss_path, args.rss_batches)))
        return {}
    if args.run_case:
        print(json.dumps(run_case(args.run_case, args.rss_path, args.run_test, args.run_steps, args.run_out)))
        return {}
    sections = [x for x in args.sections.split(",") if x]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    from bench import cpu_model, git_state  # the environment line of bench.py's reports

    if args.quick:
        args.png_images, args.npy_images, args.rss_gb, args.rss_batches = 64, 256, 0.01, 50
        args.seconds, args.train_steps, args.presets, args.run_steps = 0.05, 1, "digits", 4
    root = Path(tempfile.mkdtemp(prefix="glowflow-streaming-", dir=args.dir))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # delete the generated files on SIGTERM too
    res: dict = {"environment": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                                 "python": platform.python_version(), "git": git_state(),
                                 "load_average_start": os.getloadavg()[0]},
                 "readers": [], "notes": [], "training": [], "memory": [], "runs": [],
                 "rss_batches": args.rss_batches}  # fmt: skip
    try:
        if "readers" in sections:
            for label, (c, s) in SIZES.items():
                x, what = images_for(c, s, max(args.png_images, args.npy_images), args.mnist_dir)
                folder = root / label.split()[0]
                write_files(x[: args.png_images], folder)
                np.save(folder / "all.npy", x[: args.npy_images])
                res["notes"].append(f"{label}: {what}")
                cases = [
                    ("PNG folder", ImageFolderSource(folder / "png")),
                    ("tar shards of the PNGs", TarShardSource(folder / "shards")),
                    (".npy (ArraySource)", ArraySource(folder / "all.npy")),
                ]
                if label.startswith("CIFAR"):
                    res["tar_index_members_per_s"] = index_rate(folder / "shards")
                for reader, source in cases:
                    rates = {str(w): reader_rate(source, w, args.seconds) for w in WORKERS}
                    res["readers"].append({"data": label, "reader": reader, "examples": len(source),
                                           "img_per_s": rates})  # fmt: skip
                    print(f"{label} {reader}: {rates}", file=sys.stderr)
        big, small, test = root / "large.npy", root / "small.npy", root / "test.npy"
        x, _ = images_for(3, 32, 11_000, args.mnist_dir)
        np.save(small, x[:10_000])
        np.save(test, x[10_000:])
        large = args.rss_gb > 0 and {"readers", "memory", "run-memory"} & set(sections)
        if large:
            n = write_large_array(big, args.rss_gb, (3, 32, 32))
        if large and "readers" in sections:
            source = ArraySource(big)
            rates = {str(w): reader_rate(source, w, args.seconds) for w in WORKERS}
            size = f"{big.stat().st_size / 2**30:.2f} GiB"
            res["readers"].append({"data": "CIFAR-size 3x32x32", "reader": f".npy of {size} (ArraySource)",
                                   "examples": n, "img_per_s": rates})  # fmt: skip
            print(f"large array: {rates}", file=sys.stderr)
        batches = {k: int(v) for k, v in (item.split("=") for item in args.train_batch.split(",") if item)}
        presets = [p for p in args.presets.split(",") if p] if args.train_steps and "training" in sections else []
        for preset in presets:
            res["training"].append(train_rate(preset, args.train_steps, batches.get(preset), args.threads))
            print(f"training {preset}: {res['training'][-1]}", file=sys.stderr)
        if "memory" in sections:
            cases = [("memory", small), ("pread-small", small)]
            if large:
                cases += [("pread-large", big), ("pread-large-workers", big), ("memmap", big)]
            for case, path in cases:
                res["memory"].append(run_rss_case(case, path, args.rss_batches))
                print(f"memory {case}: {res['memory'][-1]}", file=sys.stderr)
        if "run-memory" in sections:
            runs = [("run-memory", small), ("run-stream-small", small)]
            if large:
                runs += [("run-stream-large", big), ("run-stream-large-workers", big)]
            for case, path in runs:
                res["runs"].append(run_run_case(case, path, test, args.run_steps, root / "runs" / case))
                print(f"run {case}: {res['runs'][-1]}", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res["environment"]["load_average_end"] = os.getloadavg()[0]
    text = report(res)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
