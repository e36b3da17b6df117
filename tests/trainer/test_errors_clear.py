"""Errors a user can fix read as such: a truncated or corrupt shard file is a ShardError naming
the file and the fix (not a pyarrow traceback), at verify time and at read time, and the
commands exit 2 with ``error: <message>``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO, SMALL, TINY, write_rtd_set
from trainer.data.corpus_shards import CorpusShards
from trainer.data.manifest import ShardError
from trainer.data.rtd_shards import RTDShards


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def corrupt_pages(path) -> None:
    """Zero the data pages of the file's first row group, keeping its footer intact: the file
    opens and its row count checks, but decoding fails."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    col = meta.row_group(0).column(meta.num_columns - 1)  # the last column's pages
    start = col.dictionary_page_offset or col.data_page_offset
    data = bytearray(path.read_bytes())
    data[start:start + col.total_compressed_size] = bytes(col.total_compressed_size)
    path.write_bytes(bytes(data))


@pytest.fixture
def corpus_copy(prepared, tmp_path):
    corpus_dir, manifest, _ = prepared
    copy = tmp_path / "corpus"
    shutil.copytree(corpus_dir, copy)
    return copy, manifest["files"][1]["name"]


def test_truncated_corpus_file_is_a_shard_error_at_verify(corpus_copy):
    copy, name = corpus_copy
    truncate(copy / name)
    with pytest.raises(ShardError, match=f"{name} is not a readable Parquet file .*truncated "
                                         "or corrupt; re-run fast-electra prepare --overwrite"):
        CorpusShards(str(copy)).verify()


@pytest.mark.parametrize("damage", [truncate, corrupt_pages])
def test_damaged_corpus_file_is_a_shard_error_at_read(corpus_copy, damage):
    copy, name = corpus_copy
    damage(copy / name)
    corpus = CorpusShards(str(copy))  # not verified: the damage is met while reading
    with pytest.raises(ShardError, match=f"{name} is not a readable Parquet file"):
        corpus.read_table(1)
    with pytest.raises(ShardError, match=f"{name} is not a readable Parquet file"):
        for _ in corpus.rows():
            pass


@pytest.fixture
def rtd_copy(tmp_path):
    root = write_rtd_set(tmp_path / "rtd")
    manifest = json.loads((root / "manifest.json").read_text())
    return root, manifest["files"][1]  # epoch 0, positions 300..599


def test_truncated_rtd_file_is_a_shard_error_at_verify(rtd_copy):
    root, entry = rtd_copy
    truncate(root / entry["name"])
    with pytest.raises(ShardError, match=f"{entry['name']} is not a readable Parquet file .*"
                                         "re-run fast-electra generate --overwrite"):
        RTDShards(str(root)).verify()


@pytest.mark.parametrize("damage", [truncate, corrupt_pages])
def test_damaged_rtd_file_is_a_shard_error_at_read(rtd_copy, damage):
    root, entry = rtd_copy
    damage(root / entry["name"])
    rtd = RTDShards(str(root))
    lo = entry["position_start"]
    assert len(rtd.read_range(0, 0, 10)) == 10  # the intact file still reads
    with pytest.raises(ShardError, match=f"{entry['name']} is not a readable Parquet file"):
        rtd.read_range(0, lo, lo + 10)
    with pytest.raises(ShardError, match=f"{entry['name']} is not a readable Parquet file"):
        rtd.read_range_table(0, lo, lo + 10)


@pytest.mark.slow
@pytest.mark.parametrize("module", ["trainer.train", "pipeline.inspect"])
def test_commands_exit_2_with_the_message_and_no_traceback(corpus_copy, tmp_path, module):
    copy, name = corpus_copy
    truncate(copy / name)
    if module == "trainer.train":
        argv = ["--config", TINY]
        for o in [*SMALL, f"data.corpus_dir={copy}", f"train.out_dir={tmp_path / 'out'}",
                  "train.max_steps=2"]:
            argv += ["--set", o]
    else:
        argv = [str(copy), "--verify"]
    p = subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    assert f"error: {copy}/{name} is not a readable Parquet file" in p.stderr
