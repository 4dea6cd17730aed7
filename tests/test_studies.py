"""Smoke tests for studies/: every study's code path on tiny settings (``--quick`` on the bundled 8x8 digits), so
the scripts cannot rot. The real runs (hours) are never part of the suite."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from studies import (
    common,
    conditioner,
    depth_levels,
    dequantization,
    latent_manipulation,
    permutation_coupling,
    run_all,
    temperature,
)

ROOT = Path(__file__).resolve().parents[1]
PICTURES = {
    "permutation_coupling": ["curves.png", "final.png"],
    "temperature": ["temperature_grid.png"],
    "dequantization": ["curves.png", "bounds.png"],
    "conditioner": ["curves.png"],
    "depth_levels": ["depth_levels.png"],
    "latent_manipulation": ["interpolation.png", "manipulation_conditional.png", "label_swap.png",
                            "interpolation_unconditional.png", "manipulation_unconditional.png"],
}  # fmt: skip


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All six studies, --quick on the digits, in one run_all (shared arms trained once)."""
    root = tmp_path_factory.mktemp("studies")
    before = torch.get_num_threads()
    try:
        status = run_all.main(["--quick", "--data", "digits", "--jobs", "1", "--out-root", str(root)])
    finally:
        torch.set_num_threads(before)
    assert status == 0
    return root


def _results(root: Path, name: str) -> dict:
    return json.loads((root / name / "results.json").read_text())


def test_every_study_writes_results_table_and_pictures(quick_run: Path):
    for study in run_all.STUDIES:
        out = quick_run / study.NAME
        results = _results(quick_run, study.NAME)
        assert results["study"] == study.NAME and results["quick"] is True
        assert "digits" in results["data"] and results["budget"]["iters"] == common.QUICK["iters"]
        table = (out / "table.md").read_text()
        assert table.startswith(f"# {study.TITLE}") and "| " in table and "Command: `" in table
        for picture in PICTURES[study.NAME]:
            assert (out / picture).stat().st_size > 1000, picture
        assert results["pictures"]
    # arms are shared: the base model (lu / affine) serves four studies and is trained once per seed
    arm_dirs = [p for p in (quick_run / "arms").iterdir() if p.is_dir()]
    assert len(arm_dirs) == 21  # 12 + 0 + 2 + 2 + 4 + 1 new arms (quick: two seeds at most)
    for d in arm_dirs:
        r = json.loads((d / "result.json").read_text())
        assert r["steps"] == common.QUICK["iters"] and r["wall_s"] > 0 and r["threads"] == 1
        assert (d / "metrics.jsonl").is_file() and (d / "checkpoints" / "last.pt").is_file()


def test_study_contents(quick_run: Path):
    pc = _results(quick_run, "permutation_coupling")
    assert {(a["permutation"], a["coupling"]) for a in pc["arms"]} == {
        (p, c) for p in ("reverse", "shuffle", "lu") for c in ("additive", "affine")
    }
    assert all(len(a["test_bpd"]) == 2 and a["std"] >= 0 for a in pc["arms"])  # 2 seeds in quick mode
    assert len(pc["order_checks"]) == 7 and all(c["verdict"] for c in pc["order_checks"])

    t = _results(quick_run, "temperature")
    assert t["temperatures"] == list(temperature.TEMPERATURES) and len(t["sample_bpd"]) == 8
    base_lu_affine_s0 = next(a for a in pc["arms"] if a["permutation"] == "lu" and a["coupling"] == "affine")
    assert t["model"]["arm"] == base_lu_affine_s0["arms"][0]  # the permutation study's lu/affine seed-0 run

    d = _results(quick_run, "dequantization")
    assert [a["dequantization"] for a in d["arms"]] == ["uniform", "variational"]
    for a in d["arms"]:  # same noise draws: log-mean-exp >= mean, so the importance-weighted bpd is never higher
        assert all(iw <= b + 1e-6 for b, iw in zip(a["bound"], a["importance_weighted"], strict=True))
    assert d["arms"][1]["parameters"] > d["arms"][0]["parameters"]  # q(u|x) has parameters

    c = _results(quick_run, "conditioner")
    assert c["parameters"]["gated"] == next(a["parameters"] for a in c["arms"] if a["conditioner"] == "gated")

    dl = _results(quick_run, "depth_levels")
    assert dl["padded_to"] is None  # 8x8 is divisible by 8
    assert {(a["levels"], a["steps"]) for a in dl["arms"]} == {(2, 1), (2, 2), (2, 3), (1, 2), (3, 2)}

    lm = _results(quick_run, "latent_manipulation")
    assert set(lm["models"]) == {"conditional", "unconditional"}
    assert len(lm["manipulation"]["conditional"]["pairs"]) == len(latent_manipulation.CLASS_PAIRS)


