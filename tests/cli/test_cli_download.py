"""``glowflow train --download`` against a local HTTP server on 127.0.0.1 serving small MNIST idx files (written by
the test; the checksum tables are pointed at them), and the error without --download."""

from __future__ import annotations

from pathlib import Path

import pytest

import glowflow.data.downloader as dl
from glowflow.cli import main
from glowflow.data.idx import IDX_FILES
from glowflow.training import load_checkpoint, read_metrics
from tests.data.data_helpers import http_server, md5, write_mnist
from tests.training.train_helpers import TINY_FLAGS


def test_train_downloads_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    served = tmp_path / "server"
    write_mnist(served / "mnist", n_train=40, n_test=10, seed=0)
    for filename in dl.entry("mnist").files:
        monkeypatch.setitem(dl.entry("mnist").files, filename, md5((served / "mnist" / filename).read_bytes()))
    data = tmp_path / "data"
    out = tmp_path / "run"
    args = ["train", "--data", "mnist", "--data-dir", str(data), "--out", str(out), *TINY_FLAGS, "--iters", "2",
            "--n-bits", "5", "--pad", "32"]  # fmt: skip
    with http_server(served) as url:
        monkeypatch.setenv(dl.MIRROR_ENV, url + "{name}/")
        assert main(args) == 2  # without --download: one line saying what is missing and how to get it
        err = capsys.readouterr().err
        assert "train-images-idx3-ubyte.gz not found" in err and "--download" in err and err.count("\n") == 1
        assert main([*args, "--download"]) == 0
    for filename in IDX_FILES:
        assert (data / "mnist" / filename).read_bytes() == (served / "mnist" / filename).read_bytes()
    out_text = capsys.readouterr().out
    assert "mnist: 40 train / 10 test images, 1x32x32, 32 grey levels" in out_text  # 5 bits, padded
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [0, 2]
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["config"]["preset"] == "mnist" and ckpt["config"]["download"] is True
    assert ckpt["data"]["shape"] == [1, 32, 32] and ckpt["model_config"]["num_bins"] == 32
