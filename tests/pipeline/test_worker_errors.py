"""A UserError raised inside a Beam worker process (the multi-process local runner, as in
production) reaches the user as on the in-process runner: ``error: <message>``, exit status
2, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.helpers import GENERATE_RUN, REPO, TINY

# slow: Beam's multi-process runner: real worker processes.
pytestmark = pytest.mark.slow


def test_a_worker_side_user_error_exits_2_with_its_message_and_no_traceback(prepared,
                                                                            tmp_path):
    corpus_dir, manifest, _ = prepared
    corpus = tmp_path / "corpus"
    shutil.copytree(corpus_dir, corpus)
    part = corpus / manifest["files"][0]["name"]
    # Same rows, other bytes: the launcher's checks (footers, row counts) pass, and the worker
    # that reads the part finds its sha256 changed.
    pq.write_table(pq.read_table(part), part, compression="zstd", compression_level=9)
    argv = ["--config", TINY, "--set", f"data.corpus_dir={corpus}",
            "--set", f"tokenizer.vocab_size={manifest['tokenizer']['vocab_size']}",
            "--set", f"data.max_seq_len={manifest['max_seq_len']}",
            "--set", "corruption.replacement=uniform", "--set", "generate.epochs=1",
            "--set", f"generate.rtd_dir={tmp_path / 'rtd'}",
            *[arg for s in GENERATE_RUN for arg in ("--set", s)],
            "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    proc = subprocess.run([sys.executable, "-m", "pipeline.generate", *argv], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: {part}: sha256 differs from the corpus manifest's" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "rtd" / "manifest.json").exists()
