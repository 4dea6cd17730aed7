import pytest
import torch

from glowflow.layers import ChannelPermutation, ChannelReverse, ChannelShuffle, Squeeze
from tests.helpers import check_flow


def test_squeeze_round_trip_and_logdet():
    y, logdet = check_flow(Squeeze(), torch.randn(2, 3, 4, 6, dtype=torch.float64))
    assert y.shape == (2, 12, 2, 3)
    assert torch.equal(logdet, torch.zeros(2, dtype=torch.float64))


def test_squeeze_layout():
    x = torch.arange(2 * 4 * 4).float().view(1, 2, 4, 4)
    y, _ = Squeeze()(x)
    for c in range(2):
        for di in range(2):
            for dj in range(2):
                assert torch.equal(y[0, 4 * c + 2 * di + dj], x[0, c, di::2, dj::2])


@pytest.mark.parametrize("layer", [ChannelReverse(5), ChannelShuffle(5)])
def test_permutations(layer):
    x = torch.randn(3, 5, 2, 2, dtype=torch.float64)
    y, logdet = check_flow(layer, x)
    assert torch.equal(torch.sort(y, dim=1).values, torch.sort(x, dim=1).values)
    v = torch.randn(3, 5, dtype=torch.float64)
    check_flow(layer, v)


def test_reverse_is_reverse_and_shuffle_is_saved():
    x = torch.arange(4.0).view(1, 4)
    assert torch.equal(ChannelReverse(4)(x)[0], torch.tensor([[3.0, 2.0, 1.0, 0.0]]))
    a = ChannelShuffle(8)
    b = ChannelShuffle(8)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.perm, b.perm)


def test_invalid_permutation():
    with pytest.raises(ValueError, match="not a permutation"):
        ChannelPermutation(torch.tensor([0, 0, 1]))
