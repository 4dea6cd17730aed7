"""Smoke tests for benchmarks/: every benchmark's code path on tiny settings, so the scripts cannot rot.

The normflows parts need the ``bench`` extra (``pip install -e '.[bench]'``); without it they are skipped, and the
benchmark scripts themselves fall back to glowflow only.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from pathlib import Path

import pytest
import torch

from glowflow import Glow
from glowflow.layers.conditioners import ZeroConv2d
from glowflow.layers.dequantization import bits_per_dim, to_continuous
from glowflow.layers.priors import Split
from glowflow.training import TrainConfig
from glowflow.training.optim import PackedAdam
from tests.helpers import load_script

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"

nfg = load_script("benchmarks", "_normflows_glow")
bench = load_script("benchmarks", "bench")
budget = load_script("benchmarks", "budget")
precision = load_script("benchmarks", "precision")
kernel_bound = load_script("benchmarks", "kernel_bound")
compile_bench = load_script("benchmarks", "compile")
profile_step = load_script("benchmarks", "profile_step")

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*torch.lu is deprecated:UserWarning"),  # inside normflows
    pytest.mark.filterwarnings("ignore:precision='bf16' on a CPU:RuntimeWarning"),  # bench.py measures bf16 anyway
]

needs_normflows = pytest.mark.skipif(
    nfg.nf is None, reason="normflows is not installed (the optional 'bench' extra: pip install -e '.[bench]')"
)


def test_objective_matches_glowflow_convention():
    k = torch.randint(0, 256, (3, 1, 4, 4))
    u = torch.rand(k.shape) * 0.999
    assert torch.allclose(nfg.dequantize(k, 256, u), to_continuous(k.float(), u, 256))
    log_p = torch.randn(3) * 10
    d = 16
    assert torch.allclose(nfg.bits_per_dim_from_log_prob(log_p, d, 256), bits_per_dim(log_p - d * math.log(256), d))


def split_convs(model: Glow) -> list[torch.nn.Module]:
    return [m.conv for m in model.modules() if isinstance(m, Split)]


@needs_normflows
@pytest.mark.parametrize(("shape", "levels"), [((3, 16, 16), 3), ((1, 32, 32), 2), ((1, 28, 28), 2)])
def test_normflows_glow_matches_architecture(shape, levels):
    steps, hidden = 2, 16
    g = Glow(shape, levels, steps, hidden)
    n = nfg.build_normflows_glow(shape, levels, steps, hidden)
    # the steps of flow have exactly the same parameters, up to glowflow's conditioner output gain (ZeroConv2d.logs);
    # the rest differs by design (learned conditional split priors vs unconditional per-element Gaussians)
    g_steps = sum(p.numel() for level in g.levels for p in level[1].parameters())
    g_gain = sum(m.logs.numel() for m in g.modules() if isinstance(m, ZeroConv2d) and m not in split_convs(g))
    n_steps = sum(p.numel() for m in n.modules() if isinstance(m, nfg.nf.flows.GlowBlock) for p in m.parameters())
    assert g_steps - g_gain == n_steps
    k = torch.randint(0, 256, (4, *shape))
    with torch.no_grad():
        nfg.normflows_bits_per_dim(n, k)  # ActNorm initialisation
    bpd = nfg.normflows_bits_per_dim(n, k)
    assert bpd.shape == (4,) and torch.isfinite(bpd).all()
    bpd.mean().backward()
    assert all(p.grad is not None for p in n.parameters() if p.requires_grad)
    with torch.no_grad():
        x, _ = n.sample(3, temperature=0.7)
        zs, _ = n.inverse_and_log_det(x)
    assert x.shape == (3, *shape)
    # the latents have the same shapes as glowflow's (normflows lists them coarsest first)
    assert sorted(tuple(z.shape[1:]) for z in zs) == sorted(g.latent_shapes)


def test_bench_quick_all_sections(tmp_path, capsys):
    out = tmp_path / "bench.json"
    png = tmp_path / "scaling.png"
    results = bench.main(["--quick", "--in-process", "--threads", "1", "--json", str(out), "--plot", str(png)])
    text = capsys.readouterr().out
    assert png.stat().st_size > 0
    saved = json.loads(out.read_text())
    assert set(saved["configs"]) == {"S", "M"}
    for name in ("S", "M"):
        cmp_ = saved["configs"][name]["compare"]["contenders"]
        g = cmp_["glowflow"]
        for key in ("train", "eval", "sample"):
            assert g[key]["items_per_s"] > 0
        assert g["train_flops"] > 0 and 0 < g["train"]["fraction_of_matmul"]
        assert saved["configs"][name]["memory"]["glowflow"]["saved_activations_mib"] > 0
        if nfg.nf is not None:
            assert cmp_["normflows"]["train"]["items_per_s"] > 0
            assert "normflows" in saved["configs"][name]["memory"]
    for name in ("S", "M"):
        cmp_ = saved["configs"][name]["compare"]["contenders"]
        assert "glowflow-bf16" in cmp_
        assert cmp_["glowflow"]["host_syncs_per_step"] == 0  # the trainer's step never reads back to the host
        assert saved["configs"][name]["memory_default"]["glowflow"]["peak_mib"] >= 0
    # the fused kernels' FLOPs are counted: glowflow does normflows' arithmetic plus its conditional split priors
    # and the recomputed first conv of each step (16 % more at these tiny widths, 7 % on config S)
    if nfg.nf is not None:
        g, n = (saved["configs"]["S"]["compare"]["contenders"][lib]["train_flops"] for lib in ("glowflow", "normflows"))
        assert 1.0 < g / n < 1.3
    assert len(saved["memmodes"]["memory"]) == 6 and len(saved["memmodes"]["speed"]) == 6
    assert saved["pipeline"]["S"]["items_per_s"] > 0
    assert len(saved["scaling"]) == 3
    assert "train img/s (fp32)" in text and "memory modes" in text and "scaling" in text
    assert "default allocator" in text and "host syncs per training step" in text
    assert results["env"]["threads"] == 1


@pytest.mark.parametrize(("flag", "expected"), [([], bench.TIMING_TUNABLES), (["--timing-allocator", "default"], None)])
def test_bench_timing_cases_run_under_the_chosen_allocator_settings(flag, expected, monkeypatch, capsys):
    """``--timing-allocator default`` runs the timing cases under glibc's own settings (no ``GLIBC_TUNABLES``), as
    users run; by default they get ``TIMING_TUNABLES``; the report's header says which."""
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    seen = []
    real = bench.run_worker

    def recording(spec, tunables, in_process):
        seen.append((spec, tunables))
        return real(spec, tunables, in_process)

    monkeypatch.setattr(bench, "run_worker", recording)
    argv = ["--quick", "--in-process", "--threads", "1", "--configs", "S", "--sections", "compare", "--no-normflows"]
    results = bench.main([*argv, *flag])
    assert [t for _, t in seen] == [expected] * len(seen) and results["env"]["timing_tunables"] == expected
    header = next(line for line in capsys.readouterr().out.splitlines() if "GLIBC_TUNABLES timing" in line)
    assert (expected or "unset (glibc's default allocator; evaluation and sampling timed in a fresh process") in header
    # under glibc's defaults the inference passes run first, a worker per library that trains nothing
    expected_workers = [(None, None)] if expected else [(["eval", "sample"], ["glowflow"]), (["train"], None)]
    assert [(s.get("passes"), s["libs"] if s.get("passes") == ["eval", "sample"] else None) for s, _ in seen] == (
        expected_workers
    )
    compare = results["configs"]["S"]["compare"]
    passes = {"train", "eval", "sample"}
    for name, c in compare["contenders"].items():  # glowflow-bf16 is timed in training only
        assert passes & set(c) == (passes if name in bench.LIBS else {"train"})
        assert all(c[p]["median_s"] > 0 for p in passes & set(c))


