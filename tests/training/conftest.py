import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The suite shares two cores with other work; the tiny models of these tests run fastest on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
