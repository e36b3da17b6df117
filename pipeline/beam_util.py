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
import hashlib
import json
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


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class HashingSink:
    """A writable binary stream that counts and hashes what goes through it (what a manifest
    records), so a file streamed to remote storage never has to be read back."""

    def __init__(self, f):
        self._f, self._sha256, self.bytes = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self._f.write(data)
        self._sha256.update(data)
        self.bytes += len(data)
        return len(data)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        """A no-op: ``open_atomic`` closes the file (pyarrow closes the sinks it is given)."""

    @property
    def closed(self) -> bool:
        return False

    def sha256(self) -> str:
        return self._sha256.hexdigest()


@contextlib.contextmanager
def open_atomic(path: str) -> Iterator[HashingSink]:
    """A stream to a temporary name beside ``path`` (``.tmp-<name>-<uuid>``, what
    ``prepare_output`` cleans up), renamed over ``path`` through ``FileSystems`` (local,
    gs://, s3://, ...) when the block ends cleanly and deleted when it raises: a reader sees
    no file or the whole new one, and a retried write is harmless.

        with open_atomic(join(root, "part-00000.parquet")) as sink:
            sink.write(data)
        sink.bytes, sink.sha256()
    """
    directory, name = FileSystems.split(path)
    tmp = FileSystems.join(directory, f".tmp-{name}-{uuid.uuid4().hex}")
    f = FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED)
    try:
        yield HashingSink(f)
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
