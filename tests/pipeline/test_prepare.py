"""End-to-end tests of ``pipeline.prepare``: a real Beam pipeline on real text files."""

from __future__ import annotations

import filecmp
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.prepare import main, run
from tests.helpers import (
    IN_MEMORY,
    kill_9_when,
    part_started,
    prepare_argv,
    shard_files,
    write_corpus,
)
from trainer.data.corpus_shards import CorpusShards
from trainer.data.manifest import ShardError
from trainer.tokenizer import CLS_ID, SEP_ID, load_tokenizer


def test_corpus_contract(prepared):
    corpus_dir, manifest, files = prepared
    corpus = CorpusShards(str(corpus_dir))
    corpus.verify(checksums=True)
    rows = list(corpus.rows())
    max_len = manifest["max_seq_len"]

    assert [r.seq_id for r in rows] == list(range(len(rows))) == list(
        range(manifest["num_sequences"]))
    assert all(len(r.input_ids) <= max_len for r in rows)
    assert all(r.input_ids[0] == CLS_ID and r.input_ids[-1] == SEP_ID for r in rows)
    assert all(not np.isin(r.input_ids[1:-1], [CLS_ID, SEP_ID]).any() for r in rows)

    # doc_ids are dense and in corpus order; a document's sequences are contiguous.
    doc_ids = [r.doc_id for r in rows]
    assert doc_ids == sorted(doc_ids)
    assert sorted(set(doc_ids)) == list(range(manifest["num_documents"]))

    # Every document of every file, in input order, re-tokenised whole: its pieces glued
    # back together are exactly its tokens (nothing dropped, nothing from another document).
    sp = load_tokenizer(corpus.tokenizer_path)
    expected = [sp.encode(d) for path in sorted(files) for d in files[path]]
    by_doc: dict[int, list[int]] = {}
    for r in rows:
        by_doc.setdefault(r.doc_id, []).extend(r.input_ids[1:-1].tolist())
    assert [by_doc[i] for i in range(len(by_doc))] == expected
    assert manifest["num_tokens"] == sum(map(len, expected))
    assert any(len(e) > max_len for e in expected), "the corpus must include a long document"

    # Unigram counts cover every token of every sequence, specials included.
    counts = corpus.unigram_counts()
    assert counts.shape == (manifest["tokenizer"]["vocab_size"],)
    assert counts.sum() == sum(len(r.input_ids) for r in rows)
    assert counts[CLS_ID] == counts[SEP_ID] == len(rows)

    # Files and row groups are what the manifest and the config say.
    assert len(manifest["files"]) > 1
    for entry in manifest["files"]:
        meta = pq.ParquetFile(corpus_dir / entry["name"]).metadata
        assert meta.num_rows == entry["rows"]
        assert meta.row_group(0).column(2).compression == "ZSTD"
        assert all(meta.row_group(i).num_rows <= 64 for i in range(meta.num_row_groups))
    assert [r["path"] for r in manifest["inputs"]] == sorted(files)
    assert (corpus_dir / "config.toml").is_file()


@pytest.mark.slow
def test_deterministic_across_worker_processes(prepared, corpus_inputs, tmp_path):
    """Two worker processes (the default multi-process runner) write the same bytes as the
    one in-process worker."""
    corpus_dir, _, _ = prepared
    inputs_dir, _ = corpus_inputs
    other = tmp_path / "corpus"
    run(prepare_argv(inputs_dir, other, "--direct_num_workers=2"))
    names = sorted(os.listdir(corpus_dir))
    assert names == sorted(os.listdir(other))
    data_files = [n for n in names if n not in ("manifest.json", "config.toml")]
    match, mismatch, errors = filecmp.cmpfiles(corpus_dir, other, data_files, shallow=False)
    assert mismatch == [] and errors == [] and len(match) >= 4
    # The manifests differ only in where the corpus was written.
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (corpus_dir, other)]
    for m in manifests:
        del m["config"]["data"]["corpus_dir"]
    assert manifests[0] == manifests[1]


