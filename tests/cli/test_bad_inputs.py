"""Bad input to every ``glowflow`` command: one clear line, exit code 2, no traceback, nothing left behind.

Convention - one list of rows per command, registered in ``TABLE``; to cover a new command, add its list there:

    Row("eval {run} --limit 0", "argument --limit: must be >= 1")

- The command line is what follows ``glowflow``, split like a shell (``shlex``). Placeholders: ``{run}`` a trained
  tiny class-conditional digits run, ``{moons}`` a trained tiny moons run, ``{out}`` a fresh directory (a training
  run's ``--out``), ``{file}`` a plain text file, ``{folder}`` an empty folder, ``{nowhere}`` a path that does not
  exist, ``{mnist}`` the real MNIST files (the row is skipped where they are absent), ``{bad_csv}`` a csv file with
  a non-numeric cell.
- The fragment is a piece of the one line expected on stderr.

Every row runs in-process through ``glowflow.cli.main`` and must exit with code 2, write exactly one line to
stderr (containing the fragment, no "Traceback"), leave the trained runs' files as they were (no ``eval_*.json``,
no picture) and leave in ``{out}`` nothing that ``--resume`` would trust (no ``checkpoints/``; for ``export``, no
``{out}`` at all, nor a partial one beside it). A few rows also run
as a real process (``python -m glowflow``) to prove the same end to end.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from glowflow.cli import main
from glowflow.training import load_checkpoint, save_checkpoint
from tests.data.data_helpers import MNIST_DIR
from tests.training.train_helpers import TINY_FLAGS, python, subprocess_env


class Row(NamedTuple):
    command: str  # after ``glowflow``, with the placeholders of the module docstring
    fragment: str  # a piece of the expected error line


TRAIN_ROWS = [
    Row("train --iters 0 --out {out}", "argument --iters: must be >= 1, got '0'"),
    Row("train --batch-size -1 --out {out}", "argument --batch-size: must be >= 1, got '-1'"),
    Row("train --hidden 2.5 --out {out}", "argument --hidden: must be an integer >= 1, got '2.5'"),
    Row("train --warmup -1 --out {out}", "argument --warmup: must be >= 0"),
    Row("train --lr 0 --out {out}", "argument --lr: must be a positive number, got '0'"),
    Row("train --lr nan --out {out}", "argument --lr: must be a positive number, got 'nan'"),
    Row("train --grad-clip 0 --out {out}", "argument --grad-clip: must be a positive number or none"),
    Row("train --rollback-lr-factor 1.5 --out {out}", "argument --rollback-lr-factor: must lie in (0, 1]"),
    Row("train --n-bits 9 --out {out}", "argument --n-bits: must lie in 1..8 or none, got '9'"),
    Row("train --threads 0 --out {out}", "argument --threads: must be >= 1 or none"),
    Row("train --eval-size 0 --out {out}", "argument --eval-size: must be >= 1 or none"),
    Row("train --seed -1 --out {out}", "argument --seed: must lie in 0..2147483647, got '-1'"),
    Row("train --seed 4294967296 --out {out}", "argument --seed: must lie in 0..2147483647"),
    Row(
        "train --temperatures 0.5,-1 --out {out}",
        "argument --temperatures: expected comma-separated numbers, each a number >= 0, got '0.5,-1'",
    ),  # fmt: skip
    Row("train --temperatures inf --out {out}", "argument --temperatures: expected comma-separated numbers"),
    Row("train --device tpu --out {out}", "argument --device: must be cpu, cuda, cuda:N or auto, got 'tpu'"),
    Row("train --device cuda:x --out {out}", "argument --device: must be cpu, cuda, cuda:N or auto"),
    Row("train --coupling spline --out {out}", "argument --coupling: invalid choice: 'spline'"),
    Row("train --lr-schedule linear --out {out}", "argument --lr-schedule: invalid choice: 'linear'"),
    Row("train --data imagenet --out {out}", "config key 'data': unknown value 'imagenet'"),
    Row("train --data moons --n-bits 5 --out {out}", "'n_bits' applies to image data only"),
    Row("train --config {nowhere} --out {out}", "not found"),
    Row("train --resume --out {out}", "no such run directory"),
    Row("train --out {file}", "is a file, not a directory"),
    Row("train --out {file}/run", "cannot write the run directory"),
    Row("train --batch-size 100000 --out {out}", "--batch-size 100000 is larger than the training split (1500"),
    Row("train --levels 4 --out {out}", "spatial size 8x8 is not divisible by 2**levels = 16"),
    Row("train --pad 4 --out {out}", "pad must be an image size >= the raw 8x8, got 4"),
    Row("train --data folder --data-dir {file} --out {out}", "is a file, not a folder"),
    Row("train --data folder --data-dir {nowhere} --out {out}", "not found"),
    Row("train --data tabular --data-dir {bad_csv} --out {out}", "row 3, column 2: non-numeric cell 'x'"),
    Row("train --data mnist --data-dir {folder} --out {out}", "train-images-idx3-ubyte.gz not found"),
    Row(
        "train --data fashion-mnist --data-dir {mnist} --out {out}", "is MNIST's file (by its MD5), not Fashion-MNIST's"
    ),  # fmt: skip
]

EVAL_ROWS = [
    Row("eval {run} --limit 0", "argument --limit: must be >= 1 or none, got '0'"),
    Row("eval {run} --limit -5", "argument --limit: must be >= 1 or none, got '-5'"),
    Row("eval {run} --batch-size 0", "argument --batch-size: must be >= 1, got '0'"),
    Row("eval {run} --n-samples 0", "argument --n-samples: must be >= 1, got '0'"),
    Row("eval {run} --n-samples 1.5", "argument --n-samples: must be an integer >= 1"),
    Row("eval {run} --split validation", "argument --split: invalid choice: 'validation'"),
    Row("eval {run} --checkpoint middle", "argument --checkpoint: invalid choice: 'middle'"),
    Row("eval {run} --seed -1", "argument --seed: must lie in 0..2147483647"),
    Row("eval {run} --device tpu", "argument --device: must be cpu, cuda, cuda:N or auto"),
    Row("eval {nowhere}", "no such run directory or checkpoint file"),
    Row("eval {folder}", "no checkpoint found"),
    Row("eval {file}", "truncated or not a torch checkpoint file"),
]

SAMPLE_ROWS = [
    Row("sample {run} --n 0", "argument --n: must be >= 1, got '0'"),
    Row("sample {run} --n -3", "argument --n: must be >= 1, got '-3'"),
    Row("sample {run} --temperature -0.5", "argument --temperature: must be a number >= 0, got '-0.5'"),
    Row("sample {run} --temperature nan", "argument --temperature: must be a number >= 0, got 'nan'"),
    Row("sample {run} --ncol -2", "argument --ncol: must be >= 1, got '-2'"),
    Row("sample {run} --ncol 0", "argument --ncol: must be >= 1, got '0'"),
    Row("sample {run} --out {folder}/x.jpg", "argument --out: must name a .png file"),
    Row("sample {run} --out {file}/x.png", "cannot write"),
    Row("sample {run} --label 12", "label 12 out of range: the data has classes 0..9"),
    Row("sample {run} --label cat", "unknown class 'cat'"),
    Row("sample {moons} --label 1", "--label needs a class-conditional model"),
    Row("sample {run} --seed 2147483648", "argument --seed: must lie in 0..2147483647"),
    Row("sample {run} --temperature 1e300", "sampling at temperature 1e+300 gave NaN or inf for 64 of 64 examples"),
]

INTERPOLATE_ROWS = [
    Row("interpolate {run} --frames 1", "argument --frames: must be >= 2, got '1'"),
    Row("interpolate {run} --pairs 0", "argument --pairs: must be >= 1, got '0'"),
    Row("interpolate {run} --index 0 -1", "argument --index: must be >= 0, got '-1'"),
    Row("interpolate {run} --index 0", "argument --index: expected 2 arguments"),
    Row("interpolate {run} --index 0 100000", "--index 100000 out of range: the test split has 297 images"),
    Row("interpolate {run} --split val", "argument --split: invalid choice: 'val'"),
    Row("interpolate {moons}", "interpolate needs an image model"),
]

MANIPULATE_ROWS = [
    Row("manipulate {run} --from 1 --to 7 --max-per-class 0", "argument --max-per-class: must be >= 1, got '0'"),
    Row("manipulate {run} --from 1 --to 7 --n 0", "argument --n: must be >= 1, got '0'"),
    Row("manipulate {run} --from 1 --to 7 --strengths ''", "argument --strengths: expected comma-separated numbers"),
    Row("manipulate {run} --from 1 --to 7 --strengths 0,nan", "argument --strengths: expected comma-separated"),
    Row("manipulate {run} --from 1 --to 1", "--from and --to name the same class (1)"),
    Row("manipulate {run} --from 1 --to cat", "unknown class 'cat'"),
    Row("manipulate {run} --from 1", "the following arguments are required: --to"),
    Row("manipulate {moons} --from 0 --to 1", "manipulate needs an image model"),
]

INFO_ROWS = [
    Row("info", "the following arguments are required: RUN"),
    Row("info {nowhere}", "no such run directory or checkpoint file"),
    Row("info {file}", "truncated or not a torch checkpoint file"),
]

EXPORT_ROWS = [
    Row("export {run}", "the following arguments are required: DIR"),
    Row("export {run} {out} --measure 0", "argument --measure: must be >= 1, got '0'"),
    Row("export {run} {out} --check -1", "argument --check: must be >= 0, got '-1'"),
    Row("export {run} {out} --seed -1", "argument --seed: must lie in 0..2147483647"),
    Row("export {run} {out} --device tpu", "argument --device: must be cpu, cuda, cuda:N or auto"),
    Row("export {run} {out} --checkpoint first", "argument --checkpoint: invalid choice: 'first'"),
    Row("export {run} {out} --pt2 --methods score", "argument --methods: expected comma-separated methods"),
    Row("export {run} {out} --methods log_prob", "--methods selects the graphs of --onnx / --pt2"),
    Row("export {run} {out} --check 5000", "the check subset (5000) is larger than the test split (297 examples)"),
    Row("export {run} {file}", "is a file; export into a new (or empty) directory"),
    Row("export {nowhere} {out}", "no such run directory or checkpoint file"),
    Row("export glowflow/cifar {out}", "no shipped model 'glowflow/cifar'"),
]

GENERAL_ROWS = [
    Row("", "the following arguments are required: COMMAND"),
    Row("frobnicate", "argument COMMAND: invalid choice: 'frobnicate'"),
]

TABLE = {
    "train": TRAIN_ROWS,
    "eval": EVAL_ROWS,
    "sample": SAMPLE_ROWS,
    "interpolate": INTERPOLATE_ROWS,
    "manipulate": MANIPULATE_ROWS,
    "info": INFO_ROWS,
    "export": EXPORT_ROWS,
    "general": GENERAL_ROWS,
}
ROWS = [pytest.param(row, id=f"{name}: {row.command}") for name, rows in TABLE.items() for row in rows]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A class-conditional digits run and a moons run, tiny, trained once for the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bad-inputs")
    out = {"run": root / "digits", "moons": root / "moons"}
    assert main(["train", "--out", str(out["run"]), *TINY_FLAGS, "--iters", "2", "--conditional"]) == 0
    assert main(["train", "--data", "moons", "--out", str(out["moons"]), *TINY_FLAGS, "--iters", "2"]) == 0
    torch.set_num_threads(before)
    return out


@pytest.fixture
def places(runs, tmp_path: Path) -> dict[str, str]:
    file = tmp_path / "notes.txt"
    file.write_text("not a checkpoint, not an image folder\n")
    folder = tmp_path / "empty"
    folder.mkdir()
    bad_csv = tmp_path / "table.csv"
    bad_csv.write_text("a,b\n1,2\n3,x\n5,6\n")
    return {**{k: str(v) for k, v in runs.items()}, "out": str(tmp_path / "run"), "file": str(file),
            "folder": str(folder), "nowhere": str(tmp_path / "nowhere"), "mnist": str(MNIST_DIR),
            "bad_csv": str(bad_csv)}  # fmt: skip


def snapshot(*folders: str) -> dict[Path, tuple[int, int]]:
    """Every file under ``folders`` with its size and modification time."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for f in folders for p in Path(f).rglob("*") if p.is_file()}


