"""Fixtures for the trainer tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    # The models in these tests are tiny: a second intra-op thread gains nothing, and on a
    # shared 2-core machine it makes a file up to 10x slower when another process is busy.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
