"""``glowflow export`` end to end, the other commands on what it writes (a pretrained directory as RUN, outputs in
the current directory), and one-line errors (exit code 2, no traceback) that leave no directory behind."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from glowflow.cli import main
from tests.helpers import one_thread
from tests.training.train_helpers import TINY_FLAGS


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A class-conditional digits run of 4 steps."""
    out = tmp_path_factory.mktemp("cli-export") / "digits"
    with one_thread():  # module fixtures run before the autouse one
        assert main(["train", "--out", str(out), *TINY_FLAGS, "--iters", "4", "--conditional"]) == 0
    return out


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(capsys, *args) -> str:
    """Run a command that must fail: exit code 2, exactly one line on stderr, no traceback."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["export", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and "examples:" in text and "glowflow export" in text and "--onnx" in text
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the current directory for a pretrained model" in text and "glowflow/digits" in text


def test_export_then_use_it_as_run(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(capsys, "export", run_dir, "shared", "--check", "8", "--seed", "2", "--note", "Hi.")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "wrote shared: README.md, check.json, check.safetensors, config.json, model.safetensors"
    assert "Glow L=2 K=1 width 8" in lines[1] and "bits/dim on all 297 test images, 1 noise draw each" in lines[1]
    assert lines[2].startswith("  trained with: glowflow train ") and "--conditional" in lines[2]
    card = (tmp_path / "shared" / "README.md").read_text()
    exported = f"exported with `glowflow export {run_dir} shared --check 8 --seed 2 --note ...`"
    assert f"Hi.\n\nThe weights of the run's checkpoint `best.pt` (step 4), {exported}" in card

    code, out, _ = run_cli(capsys, "info", "shared")
    assert code == 0 and out.startswith("pretrained:  shared") and "trained:     4 steps" in out
    assert "evaluated on all 297 test images, 1 noise draw each" in out and "conditional = true" in out
    code, out, _ = run_cli(capsys, "info", "shared", "--json")
    info = json.loads(out)
    assert info["kind"] == "pretrained" and info["run_dir"] is None and info["config"]["iters"] == 4
    assert info["last"]["test_bpd"] == info["metrics"]["test_bpd"]

    code, out, _ = run_cli(capsys, "sample", "shared", "--n", "10", "--label", "3", "--npy")
    assert code == 0 and out.splitlines()[0] == "wrote sample_T0.7_label3.png"  # the current directory
    assert np.load(tmp_path / "sample_T0.7_label3.npy").shape == (10, 1, 8, 8)
    code, out, _ = run_cli(capsys, "eval", "shared", "--limit", "20", "--n-samples", "1")
    assert code == 0 and "digits test split (20 of 297 images), shared:" in out
    assert json.loads((tmp_path / "eval_test.json").read_text())["examples"] == 20
    code, out, _ = run_cli(capsys, "interpolate", "shared", "--pairs", "1", "--frames", "3")
    assert code == 0 and (tmp_path / "interpolate.png").is_file()

    code, out, _ = run_cli(capsys, "export", "shared", "again", "--measure", "1")  # a pretrained source
    assert code == 0 and "bits/dim on all 297 test images, 1 noise draw each" in out
    assert not (tmp_path / "again" / "check.json").exists()


def test_bad_input_is_one_line_and_leaves_no_directory(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = error_line(capsys, "export", tmp_path / "nowhere", "out")
    assert line == f"glowflow export: error: {tmp_path / 'nowhere'}: no such run directory or checkpoint file"
    line = error_line(capsys, "export", "glowflow/cifar", "out")
    assert "no shipped model 'glowflow/cifar'" in line
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    line = error_line(capsys, "export", run_dir, "full")
    assert (
        line == "glowflow export: error: full is a directory that is not empty; export into a new (or empty) directory"
    )
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["notes.txt"]
    line = error_line(capsys, "export", run_dir, "out", "--methods", "log_prob")
    assert "--methods selects the graphs of --onnx / --pt2" in line
    line = error_line(capsys, "export", run_dir, "out", "--pt2", "--methods", "score")
    assert "argument --methods: expected comma-separated methods from log_prob, bits_per_dim" in line
    line = error_line(capsys, "export", run_dir, "out", "--check", "5000")
    assert "check subset (5000) is larger than the test split (297 examples)" in line
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    line = error_line(capsys, "export", run_dir, "out", "--onnx")
    assert (
        line
        == "glowflow export: error: ONNX export needs the onnx and onnxscript packages: pip install 'glowflow[onnx]'"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # nothing written, no partial directory


def test_hub_id_offline_is_one_line(tmp_path, capsys, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.chdir(tmp_path)

    def offline(repo_id, filename, **kwargs):
        raise hub.errors.LocalEntryNotFoundError("Cannot reach the Hub: no connection and no cached snapshot.")

    monkeypatch.setattr(hub, "hf_hub_download", offline)
    line = error_line(capsys, "info", "someone/glow-mnist")
    assert line == (
        "glowflow info: error: 'someone/glow-mnist' is not a local directory, and fetching it from the Hugging Face "
        "Hub failed: LocalEntryNotFoundError: Cannot reach the Hub: no connection and no cached snapshot."
    )


def test_graph_export_reports_each_file_on_stderr(run_dir, tmp_path, capsys):
    code, out, err = run_cli(capsys, "export", run_dir, tmp_path / "graphs", "--pt2", "--methods", "log_prob,decode")
    assert code == 0 and out.splitlines()[0].startswith(f"wrote {tmp_path / 'graphs'}: ")
    lines = err.splitlines()
    assert [line.split(" in ")[0] for line in lines] == [
        "exporting log_prob.pt2 (1 of 2)", "wrote log_prob.pt2", "exporting decode.pt2 (2 of 2)",
        "wrote decode.pt2",
    ]  # fmt: skip
    for line in lines[1::2]:
        seconds = float(line.rsplit(" in ", 1)[1].removesuffix(" s"))
        assert 0 < seconds < 600
    assert {"log_prob.pt2", "decode.pt2", "pt2.json"} <= {p.name for p in (tmp_path / "graphs").iterdir()}