def test_bench_memory_case_in_fresh_process():
    """The default path: one case in a fresh process under the memory allocator settings."""
    cfg = bench.QUICK_CONFIGS["S"]
    spec = {
        "kind": "memory",
        "device": "cpu",
        "threads": 1,
        "settings": {"memory_warmup": 1, "memory_steps": 1},
        "mnist_dir": str(bench.DEFAULT_MNIST_DIR),
        "config": bench.asdict(cfg),
        "lib": "glowflow",
        "memory": "invertible",
    }
    r = bench.run_worker(spec, bench.MEMORY_TUNABLES, in_process=False)
    assert r["glibc_tunables"] == bench.MEMORY_TUNABLES
    assert r["memory_mode"] == "invertible" and r["peak_reset"] in (True, False)
    assert r["peak_mib"] >= 0 and r["baseline_mib"] > 0


def test_budget_quick(tmp_path, capsys):
    out = tmp_path / "budget.json"
    png = tmp_path / "budget.png"
    results = budget.main(
        ["--quick", "--minutes", "0.01", "--eval-every", "0.005", "--json", str(out), "--plot", str(png)]
    )
    assert png.stat().st_size > 0
    saved = json.loads(out.read_text())
    libs = ["glowflow"] + (["normflows"] if nfg.nf is not None else [])
    assert list(saved["curves"]) == libs
    for lib in libs:
        curve = results["curves"][lib]
        assert len(curve) == 2 and curve[-1]["steps"] > 0
        assert all(math.isfinite(p["test_bpd"]) for p in curve)
        # the budget counts training time only
        assert curve[-1]["train_s"] >= 0.01 * 60
    assert "test bpd" in capsys.readouterr().out


