"""Fixtures of the trainer/corruption/ tests: a confident tiny aux MLM, one torch thread."""

import pytest
import torch

from tests.trainer.corruption.helpers import AUX_CFG
from trainer.model.heads import MLMModel


@pytest.fixture(autouse=True)
def _one_torch_thread(one_thread):
    """Every test here runs with one torch thread (tests/conftest.py's one_thread)."""


@pytest.fixture(scope="module")
def aux() -> MLMModel:
    """A tiny aux MLM with confident, context-dependent predictions: an untrained model's
    logits are almost flat (N(0, 0.02) weights), which would make every sampling test blind
    to the logits."""
    torch.manual_seed(0)
    model = MLMModel(AUX_CFG)
    with torch.no_grad():
        model.encoder.word_emb.weight.mul_(50)  # tied: also scales the output projection
    return model.eval()
