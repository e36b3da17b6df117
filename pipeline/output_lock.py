"""One writer per output folder: the lock a ``pipeline.prepare`` or ``pipeline.generate``
launcher holds on its shard-set folder from before ``prepare_output`` deletes anything until
the job ends, so that a second run into the same folder is refused instead of deleting the
first one's files (an interrupted run's leftovers and a live run's files look alike).

    with OutputLock(root, "generate"):     # OutputLockError (a UserError) if a live run has it
        ...                                # Beam workers write into root; the lock is ours

prepare locks its folder; generate locks each epoch folder it writes (``root`` =
``<rtd_dir>/epoch=EEEE``, pipeline/epoch_seal.py), so disjoint epoch ranges run at once. The
lock is the file ``<root>/.output-lock``, a JSON body naming its holder (job, host, pid,
start time) for the refusal message.

Local paths: the body's file is held with ``fcntl.flock`` for the run's life. The kernel drops
the flock when the process dies however it dies (kill -9 included), so liveness is exact: a
file whose flock can be taken belongs to a dead run and is taken over (said in a log line).
The file is deleted on release; an acquirer checks after its flock that the path still names
the file it locked, as the previous holder may have deleted it in between.

Other filesystems (gs://, s3://, ... through Beam's ``FileSystems``): no lock primitive is
available, so the file is written if absent and deleted on release. Liveness of its writer
cannot be checked (it may run on another machine); a run that died without releasing it
leaves the file, and the next run is refused with the file's path to delete once the user
knows that run is gone. The check and the write are not one atomic step: two runs started
within moments of each other can both pass it.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import time

from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

from pipeline.filesystems import exists, join, read_bytes, write_json_atomic
from trainer.data.sealed import LOCK_FILE, describe_holder, lock_holder
from trainer.errors import UserError

# A trainer tests a producer's liveness with a shared flock it drops at once
# (trainer.data.sealed.producer): a busy lock is tried again over this many seconds before it
# counts as held.
PROBE_GRACE_S = 0.2


class OutputLockError(UserError):
    """The output folder is being written by another run."""


class OutputLock:
    """The lock on the output folder ``root`` for one run of ``job`` (a context manager)."""

    def __init__(self, root: str, job: str):
        self.root, self.job = str(root).rstrip("/"), job
        self.path = join(self.root, LOCK_FILE)
        self.local = "://" not in self.root
        self._fd: int | None = None
        self._remote_held = False
        self.body = {"job": job, "host": socket.gethostname(), "pid": os.getpid(),
                     "started": datetime.datetime.now(datetime.UTC)
                     .isoformat(timespec="seconds")}

    def __enter__(self) -> OutputLock:
        if self.local:
            self._acquire_local()
        else:
            self._acquire_remote()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Give the lock up (a no-op when already released)."""
        if not self.local:
            if self._remote_held:
                self._remote_held = False
                with contextlib.suppress(BeamIOError):  # deleted by hand meanwhile
                    FileSystems.delete([self.path])
            return
        if self._fd is None:
            return
        # Deleted while still flocked: an acquirer that opened it meanwhile sees the path
        # gone (or naming a new file) after its flock, and retries.
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def _acquire_local(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _flock_soon(fd)
            except BlockingIOError:
                holder = lock_holder(os.pread(fd, 1 << 16, 0))
                os.close(fd)
                raise OutputLockError(
                    f"{self.root} is being written by another {describe_holder(holder)} (it holds "
                    f"{self.path}). Wait for that run to finish or stop it, or write to "
                    "another folder; the lock is released when its process exits, whatever "
                    "way it exits") from None
            except OSError as e:  # e.g. ENOLCK: an NFS mount without a lock service
                os.close(fd)
                raise OutputLockError(
                    f"cannot lock {self.path} ({e.strerror}): the filesystem of {self.root} "
                    "does not support file locks, which keep two runs from writing one folder; "
                    "write to a local disk (or a gs:// / s3:// path)") from None
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev,
                                                                             mine.st_ino):
                break
            os.close(fd)  # the holder released (deleted) it between our open and our flock
        self._fd = fd
        previous = lock_holder(os.pread(fd, 1 << 16, 0))
        if previous:
            print(f"{self.job}: taking over the stale lock {self.path} of a "
                  f"{describe_holder(previous)}: that process is gone (it died without "
                  "releasing it, e.g. kill -9); its leftovers are removed next", flush=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.body, sort_keys=True).encode(), 0)

    def _acquire_remote(self) -> None:
        if exists(self.path):
            holder = lock_holder(read_bytes(self.path))
            raise OutputLockError(
                f"{self.root} is locked by a {describe_holder(holder)} ({self.path}). On this "
                "filesystem whether that run is still alive cannot be checked: if it is, wait "
                "for it to finish or write to another folder; if it is gone (it crashed or was "
                f"killed), delete {self.path} and run again")
        write_json_atomic(self.path, self.body)
        self._remote_held = True


def _flock_soon(fd: int) -> None:
    """An exclusive flock on ``fd``, tried for PROBE_GRACE_S; BlockingIOError if still held."""
    deadline = time.monotonic() + PROBE_GRACE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)