def test_budget_report_counts_a_diverged_run_as_worse(tmp_path):
    def point(minutes: float, steps: int, bpd: float) -> dict:
        return {"train_s": 60.0 * minutes, "steps": steps, "test_bpd": bpd}

    results = {
        "curves": {
            "glowflow": [point(4, 371, 4.05), point(8, 729, 2.37), point(12, 1069, 2.09)],
            "normflows": [point(4, 298, 3.90), point(4.7, 348, float("nan"))],
        },
        "params": {"glowflow": 10, "normflows": 11},
        "config": {"shape": [1, 28, 28], "levels": 2, "steps": 16, "hidden": 256, "batch": 32},
        "data": "test data",
        "data_name": "mnist",
        "args": {"lr": "0.001"},
    }
    curves = results["curves"]
    libs = ["glowflow", "normflows"]
    assert budget.compare_at(curves, libs, 0) == "NO (+0.1500)"
    assert budget.compare_at(curves, libs, 1) == "yes (normflows diverged)"
    assert budget.compare_at(curves, libs, 2) == "yes (normflows diverged)"
    swapped = {"normflows": curves["normflows"], "glowflow": curves["glowflow"]}
    assert budget.compare_at(swapped, ["normflows", "glowflow"], 1) == "NO (normflows diverged)"
    table = budget.report(results)
    assert "| 3 | 12.00 / 1069 / 2.0900 | - | yes (normflows diverged) |" in table
    budget.plot(results, tmp_path / "budget.png")
    assert (tmp_path / "budget.png").stat().st_size > 1000


