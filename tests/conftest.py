"""Shared fixtures: small real-text corpora (docstrings of a few standard-library modules, so
no download and no synthetic gibberish), one prepared corpus, and the artefacts built on it
that many modules use, each built once per session: a trained aux checkpoint, its 2-epoch
RTD set, and model-free (uniform, smoothed_onehot) RTD sets. The plain helpers they use live in
tests/helpers.py; test modules import those from there, and never import this file (pytest
loads it; a fixture imported into a test module would be a second definition with its own
cache, built again)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.sources import FileReport, read_pydoc
from tests.helpers import (
    GENERATE_SMALL,
    IN_MEMORY,
    PROSE_MODULES,
    REPO,
    STDLIB,
    TINY,
    gen_argv,
    prepare_argv,
    single_thread,
    write_corpus,
)

# CI (.ci/run) installs every extra and sets FAST_ELECTRA_REQUIRE_EXTRAS=1: there a test that
# pytest.importorskip would skip for a missing (or too old) optional module fails instead, so a
# broken install cannot pass as a run with a few skips.
if os.environ.get("FAST_ELECTRA_REQUIRE_EXTRAS") == "1":
    _importorskip = pytest.importorskip

    def _import_or_fail(modname, *args, **kwargs):
        try:
            return _importorskip(modname, *args, **kwargs)
        except pytest.skip.Exception as e:
            pytest.fail(f"FAST_ELECTRA_REQUIRE_EXTRAS=1: {e.msg}", pytrace=False)

    pytest.importorskip = _import_or_fail


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """The corpus token caches (trainer.data.corpus_tokens.CorpusTokens, default under
    $XDG_CACHE_HOME) of every test and of the trainer processes it starts go to a temporary
    folder, not the user's home."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread, here and in the worker processes a test starts
    (tests.helpers.single_thread)."""
    with single_thread():
        yield


@pytest.fixture(scope="session")
def prose() -> list[str]:
    """~500 real English documents (standard-library docstrings)."""
    docs = []
    for name in PROSE_MODULES:
        path = os.path.join(STDLIB, name)
        docs += [d.text for d in read_pydoc(path, FileReport(path))]
    assert len(docs) > 300
    return docs


@pytest.fixture(scope="session")
def corpus_inputs(tmp_path_factory, prose):
    root = tmp_path_factory.mktemp("inputs")
    return root, write_corpus(root, prose)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, corpus_inputs):
    """One corpus prepared in-process; returns (corpus_dir, manifest, {path: docs})."""
    from pipeline.prepare import run

    inputs_dir, files = corpus_inputs
    corpus_dir = tmp_path_factory.mktemp("prepared") / "corpus"
    manifest = run(prepare_argv(inputs_dir, corpus_dir, *IN_MEMORY))
    return corpus_dir, manifest, files


# The session fixtures below build under one torch thread (tests.helpers.single_thread): they
# start Beam workers and trainer processes, and on a shared 2-core machine oversubscribed threads
# make those many times slower.

@pytest.fixture(scope="session")
def aux_checkpoint(prepared, tmp_path_factory) -> str:
    """A real MLM checkpoint folder: 4 steps of trainer.train in mlm mode (its own process)."""
    from trainer.checkpoint import find_latest

    out = tmp_path_factory.mktemp("aux")
    sets = [*GENERATE_SMALL, "train.mode=mlm", "train.max_steps=4", "train.warmup_steps=1",
            "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=4",
            "train.global_batch_size=8", "train.micro_batch_size_per_rank=8",
            "train.holdout_fraction=0.05", f"data.corpus_dir={prepared[0]}",
            f"train.out_dir={out}"]
    cmd = [sys.executable, "-m", "trainer.train", "--config", TINY]
    for s in sets:
        cmd += ["--set", s]
    with single_thread():
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO))
    assert p.returncode == 0, p.stderr[-3000:]
    return find_latest(str(out))


@pytest.fixture(scope="session")
def aux_rtd(prepared, aux_checkpoint, tmp_path_factory):
    """(folder, manifest): 2 epochs corrupted by ``aux_checkpoint`` on the CPU, seed 7."""
    from pipeline.generate import run

    rtd_dir = tmp_path_factory.mktemp("rtd") / "rtd"
    with single_thread():
        manifest = run(gen_argv(prepared[0], rtd_dir, f"generate.aux_checkpoint={aux_checkpoint}",
                                "generate.epochs=2", "generate.seed=7", "generate.device=cpu"))
    return rtd_dir, manifest


@pytest.fixture(scope="session")
def rtd_dir(prepared, tmp_path_factory):
    """2 epochs with a model-free replacement (uniform): parts of 300 rows in row groups of
    32, so reads cross row groups and files."""
    from pipeline.generate import run

    out = tmp_path_factory.mktemp("uniform") / "rtd"
    with single_thread():
        run(gen_argv(prepared[0], out, "corruption.replacement=uniform", "generate.epochs=2",
                     "data.row_group_rows=32", extra=("--set", "generate.part_rows=300")))
    return out


@pytest.fixture(scope="session")
def smoothed_rtd(prepared, tmp_path_factory):
    """(folder, manifest): 2 epochs x 5 parts of smoothed_onehot replacements: the replaced
    fraction falls with the temperature, so plots and schedules have something to show."""
    from pipeline.generate import run

    out = tmp_path_factory.mktemp("smoothed") / "rtd"
    with single_thread():
        manifest = run(gen_argv(prepared[0], out, "corruption.replacement=smoothed_onehot",
                                "generate.epochs=2"))
    return out, manifest
