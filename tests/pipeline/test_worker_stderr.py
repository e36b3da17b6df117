"""pipeline.worker_stderr: tracebacks that child processes print to the inherited stderr are
held until the job's outcome is known; ordinary lines pass at once."""

from __future__ import annotations

import subprocess
import sys

from pipeline.worker_stderr import held_tracebacks

CHILD = r"""
import sys, traceback
print("a warning", file=sys.stderr, flush=True)
try:
    try:
        raise KeyError("inner")
    except KeyError:
        raise ValueError("outer")
except ValueError:
    print(traceback.format_exc(), file=sys.stderr, flush=True)
print("after", file=sys.stderr, flush=True)
"""


def _run(drop: bool, capfd) -> str:
    with held_tracebacks() as held:
        subprocess.run([sys.executable, "-c", CHILD], check=True)
        if drop:
            held.drop()
    return capfd.readouterr().err


def test_dropped_tracebacks_vanish_and_other_lines_pass(capfd):
    err = _run(True, capfd)
    assert err.splitlines() == ["a warning", "after"]


def test_kept_tracebacks_are_written_whole_at_the_end(capfd):
    err = _run(False, capfd)
    lines = err.splitlines()
    assert lines[:2] == ["a warning", "after"]  # live lines first, the held block after
    assert "Traceback (most recent call last):" in err
    assert "KeyError: 'inner'" in err and "ValueError: outer" in err
    assert "During handling of the above exception" in err
