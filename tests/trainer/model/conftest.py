"""Every test of trainer/model/ starts from torch seed 0: a model's random init is the same
whatever ran before it."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