def test_rerun_reuses_finished_arms(quick_run: Path, capsys: pytest.CaptureFixture):
    argv = ["--quick", "--data", "digits", "--jobs", "1", "--out", str(quick_run / "temperature")]
    assert common.main(temperature, argv) == 0
    out = capsys.readouterr().out
    assert "1 already done" in out and "0 to run" in out


def test_parallel_jobs_and_resume(tmp_path: Path):
    """--jobs 2 trains arms in two single-threaded processes; an arm cut off mid-training resumes."""
    import glowflow
    from glowflow.training import TrainConfig

    args = common.build_parser(permutation_coupling).parse_args(["--quick", "--data", "digits"])
    ctx = common.make_context(permutation_coupling, args, [], out=tmp_path / "pc")
    cut = ctx.arm(7)
    glowflow.train(TrainConfig(**dict(cut.config, iters=1, out=str(ctx.arms_dir / cut.slug))))  # "interrupted"
    assert not (ctx.arms_dir / cut.slug / "result.json").exists()
    arms = [cut, ctx.arm(8, permutation="reverse")]
    results = common.run_arms(arms, ctx.arms_dir, jobs=2, say=lambda s: None)
    assert set(results) == {a.key for a in arms}
    assert all(r["threads"] == 1 and r["steps"] == common.QUICK["iters"] for r in results.values())
    assert results[cut.key]["resumed"] is True


def test_mnist_settings_pad_and_match_parameters():
    """Without loading data: MNIST 28x28 is padded to 32 for the depth/levels study, the gated width matches the
    Glow model within 5%, and the default plan fits the advertised 3-4 hours."""
    data = common.DataChoice("mnist", None, "MNIST (not loaded)", (1, 28, 28), 256)
    for study in (depth_levels, conditioner):
        args = common.build_parser(study).parse_args([])
        ctx = common.make_context(study, args, [], data=data, out=Path("/nonexistent/x"))
        if study is depth_levels:
            assert depth_levels.pad_for(ctx) == 32
            assert all(a.config["pad"] == 32 for a in depth_levels.arms(ctx))
        else:
            width, n_glow, n_gated = conditioner.matched_width(ctx)
            assert abs(n_gated - n_glow) / n_glow <= conditioner.TOLERANCE
            assert width < ctx.base["hidden"]
    plan = []
    for study in run_all.STUDIES:
        args = common.build_parser(study).parse_args([])
        plan += study.arms(common.make_context(study, args, [], data=data, out=Path("/nonexistent") / study.NAME))
    hours = common.estimate_seconds(plan, Path("/nonexistent/arms"), jobs=2) / 3600
    assert 2.5 < hours < 4.2
    assert len({a.key for a in plan}) == 18 + 2 + 2 + 5 + 1  # shared arms counted once


def test_data_fallback_and_arguments(tmp_path: Path):
    choice = common.resolve_data("auto", tmp_path / "no-mnist-here")
    assert choice.name == "digits" and "not found" in choice.note and choice.shape == (1, 8, 8)
    assert common.parse_seeds("0,1,2") == (0, 1, 2)
    for bad in ("", "a", "1,1", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            common.parse_seeds(bad)
    args = common.build_parser(dequantization).parse_args(["--set", "lr=2e-3", "--set", "warmup=10", "--iters", "7"])
    base = common.base_config(common.resolve_data("digits"), False, args)
    assert base["lr"] == 2e-3 and base["warmup"] == 10 and base["iters"] == 7
    with pytest.raises(SystemExit):
        common.base_config(
            common.resolve_data("digits"), False, Namespace(**{**vars(args), "overrides": [("nope", 1)]})
        )
    assert run_all._strip(["--quick", "--only", "a,b", "--jobs=2", "--out-root", "x"], ("--only", "--out-root")) == [
        "--quick", "--jobs=2"
    ]  # fmt: skip


@pytest.mark.skipif(not (common.DEFAULT_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="../shared/data/mnist-5k is not here")  # fmt: skip
def test_real_mnist_path(tmp_path: Path):
    choice = common.resolve_data("auto")
    assert choice.name == "mnist" and choice.shape == (1, 28, 28) and "1000 test" in choice.note
    argv = ["--quick", "--jobs", "1", "--out", str(tmp_path / "temperature")]
    assert common.main(temperature, argv) == 0
    assert "MNIST" in _results(tmp_path, "temperature")["data"]


def test_scripts_run_from_the_command_line():
    out = subprocess.run([sys.executable, str(ROOT / "studies" / "conditioner.py"), "--help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert out.returncode == 0 and "--seeds" in out.stdout and "--jobs" in out.stdout
