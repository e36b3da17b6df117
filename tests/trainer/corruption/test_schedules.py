"""trainer.corruption.schedules: every schedule's T(u) against its formula.
"""

import math

import pytest
import torch

from trainer.corruption.schedules import SCHEDULES, schedule_strength, schedule_value

# --- schedules -------------------------------------------------------------------------------

def test_schedules():
    assert schedule_value("exponential", 0.0, 2.0, 0.1) == pytest.approx(2.0)
    assert schedule_value("exponential", 1.0, 2.0, 0.1) == pytest.approx(1 + math.exp(-10))
    assert schedule_value("exponential", 0.1, 3.0, 0.1) == pytest.approx(1 + 2 / math.e)
    assert schedule_value("constant", 0.7, 2.5, 0.1) == 2.5
    assert schedule_value("fixed", 0.0, 2.0, 0.1) == 1.0
    assert schedule_value("polynomial", 0.5, 2.0, 2.0) == pytest.approx(1.25)
    assert schedule_value("polynomial", 1.0, 2.0, 2.0) == pytest.approx(1.0)
    steps = [schedule_value("stepwise", u, 2.0, 4.0) for u in (0, 0.2, 0.3, 0.6, 0.99, 1.0)]
    assert steps == pytest.approx([2.0, 2.0, 1.75, 1.5, 1.25, 1.0])
    assert schedule_strength("exponential", 0.0, 1.3, 0.1) == pytest.approx(0.3)
    # Vectorised per sample: the same values as the scalar path, monotone non-increasing.
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    for kind in SCHEDULES:
        vec = schedule_value(kind, u, 2.0, 4.0 if kind == "stepwise" else 0.1)
        assert vec.shape == (101,)
        assert vec.tolist() == pytest.approx(
            [schedule_value(kind, float(x), 2.0, 4.0 if kind == "stepwise" else 0.1)
             for x in u])
        assert bool((vec[1:] <= vec[:-1] + 1e-12).all())
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule_value("cosine", 0.0, 2.0, 0.1)
