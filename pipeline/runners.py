"""The Beam runner a job runs on: the pipeline options from the pass-through arguments, with the
project's defaults when no runner is named, and whether the workers are on this machine.

Options the project does not consume go to Beam unchanged; with no ``--runner`` the jobs run on
``LocalRunner``: the DirectRunner's batch engine (FnApiRunner) with one worker process per core,
chosen explicitly because the plain DirectRunner first tries to download the Prism runner
binary, which hangs or fails on a machine without network. ``--runner DaskRunner`` means the
project's fixed DaskRunner (pipeline/dask_runner.py), not Beam's, which cannot run prepare.
A job that would start one local worker process runs that worker in the launcher instead
(``one_worker_in_process``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from apache_beam.runners.runner import PipelineRunner

from pipeline.gpu_slots import explicit_workers
from trainer.errors import UserError

LOCAL_DEFAULTS = [
    "--runner=pipeline.runners.LocalRunner",
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
    DirectRunner's attempt to fetch Prism. A worker that runs in this process
    (``--direct_running_mode=in_memory``) gets that log level for Beam's own log lines too
    (``_beam_log_level``): e.g. RunInference's warning, at every bundle, that it cannot read
    the memory use without scipy."""

    def run_pipeline(self, pipeline, options):
        everything = options.get_all_options()
        encoded = JobServiceHandle.encode_pipeline_options(everything)
        provision = fn_runner.ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
        level = everything.get("default_sdk_harness_log_level")
        in_memory = everything.get("direct_running_mode") == "in_memory"
        with _beam_log_level(level) if in_memory and level else contextlib.nullcontext():
            return fn_runner.FnApiRunner(provision_info=provision).run_pipeline(pipeline,
                                                                                options)


class _BeamBelow(logging.Filter):
    """Drops the records of Beam's own code below ``level``."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or _BEAM_DIR not in record.pathname


_BEAM_DIR = f"{os.sep}apache_beam{os.sep}"


@contextlib.contextmanager
def _beam_log_level(level: str):
    """While the block runs, the handlers of the root logger (and logging's last resort)
    drop Beam's records below ``level`` (a name such as CRITICAL, or a number), as a worker
    process started with --default_sdk_harness_log_level would not log them."""
    number = int(level) if str(level).isdigit() else logging.getLevelName(str(level).upper())
    if not isinstance(number, int):
        yield
        return
    drop = _BeamBelow(number)
    handlers = [*logging.root.handlers, logging.lastResort]
    for h in handlers:
        if h is not None:
            h.addFilter(drop)
    try:
        yield
    finally:
        for h in handlers:
            if h is not None:
                h.removeFilter(drop)


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


def one_worker_in_process(beam_argv: list[str]) -> list[str]:
    """``beam_argv``, running the job's worker in this process when it would be one local
    worker process: the default LocalRunner (no ``--runner``, or LocalRunner named), one
    worker (``--direct_num_workers=1``, or the default of one per core on a one-core
    machine) and no ``--direct_running_mode`` given. FnApiRunner then runs the bundles in
    the launcher (``in_memory``) instead of starting a worker process for the job, importing
    the job's modules there and moving every element over gRPC: per job that is seconds of
    start-up with torch (generate runs one job per epoch) and, for prepare, more than a
    third of a 4 MiB job (bench/generate.py, bench/prepare.py). The workers' bytes do not
    depend on where they run; ``--direct_running_mode=multi_processing`` keeps a process."""
    argv = list(beam_argv)
    if any(a == "--direct_running_mode" or a.startswith("--direct_running_mode=")
           for a in argv):
        return argv
    runner = PipelineOptions(argv).view_as(StandardOptions).runner
    if runner is not None and "LocalRunner" not in runner:
        return argv
    workers = explicit_workers(argv) or 0
    if (workers or multiprocessing.cpu_count()) != 1:
        return argv
    return ["--direct_running_mode=in_memory", *argv]