def synthetic_results(libs: list[str]) -> dict:
    """bench.py's results for config S with made-up numbers, as the report reads them."""

    def contender(train: float, ev: float, sample_s: float, syncs: int) -> dict:
        return {
            "params": 1000,
            "train_flops": 16e9,
            "host_syncs_per_step": syncs,
            "train": {"items_per_s": train, "gflops": 100.0, "fraction_of_matmul": 0.5},
            "eval": {"items_per_s": ev},
            "sample": {"median_s": sample_s},
        }

    speeds = {"glowflow": (30.0, 90.0, 0.1, 0), "normflows": (20.0, 60.0, 0.2, 5), "rosinality": (25.0, 50.0, 0.3, 7)}
    contenders = {lib: contender(*speeds[lib]) for lib in libs}
    contenders["glowflow-bf16"] = contender(80.0, 0.0, 0.0, 0)
    memory = {lib: {"peak_mib": 50.0 + 25 * i} for i, lib in enumerate(libs)}
    return {
        "env": {"device": "cpu", "avx512_bf16": True, "normflows": "1.7.3", "peers": {"rosinality": "abc"}},
        "libs": libs,
        "mismatches": ["a mismatch"],
        "configs": {
            "S": {
                "compare": {"data": "random", "contenders": contenders, "matmul": {"gflops": 200.0}},
                "memory_default": memory,
                "memory": memory,
            }
        },
    }


def test_report_compares_with_the_best_other_library():
    results = synthetic_results(["glowflow", "normflows", "rosinality"])
    text = "\n".join(bench.compare_tables(results, bench.CONFIGS))
    lines = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| S |")}
    assert "| 1.2 (rosinality) | >= 1.5: NO |" in lines["train img/s (fp32)"]  # 30 / 25, the fastest other
    assert "| 1.5 (normflows) | >= 1.5: yes |" in lines["eval img/s (log_prob, no grad)"]  # 90 / 60
    assert "| 0.5 (normflows) | <= 0.6: yes |" in lines["sample 16 at T=0.7 (ms)"]  # 100 / 200 ms
    assert "| 3.2 (rosinality) | >= 3: yes |" in lines["train img/s, glowflow bf16 (native bf16) vs fp32"]
    assert "| 0 | 5 | 7 |" in lines["host syncs per training step"]
    assert "| 0.667 (normflows) | <= 0.6: NO |" in lines["train peak RSS above baseline, default allocator (MiB)"]


@pytest.mark.skipif(
    not os.environ.get("GLOWFLOW_PEERS"),
    reason="set GLOWFLOW_PEERS to a directory with checkouts of rosinality/glow-pytorch (glow-pytorch) and "
    "y0ast/Glow-PyTorch (Glow-PyTorch) to run the ports (no network in the test suite)",
)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_peers_build_train_score_and_sample():
    root = Path(os.environ["GLOWFLOW_PEERS"])
    cfg = bench.QUICK_CONFIGS["S"]
    for lib in bench.PEERS:
        c = bench.make_contender(lib, cfg, "cpu", peers=str(root))
        k = torch.randint(0, 256, (cfg.batch, *cfg.shape))
        c.initialize(k)
        assert math.isfinite(c.train_step(k))
        with torch.no_grad():
            assert c.log_prob(bench.dequantize(k)).shape == (cfg.batch,)
            assert c.sample(3, 0.7).shape == (3, *cfg.shape)
        assert c.train_flops(k) > 0


def test_precision_quick(tmp_path, capsys):
    out = tmp_path / "precision.json"
    results = precision.main(["--quick", "--runs", "digits", "--json", str(out)])
    row = json.loads(out.read_text())["runs"]["digits"]
    assert row["fp32"]["steps"] == row["bf16"]["steps"] == 4
    assert row["difference"] == pytest.approx(row["bf16"]["test_bpd"] - row["fp32"]["test_bpd"])
    assert isinstance(results["auto_as_default"], bool)
    assert "| digits | 4 |" in capsys.readouterr().out


