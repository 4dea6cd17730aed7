"""Logs that read well: plain progress lines (no ``\\r`` redraws) when stderr is not a terminal, their interval
(``$GLOWFLOW_PROGRESS_INTERVAL``), and the wording of counts ("1 draw", "levels per channel" for colour images)."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glowflow.cli import main
from glowflow.progress import DEFAULT_INTERVAL_S, INTERVAL_ENV, Progress, default_interval
from glowflow.wording import levels_text, plural
from tests.training.train_helpers import TINY_FLAGS

WITH_PROGRESS = [f for f in TINY_FLAGS if f != "--no-progress"]
PLAIN_LINE = re.compile(r"^train: step (\d+)/4 \(\d+%\), [0-9.e+]+ step/s, \d+:\d\d elapsed")


def test_train_log_file_has_plain_lines_and_no_carriage_returns(tmp_path: Path, capsys, monkeypatch):
    """``glowflow train 2> log``: every progress report is a whole line (readable with ``less``)."""
    log = tmp_path / "train.log"
    monkeypatch.setenv(INTERVAL_ENV, "0")  # a line at every step
    with log.open("w") as stderr:
        monkeypatch.setattr(sys, "stderr", stderr)  # a real file, as with ``2> train.log``
        code = main(["train", "--out", str(tmp_path / "run"), *WITH_PROGRESS, "--iters", "4", "--progress"])
    text, out = log.read_text(), capsys.readouterr().out
    assert code == 0, text
    assert "\r" not in text and "\r" not in out
    steps = [int(m.group(1)) for line in text.splitlines() if (m := PLAIN_LINE.match(line))]
    assert steps == [1, 2, 3, 4], text  # one line per step at interval 0, none repeated at the end
    assert "done: 4 steps" in out


def test_eval_progress_is_plain_lines_and_says_one_draw(tmp_path: Path, capsys, monkeypatch):
    """stderr captured (not a terminal): eval writes plain ``eval test: img ...`` lines, no ``\\r``."""
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY_FLAGS, "--iters", "1"]) == 0
    assert "done: 1 step, " in capsys.readouterr().out
    monkeypatch.setenv(INTERVAL_ENV, "0")
    assert main(["eval", str(run), "--n-samples", "1", "--batch-size", "100"]) == 0
    out, err = capsys.readouterr()
    assert "\r" not in err and "\r" not in out
    assert [line.split(",")[0] for line in err.splitlines()] == [
        "eval test: img 100/297 (34%)", "eval test: img 200/297 (67%)", "eval test: img 297/297 (100%)",
    ]  # fmt: skip
    assert "(dequantization noise averaged over 1 draw; 17 grey levels)" in out
    assert main(["eval", str(run), "--n-samples", "1", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_colour_images_say_levels_per_channel(tmp_path: Path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    run = tmp_path / "run"
    assert main(["train", "--data", "folder", "--data-dir", str(folder), "--out", str(run), *TINY_FLAGS,
                 "--iters", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "3x8x8, 256 levels per channel" in out and "1 noise draw each; bits/dim at 256 levels per channel" in out
    assert main(["eval", str(run), "--n-samples", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "(dequantization noise averaged over 2 draws; 256 levels per channel)" in out and "grey" not in out
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "(3x8x8, 256 levels per channel)" in out and "1 of 1 step, " in out and "1 process; 0 skipped" in out


def test_plain_lines_follow_the_interval():
    every = io.StringIO()
    with Progress(5, unit="img", desc="eval", interval=0, stream=every) as bar:
        for _ in range(5):
            bar.update(1)
    lines = every.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [f"eval: img {i}/5 ({20 * i}%)" for i in range(1, 6)]
    assert "left" in lines[0] and "left" not in lines[-1]  # nothing is left at the end; no repeated closing line
    rare = io.StringIO()
    with Progress(5, interval=3600, stream=rare) as bar:
        bar.update(2)
        bar.update(3)
    assert rare.getvalue().startswith("step 5/5 (100%), ") and rare.getvalue().count("\n") == 1  # the closing line
    silent = io.StringIO()
    with Progress(5, interval=0, stream=silent, enabled=False) as bar:
        bar.update(5)
    assert silent.getvalue() == ""


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert default_interval() == DEFAULT_INTERVAL_S
    monkeypatch.setenv(INTERVAL_ENV, "2.5")
    assert default_interval() == 2.5 and Progress(3, stream=io.StringIO()).interval == 2.5
    for bad in ("soon", "-1", "nan", "inf"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with pytest.raises(
            ValueError, match=f"GLOWFLOW_PROGRESS_INTERVAL must be a number of seconds >= 0, got '{bad}'"
        ):
            default_interval()


def test_wording():
    assert [plural(n, "draw") for n in (0, 1, 2)] == ["0 draws", "1 draw", "2 draws"]
    assert plural(1, "process") == "1 process" and plural(4, "process") == "4 processes"
    assert levels_text(17, 1) == "17 grey levels" and levels_text(256, 3) == "256 levels per channel"
