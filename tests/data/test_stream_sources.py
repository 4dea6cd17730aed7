"""The source protocol: in-memory, subset, concatenated and transformed sources, loading to memory, the choice of
input path."""

from __future__ import annotations

import pytest
import torch

from glowflow.data import pad_images
from glowflow.data.sources import (
    ConcatSource,
    SubsetSource,
    TensorSource,
    TransformedSource,
    check_indices,
    choose_input,
    to_memory,
)
from glowflow.errors import DataError
from glowflow.layers.dequantization import reduce_bits
from glowflow.preprocessing import ImagePreprocessing
from tests.data.stream_helpers import random_images


def images(n: int = 20) -> TensorSource:
    x = torch.from_numpy(random_images(n, 3, 4))
    return TensorSource(x, torch.arange(n) % 7, num_bins=256, name="random")


def test_tensor_source_gathers_in_order_with_repeats():
    src = images()
    idx = torch.tensor([5, 0, 5, 19])
    x, y = src.get(idx)
    assert torch.equal(x, src.x[idx]) and torch.equal(y, torch.tensor([5, 0, 5, 5]))
    assert src.shape == (3, 4, 4) and src.nbytes == 20 * 48 and src.is_image
    assert src.describe() == "random: 20 images, 3x4x4, 256 levels"


def test_tabular_tensor_source():
    x = torch.randn(6, 2)
    src = TensorSource(x)
    assert src.shape == (2,) and src.num_bins is None and src.nbytes == 6 * 2 * 4
    assert torch.equal(src.get([1, 1])[0], x[[1, 1]]) and src.get([0])[1] is None


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(2, 1, 2, 2), "uint8"),  # float images
        (torch.zeros(2, 3, dtype=torch.uint8), "uint8 or"),  # integer table
    ],
)
def test_tensor_source_rejects_bad_data(bad, match):
    with pytest.raises(ValueError, match=match):
        TensorSource(bad, num_bins=256)


def test_image_source_needs_levels_and_labels_of_the_right_length():
    x = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match="num_bins"):
        TensorSource(x)
    with pytest.raises(ValueError, match="3 integers"):
        TensorSource(x, torch.zeros(2, dtype=torch.long), num_bins=256)


def test_indices_are_checked():
    with pytest.raises(IndexError, match="index 20 is out of range for a data set of 20"):
        images().get([20])
    with pytest.raises(IndexError, match="index -1"):
        check_indices(torch.tensor([-1]), 5)
    with pytest.raises(ValueError, match="integers"):
        check_indices(torch.tensor([0.5]), 5)
    assert check_indices([], 5).dtype == torch.long


def test_subset_renumbers():
    src = images()
    sub = SubsetSource(src, torch.tensor([3, 9, 4]))
    assert len(sub) == 3 and torch.equal(sub.labels, src.labels[[3, 9, 4]])
    assert torch.equal(sub.get([2, 0])[0], src.x[[4, 3]])


def test_concat_maps_indices_to_parts():
    a, b = images(5), TensorSource(torch.from_numpy(random_images(7, 3, 4, seed=1)), torch.arange(7), 256)
    cat = ConcatSource([a, b])
    whole_x, whole_y = torch.cat([a.x, b.x]), torch.cat([a.labels, b.labels])
    idx = torch.tensor([11, 0, 5, 4, 11, 6])
    x, y = cat.get(idx)
    assert len(cat) == 12 and torch.equal(x, whole_x[idx]) and torch.equal(y, whole_y[idx])
    assert torch.equal(cat.labels, whole_y) and cat.get([])[0].shape == (0, 3, 4, 4)


def test_concat_refuses_mixed_parts():
    a = images(3)
    with pytest.raises(DataError, match="one example shape"):
        ConcatSource([a, TensorSource(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), num_bins=256)])
    with pytest.raises(DataError, match="every part has labels or none"):
        ConcatSource([a, TensorSource(a.x, num_bins=256)])


def test_transform_applies_the_models_preprocessing():
    src = images()
    src.origin = "where the files came from"
    prep = ImagePreprocessing((3, 4, 4), 256, n_bits=5, pad=6)
    t = TransformedSource(SubsetSource(src, torch.arange(20)), prep)
    idx = torch.tensor([2, 7, 7])
    expected = pad_images(reduce_bits(src.x, 5).to(torch.uint8), 6)[idx]  # what prepare_data does to the split
    assert torch.equal(t.get(idx)[0], expected) and torch.equal(t.get(idx)[0], prep(src.x)[idx])
    assert t.shape == (3, 6, 6) and t.num_bins == 32 and torch.equal(t.labels, src.labels)
    assert t.origin == "where the files came from" and to_memory(t).origin == t.origin
    with pytest.raises(ValueError, match="takes 3x4x4 images with 17 levels; random holds 3x4x4 images with 256"):
        TransformedSource(src, ImagePreprocessing((3, 4, 4), 17))
    with pytest.raises(ValueError, match="applies to images"):
        TransformedSource(TensorSource(torch.zeros(2, 3)), prep)


def test_to_memory_and_choose_input():
    sub = SubsetSource(images(), torch.arange(10, 20))
    mem = to_memory(sub, chunk_size=3)
    assert isinstance(mem, TensorSource) and torch.equal(mem.x, sub.get(torch.arange(10))[0])
    assert torch.equal(mem.labels, sub.labels) and to_memory(mem) is mem
    assert choose_input(mem) == "memory"
    assert choose_input(sub, budget=sub.nbytes) == "memory"
    assert choose_input(sub, budget=sub.nbytes - 1) == "stream"
    assert choose_input(mem, "stream") == "stream"
    with pytest.raises(ValueError, match="auto, memory, stream"):
        choose_input(sub, "disk")


def test_default_budget_is_a_share_of_memory_per_local_process(monkeypatch):
    import glowflow.data.sources as sources

    monkeypatch.setattr(sources, "physical_memory", lambda: 8000)
    sub = SubsetSource(images(), torch.arange(10))  # 480 bytes
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 8000 * 0.25 / 4 = 500
    assert choose_input(sub) == "memory"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "5")  # 400
    assert choose_input(sub) == "stream"
