"""The command line every Beam job shares around its own work (prepare.py, generate.py):
``--config`` / ``--set`` / ``--overwrite`` / ``--progress-s`` (every other option goes to Beam
unchanged), the re-run that finds its output already there, running the pipeline with progress
lines (pipeline.progress) and printing the manifest it wrote, and the ``python -m`` entry. What
happens to the output folder itself (locks, fingerprints, leftovers) is pipeline.shard_sets.

    @holds_output_locks
    def run(argv=None) -> dict:
        args, cfg, beam_argv = parse_job_args("python -m pipeline.prepare", __doc__, argv,
                                              "replace a different corpus already in ...")
        output = JobOutput(out_dir, "corpus", "prepare", "this corpus (same config and inputs)",
                           patterns, print_summary)
        done = claim_output(output, fp, args.overwrite)
        if done is not None:
            return done
        ...
        return run_job(lambda p: build(p, ...), beam_argv, output,
                       corpus_progress(out_dir, files, part_bytes, args.progress_s))

    if __name__ == "__main__":
        run_as_main("pipeline.prepare")
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import apache_beam as beam

from pipeline.progress import ProgressReporter, add_progress_flag
from pipeline.runners import pipeline_options
from pipeline.shard_sets import prepare_output, run_pipeline
from trainer.cli import config_parser, resolve_config
from trainer.config.run import RunConfig
from trainer.data.manifest import read_manifest


def parse_job_args(prog: str, doc: str | None, argv: list[str] | None, overwrite_help: str,
                   extra: Callable[[argparse.ArgumentParser], None] | None = None
                   ) -> tuple[argparse.Namespace, RunConfig, list[str]]:
    """(the job's arguments, the resolved config, the options left for Beam); ``extra`` adds
    the job's own options."""
    parser = config_parser(prog, doc)
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)
    add_progress_flag(parser)
    if extra is not None:
        extra(parser)
    args, beam_argv = parser.parse_known_args(argv)
    return args, resolve_config(args), beam_argv


@dataclass(frozen=True)
class JobOutput:
    """The output folder of a job and how the job speaks of it: ``kind`` is its manifest's
    kind, ``what`` names a set equal to this run's in the "nothing to do" line, ``patterns``
    match the files an interrupted run leaves, ``summary`` prints a manifest."""

    out_dir: str
    kind: str
    job: str
    what: str
    patterns: list[str]
    summary: Callable[[dict], None]


def claim_output(out: JobOutput, fp: dict, overwrite: bool) -> dict | None:
    """Lock ``out.out_dir`` for this run and clear an interrupted run's leftovers there
    (``prepare_output``: a different set is refused unless ``overwrite``) -> None; or, when the
    folder already holds this very set, say so, print its summary and return its manifest
    (the job has nothing to do)."""
    if prepare_output(out.out_dir, out.kind, fp, overwrite, out.patterns, out.job):
        return None
    print(f"{out.job}: {out.out_dir} already holds {out.what}; nothing to do. Pass --overwrite "
          "to rebuild it.")
    manifest = read_manifest(out.out_dir, out.kind)
    out.summary(manifest)
    return manifest


def run_job(build: Callable[[beam.Pipeline], None], beam_argv: list[str], out: JobOutput,
            progress: ProgressReporter) -> dict:
    """Build the job's steps on a pipeline made from the Beam options, run it to the end with
    ``progress`` reporting, print the summary of the manifest it wrote and return that
    manifest."""
    p = beam.Pipeline(options=pipeline_options(beam_argv))
    build(p)
    with progress:
        run_pipeline(p)
    manifest = read_manifest(out.out_dir, out.kind)
    out.summary(manifest)
    return manifest


def run_as_main(module: str) -> NoReturn:
    """The body of a job's ``if __name__ == "__main__"``: the job's ``main``, imported by its
    module name, so that Beam pickles its DoFns by reference to that module, not to
    ``__main__`` (which a worker process cannot import)."""
    sys.exit(importlib.import_module(module).main())