def fails_cleanly(capsys, args: list[str]) -> str:
    """Run ``glowflow ARGS`` in-process; assert exit code 2 and one line on stderr without a traceback."""
    try:
        code = main(args)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("row", ROWS)
def test_bad_input_is_one_line(row: Row, places: dict[str, str], capsys):
    if "{mnist}" in row.command and not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST files not available in {MNIST_DIR.resolve()} (../shared/data beside the repository)")
    before = snapshot(places["run"], places["moons"])
    line = fails_cleanly(capsys, shlex.split(row.command.format(**places)))
    assert row.fragment in line, line
    assert line.startswith("glowflow"), line
    assert snapshot(places["run"], places["moons"]) == before  # no eval_*.json, no picture, nothing touched
    assert not (Path(places["out"]) / "checkpoints").exists()  # nothing that --resume would trust
    if row.command.startswith("export"):  # no directory that would load, not even a partial one beside it
        assert not Path(places["out"]).exists() and not list(Path(places["out"]).parent.glob(".*partial*"))


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        ("eval {run} --limit 0", "argument --limit: must be >= 1"),
        ("manipulate {run} --from 1 --to 7 --max-per-class 0", "argument --max-per-class: must be >= 1"),
        ("sample {run} --out {file}/x.png", "cannot write"),
    ],
)
def test_bad_input_in_a_real_process(command: str, fragment: str, places: dict[str, str]):
    """The same through ``python -m glowflow``: exit code 2, one line on stderr, no traceback, no stdout."""
    args = shlex.split(command.format(**places))
    p = subprocess.run([python(), "-m", "glowflow", *args], env=subprocess_env(), capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr and fragment in p.stderr, p.stderr
    assert p.stdout == ""


def test_eval_of_a_broken_model_saves_nothing(runs, tmp_path: Path, capsys):
    """A checkpoint whose weights are NaN scores NaN: an error, and no eval_test.json holding NaN."""
    ckpt = load_checkpoint(runs["run"] / "checkpoints" / "last.pt")
    ckpt["model"] = {k: v.fill_(float("nan")) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    broken = tmp_path / "broken"
    save_checkpoint(
        {k: v for k, v in ckpt.items() if k not in ("format", "version")}, broken / "checkpoints" / "last.pt"
    )
    line = fails_cleanly(capsys, ["eval", str(broken), "--n-samples", "1", "--limit", "8", "--no-progress"])
    assert "is not finite (nan)" in line and "nothing saved" in line, line
    assert not list(broken.glob("eval_*.json"))


def test_out_of_memory_is_one_line_and_a_bug_is_not_hidden(places: dict[str, str], capsys, monkeypatch):
    """Running out of (GPU) memory is a too-large request: one line. Any other RuntimeError is a bug in glowflow:
    it keeps its traceback for the report."""
    import glowflow.runs

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(glowflow.runs, "sample_run", out_of_memory)
    line = fails_cleanly(capsys, ["sample", places["run"], "--n", "100000000"])
    assert line.startswith("glowflow sample: error: out of memory (CUDA out of memory. Tried to allocate 20.00 GiB)")
    assert "use a smaller --batch-size (or --n, --sample-n)" in line

    def bug(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(glowflow.runs, "sample_run", bug)
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        main(["sample", places["run"]])
