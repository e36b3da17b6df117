"""What every Beam job does around its pipeline: lock the output folder, recognise a re-run of
the same job, refuse to replace a different shard set, clear the leftovers of an interrupted
run, and run the pipeline so that a UserError raised in a worker reaches the user as one.

    @holds_output_locks                                  # releases them when run returns/raises
    def run(argv):
        if not prepare_output(out_dir, "corpus", fp, overwrite, ["part-*.parquet"], "prepare"):
            return read_manifest(out_dir, "corpus")      # same inputs: nothing to do
        run_pipeline(p)
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.errors import user_error_in
from pipeline.filesystems import exists, join
from pipeline.output_lock import OutputLock
from pipeline.worker_stderr import held_tracebacks
from trainer.data.manifest import MANIFEST, read_manifest
from trainer.errors import UserError


class OutputError(UserError):
    """The output folder holds something this run must not replace."""


def _flatten(obj, prefix: str = "") -> dict:
    if not isinstance(obj, dict):
        return {prefix: obj}
    out = {}
    for k, v in obj.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def fingerprint_diff(old: dict | None, new: dict) -> list[str]:
    """Dotted keys whose values differ between two fingerprints."""
    a, b = _flatten(old or {}), _flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


# The locks taken by prepare_output in the job now running (``holds_output_locks``).
_HELD: contextvars.ContextVar[contextlib.ExitStack | None] = contextvars.ContextVar(
    "output_locks", default=None)


def holds_output_locks(job):
    """Decorates a job's ``run``: the output locks ``prepare_output`` takes during it are
    released when it returns or raises. Taking the lock inside ``prepare_output`` makes it
    impossible to delete anything in a folder without holding the folder's lock."""

    @functools.wraps(job)
    def run(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            token = _HELD.set(stack)
            try:
                return job(*args, **kwargs)
            finally:
                _HELD.reset(token)

    return run


def held_locks() -> contextlib.ExitStack:
    """The stack of the running ``holds_output_locks`` job: a lock entered on it is released
    when the job returns or raises."""
    held = _HELD.get()
    if held is None:
        raise RuntimeError("output locks must be taken inside a @holds_output_locks job")
    return held


def prepare_output(root: str, kind: str, fp: dict, overwrite: bool, patterns: list[str],
                   job: str) -> bool:
    """Lock ``root`` for this run (``pipeline.output_lock``; refused while another run holds
    it) and make it ready for a new ``kind`` shard set with fingerprint ``fp``. Returns False
    when it already holds this very set (nothing to do). A different complete set is refused
    unless ``overwrite``; files matching ``patterns`` (and temporaries) from an earlier or
    interrupted run are deleted, after the manifest, so the folder never looks complete.
    Must run inside a ``holds_output_locks`` job, which releases the lock."""
    held = _HELD.get()
    if held is None:
        raise RuntimeError("prepare_output must be called inside a @holds_output_locks job")
    held.enter_context(OutputLock(root, job))
    manifest_path = join(root, MANIFEST)
    if exists(manifest_path):
        old = read_manifest(root, kind).get("fingerprint")
        if old == fp and not overwrite:
            return False
        if not overwrite:
            differ = fingerprint_diff(old, fp)
            raise OutputError(f"{root} already holds a different {kind} shard set (differs in: "
                              f"{', '.join(differ) or 'unknown'}). Pass --overwrite to replace "
                              "it, or write to another folder")
        FileSystems.delete([manifest_path])
    stale = [m.path for pattern in [*patterns, ".tmp-*"]
             for m in FileSystems.match([join(root, pattern)])[0].metadata_list]
    if stale:
        print(f"{job}: removing {len(stale)} file(s) of an earlier run from {root}")
        FileSystems.delete(stale)
    return True


def run_pipeline(p: beam.Pipeline) -> None:
    """Run and wait; a failure caused by a UserError is re-raised as that UserError, and the
    tracebacks the workers printed for it are not shown (``pipeline.worker_stderr``): the
    user gets its one ``error:`` line, as on the in-process runner."""
    with held_tracebacks() as held:
        try:
            p.run().wait_until_finish()
        except Exception as e:
            user_error = user_error_in(e)
            if user_error is None:
                raise
            held.drop()
            raise user_error from None