def test_rerun_is_noop_and_different_corpus_is_refused(prepared, corpus_inputs, capsys):
    corpus_dir, manifest, _ = prepared
    inputs_dir, _ = corpus_inputs
    before = {n: os.path.getmtime(corpus_dir / n) for n in os.listdir(corpus_dir)}
    assert run(prepare_argv(inputs_dir, corpus_dir, *IN_MEMORY)) == manifest
    assert "nothing to do" in capsys.readouterr().out
    assert before == {n: os.path.getmtime(corpus_dir / n) for n in os.listdir(corpus_dir)}

    code = main(prepare_argv(inputs_dir, corpus_dir, *IN_MEMORY, max_seq_len=32))
    err = capsys.readouterr().err
    assert code == 2
    assert "already holds a different corpus" in err and "data.max_seq_len" in err
    assert "--overwrite" in err
    assert CorpusShards(str(corpus_dir)).manifest == manifest  # untouched


@pytest.mark.slow
def test_overwrite_replaces_and_leaves_no_stale_parts(corpus_inputs, tmp_path):
    inputs_dir, _ = corpus_inputs
    corpus_dir = tmp_path / "corpus"
    first = run(prepare_argv(inputs_dir, corpus_dir, *IN_MEMORY,
                             "--set", "data.part_text_bytes=5000"))
    second = run(prepare_argv(inputs_dir, corpus_dir, *IN_MEMORY, "--overwrite",
                              max_seq_len=128))
    assert len(second["files"]) < len(first["files"])
    parts = sorted(n for n in os.listdir(corpus_dir) if n.startswith("part-"))
    assert parts == [f["name"] for f in second["files"]]
    assert not [n for n in os.listdir(corpus_dir) if n.startswith(".tmp")]
    CorpusShards(str(corpus_dir)).verify(checksums=True)


@pytest.mark.slow
def test_killed_run_leaves_no_manifest_and_rerun_recovers(prose, tmp_path):
    """kill -9 in the middle: the folder reads as incomplete; the next run cleans up."""
    inputs = tmp_path / "inputs"
    write_corpus(inputs, prose * 12)
    corpus_dir = tmp_path / "corpus"
    argv = prepare_argv(inputs, corpus_dir, "--direct_num_workers=2",
                        "--set", "data.part_text_bytes=100000")
    # Killed once the Beam job has written a part or a part's temporary: the leftovers must
    # exist (fails if the kill landed before anything was written, or after the run finished)
    # and the re-run must clear the ones it does not rewrite.
    kill_9_when("pipeline.prepare", argv, lambda: part_started(corpus_dir))
    assert shard_files(corpus_dir) and not (corpus_dir / "manifest.json").exists()
    with pytest.raises(ShardError, match="incomplete"):
        CorpusShards(str(corpus_dir))

    manifest = run(argv[:-2] + ["--set", "data.part_text_bytes=100000", *IN_MEMORY])
    CorpusShards(str(corpus_dir)).verify(checksums=True)
    assert manifest["num_documents"] == len(prose) * 12 + 1
    assert shard_files(corpus_dir) == sorted(f["name"] for f in manifest["files"])  # no temps


def test_bad_records_are_counted_not_fatal(tmp_path, prose, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    good = "\n".join(json.dumps({"body": d}) for d in prose[:200])
    (inputs / "x.jsonl").write_bytes(
        good.encode() + b'\n{"body": broken json\n{"other": 1}\n'
        + b'{"body": "caf\xe9 au lait and more words"}\n')
    manifest = run(prepare_argv(inputs, tmp_path / "corpus", *IN_MEMORY,
                                "--set", "data.text_field=body", vocab=400))
    (report,) = manifest["inputs"]
    assert report["bad_records"] == 2 and report["undecodable_bytes"] == 1
    assert report["documents"] == 201
    assert any(":201: not valid JSON" in e for e in report["examples"])
    out = capsys.readouterr().out
    assert "1 undecodable bytes" in out and "2 bad records" in out


@pytest.mark.parametrize("content, message", [
    (b"\n\n   \n", "are empty"),
    (b"", "are empty"),
    (b'{"text": 1}\n{"txt": "a"}\n', "hold no text"),
])
def test_empty_inputs_are_a_clear_error(tmp_path, content, message, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "x.jsonl").write_bytes(content)
    if content.strip() == b"":
        # whitespace-only text is not empty on disk: it fails after reading, like bad JSON
        message = "hold no text" if content else message
    code = main(prepare_argv(inputs, tmp_path / "corpus", *IN_MEMORY))
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "corpus" / "manifest.json").exists()