def test_precision_summary_over_seeds():
    """Means, the mean difference's standard error and each precision's spread over seeds, and the verdicts: a
    mean difference within 0.01 is not resolved while its standard error is above 0.01."""

    def run(bpd: float) -> dict:
        return {"test_bpd": bpd, "steps": 10, "skipped": 1, "train_s": 2.0}

    pairs = {0: (2.40, 2.42), 1: (2.60, 2.58), 2: (2.50, 2.51)}
    runs = {(s, p): run(v) for s, (a, b) in pairs.items() for p, v in (("fp32", a), ("bf16", b))}
    row = precision.summarise({}, [0, 1, 2], runs)
    assert row["fp32"]["test_bpd"] == pytest.approx(2.50) and row["bf16"]["test_bpd"] == pytest.approx(2.50333333)
    assert row["difference"] == pytest.approx(0.01 / 3)
    assert row["difference_stderr"] == pytest.approx(statistics.stdev([0.02, -0.02, 0.01]) / 3**0.5)
    assert row["fp32"]["spread"] == pytest.approx(0.1) and row["fp32"]["skipped"] == 3
    assert row["within_tolerance"] and not row["resolved"]
    one = precision.summarise({}, [1], {(1, "fp32"): run(2.6), (1, "bf16"): run(2.605)})
    assert one["difference_stderr"] is None and one["fp32"]["spread"] is None
    assert one["within_tolerance"] and one["resolved"]


def test_precision_seeds_in_worker_processes(tmp_path, capsys):
    """``--seeds 0,1 --jobs 2``: four runs in two spawned workers, one pair per seed, and the per-seed table."""
    out = tmp_path / "precision.json"
    precision.main(["--quick", "--runs", "digits", "--seeds", "1,0", "--jobs", "2", "--json", str(out)])
    row = json.loads(out.read_text())["runs"]["digits"]
    assert row["seeds"] == [0, 1] and [r["seed"] for r in row["per_seed"]] == [0, 1]
    assert row["difference"] == pytest.approx(statistics.fmean(r["difference"] for r in row["per_seed"]))
    assert row["difference_stderr"] is not None and row["fp32"]["spread"] is not None
    printed = capsys.readouterr().out
    assert "| digits | 4 | 2 |" in printed and "| digits | 1 |" in printed


@pytest.mark.parametrize(
    "argv", [["--seeds", "a,b"], ["--seeds", ","], ["--seeds", "0,-1"], ["--jobs", "0"], ["--jobs", "two"], ["--jobs"]]
)
def test_precision_rejects_bad_arguments(argv, capsys):
    """Exit 2 before any training, with one error line naming the flag."""
    with pytest.raises(SystemExit) as exit_info:
        precision.main(["--quick", "--runs", "digits", *argv])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and argv[0] in errors[0]


def test_kernel_bound_quick(tmp_path, capsys):
    """Every pass of every library is recorded and replayed: its kernels alone take less than all its operations,
    both are positive, and the report names the passes and the kernel-bound ratio."""
    out = tmp_path / "bound.json"
    results = kernel_bound.main(["--quick", "--configs", "S", "--repeats", "2", "--bf16", "--json", str(out)])
    assert json.loads(out.read_text()).keys() == results.keys() == {"S"}
    libs = results["S"]
    assert "glowflow" in libs and "glowflow-bf16" in libs and ("normflows" in libs) == (nfg.nf is not None)
    for r in libs.values():
        for name in ("train", "eval", "sample"):
            a = r[name]
            assert 0 < a["kernel_bound_s"] < a["all_ops_bound_s"]
            assert a["kernel_calls"] > 0 and a["ops_per_call"] > a["kernel_calls"]
            assert a["top"][0]["count"] >= 1 and a["kernel_in_step_s"] > 0
    text = capsys.readouterr().out
    assert "| glowflow | train |" in text and "best ratio at the kernel bound" in text


def test_kernel_bound_replays_an_expanded_tensor_of_its_recorded_layout():
    spec = kernel_bound.TensorSpec((3, 4), (0, 1), torch.float32, "cpu")  # an expanded (broadcast) row
    t = spec.make()
    assert t.shape == (3, 4) and t.stride() == (0, 1) and bool((t > 0).all())
    recorder = kernel_bound.Recorder()
    a, b = torch.randn(5, 6), torch.randn(6, 7)
    with recorder:
        for _ in range(3):
            torch.mm(a, b)
    (call,) = [c for c in recorder.calls.values() if c.kernel]
    assert call.count == 3 and call.args[0].shape == (5, 6)
    kernel_bound.replay([call], repeats=2, device="cpu")
    assert 0 < call.best_s < 1


