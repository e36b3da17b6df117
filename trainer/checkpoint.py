"""Atomic, self-describing checkpoints: ``<out_dir>/checkpoints/step_SSSSSSSS/``.

A checkpoint folder holds ``state.pt`` (model, optimizer, scheduler), ``rng_rank{R}.pt`` (each
rank's RNG states, so dropout continues exactly) and ``meta.json`` (step, data position,
resolved config, the data set's manifest sha256). It is written under a temporary name, every
file fsynced, then renamed: a crash leaves either the previous checkpoint or the new one, never
a half-written folder that looks complete. The last ``train.keep_checkpoints`` are kept.

    path = save(out_dir, step, state, meta, SaveContext(rank, keep, barrier))
    latest = find_latest(out_dir)                       # None when there is none
    state, meta, rng = load(path, rank)
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from trainer.errors import UserError

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dir(out_dir: str, step: int) -> str:
    return os.path.join(out_dir, CHECKPOINTS, f"step_{step:08d}")


def _fsync_file(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    """This rank's RNG states as tensors, strings and numbers only, so they load under
    ``weights_only=True`` (numpy's and Python's tuples become int64 tensors). CUDA: only the
    current device's (this rank's) state, so a resume that sees fewer GPUs per process still
    restores it; none when CUDA was never initialized (nothing drew from it)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss),
                       "cached_gaussian": float(gauss)},
             "python": {"version": int(version),
                        "internal": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` saved (the CUDA state onto this rank's current device)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _no_other_rank() -> None:
    pass


@dataclass(frozen=True)
class SaveContext:
    """The ranks that save a checkpoint together (``save`` is a collective) and what rank 0
    prunes once the new one is in place."""

    rank: int
    """This process's rank: rank 0 writes state and meta, renames the folder and prunes."""
    keep: int
    """How many of the newest checkpoints rank 0 keeps (train.keep_checkpoints)."""
    barrier: Callable[[], None]
    """Returns once every rank of the run has reached it."""

    @classmethod
    def single_process(cls, keep: int = 1) -> SaveContext:
        """A save with no other rank to wait for."""
        return cls(rank=0, keep=keep, barrier=_no_other_rank)


def save(out_dir: str, step: int, state: dict, meta: dict, ctx: SaveContext) -> str:
    """Collective: every rank calls it. Rank 0 writes model/optimizer state and meta, each
    rank its RNG state; rank 0 then renames the folder into place and prunes old ones."""
    rank, barrier = ctx.rank, ctx.barrier
    final = step_dir(out_dir, step)
    tmp = os.path.join(out_dir, CHECKPOINTS, f".tmp-step_{step:08d}")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # a crash's leftover of this very step
        os.makedirs(tmp)
    barrier()
    torch.save(rng_state(), os.path.join(tmp, f"rng_rank{rank}.pt"))
    _fsync_file(os.path.join(tmp, f"rng_rank{rank}.pt"))
    if rank == 0:
        torch.save(state, os.path.join(tmp, "state.pt"))
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
    barrier()
    if rank == 0:
        for name in os.listdir(tmp):
            _fsync_file(os.path.join(tmp, name))
        _fsync_dir(tmp)
        if os.path.exists(final):  # re-saving a step after a resume: replace it whole
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(os.path.dirname(final))
        for old in list_steps(out_dir)[:-ctx.keep]:
            shutil.rmtree(step_dir(out_dir, old), ignore_errors=True)
    barrier()
    return final


def list_steps(out_dir: str) -> list[int]:
    """Steps of the complete checkpoints in ``out_dir``, ascending."""
    root = os.path.join(out_dir, CHECKPOINTS)
    if not os.path.isdir(root):
        return []
    steps = []
    for name in os.listdir(root):
        m = _STEP_DIR.match(name)
        if m and os.path.isfile(os.path.join(root, name, "meta.json")):
            steps.append(int(m.group(1)))
    return sorted(steps)


def find_latest(out_dir: str) -> str | None:
    steps = list_steps(out_dir)
    return step_dir(out_dir, steps[-1]) if steps else None


def load_state(source, name: str, map_location="cpu") -> dict:
    """A ``state.pt`` (a path or a file object; ``name`` for messages) loaded with
    ``weights_only=True``: tensors, dicts, lists and numbers only, so a checkpoint someone
    downloaded cannot run code while it loads. Anything else is refused, named."""
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{name} holds objects other than tensors, dicts, lists and numbers "
                        f"({str(e).splitlines()[-1][:200]}); refusing to unpickle it, since "
                        "that could run code from the file. Use a checkpoint written by "
                        "fast-electra (train, or hf import)") from None


def load(path: str, rank: int, map_location="cpu") -> tuple[dict, dict, dict | None]:
    """(state, meta, this rank's RNG state or None when the checkpoint was written by a run
    with fewer ranks)."""
    meta_path = os.path.join(path, "meta.json")
    if not os.path.isfile(meta_path):
        raise UserError(f"{path} is not a complete checkpoint (no meta.json); give a "
                        "checkpoints/step_* folder, or train.resume = 'auto'")
    with open(meta_path) as f:
        meta = json.load(f)
    state = load_state(os.path.join(path, "state.pt"), os.path.join(path, "state.pt"),
                       map_location)
    rng_path = os.path.join(path, f"rng_rank{rank}.pt")
    rng = None
    if os.path.isfile(rng_path):
        try:
            rng = torch.load(rng_path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            # Files from before RNG states were stored as tensors fail here too: deleting them
            # resumes exactly but for dropout's random stream (as a run with more ranks does).
            raise UserError(f"{rng_path} holds objects other than tensors, dicts, lists and "
                            f"numbers ({str(e).splitlines()[-1][:200]}); refusing to unpickle "
                            "it, since that could run code from the file. If an older "
                            "fast-electra wrote it, delete this checkpoint's rng_rank*.pt "
                            "files to resume without restoring the RNG states") from None
    return state, meta, rng
