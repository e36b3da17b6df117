"""Loading a checkpoint never unpickles code: every file loads with weights_only=True, the RNG
states included, and they still restore the random streams exactly."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from trainer import checkpoint
from trainer.errors import UserError


class WritesMarker:
    """Unpickling this runs ``exec``: it writes a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def draws() -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.random(), np.random.normal(),
            torch.rand(3).tolist())


def test_rng_states_round_trip_through_a_weights_only_load(tmp_path):
    random.gauss(0, 1)  # leaves a cached gaussian in Python's and numpy's states
    np.random.normal()
    path = checkpoint.save(str(tmp_path), 5, {"model": {"w": torch.ones(2)}}, {"step": 5},
                           checkpoint.SaveContext.single_process(keep=2))
    want = draws()
    # Every file of the checkpoint loads under weights_only=True on its own.
    torch.load(f"{path}/rng_rank0.pt", weights_only=True)
    state, meta, rng = checkpoint.load(path, 0)
    assert meta["step"] == 5 and torch.equal(state["model"]["w"], torch.ones(2))
    checkpoint.set_rng_state(rng)
    assert draws() == want


def test_crafted_pickle_in_rng_file_is_refused_and_never_runs(tmp_path):
    path = checkpoint.save(str(tmp_path), 1, {"model": {}}, {"step": 1},
                           checkpoint.SaveContext.single_process(keep=2))
    marker = tmp_path / "marker"
    torch.save({"torch": WritesMarker(str(marker))}, f"{path}/rng_rank0.pt")
    with pytest.raises(UserError, match=r"rng_rank0\.pt holds objects other than tensors.*"
                                        r"refusing to unpickle"):
        checkpoint.load(path, 0)
    assert not marker.exists()
    assert json.loads((tmp_path / "checkpoints" / "step_00000001" / "meta.json").read_text())


def test_missing_rng_file_of_another_rank_resumes_without_it(tmp_path):
    path = checkpoint.save(str(tmp_path), 1, {"model": {}}, {"step": 1},
                           checkpoint.SaveContext.single_process(keep=2))
    assert checkpoint.load(path, 1)[2] is None  # a run with more ranks than the checkpoint's