def test_kernel_bound_replays_a_prepacked_weight_as_itself():
    """An opaque oneDNN tensor (a prepacked weight) reports no strides to rebuild it from: its recipe keeps the tensor,
    the replay calls the kernel with it, and calls with weights of one shape and dtype count as one."""
    from glowflow.layers.fused import prepack_linear_weight

    packed = [prepack_linear_weight(torch.randn(16, 8), 32) for _ in range(2)]
    if not packed[0].is_mkldnn:
        pytest.skip("oneDNN's products are not available here")
    x = torch.randn(32, 8)
    recorder = kernel_bound.Recorder()
    with recorder:
        for w in packed:
            torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    (call,) = [c for c in recorder.calls.values() if c.kernel]
    assert call.count == 2 and isinstance(call.args[1], kernel_bound.OpaqueSpec) and call.args[1].make() is packed[0]
    kernel_bound.replay([call], repeats=2, device="cpu")
    assert 0 < call.best_s < 0.1


def test_compile_quick(tmp_path, capsys):
    """Each pass traces as one graph, is compiled (here by aot_eager: the same capture, eager kernels) and timed
    against eager mode; the table and the JSON carry the same rows."""
    out = tmp_path / "compile.json"
    result = compile_bench.main(["--quick", "--configs", "S", "--backend", "aot_eager", "--rounds", "2",
                                 "--json", str(out)])  # fmt: skip
    assert json.loads(out.read_text()) == result
    rows = result["rows"]
    assert [r["pass"] for r in rows] == ["train", "eval", "sample"]
    for r in rows:
        assert (r["graphs"], r["graph_breaks"]) == (1, 0) and r["compile_s"] > 0
        assert 0 < r["eager_fastest_ms"] <= r["eager_ms"] and 0 < r["compiled_fastest_ms"] <= r["compiled_ms"]
        assert r["ratio"] == pytest.approx(r["compiled_ms"] / r["eager_ms"])
    assert "| S | eval | 1 / 0 |" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--configs", "X"], ["--passes", "train,fly"], ["--rounds", "0"]])
