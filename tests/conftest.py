"""Fixtures shared by unit and integration tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run far faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
