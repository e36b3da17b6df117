"""An RTD shard set that grows epoch by epoch: its plan, its epoch seals and the producers'
locks, as a reader sees them (no Beam needed; ``pipeline/epoch_seal.py`` writes them).

    <rtd_dir>/plan.json                  the set's header, written first: every epoch's bytes
                                         follow from it, whoever writes them
    <rtd_dir>/epoch=EEEE/_SEALED.json    the epoch's parts (the manifest entries), written
                                         last for that epoch: the epoch may be read
    <rtd_dir>/epoch=EEEE/.output-lock    held by the generate run writing the epoch
    <rtd_dir>/manifest.json              written once every epoch of the plan is sealed

A reader never opens a part of an epoch without a seal that names the plan's fingerprint:
an unsealed epoch's folder may hold half-written, leftover or foreign files.

``EpochWait`` is how a trainer follows a producer: before it needs an epoch it waits for the
seal, saying what it waits for every 30 s, as long as a live producer holds the epoch, and
up to ``wait_s`` seconds when none does (a crashed generate being re-run, or the gap between
two range jobs); ``wait_s = 0`` never waits.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow.fs as pafs

from trainer.data.manifest import ShardError, manifest_fingerprint
from trainer.data.rtd_format import epoch_dir

PLAN = "plan.json"
SEAL = "_SEALED.json"
# The output lock's file (pipeline.output_lock uses this name): a generate run holds one in
# each epoch folder it writes.
LOCK_FILE = ".output-lock"
# What manifest.json adds to the plan once every epoch is sealed: the plan is the manifest
# without these keys.
SET_TOTALS = ("num_tokens", "num_replaced", "devices", "shard_bytes", "files")
# Seconds between two "waiting for epoch" lines.
REPORT_EVERY_S = 30.0
# Seconds between two looks at an unsealed epoch (one stat of its seal).
POLL_S = 0.5


def plan_fingerprint(plan: dict) -> str:
    """What a seal names to belong to a plan: the sha256 of the plan's canonical JSON."""
    return manifest_fingerprint(plan)


def epoch_path(path: str, epoch: int, name: str) -> str:
    return f"{path}/{epoch_dir(epoch)}/{name}"


def read_seal(fs: pafs.FileSystem, path: str, root: str, epoch: int, plan_fp: str
              ) -> dict | None:
    """The seal of ``epoch`` when it is sealed for the plan ``plan_fp``, else None (no seal,
    or a leftover seal of another plan, which the next generate run of the epoch replaces)."""
    try:
        with fs.open_input_stream(epoch_path(path, epoch, SEAL)) as f:
            seal = json.loads(f.read())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ShardError(f"{root}/{epoch_dir(epoch)}/{SEAL} is not valid JSON ({e}); re-run "
                         f"fast-electra generate --epochs {epoch}:{epoch + 1}") from None
    if seal.get("plan") != plan_fp or seal.get("epoch") != epoch:
        return None
    return seal


def producer(fs: pafs.FileSystem, path: str, epoch: int) -> tuple[dict, bool] | None:
    """(lock body, alive) of the generate run holding ``epoch``'s lock, or None when no lock
    file is there. On a local disk liveness is exact: the holder's ``flock`` is tested with a
    shared, non-blocking one, released at once. Elsewhere a lock file counts as alive."""
    lock = epoch_path(path, epoch, LOCK_FILE)
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            fd = os.open(lock, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            body = lock_holder(os.pread(fd, 1 << 16, 0))
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return body, True
            fcntl.flock(fd, fcntl.LOCK_UN)
            return body, False
        finally:
            os.close(fd)
    try:
        with fs.open_input_stream(lock) as f:
            return lock_holder(f.read()), True
    except FileNotFoundError:
        return None


def lock_holder(data: bytes) -> dict:
    """A lock file's body (job, host, pid, started); {} while its holder has not written it
    yet, or when it is not a JSON object."""
    try:
        holder = json.loads(data) if data.strip() else {}
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


def describe_holder(holder: dict) -> str:
    """'generate run pid 123 on host h, started 2026-...' from a lock body (the caller puts
    'a'/'another' before it, or a verb after it)."""
    if not holder:
        return "run that had not yet written its details"
    return (f"{holder.get('job', 'pipeline')} run pid {holder.get('pid')} on host "
            f"{holder.get('host')}, started {holder.get('started')}")


def parts_present(fs: pafs.FileSystem, path: str, epoch: int) -> int:
    """Finished part files in ``epoch``'s folder (renamed into place; temporaries excluded)."""
    infos = fs.get_file_info(pafs.FileSelector(f"{path}/{epoch_dir(epoch)}",
                                               allow_not_found=True))
    return sum(1 for i in infos if i.base_name.startswith("part-")
               and i.base_name.endswith(".parquet"))


def describe_producer(found: tuple[dict, bool] | None) -> str:
    if found is None or not found[1]:
        return "no live generate run holds it"
    return f"{describe_holder(found[0])}, is writing it"


@dataclass
class EpochWait:
    """How a reader treats an epoch that is not sealed yet (see the module docstring)."""

    wait_s: float = 0.0
    """Longest wait while no live producer holds the epoch; 0 = never wait at all."""
    log: Callable[[str], None] | None = None
    """Where the "waiting for" lines go (None: nowhere; e.g. rank 0's stdout)."""
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def until_sealed(self, is_sealed: Callable[[], bool], fs: pafs.FileSystem, path: str,
                     root: str, epoch: int, parts: int) -> None:
        """Return once ``is_sealed()``; raise the ShardError that names the epoch and the
        command to generate it when waiting is off or no producer came in time."""
        start = orphan_since = self.clock()
        reported = None
        while not is_sealed():
            now, found = self.clock(), producer(fs, path, epoch)
            alive = found is not None and found[1]
            if alive:
                orphan_since = now
            present = parts_present(fs, path, epoch)
            if self.wait_s <= 0 or (not alive and now - orphan_since >= self.wait_s):
                raise not_sealed(root, epoch, present, parts, found, self.wait_s)
            if self.log is not None and (reported is None or now - reported >= REPORT_EVERY_S):
                reported = now
                self.log(f"train: waiting for epoch {epoch} of {root} to be sealed: "
                         f"{present}/{parts} parts present; {describe_producer(found)} "
                         f"(waited {now - start:.0f}s)")
            self.sleep(POLL_S)
        if self.log is not None and reported is not None:
            self.log(f"train: epoch {epoch} of {root} is sealed after "
                     f"{self.clock() - start:.0f}s; training goes on")


def not_sealed(root: str, epoch: int, present: int, parts: int,
               found: tuple[dict, bool] | None, wait_s: float) -> ShardError:
    why = ("train.wait_for_epochs_s = 0: the run does not wait for epochs" if wait_s <= 0
           else f"{describe_producer(found)} and none came within train.wait_for_epochs_s = "
                f"{wait_s:g}s")
    return ShardError(
        f"epoch {epoch} of the rtd shard set {root} is not sealed ({present}/{parts} parts "
        f"present; {why}), so it cannot be read: its parts may be partial. Generate it: "
        f"fast-electra generate --config {root}/config.toml --epochs {epoch}:"
        f"{epoch + 1} (or re-run the range that was interrupted), or let the run wait for a "
        "producer with a larger train.wait_for_epochs_s")