def test_compile_bad_arguments_exit_2_naming_the_flag(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compile_bench.main(["--quick", *argv])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and argv[0] in errors[0]


@pytest.mark.parametrize("value", ["0", "-3", "x"])
def test_profile_step_refuses_a_batch_that_is_not_a_positive_integer(monkeypatch, capsys, value):
    monkeypatch.setattr(sys, "argv", ["profile_step.py", "--batch", value])
    with pytest.raises(SystemExit) as exit_info:
        profile_step.main()
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--batch" in errors[0]


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_precision_mnist5k_runs_take_the_chosen_learning_rate_schedule(tmp_path, schedule):
    import argparse

    args = argparse.Namespace(mnist5k_dir=tmp_path, mnist5k_iters=1000, mnist5k_lr_schedule=schedule, threads=1,
                              quick=False, runs=["digits", "mnist5k"])  # fmt: skip
    configs = precision.run_configs(args)
    assert configs["mnist5k"]["lr_schedule"] == schedule and configs["mnist5k"]["iters"] == 1000
    assert "lr_schedule" not in configs["digits"]  # the digits preset as it is
    TrainConfig(**configs["mnist5k"])  # every key a training setting, every value valid


def test_profile_step_refuses_a_precision_it_does_not_have(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["profile_step.py", "--precision", "fp16"])
    with pytest.raises(SystemExit) as exit_info:
        profile_step.main()
    assert exit_info.value.code == 2
    assert "--precision" in capsys.readouterr().err


def test_profile_step_times_every_operation_at_the_dispatcher():
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    with bench.OpTimes() as timer:
        torch.mm(a, b)
        torch.mm(a, b).relu_()
    mm = timer.times[torch.ops.aten.mm.default]
    assert mm[0] == 2 and mm[1] > 0
    assert timer.times[torch.ops.aten.relu_.default][0] == 1


def test_profile_step_split_of_a_training_step(capsys):
    """The split of a tiny Glow's training step: kernels with their FLOP rates, the other operations, the calls."""
    torch.manual_seed(0)
    model = Glow((3, 8, 8), levels=2, steps=2, hidden=8)
    opt = PackedAdam(model.parameters(), lr=1e-4)  # profile_step.py's default, glowflow.train's (plain Adam syncs)
    batch = (4, 3, 8, 8)
    with torch.no_grad():
        model(torch.randint(0, 256, batch))

    def train_step():
        loss = model(torch.randint(0, 256, batch)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    profile_step.profile_split(model, opt, train_step, batch, "wall", 10.0)
    out = capsys.readouterr().out
    assert "convolutions and matrix products" in out and "host syncs per step" in out
    assert "aten.convolution_backward" in out and "costliest operations per step" in out
    calls = int(out.split(" aten calls")[0].rsplit(" ", 1)[1])
    assert calls > 100  # every operation of the step reached the timer
    by_shape = out.split("costliest kernels per step by operand shapes:\n")[1].splitlines()
    assert 0 < len(by_shape) <= 12 and all(" ms " in line and "GFLOP/s" in line for line in by_shape)


def test_kernel_shape_times_group_kernels_by_operands():
    """Each (kernel, operand shapes) row counts its calls and the FLOPs of every call; other operations are left out."""
    a, b, c = torch.randn(64, 32), torch.randn(32, 16), torch.randn(32, 8)
    with profile_step.KernelShapeTimes() as shapes:
        torch.mm(a, b)
        torch.mm(a, b)
        torch.mm(a, c).relu_()
    assert set(shapes.rows) == {("aten.mm", ((64, 32), (32, 16))), ("aten.mm", ((64, 32), (32, 8)))}
    calls, seconds, flops = shapes.rows[("aten.mm", ((64, 32), (32, 16)))]
    assert calls == 2 and seconds > 0 and flops == 2 * 2 * 64 * 32 * 16
    assert shapes.rows[("aten.mm", ((64, 32), (32, 8)))][2] == 2 * 64 * 32 * 8


def test_kernel_shape_times_count_the_convolutions_and_products_of_inference_mode():
    """Under ``torch.inference_mode`` ``conv2d`` and ``linear`` reach the timer themselves: rows with their FLOPs."""
    x, w, b, m = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4), torch.randn(16, 5)
    with torch.inference_mode(), profile_step.KernelShapeTimes() as shapes:
        torch.nn.functional.conv2d(x, w, b, padding=1)
        torch.nn.functional.linear(m, torch.randn(7, 5))
    conv = shapes.rows[("aten.conv2d", ((2, 3, 8, 8), (4, 3, 3, 3), (4,)))]
    assert conv[0] == 1 and conv[2] == 2 * (2 * 4 * 8 * 8) * 3 * 3 * 3
    assert shapes.rows[("aten.linear", ((16, 5), (7, 5)))][2] == 2 * 16 * 5 * 7


def test_profile_inference_splits_an_evaluation_call(capsys):
    """The evaluation split of a tiny Glow: kernels against the other operations, the calls, the by-shape table."""
    torch.manual_seed(0)
    model = Glow((3, 8, 8), levels=2, steps=2, hidden=8)
    with torch.no_grad():
        model(torch.randint(0, 256, (4, 3, 8, 8)))
    x = torch.rand(4, 3, 8, 8) - 0.5
    with torch.no_grad():  # as profile_step.py evaluates
        profile_step.profile_inference("evaluation", lambda: model.log_prob(x), 10.0, 100.0)
    out = capsys.readouterr().out
    kernel_ms = float(out.split("convolutions and matrix products ")[1].split(" ms")[0])
    calls = int(out.split(" aten calls")[0].rsplit(" ", 1)[1])
    assert kernel_ms > 0 and calls > 50
    by_shape = out.split("costliest kernels per evaluation call by operand shapes:\n")[1].splitlines()
    assert 0 < len(by_shape) <= 10 and all(" ms " in line and "GFLOP/s" in line for line in by_shape)
    assert all(line.split()[0] in profile_step.KERNEL_OPS for line in by_shape)
    assert any(line.split()[0] == "aten.conv2d" for line in by_shape)  # the split's prior (the steps' convs: oneDNN's)


def test_kernel_bound_times_the_kernels_in_a_pass_at_the_dispatcher():
    """In-pass kernel time: only the kernel ops (``bench.KERNEL_OPS``) are timed, each once."""
    a = torch.randn(256, 256)
    assert kernel_bound.in_step_kernel_time(lambda: a.exp().relu_(), calls=2) == 0.0
    assert kernel_bound.in_step_kernel_time(lambda: torch.mm(a, a).relu_(), calls=2) > 0.0
    assert kernel_bound.in_step_kernel_time(lambda: (torch.mm(a, a), torch.mm(a, a)), calls=2) > 0.0


def test_kernel_bound_counts_the_convolutions_and_products_of_inference_mode():
    """Under ``torch.inference_mode`` (glowflow's evaluation and sampling) ``conv2d`` and ``linear`` reach the
    dispatcher mode themselves, not as ``aten.convolution`` / ``aten.addmm``: they are kernels too."""
    x, w, m = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(16, 16)
    with torch.inference_mode():
        calls = kernel_bound.record(lambda: (torch.nn.functional.conv2d(x, w), torch.nn.functional.linear(m, m)))
        assert {str(c.func) for c in calls} >= {"aten.conv2d.default", "aten.linear.default"}
        assert all(c.kernel for c in calls)
        assert kernel_bound.in_step_kernel_time(lambda: torch.nn.functional.conv2d(x, w), calls=2) > 0.0


def test_kernel_bound_verdicts_tell_reachable_from_out_of_reach_targets():
    def lib(bound_ms: float, measured_ms: float, in_pass_ms: float) -> dict:
        a = {"kernel_bound_s": bound_ms / 1e3, "measured_min_s": measured_ms / 1e3}
        a["kernel_in_step_s"] = in_pass_ms / 1e3
        return {"train": a, "eval": a, "sample": a}

    # the rival takes 100 ms: a 60 ms kernel bound makes 1.67x throughput and 0.6x latency reachable
    libs = {"glowflow": lib(60.0, 80.0, 60.0), "rival": lib(90.0, 100.0, 90.0)}
    lines = kernel_bound.target_verdicts("glowflow", libs["glowflow"], libs)
    assert len(lines) == 3 and all("reachable" in line for line in lines), lines
    # a 70 ms bound: the latency target (0.6x) is out of reach; with kernels at 90 % of their peak that is a proof
    libs["glowflow"] = lib(70.0, 80.0, 70.0 / 0.9)
    sample = next(line for line in kernel_bound.target_verdicts("glowflow", libs["glowflow"], libs) if "sample" in line)
    assert "0.70x" in sample and "out of reach with these kernels" in sample and "90 %" in sample
    # kernels at half their peak in the pass: not a proof
    libs["glowflow"] = lib(70.0, 80.0, 140.0)
    sample = next(line for line in kernel_bound.target_verdicts("glowflow", libs["glowflow"], libs) if "sample" in line)
    assert "not reachable at this bound" in sample and "50 %" in sample
    assert kernel_bound.target_verdicts("rival", libs["rival"], libs) == []  # targets are glowflow's
