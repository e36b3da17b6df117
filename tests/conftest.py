"""Shared fixtures: small real-text corpora (docstrings of a few standard-library modules, so
no download and no synthetic gibberish) and one prepared corpus reused by many tests."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import zstandard

from pipeline.sources import FileReport, read_pydoc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.toml")
STDLIB = sysconfig.get_paths()["stdlib"]
PROSE_MODULES = ["argparse.py", "dataclasses.py", "textwrap.py", "json/__init__.py",
                 "logging/__init__.py", "subprocess.py", "tarfile.py", "zipfile.py"]
# Beam's in-process runner: fast start, one worker. Tests of parallelism ask for more.
IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]

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
    """The corpus token caches (trainer.data.CorpusTokens, default under $XDG_CACHE_HOME) of
    every test and of the trainer processes it starts go to a temporary folder, not the
    user's home."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield


def kill_9_when(module: str, argv: list[str], ready, settle: float = 0.0,
                env: dict | None = None) -> None:
    """Run ``python -m module argv``, wait until ``ready()`` (then ``settle`` seconds more),
    check it is still running, and kill -9 its whole process group: a real crash mid-run."""
    proc = subprocess.Popen([sys.executable, "-m", module, *argv], cwd=REPO,
                            env=env or dict(os.environ, PYTHONPATH=REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while not ready() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(settle)
    assert proc.poll() is None, f"{module} finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread, here and in the worker processes a test starts (Beam workers read
    OMP_NUM_THREADS): the models in the tests are tiny, and on a shared 2-core machine
    oversubscribed threads make them (and the vocabulary-wide Gumbel sampling) up to ~15x
    slower."""
    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if env is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = env


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
