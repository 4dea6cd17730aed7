import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from glowflow.errors import NotInitializedError
from glowflow.layers import ActNorm
from tests.helpers import check_flow, max_abs, randomize_


@pytest.mark.parametrize("shape", [(16, 3, 5, 4), (64, 6)])
def test_data_dependent_init_standardises_output(shape):
    x = (
        torch.randn(shape, dtype=torch.float64)
        * torch.linspace(0.1, 5, shape[1], dtype=torch.float64).view(1, -1, *([1] * (len(shape) - 2)))
        + 3.0
    )
    layer = ActNorm(shape[1]).double()
    y, _ = layer(x)
    dims = [0, *range(2, len(shape))]
    assert y.mean(dims).abs().max() < 1e-10
    assert (y.std(dims, unbiased=False) - 1).abs().max() < 1e-5
    assert bool(layer.initialized)


@pytest.mark.parametrize("shape", [(3, 4, 3, 2), (5, 7)])
def test_round_trip_and_logdet(shape):
    layer = ActNorm(shape[1]).double()
    layer(torch.randn(shape, dtype=torch.float64))
    randomize_(layer, 0.5)
    _, logdet = check_flow(layer, torch.randn(shape, dtype=torch.float64))
    positions = 1 if len(shape) == 2 else shape[2] * shape[3]
    assert torch.allclose(logdet, positions * layer.log_scale.sum().expand(shape[0]))


def test_constant_channel_keeps_unit_scale():
    x = torch.randn(8, 3, 4, 4)
    x[:, 1] = 2.5
    layer = ActNorm(3)
    y, _ = layer(x)
    assert layer.log_scale[1].item() == 0.0
    assert torch.equal(y[:, 1], torch.zeros_like(y[:, 1]))
    assert (y[:, [0, 2]].std(unbiased=False) - 1).abs() < 1e-5


def test_init_happens_once_and_only_on_forward():
    layer = ActNorm(4)
    layer(torch.randn(8, 4, 3, 3) * 10)
    bias = layer.bias.detach().clone()
    layer(torch.randn(8, 4, 3, 3))
    assert torch.equal(layer.bias, bias)


def test_inverse_before_init_is_an_error():
    with pytest.raises(NotInitializedError, match="before initialisation"):
        ActNorm(3).inverse(torch.randn(2, 3, 4, 4))


def test_state_dict_round_trip_does_not_reinitialise():
    layer = ActNorm(3)
    layer(torch.randn(10, 3, 4, 4) * 4 + 1)
    state = layer.state_dict()
    assert "initialized" in state and bool(state["initialized"])
    fresh = ActNorm(3)
    fresh.load_state_dict(state)
    fresh(torch.randn(10, 3, 4, 4) * 100)  # would change the parameters if it re-initialised
    assert torch.equal(fresh.bias, layer.bias) and torch.equal(fresh.log_scale, layer.log_scale)
    # and loading an uninitialised state makes the layer initialise again
    fresh.load_state_dict(ActNorm(3).state_dict())
    assert not fresh.is_initialized()


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    data = torch.randn(2 * world, 3, 4, 4) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1) + 5
    layer = ActNorm(3)
    layer(data[rank * 2 : rank * 2 + 2])  # each rank sees a different shard
    torch.save({"bias": layer.bias.detach(), "log_scale": layer.log_scale.detach()}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_process_gloo_init_gives_identical_parameters(tmp_path):
    world = 2
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world))
    # every rank computes its parameters from the same all-reduced sums: the same computation, bit-identical
    assert torch.equal(r0["bias"], r1["bias"]) and torch.equal(r0["log_scale"], r1["log_scale"])
    # the synchronised statistics are those of the whole (concatenated) batch, summed in another order: float32
    # round-off only
    torch.manual_seed(0)
    data = torch.randn(2 * world, 3, 4, 4) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1) + 5
    single = ActNorm(3)
    single(data)
    assert max_abs(single.bias, r0["bias"]) < 1e-5 and max_abs(single.log_scale, r0["log_scale"]) < 1e-5
    assert os.path.exists(tmp_path / "rank1.pt")
