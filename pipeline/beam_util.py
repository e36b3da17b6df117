"""Beam plumbing shared by the pipeline jobs: runner defaults, atomic file writes through Beam
filesystems (local, gs://, s3://, ...), and recovering a UserError from a failed run.

Options the project does not consume go to Beam unchanged; with no ``--runner`` the jobs run on
``LocalRunner``: the DirectRunner's batch engine (FnApiRunner) with one worker process per core,
chosen explicitly because the plain DirectRunner first tries to download the Prism runner
binary, which hangs or fails on a machine without network.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from apache_beam.runners.runner import PipelineRunner

from trainer.errors import UserError

LOCAL_DEFAULTS = [
    "--runner=pipeline.beam_util.LocalRunner",
    "--direct_running_mode=multi_processing",
    "--direct_num_workers=0",
    "--default_sdk_harness_log_level=ERROR",
]


class LocalRunner(PipelineRunner):
    """FnApiRunner that hands the pipeline options to its worker processes, as the
    DirectRunner does (so e.g. --default_sdk_harness_log_level reaches them), without the
    DirectRunner's attempt to fetch Prism."""

    def run_pipeline(self, pipeline, options):
        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        provision = fn_runner.ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
        return fn_runner.FnApiRunner(provision_info=provision).run_pipeline(pipeline, options)


def pipeline_options(beam_argv: list[str]) -> PipelineOptions:
    """PipelineOptions from the pass-through arguments, with the local defaults when no
    runner is named (``--direct_num_workers=0`` means one worker per core)."""
    argv = list(beam_argv)
    if not any(a == "--runner" or a.startswith("--runner=") for a in argv):
        named = {a.split("=", 1)[0] for a in argv}
        argv = [d for d in LOCAL_DEFAULTS if d.split("=", 1)[0] not in named] + argv
    return PipelineOptions(argv)


def join(root: str, *names: str) -> str:
    return FileSystems.join(root.rstrip("/"), *names)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path``, then rename it over ``path``: a
    reader sees the old file or the whole new one, and a retried write is harmless."""
    directory, name = FileSystems.split(path)
    tmp = FileSystems.join(directory, f".tmp-{name}-{uuid.uuid4().hex}")
    with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)
    FileSystems.rename([tmp], [path])


def write_json_atomic(path: str, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def exists(path: str) -> bool:
    return FileSystems.exists(path)


_ERROR_LINE = re.compile(r"^(\w+): (.*?)(?: \[while running '.*'\])?$", re.MULTILINE)


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
