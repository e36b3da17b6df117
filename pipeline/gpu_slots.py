"""Which device a generate worker's model load uses, and how many local workers a GPU machine
runs: each load claims the machine's lowest free slot and takes GPU (slot mod GPU count), so a
machine's loads go round-robin over its GPUs.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import tempfile

from pipeline.errors import GenerateError

_HELD_SLOTS: list = []  # lock files held for the life of this process (one per model load)


def claim_device_slot(directory: str | None = None) -> int:
    """The lowest slot number that no live process on this machine holds: a ``flock`` on
    ``fast-electra-device-slot-<k>.lock`` in the temp dir, kept until this process exits
    (the kernel drops it then, so a restarted worker reuses the slot). Each model load claims
    one, so the SDK processes and shared model copies of a machine get slots 0, 1, 2, ..."""
    directory = directory or tempfile.gettempdir()
    for slot in itertools.count():
        f = open(os.path.join(directory, f"fast-electra-device-slot-{slot}.lock"), "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        _HELD_SLOTS.append(f)
        return slot


def worker_device(requested: str, cuda_count: int, slot: int) -> str:
    """The torch device of a model load: ``cpu``, or ``cuda:{slot mod cuda_count}`` when
    ``requested`` is ``cuda``, or ``auto`` with a GPU visible. ``slot`` is the load's
    ``claim_device_slot``, so a machine's loads go round-robin over its GPUs."""
    if requested == "cuda" and cuda_count == 0:
        raise GenerateError(
            f"generate.device = 'cuda' but no CUDA device is visible to this worker process "
            f"(host {os.uname().nodename}); set generate.device=auto or cpu, or give the "
            "workers GPUs (docs/scaling.md: generate on Dataflow with GPUs; check the driver and "
            "CUDA_VISIBLE_DEVICES)")
    if requested == "cpu" or cuda_count == 0:
        return "cpu"
    return f"cuda:{slot % cuda_count}"


def explicit_workers(beam_argv: list[str]) -> int | None:
    """The user's ``--direct_num_workers`` among the pass-through Beam options, if any."""
    for i, a in enumerate(beam_argv):
        if a.startswith("--direct_num_workers="):
            return int(a.split("=", 1)[1])
        if a == "--direct_num_workers" and i + 1 < len(beam_argv):
            return int(beam_argv[i + 1])
    return None


def local_workers(cuda_count: int, model_copies: int, cpu_count: int,
                  explicit: int | None) -> int | None:
    """Worker processes of the local runner for a GPU generate: the user's explicit setting,
    else None (Beam's one per core) without a GPU, else GPUs x max(1, model_copies), at most
    one per core. With model_copies = 0 each process loads its own aux on GPU (slot mod
    GPUs), so one process per GPU; with M >= 1 shared copies every process sends its calls
    to all M copies in turn, and M processes per GPU keep the copies fed while the others
    encode and write Parquet. One per core would load the aux once per core, all on
    cuda:0 and cuda:1 ... round-robin, and exhaust GPU memory."""
    if explicit is not None:
        return explicit
    if cuda_count == 0:
        return None
    return max(1, min(cpu_count, cuda_count * max(1, model_copies)))
