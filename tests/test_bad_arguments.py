"""Bad arguments to the Python API: one ``ValueError`` (or ``glowflow.errors.*``) naming the argument and the allowed
range, never a ``TypeError`` / ``IndexError`` from deep inside, a silent clamp or a wrong answer.

Convention - one list of rows per area, registered in ``TABLE``; to cover a new public function, add rows there:

    Bad("evaluate_run limit=0", lambda o: evaluate_run(o.run, limit=0), "limit must be >= 1 or none, got 0")

``call(o)`` makes the call with the module's objects ``o``: ``o.glow`` (an initialised 1x8x8 Glow with 17 levels),
``o.tabular`` (a 2-D TabularGlow), ``o.run`` (:func:`glowflow.runs.open_run` of a tiny trained class-conditional
digits run), ``o.k`` (a batch of its discrete images) and ``o.tmp`` (a scratch folder holding ``notes.txt``). The
fragment is a piece of the message; ``error`` the exception class expected (``ValueError`` by default: every
glowflow error about input is one). The message must be one line.

The end of the file checks what issue 11 found and main fixed: float64 and NumPy input, ``TabularGlow.bits_per_dim``,
the lazy ``glowflow.training``, the idx reader's checksum identity, csv delimiters.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

import glowflow
from glowflow import Glow, TabularGlow, reduce_bits, to_continuous, to_uint8
from glowflow.data import idx, load_dataset, pad_images, sample_toy
from glowflow.errors import DataError, NotInitializedError
from glowflow.layers.dequantization import bits_per_dim, quantize
from glowflow.runs import (
    evaluate_run,
    interpolate_run,
    manipulate_run,
    open_run,
    run_info,
    sample_picture_of,
    sample_run,
)
from glowflow.training import (
    draw_samples,
    evaluate,
    find_checkpoint,
    load_model,
    prepare_data,
    read_metrics,
    resolve_config,
)
from glowflow.training.devices import resolve_device
from tests.data.data_helpers import MNIST_DIR, md5, write_mnist
from tests.training.train_helpers import TINY, python, subprocess_env


class Bad(NamedTuple):
    name: str
    call: Callable[[Any], object]
    fragment: str
    error: type[Exception] = ValueError


MODEL_ROWS = [
    Bad("Glow levels=0", lambda o: Glow((1, 8, 8), levels=0), "levels must be a positive integer, got 0"),
    Bad("Glow num_bins=1", lambda o: Glow((1, 8, 8), num_bins=1), "between 2 and 65536, got 1"),
    Bad("Glow in_shape (8, 8)", lambda o: Glow((8, 8)), "in_shape must be (C, H, W)"),
    Bad("Glow 8x8 levels=4", lambda o: Glow((1, 8, 8), levels=4, steps=1, hidden=4), "not divisible by 2**levels"),
    Bad("Glow coupling", lambda o: Glow((1, 8, 8), coupling="spline"), "unknown coupling 'spline'"),
    Bad("TabularGlow dim=1", lambda o: TabularGlow(1), "dim must be an integer >= 2"),
    Bad("TabularGlow hidden=0", lambda o: TabularGlow(2, hidden=0), "hidden must be a positive integer, got 0"),
    Bad("sample n=0", lambda o: o.glow.sample(0), "n (the number of samples) must be a positive integer, got 0"),
    Bad("sample n=2.5", lambda o: o.glow.sample(2.5), "must be a positive integer, got 2.5"),
    Bad("sample temperature=-1", lambda o: o.glow.sample(2, -1.0), "temperature must be a number >= 0, got -1.0"),
    Bad("sample temperature=nan", lambda o: o.glow.sample(2, math.nan), "temperature must be a number >= 0"),
    Bad("sample temperature='hot'", lambda o: o.glow.sample(2, "hot"), "temperature must be a number >= 0"),
    Bad(
        "sample untrained",
        lambda o: Glow((1, 8, 8), levels=1, steps=1, hidden=4).sample(2),
        "not been initialised",
        NotInitializedError,
    ),  # fmt: skip
    Bad("bits_per_dim n_samples=0", lambda o: o.glow.bits_per_dim(o.k, n_samples=0), "n_samples must be a positive"),
    Bad("bits_per_dim level 17", lambda o: o.glow.bits_per_dim(o.k + 17), "pixel values must lie in [0, 16]"),
    Bad("log_prob shape", lambda o: o.glow.log_prob(torch.zeros(2, 8, 8)), "expected input of shape (B, 1, 8, 8)"),
    Bad("log_prob list", lambda o: o.tabular.log_prob([[0.0, 1.0]]), "expected a torch.Tensor or numpy array"),
    Bad("log_prob NaN", lambda o: o.tabular.log_prob(torch.full((2, 2), math.nan)), "input contains NaN or inf"),
    Bad("log_prob integers", lambda o: o.glow.log_prob(o.k), "expected floating-point continuous data"),
    Bad("label, unconditional", lambda o: o.tabular.log_prob(torch.zeros(2, 2), 1), "not class-conditional"),
    Bad(
        "decode encode's pair",
        lambda o: o.glow.decode(o.glow.encode(o.k.double() / 17 - 0.5)),
        "got encode's whole (zs, logdet) pair: pass encode(x)[0]",
    ),  # fmt: skip
    Bad("decode one tensor", lambda o: o.glow.decode(torch.zeros(2, 4, 4, 4)), "latent tensors, as returned by encode"),
]

LAYER_ROWS = [
    Bad(
        "to_continuous num_bins=0",
        lambda o: to_continuous(torch.zeros(2), 0.5, 0),
        "num_bins must be an integer between 2 and 65536, got 0",
    ),  # fmt: skip
    Bad("quantize num_bins=1", lambda o: quantize(torch.zeros(2), 1), "num_bins must be an integer between 2"),
    Bad("to_uint8 num_bins=2.5", lambda o: to_uint8(torch.zeros(2), 2.5), "got 2.5"),
    Bad("bits_per_dim num_dims=0", lambda o: bits_per_dim(torch.zeros(2), 0), "num_dims must be >= 1, got 0"),
    Bad("reduce_bits 9", lambda o: reduce_bits(o.k.to(torch.uint8), 9), "n_bits must be between 1 and 8, got 9"),
    Bad("pad_images 4", lambda o: pad_images(o.k, 4), "cannot pad 8x8 images to 4x4"),
]

TRAINING_ROWS = [
    Bad("train iters=0", lambda o: glowflow.train(iters=0, out=str(o.tmp / "run")), "'iters' must be >= 1, got 0"),
    Bad(
        "train test_fraction=0",
        lambda o: glowflow.train(data=np.zeros((10, 2), np.float32), test_fraction=0),
        "test_fraction must lie strictly between 0 and 1",
    ),  # fmt: skip
    Bad("train labels with a name", lambda o: glowflow.train(data="digits", labels=[1]), "go with in-memory data"),
    Bad("resolve_config seed=-1", lambda o: resolve_config(seed=-1), "'seed' must lie in 0..2147483647, got -1"),
    Bad("resolve_config seed=2**40", lambda o: resolve_config(seed=2**40), "'seed' must lie in 0..2147483647"),
    Bad("resolve_config lr=inf", lambda o: resolve_config(lr=math.inf), "'lr' must be a positive number, got inf"),
    Bad("resolve_config hidden='8'", lambda o: resolve_config(hidden="8"), "'hidden' expects an integer"),
    Bad("resolve_config temperatures", lambda o: resolve_config(temperatures=[-1.0]), "'temperatures' must be a"),
    Bad("resolve_config device", lambda o: resolve_config(device="cuda:x"), "'device' must be cpu, cuda, cuda:N"),
    Bad("resolve_config typo", lambda o: resolve_config(hiden=3), "unknown config key 'hiden'"),
    Bad("evaluate batch_size=0", lambda o: evaluate(o.glow, o.k, None, 1, 0), "batch_size must be >= 1, got 0"),
    Bad("evaluate n_samples=0", lambda o: evaluate(o.glow, o.k, None, 0), "n_samples must be >= 1, got 0"),
    Bad("evaluate seed=-1", lambda o: evaluate(o.glow, o.k, None, seed=-1), "seed must lie in 0..2147483647"),
    Bad("evaluate nothing", lambda o: evaluate(o.glow, o.k[:0], None), "nothing to evaluate"),
    Bad("draw_samples n=0", lambda o: draw_samples(o.glow, 0, 0.7), "must be a positive integer, got 0"),
    Bad("draw_samples seed=2**40", lambda o: draw_samples(o.glow, 2, 0.7, seed=2**40), "seed must lie in 0.."),
    Bad("load_model prefer", lambda o: load_model(o.run.run_dir, prefer="newest"), "prefer must be one of best, last"),
    Bad("load_model device", lambda o: load_model(o.run.run_dir, "tpu"), "unknown device 'tpu'"),
    Bad("prepare_data eval_size=0", lambda o: prepare_data(resolve_config(), eval_size=0), "eval_size must be >= 1"),
    Bad(
        "find_checkpoint missing",
        lambda o: find_checkpoint(o.tmp / "nowhere"),
        "no such run directory",
        FileNotFoundError,
    ),  # fmt: skip
    Bad("resolve_device tpu", lambda o: resolve_device("tpu"), "unknown device 'tpu'"),
]

RUN_ROWS = [
    Bad("evaluate_run limit=0", lambda o: evaluate_run(o.run, limit=0), "limit must be >= 1 or none, got 0"),
    Bad("evaluate_run limit=-5", lambda o: evaluate_run(o.run, limit=-5), "limit must be >= 1 or none, got -5"),
    Bad("evaluate_run batch_size=0", lambda o: evaluate_run(o.run, batch_size=0), "batch_size must be >= 1"),
    Bad("evaluate_run n_samples=0", lambda o: evaluate_run(o.run, n_samples=0), "n_samples must be >= 1, got 0"),
    Bad("evaluate_run split", lambda o: evaluate_run(o.run, "val"), "split must be one of train, test, got 'val'"),
    Bad("evaluate_run seed=-1", lambda o: evaluate_run(o.run, seed=-1), "seed must lie in 0..2147483647, got -1"),
    Bad("sample_run n=0", lambda o: sample_run(o.run, 0), "n must be >= 1, got 0"),
    Bad("sample_run temperature", lambda o: sample_run(o.run, 2, -1), "temperature must be a number >= 0, got -1"),
    Bad("sample_run label=12", lambda o: sample_run(o.run, 2, 0.7, 12), "label 12 out of range"),
    Bad("sample_run label='cat'", lambda o: sample_run(o.run, 2, 0.7, "cat"), "unknown class 'cat'"),
    Bad(
        "sample_picture_of ncol=0",
        lambda o: sample_picture_of(o.run, o.k.to(torch.uint8), "", 0),
        "ncol must be >= 1 or none, got 0",
    ),  # fmt: skip
    Bad("interpolate_run frames=1", lambda o: interpolate_run(o.run, frames=1), "frames must be >= 2, got 1"),
    Bad("interpolate_run pairs=0", lambda o: interpolate_run(o.run, pairs=0), "pairs must be >= 1, got 0"),
    Bad("interpolate_run split", lambda o: interpolate_run(o.run, split="val"), "split must be one of train, test"),
    Bad("interpolate_run indices=(1,)", lambda o: interpolate_run(o.run, (1,)), "indices must be two image indices"),
    Bad("interpolate_run indices<0", lambda o: interpolate_run(o.run, (0, -1)), "indices must be >= 0, got -1"),
    Bad(
        "interpolate_run index 10**6",
        lambda o: interpolate_run(o.run, (0, 10**6)),
        "--index 1000000 out of range: the test split has 297 images",
    ),  # fmt: skip
    Bad(
        "manipulate_run max_per_class=0",
        lambda o: manipulate_run(o.run, 1, 7, max_per_class=0),
        "max_per_class must be >= 1, got 0",
    ),  # fmt: skip
    Bad("manipulate_run n=0", lambda o: manipulate_run(o.run, 1, 7, n=0), "n must be >= 1, got 0"),
    Bad("manipulate_run strengths=()", lambda o: manipulate_run(o.run, 1, 7, strengths=()), "at least one number"),
    Bad(
        "manipulate_run strengths nan",
        lambda o: manipulate_run(o.run, 1, 7, strengths=(0.0, math.nan)),
        "strengths must be a finite number, got nan",
    ),  # fmt: skip
    Bad("manipulate_run same class", lambda o: manipulate_run(o.run, 3, "3"), "name the same class (3)"),
    Bad("open_run prefer", lambda o: open_run(o.run.run_dir, prefer="x"), "prefer must be one of best, last"),
    Bad("open_run device", lambda o: open_run(o.run.run_dir, device="tpu"), "unknown device 'tpu'"),
    Bad("run_info missing", lambda o: run_info(o.tmp / "nowhere"), "no such run directory", FileNotFoundError),
]

DATA_ROWS = [
    Bad("load_dataset name", lambda o: load_dataset("imagenet"), "unknown data set 'imagenet'"),
    Bad("load_dataset split", lambda o: load_dataset("digits", split="val"), "split must be 'train' or 'test'"),
    Bad("load_dataset seed=-1", lambda o: load_dataset("digits", seed=-1), "seed must lie in 0..2147483647"),
    Bad("load_dataset folder, no dir", lambda o: load_dataset("folder"), "needs data_dir"),
    Bad(
        "load_dataset folder=file",
        lambda o: load_dataset("folder", o.tmp / "notes.txt"),
        "is a file, not a folder",
        DataError,
    ),  # fmt: skip
    Bad("load_dataset tabular=text", lambda o: load_dataset("tabular", o.tmp / "notes.txt"), "notes.txt", DataError),
    Bad("sample_toy n=-1", lambda o: sample_toy("moons", -1), "n must be a non-negative integer, got -1"),
    Bad("sample_toy name", lambda o: sample_toy("spiral", 3), "unknown toy density 'spiral'"),
]

TABLE = {"models": MODEL_ROWS, "layers": LAYER_ROWS, "training": TRAINING_ROWS, "runs": RUN_ROWS, "data": DATA_ROWS}
ROWS = [pytest.param(row, id=f"{area}: {row.name}") for area, rows in TABLE.items() for row in rows]


@pytest.fixture(scope="module")
def objects(tmp_path_factory) -> SimpleNamespace:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("bad-arguments")
    (tmp / "notes.txt").write_text("not data\n")
    glowflow.train(out=str(tmp / "digits"), iters=2, conditional=True, **TINY)
    run = open_run(tmp / "digits", "cpu")
    k = torch.randint(0, 17, (4, 1, 8, 8))
    glow = Glow((1, 8, 8), levels=1, steps=1, hidden=4, num_bins=17)
    glow.bits_per_dim(k)  # ActNorm initialisation
    tabular = TabularGlow(2, steps=1, hidden=4)
    tabular.log_prob(torch.randn(8, 2))
    torch.set_num_threads(before)
    return SimpleNamespace(glow=glow, tabular=tabular, run=run, k=k, tmp=tmp)


@pytest.mark.parametrize("row", ROWS)
def test_bad_argument_is_one_clear_error(row: Bad, objects: SimpleNamespace):
    with pytest.raises(Exception) as e:  # the exact class is checked below
        row.call(objects)
    assert isinstance(e.value, row.error), f"{type(e.value).__name__}: {e.value}"
    message = str(e.value)
    assert row.fragment in message and "\n" not in message, message
    assert not list(objects.run.run_dir.glob("eval_*.json"))  # a failed evaluate_run saves nothing


def test_a_missing_gpu_index_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"--device cuda:3: there is no such GPU here \(1 GPU: cuda:0..cuda:0\)"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


def test_numpy_scalars_are_numbers(objects: SimpleNamespace):
    torch.manual_seed(0)
    a = objects.glow.sample(3, np.float32(0.5), generator=torch.Generator().manual_seed(1))
    b = objects.glow.sample(3, 0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)  # the same computation: np.float32(0.5) == 0.5 exactly


# ---- what main fixed, verified -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["glow", "tabular"])
def test_float64_and_numpy_input_is_cast_to_the_model_dtype(kind: str, objects: SimpleNamespace):
    """``log_prob`` / ``encode`` of float64 tensors and NumPy arrays on a float32 model: cast, the same numbers."""
    model = getattr(objects, kind)
    shape = (5, 1, 8, 8) if kind == "glow" else (5, 2)
    x64 = torch.rand(shape, dtype=torch.float64) - 0.5
    reference = model.log_prob(x64.float())
    for x in (x64, x64.numpy()):
        lp = model.log_prob(x)
        assert lp.dtype == torch.float32 and torch.equal(lp, reference)  # the cast is the first step: same computation
        zs, logdet = model.encode(x)
        assert all(z.dtype == torch.float32 for z in zs) and logdet.shape == (5,)
    assert "cast to the model's" in type(model).log_prob.__doc__ and "cast to the model's" in model.encode.__doc__


def test_tabular_bits_per_dim_is_nll_per_dimension_in_bits(objects: SimpleNamespace):
    x = torch.randn(6, 2)
    expected = -objects.tabular.log_prob(x) / (2 * math.log(2.0))
    assert torch.allclose(objects.tabular.bits_per_dim(x), expected, rtol=1e-6, atol=0)


def test_training_module_after_a_bare_import_in_a_fresh_process():
    code = "import glowflow; print(glowflow.training.load_model.__name__, glowflow.train.__name__)"
    p = subprocess.run([python(), "-c", code], env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.split() == ["load_model", "train"], p.stderr


def test_idx_reader_refuses_the_other_data_sets_files(tmp_path: Path, monkeypatch):
    """Files whose MD5 is one data set's are refused as the other's (here the table knows our written files as
    MNIST's, as it knows the published ones)."""
    write_mnist(tmp_path, n_train=5, n_test=3)
    written = {f.name: md5(f.read_bytes()) for f in tmp_path.glob("*.gz")}
    monkeypatch.setattr(idx.DOWNLOADS["mnist"], "files", written)
    assert len(load_dataset("mnist", tmp_path)) == 5
    with pytest.raises(DataError, match=r"is MNIST's file \(by its MD5\), not Fashion-MNIST's.*--data mnist"):
        load_dataset("fashion-mnist", tmp_path)


def test_idx_reader_refuses_real_mnist_as_fashion_mnist():
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST files not available in {MNIST_DIR.resolve()} (../shared/data beside the repository)")
    with pytest.raises(DataError, match=r"is MNIST's file \(by its MD5\), not Fashion-MNIST's"):
        load_dataset("fashion-mnist", MNIST_DIR, split="test")


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_csv_delimiter_is_detected(tmp_path: Path, delimiter: str):
    rows = [[1.5, -2.0, 3.0], [4.0, 5.25, -6.0], [7.0, 8.0, 9.5]]
    with_header = tmp_path / "h.csv"
    with_header.write_text("\n".join([delimiter.join("abc"), *(delimiter.join(map(str, r)) for r in rows)]) + "\n")
    plain = tmp_path / "p.csv"
    plain.write_text("\n".join(delimiter.join(map(str, r)) for r in rows * 4) + "\n")
    got = torch.cat([load_dataset("tabular", with_header, s).data for s in ("train", "test")])
    assert sorted(got.tolist()) == sorted(rows)  # the header row is skipped, every row parsed in full
    assert sum(len(load_dataset("tabular", plain, s)) for s in ("train", "test")) == 12  # no row taken as a header


def test_read_metrics_of_a_run_directory(objects: SimpleNamespace):
    records = read_metrics(objects.run.run_dir)
    assert records == read_metrics(objects.run.run_dir / "metrics.jsonl") and [r["step"] for r in records] == [0, 2]
    assert read_metrics(objects.tmp / "starting") == []  # not written yet: no records (a watcher polls this)
