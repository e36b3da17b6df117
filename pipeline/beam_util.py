"""Beam plumbing shared by the pipeline jobs: runner defaults, atomic file writes through Beam
filesystems (local, gs://, s3://, ...), also as a stream that hashes what it writes, and
recovering a UserError from a failed run.

Options the project does not consume go to Beam unchanged; with no ``--runner`` the jobs run on
``LocalRunner``: the DirectRunner's batch engine (FnApiRunner) with one worker process per core,
chosen explicitly because the plain DirectRunner first tries to download the Prism runner
binary, which hangs or fails on a machine without network. ``--runner DaskRunner`` means the
project's fixed DaskRunner (pipeline/dask_runner.py), not Beam's, which cannot run prepare.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from apache_beam.runners.runner import PipelineRunner

from trainer import atomic
from trainer.digest import HashingWriter
from trainer.errors import UserError

LOCAL_DEFAULTS = [
    "--runner=pipeline.beam_util.LocalRunner",
    "--direct_running_mode=multi_processing",
    "--direct_num_workers=0",
    # Workers log a failed bundle's traceback at ERROR; the launcher reports the failure
    # (one line for a UserError, the whole worker traceback for anything else).
    "--default_sdk_harness_log_level=CRITICAL",
]


# Runners whose workers are processes or threads of this machine.
LOCAL_RUNNERS = ("Direct", "FnApiRunner", "Prism", "LocalRunner")


class LocalRunner(PipelineRunner):
    """FnApiRunner that hands the pipeline options to its worker processes, as the
    DirectRunner does (so e.g. --default_sdk_harness_log_level reaches them), without the
    DirectRunner's attempt to fetch Prism."""

    def run_pipeline(self, pipeline, options):
        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        provision = fn_runner.ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
        return fn_runner.FnApiRunner(provision_info=provision).run_pipeline(pipeline, options)


DASK_RUNNER = "pipeline.dask_runner.DaskRunner"


def _runner_names(argv: list[str]) -> list[str]:
    """``argv`` with ``--runner DaskRunner`` (any case, either spelling) naming the project's
    DaskRunner: Beam's own drops tagged and finish_bundle outputs (pipeline/dask_runner.py)."""
    out = list(argv)
    for i, a in enumerate(out):
        if a.startswith("--runner="):
            if a.split("=", 1)[1].lower() in ("dask", "daskrunner"):
                out[i] = f"--runner={DASK_RUNNER}"
        elif a == "--runner" and i + 1 < len(out) and out[i + 1].lower() in ("dask",
                                                                           "daskrunner"):
            out[i + 1] = DASK_RUNNER
    if DASK_RUNNER in out or f"--runner={DASK_RUNNER}" in out:
        try:
            # Imported here so that its --dask_workers option is known when Beam parses.
            from pipeline import dask_runner
        except ImportError as e:
            raise UserError(f"--runner DaskRunner needs the dask extra (pip install -e "
                            f"'.[dask]'): {e}") from None
        dask_runner.start_launcher_helpers()
    return out


def pipeline_options(beam_argv: list[str]) -> PipelineOptions:
    """PipelineOptions from the pass-through arguments, with the local defaults when no
    runner is named (``--direct_num_workers=0`` means one worker per core)."""
    argv = _runner_names(beam_argv)
    if not any(a == "--runner" or a.startswith("--runner=") for a in argv):
        named = {a.split("=", 1)[0] for a in argv}
        argv = [d for d in LOCAL_DEFAULTS if d.split("=", 1)[0] not in named] + argv
    return PipelineOptions(argv)


def runs_locally(beam_argv: list[str]) -> bool:
    """Whether the workers run on this machine (no ``--runner``, or a Direct/FnApi/Prism
    runner or LocalRunner), so they see what the launcher sees (e.g. its GPUs)."""
    runner = PipelineOptions(beam_argv).view_as(StandardOptions).runner
    return runner is None or any(name in runner for name in LOCAL_RUNNERS)


def join(root: str, *names: str) -> str:
    return FileSystems.join(root.rstrip("/"), *names)


@contextlib.contextmanager
def open_atomic(path: str) -> Iterator[HashingWriter]:
    """A stream that replaces ``path`` when the block ends cleanly, counting and hashing what
    it writes. A local path goes to trainer.atomic.open_atomic (fsync, then rename); any other
    Beam filesystem (gs://, s3://, ...) is written to a temporary name beside ``path``
    (``.tmp-<name>-<uuid>``, what ``prepare_output`` cleans up) and renamed through
    ``FileSystems``. When the block raises, the temporary file is deleted: a reader sees no
    file or the whole new one, and a retried write is harmless. Missing folders are created,
    as Beam's local filesystem does.

        with open_atomic(join(root, "part-00000.parquet")) as sink:
            sink.write(data)
        sink.bytes, sink.sha256()
    """
    if FileSystems.get_scheme(path) is None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic.open_atomic(path) as f:
            yield HashingWriter(f)
        return
    directory, name = FileSystems.split(path)
    tmp = FileSystems.join(directory, f".tmp-{name}-{uuid.uuid4().hex}")
    f = FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED)
    try:
        yield HashingWriter(f)
        f.close()
    except BaseException:
        f.close()
        FileSystems.delete([tmp])
        raise
    FileSystems.rename([tmp], [path])


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``open_atomic``."""
    with open_atomic(path) as sink:
        sink.write(data)


def write_json_atomic(path: str, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def exists(path: str) -> bool:
    return FileSystems.exists(path)


# A worker's traceback ends with the exception's qualified name, e.g.
# "trainer.data.manifest.ShardError: ...".
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+): (.*?)(?: \[while running '.*'\])?$",
                         re.MULTILINE)


def user_error_in(exc: BaseException) -> UserError | None:
    """The UserError that failed a pipeline, if one did. In-process runners re-raise it
    (message suffixed with the step); multi-process workers send back only the traceback
    text, whose last ``Name: message`` line we match against the UserError subclasses."""
    if isinstance(exc, UserError):
        return type(exc)(re.sub(r" \[while running '.*'\]$", "", str(exc)))
    names = {cls.__name__: cls for cls in _subclasses(UserError)}
    for name, message in reversed(_ERROR_LINE.findall(str(exc))):
        if name in names:
            return names[name](message)
    return None


def _subclasses(cls: type) -> list[type]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _subclasses(sub)
    return out
