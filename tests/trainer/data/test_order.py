"""The offline data plan: keyed permutation of each epoch, its inverse, and progress u."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data.order import permute, progress, unpermute


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 1000, 4099])
def test_order_is_a_deterministic_permutation_with_an_inverse(n):
    ids = np.arange(n)
    p = permute(ids, n, seed=3, epoch=1)
    assert sorted(p.tolist()) == list(range(n))
    assert np.array_equal(p, permute(ids, n, seed=3, epoch=1))
    # Per element: any subset in any order gives the same positions.
    sub = ids[::-3]
    assert np.array_equal(permute(sub, n, 3, 1), p[sub])
    assert np.array_equal(unpermute(p, n, 3, 1), ids)
    assert np.array_equal(permute(unpermute(sub, n, 3, 1), n, 3, 1), sub)
    if n >= 64:
        assert not np.array_equal(p, permute(ids, n, seed=3, epoch=2))
        assert not np.array_equal(p, permute(ids, n, seed=4, epoch=1))
        assert not np.array_equal(p, ids)


def test_out_of_range_is_refused():
    with pytest.raises(ValueError, match="must lie in"):
        unpermute(np.array([5]), 5, 0, 0)


def test_progress_granularity():
    assert progress(1, np.array([0, 5]), 10, 2, "sample").tolist() == [0.5, 0.75]
    assert progress(1, np.array([0, 5]), 10, 2, "epoch").tolist() == [0.5, 0.5]