def test_glob_without_match_is_a_clear_error(tmp_path, capsys):
    code = main(prepare_argv(tmp_path / "nowhere", tmp_path / "corpus", *IN_MEMORY))
    err = capsys.readouterr().err
    assert code == 2 and "matches no file" in err and "nowhere" in err


def test_given_tokenizer_is_used_and_checked(prepared, corpus_inputs, tmp_path, capsys):
    corpus_dir, manifest, _ = prepared
    inputs_dir, _ = corpus_inputs
    model = str(corpus_dir / "tokenizer.model")
    again = run(prepare_argv(inputs_dir, tmp_path / "c1", *IN_MEMORY,
                             "--set", f"tokenizer.model={model}"))
    assert again["tokenizer"]["sha256"] == manifest["tokenizer"]["sha256"]
    assert again["num_tokens"] == manifest["num_tokens"]

    code = main(prepare_argv(inputs_dir, tmp_path / "c2", *IN_MEMORY,
                             "--set", f"tokenizer.model={model}", vocab=700))
    err = capsys.readouterr().err
    assert code == 2 and "tokenizer.vocab_size=600" in err


def test_short_tails_dropped_on_request_and_counted(corpus_inputs, prepared, tmp_path):
    inputs_dir, _ = corpus_inputs
    _, full, _ = prepared
    manifest = run(prepare_argv(inputs_dir, tmp_path / "corpus", *IN_MEMORY,
                                "--set", "data.min_tail_tokens=20"))
    assert manifest["num_dropped_tail_tokens"] > 0
    assert manifest["num_tokens"] + manifest["num_dropped_tail_tokens"] == full["num_tokens"]
    assert manifest["num_documents"] == full["num_documents"]


def test_unreadable_parquet_is_a_clear_error(tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "x.parquet").write_bytes(b"PAR1 this is not parquet")
    code = main(prepare_argv(inputs, tmp_path / "corpus", *IN_MEMORY))
    err = capsys.readouterr().err
    assert code == 2 and "x.parquet is not a readable Parquet file" in err


@pytest.mark.slow
def test_a_mostly_undecodable_input_is_refused_by_name(corpus_inputs, tmp_path, capsys):
    """A binary file among text inputs (zlib data: ~all invalid UTF-8) is refused with its
    name, exit 2 and no manifest; data.max_undecodable_fraction lets it through."""
    import shutil
    import zlib

    inputs_dir, _ = corpus_inputs
    mixed = tmp_path / "inputs"
    shutil.copytree(inputs_dir, mixed)
    blob = mixed / "blob.txt"
    blob.write_bytes(zlib.compress(os.urandom(4000) * 8, 0)[:30_000])
    out = tmp_path / "corpus"
    assert main(prepare_argv(mixed, out, *IN_MEMORY)) == 2
    err = capsys.readouterr().err
    assert "blob.txt" in err and "data.max_undecodable_fraction" in err
    assert not (out / "manifest.json").exists()
    manifest = run(prepare_argv(mixed, out, *IN_MEMORY, "--set",
                                "data.max_undecodable_fraction=1.0"))
    assert any(r["path"].endswith("blob.txt") and r["undecodable_bytes"] > 0
               for r in manifest["inputs"])
