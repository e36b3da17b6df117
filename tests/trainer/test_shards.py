"""CorpusShards refuses incomplete or altered shard sets with a message naming the file."""

from __future__ import annotations

import json
import shutil

import pytest

from trainer.shards import CorpusShards, ShardError


@pytest.fixture
def corpus_copy(prepared, tmp_path):
    corpus_dir, manifest, _ = prepared
    copy = tmp_path / "corpus"
    shutil.copytree(corpus_dir, copy)
    return copy, manifest


def test_reader_api(prepared):
    corpus_dir, manifest, _ = prepared
    corpus = CorpusShards(str(corpus_dir))
    assert corpus.num_sequences == manifest["num_sequences"]
    assert corpus.vocab_size == 600 and corpus.max_seq_len == 64
    assert corpus.read_table(0).num_rows == manifest["files"][0]["rows"]
    first = next(corpus.rows())
    assert (first.seq_id, first.doc_id) == (0, 0) and first.input_ids.dtype.name == "int32"


def test_missing_manifest_reads_as_incomplete(corpus_copy):
    copy, _ = corpus_copy
    (copy / "manifest.json").unlink()
    with pytest.raises(ShardError, match="no manifest.json: the corpus shard set is incomplete"):
        CorpusShards(str(copy))


def test_verify_finds_missing_changed_and_truncated_files(corpus_copy):
    copy, manifest = corpus_copy
    name = manifest["files"][1]["name"]
    CorpusShards(str(copy)).verify(checksums=True)

    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / name).write_bytes(bytes(data))
    CorpusShards(str(copy)).verify()  # metadata still fine: only a checksum pass sees it
    with pytest.raises(ShardError, match=f"{name}: sha256 .* differs"):
        CorpusShards(str(copy)).verify(checksums=True)

    (copy / name).unlink()
    with pytest.raises(ShardError, match=f"{name} is listed in the manifest but missing"):
        CorpusShards(str(copy)).verify()

    m = json.loads((copy / "manifest.json").read_text())
    m["files"].pop(1)
    m["files"][0]["rows"] += 1
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShardError, match="rows, the manifest says"):
        CorpusShards(str(copy)).verify()


def test_wrong_kind_or_version(corpus_copy):
    copy, _ = corpus_copy
    m = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(dict(m, schema_version=99)))
    with pytest.raises(ShardError, match="schema_version 99"):
        CorpusShards(str(copy))
    (copy / "manifest.json").write_text(json.dumps(dict(m, kind="rtd")))
    with pytest.raises(ShardError, match="holds a 'rtd' shard set, not 'corpus'"):
        CorpusShards(str(copy))
