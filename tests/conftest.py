"""Shared fixtures: small real-text corpora (docstrings of a few standard-library modules, so
no download and no synthetic gibberish), one prepared corpus, and the artefacts built on it
that many modules use, each built once per session: a trained aux checkpoint, its 2-epoch
RTD set, and model-free (uniform, smoothed_onehot) RTD sets. Shared helpers live in
tests/helpers.py (kill_9_when, REPO, TINY and IN_MEMORY stay importable from here)."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import sysconfig

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.sources import FileReport, read_pydoc
from tests.helpers import (  # noqa: F401  (kill_9_when: re-exported for older imports)
    GENERATE_SMALL,
    IN_MEMORY,
    REPO,
    TINY,
    gen_argv,
    kill_9_when,
    once,
    single_thread,
)

STDLIB = sysconfig.get_paths()["stdlib"]
PROSE_MODULES = ["argparse.py", "dataclasses.py", "textwrap.py", "json/__init__.py",
                 "logging/__init__.py", "subprocess.py", "tarfile.py", "zipfile.py"]

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


def write_corpus(root, docs: list[str]) -> dict[str, list[str]]:
    """Spread ``docs`` over a plain-text, a gzip text, a zstd JSONL and a Parquet file, plus
    one very long document; returns {path: documents in file order}."""
    root.mkdir(parents=True, exist_ok=True)
    q = len(docs) // 4
    # In a plain-text file a blank line ends a document, so paragraphs become lines there.
    one_block = [re.sub(r"\n\s*\n", "\n", d) for d in docs[:2 * q]]
    files = {
        str(root / "a.txt"): one_block[:q],
        str(root / "b.txt.gz"): one_block[q:],
        str(root / "c.jsonl.zst"): docs[2 * q:3 * q],
        str(root / "d.parquet"): docs[3 * q:] + [" ".join(docs[:40])],  # >> max_seq_len
    }
    blocks = lambda ds: "\n\n".join(ds).encode() + b"\n"  # noqa: E731
    (root / "a.txt").write_bytes(blocks(files[str(root / "a.txt")]))
    (root / "b.txt.gz").write_bytes(gzip.compress(blocks(files[str(root / "b.txt.gz")]), mtime=0))
    jsonl = "".join(json.dumps({"text": d, "id": i}) + "\n"
                    for i, d in enumerate(files[str(root / "c.jsonl.zst")]))
    (root / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl.encode()))
    pq.write_table(pa.table({"text": files[str(root / "d.parquet")]}), root / "d.parquet")
    return files


def prepare_argv(inputs_dir, corpus_dir, *extra: str, vocab: int = 600,
                 max_seq_len: int = 64) -> list[str]:
    return ["--config", TINY,
            "--set", f'data.input=["{inputs_dir}/*"]',
            "--set", "data.format=auto",
            "--set", f"data.corpus_dir={corpus_dir}",
            "--set", f"data.max_seq_len={max_seq_len}",
            "--set", "data.part_text_bytes=20000",
            "--set", "data.row_group_rows=64",
            "--set", f"tokenizer.vocab_size={vocab}",
            *extra]


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


@pytest.fixture(scope="session")
def aux_checkpoint(prepared, tmp_path_factory) -> str:
    """A real MLM checkpoint folder: 4 steps of trainer.train in mlm mode (its own process)."""
    def build():
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
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO))
        assert p.returncode == 0, p.stderr[-3000:]
        return find_latest(str(out))

    return once("aux_checkpoint", build)


@pytest.fixture(scope="session")
def aux_rtd(prepared, aux_checkpoint, tmp_path_factory):
    """(folder, manifest): 2 epochs corrupted by ``aux_checkpoint`` on the CPU, seed 7."""
    def build():
        from pipeline.generate import run

        rtd_dir = tmp_path_factory.mktemp("rtd") / "rtd"
        manifest = run(gen_argv(prepared[0], rtd_dir, f"generate.aux_checkpoint={aux_checkpoint}",
                                "generate.epochs=2", "generate.seed=7", "generate.device=cpu"))
        return rtd_dir, manifest

    return once("aux_rtd", build)


@pytest.fixture(scope="session")
def rtd_dir(prepared, tmp_path_factory):
    """2 epochs with a model-free replacement (uniform): parts of 300 rows in row groups of
    32, so reads cross row groups and files."""
    def build():
        from pipeline.generate import run

        out = tmp_path_factory.mktemp("uniform") / "rtd"
        run(gen_argv(prepared[0], out, "corruption.replacement=uniform", "generate.epochs=2",
                     "data.row_group_rows=32", extra=("--set", "generate.part_rows=300")))
        return out

    return once("rtd_dir", build)


@pytest.fixture(scope="session")
def smoothed_rtd(prepared, tmp_path_factory):
    """(folder, manifest): 2 epochs x 5 parts of smoothed_onehot replacements: the replaced
    fraction falls with the temperature, so plots and schedules have something to show."""
    def build():
        from pipeline.generate import run

        out = tmp_path_factory.mktemp("smoothed") / "rtd"
        manifest = run(gen_argv(prepared[0], out, "corruption.replacement=smoothed_onehot",
                                "generate.epochs=2"))
        return out, manifest

    return once("smoothed_rtd", build)
