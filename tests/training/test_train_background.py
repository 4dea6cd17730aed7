"""The background model of the likelihood-ratio OOD score: batch mutation (in memory and streamed alike),
``background_for=RUN`` (data and architecture taken from RUN) and exact resumption of a mutated run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from glowflow.data.arrays import ArraySource
from glowflow.data.sources import TensorSource
from glowflow.data.streaming import TrainBatches
from glowflow.training import train
from glowflow.training.batches import MutatedBatches, mutate
from glowflow.training.config import resolve_config
from tests.data.stream_helpers import random_images
from tests.training.train_helpers import TINY, TINY_TOY, max_diff, params


def test_mutate_replaces_the_stated_fraction_with_uniform_levels():
    k = torch.zeros(200, 1, 16, 16, dtype=torch.uint8)
    assert torch.equal(mutate(k, 0.0, 256), k)
    out = mutate(k, 0.2, 17)
    assert out.dtype == torch.uint8 and out.shape == k.shape and int(out.max()) <= 16
    # a replaced dimension keeps level 0 with probability 1/17: the changed fraction is 0.2 * 16/17 = 0.188;
    # over 51,200 dimensions its standard deviation is 0.0017
    changed = (out != 0).double().mean().item()
    assert abs(changed - 0.2 * 16 / 17) < 0.01
    counts = torch.bincount(out[out != 0].long(), minlength=17)[1:].double()
    assert counts.min() > 0.8 * counts.mean()  # the new levels are uniform over 1..16 (~600 each)


def test_batches_mutate_every_draw_but_not_the_stored_data():
    x = torch.zeros(100, 1, 8, 8, dtype=torch.uint8)
    batches = MutatedBatches(TensorSource(x, num_bins=17), 32, 64, 0, mutation_rate=0.5, num_bins=17)
    init, _ = batches.init_batch()
    step, _ = batches.next()
    for b in (init, step):
        assert 0.4 < (b != 0).double().mean().item() < 0.55  # 0.5 * 16/17 = 0.47
    assert int(x.max()) == 0
    with pytest.raises(ValueError, match=r"mutation_rate must lie in \(0, 1\]"):
        MutatedBatches(TensorSource(x, num_bins=17), 32, 64, 0, mutation_rate=0.0, num_bins=17)


def test_streamed_batches_mutate_as_the_in_memory_ones(tmp_path: Path):
    """The same global noise stream mutates the same draws: a .npy read batch by batch gives the batches of the
    array in memory, bit for bit (the same computation on the same values)."""
    x = torch.from_numpy(random_images(50, 1, 8, seed=3))
    np.save(tmp_path / "x.npy", x.numpy())
    drawn = []
    for source in (TensorSource(x, num_bins=256), ArraySource(tmp_path / "x.npy")):
        torch.manual_seed(7)
        batches = MutatedBatches(source, 16, 32, 0, mutation_rate=0.2, num_bins=256)
        drawn.append([batches.init_batch()[0], batches.next()[0], batches.next()[0]])
    for memory, streamed in zip(*drawn, strict=True):
        assert torch.equal(memory, streamed)
    plain = TrainBatches(TensorSource(x, num_bins=256), 16, 32, 0)
    plain.init_batch()
    assert not torch.equal(plain.next()[0], drawn[0][1])  # the mutation changed the batch


def test_a_streamed_mutated_run_trains_the_in_memory_model(tmp_path: Path):
    """--mutation-rate on a .npy file: read batch by batch (with a reader process) or loaded whole, one model
    (measured difference: 0; the computation is the same)."""
    np.save(tmp_path / "x.npy", random_images(80, 1, 8, seed=5))
    kwargs = dict(TINY, data="array", data_dir=str(tmp_path / "x.npy"), iters=4, mutation_rate=0.2)
    memory = train(out=str(tmp_path / "memory"), input="memory", **kwargs)
    streamed = train(out=str(tmp_path / "stream"), input="stream", workers=1, **kwargs)
    assert memory.config.mutation_rate == 0.2
    assert max_diff(params(memory.model), params(streamed.model)) <= 1e-7


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bg") / "in"
    train(out=str(out), iters=2, **{**TINY, "hidden": 12})
    return out


def test_background_for_takes_data_and_architecture_from_the_run(run: Path):
    cfg = resolve_config(background_for=str(run), iters=3)
    assert (cfg.data, cfg.levels, cfg.steps, cfg.hidden, cfg.mutation_rate) == ("digits", 2, 1, 12, 0.2)
    assert cfg.lr == 2e-3 and cfg.iters == 3  # the preset's optimisation, the flags' schedule
    cfg = resolve_config(background_for=str(run), mutation_rate=0.1, hidden=16)
    assert (cfg.mutation_rate, cfg.hidden) == (0.1, 16)  # explicit values win
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        resolve_config(background_for=str(run.parent / "missing"))
    with pytest.raises(ValueError, match=r"'mutation_rate' must lie in \[0, 1\]"):
        resolve_config(mutation_rate=1.5)
    with pytest.raises(ValueError, match="'mutation_rate' applies to image data only"):
        resolve_config(data="moons", mutation_rate=0.2)


def test_background_run_resumes_exactly_and_refuses_a_background_of_a_background(run: Path, tmp_path: Path):
    schedule = {k: v for k, v in TINY.items() if k not in ("levels", "steps", "hidden")}  # architecture from RUN
    settings = {**schedule, "background_for": str(run)}
    full = train(out=str(tmp_path / "full"), iters=8, **settings)
    assert full.config.mutation_rate == 0.2 and full.config.hidden == 12
    train(out=str(tmp_path / "half"), iters=4, **settings)
    resumed = train(out=str(tmp_path / "half"), resume=True, iters=8)
    assert max_diff(params(full.model), params(resumed.model)) <= 1e-6  # measured: 0 on CPU
    plain = train(out=str(tmp_path / "plain"), iters=8, **{**TINY, "hidden": 12})
    assert max_diff(params(full.model), params(plain.model)) > 1e-3  # the mutation changed the batches
    with pytest.raises(ValueError, match="is itself a background model"):
        resolve_config(background_for=str(tmp_path / "full"))


def test_mutation_refused_for_rows(tmp_path: Path):
    toy = tmp_path / "toy"
    train(out=str(toy), iters=2, **TINY_TOY)
    with pytest.raises(ValueError, match="'mutation_rate' applies to image data only"):
        resolve_config(background_for=str(toy))
