import pytest
import torch

from tests.helpers import one_thread


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test runs on one intra-op thread (see ``tests.helpers.one_thread``). Module-scoped fixtures, which run
    before this one, enter ``one_thread()`` themselves."""
    with one_thread():
        yield
