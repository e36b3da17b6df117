"""The Beam runner a job runs on: the pipeline options from the pass-through arguments, with the
project's defaults when no runner is named, and whether the workers are on this machine.

Options the project does not consume go to Beam unchanged; with no ``--runner`` the jobs run on
``LocalRunner``: the DirectRunner's batch engine (FnApiRunner) with one worker process per core,
chosen explicitly because the plain DirectRunner first tries to download the Prism runner
binary, which hangs or fails on a machine without network. ``--runner DaskRunner`` means the
project's fixed DaskRunner (pipeline/dask_runner.py), not Beam's, which cannot run prepare.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from apache_beam.runners.runner import PipelineRunner

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
