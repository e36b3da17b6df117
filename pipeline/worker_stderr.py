"""Hold back Python tracebacks that a job's worker processes print, until the job's outcome
says whether they matter.

    with held_tracebacks() as held:
        p.run().wait_until_finish()        # on failure: held.drop() for a UserError
    # on leaving: everything not dropped has been written to the real stderr

Beam's SDK workers print the full traceback of a failed bundle to their stderr (which is this
process's fd 2) before the launcher learns why the job failed. For a UserError (bad input, a
changed corpus file) the launcher prints one ``error: <message>`` line and exits 2, and those
tracebacks are noise; for a bug they are the evidence. So fd 2 is routed through a pipe for
the job's duration: ordinary lines are forwarded at once (Beam's warnings stay live), and
each traceback block (from ``Traceback (most recent call last):`` to its exception line) is
held until the end, then written unless ``drop()`` was called.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

_START = b"Traceback (most recent call last):"
_CHAINED = (b"During handling of the above exception", b"The above exception was the direct")


class _Forwarder:
    def __init__(self, read_fd: int, out_fd: int):
        self.read_fd, self.out_fd = read_fd, out_fd
        self.held: list[bytes] = []
        self._in_block = self._after = False
        self._thread = threading.Thread(target=self._pump, daemon=True, name="worker-stderr")
        self._thread.start()

    def _line(self, line: bytes) -> None:
        body = line.rstrip(b"\r\n")
        if body.startswith(_START) or body.startswith(_CHAINED) or (
                self._in_block and body[:1].isspace()):
            self._in_block, self._after = True, False
            self.held.append(line)
        elif self._in_block:  # the exception line ends the block (a blank one: its message)
            self._in_block, self._after = bool(not body), bool(body)
            self.held.append(line)
        elif self._after and not body:  # blank lines between chained tracebacks
            self.held.append(line)
        else:
            self._after = False
            os.write(self.out_fd, line)

    def _pump(self) -> None:
        with os.fdopen(self.read_fd, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._line(line + b"\n")
            if pending:
                self._line(pending)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()


class Held:
    """What ``held_tracebacks`` yields: ``drop()`` discards the held tracebacks."""

    def __init__(self):
        self.dropped = False

    def drop(self) -> None:
        self.dropped = True


@contextlib.contextmanager
def held_tracebacks() -> Iterator[Held]:
    held = Held()
    sys.stderr.flush()
    real = os.dup(2)
    read_fd, write_fd = os.pipe()
    forwarder = _Forwarder(read_fd, real)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield held
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes this process's write end of the pipe
        # The workers have exited when the job returns; a straggler that still holds the
        # pipe must not hang the launcher (its later lines still go through, live).
        forwarder.join(timeout=10.0)
        if not held.dropped:
            for line in forwarder.held:
                os.write(real, line)
        if not forwarder.alive():
            os.close(real)
