"""prepare's composite transforms (pipeline/prepare_steps.py), each run in-process in its own
TestPipeline on the test corpus and checked with Beam's assert_that: what a user reusing one
in a pipeline of their own gets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from apache_beam import Create, FlatMap, Map
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.corpus_parts import (
    DocsPack,
    group_files,
    kept_tokens,
    num_sequences,
    part_key,
)
from pipeline.prepare_steps import (
    ReadDocuments,
    TokenizeAndSplit,
    WriteCorpusParts,
    batch_documents,
    doc_batches,
)
from pipeline.runners import pipeline_options
from pipeline.sources import Document, expand_inputs
from tests.helpers import IN_MEMORY
from trainer.config.load import load_config
from trainer.data.manifest import UNIGRAM_FILE
from trainer.tokenizer import load_tokenizer


def in_process() -> BeamTestPipeline:
    return BeamTestPipeline(options=pipeline_options(IN_MEMORY))


def corpus_config(prepared):
    """The prepared test corpus's resolved config (its config.toml) and its inputs."""
    cfg = load_config(prepared[0] / "config.toml")
    return cfg, expand_inputs(cfg.data.input)


def read_documents(p, files, data):
    return (p | Create([(i, path) for i, (path, _) in enumerate(files)])
              | ReadDocuments(data))


def test_read_documents_yields_every_document_and_a_report_per_file(prepared):
    cfg, files = corpus_config(prepared)
    docs = prepared[2]  # {path: documents in file order}
    want = [(i, j, text) for i, (path, _) in enumerate(files) for j, text in enumerate(docs[path])]
    with in_process() as p:
        out = read_documents(p, files, cfg.data)
        assert_that(out["docs"] | FlatMap(batch_documents) | Map(lambda d: (d[0], d[1], d[3])),
                    equal_to(want))
        assert_that(out["reports"] | Map(lambda r: (r[0], r[1]["documents"])),
                    equal_to([(i, len(docs[path])) for i, (path, _) in enumerate(files)]),
                    label="CheckReports")


def test_a_wrong_expectation_fails_the_pipeline(prepared):
    """Negative control: assert_that with one document missing from the expected value makes
    the run fail, so the checks above have power."""
    cfg, files = corpus_config(prepared)
    docs = prepared[2]
    want = [(i, j) for i, (path, _) in enumerate(files) for j in range(len(docs[path]))]
    with pytest.raises(Exception, match="Failed assert"):
        with in_process() as p:
            out = read_documents(p, files, cfg.data)
            assert_that(out["docs"] | FlatMap(batch_documents) | Map(lambda d: (d[0], d[1])),
                        equal_to(want[1:]))


def test_doc_batches_cut_by_characters_and_documents():
    docs = [Document(i, 10 * i, "x" * n) for i, n in enumerate([5, 5, 5, 20, 1, 1, 1])]
    batches = list(doc_batches(3, docs, max_chars=10, max_docs=2))
    assert [b[1] for b in batches] == [(0, 1), (2, 3), (4, 5), (6,)]
    assert all(b[0] == 3 for b in batches) and batches[1][2] == (20, 30)
    assert [d for b in batches for d in batch_documents(b)] == [
        (3, d.doc_index, d.offset, d.text) for d in docs]


def test_tokenize_and_split_keys_each_document_by_its_part(prepared):
    """Batches of documents, one of them across a part boundary of a chunked file: each
    document lands in its part with its ids (a short tail dropped), and a document without
    tokens is dropped."""
    corpus_dir, manifest, _ = prepared
    cfg, _ = corpus_config(prepared)
    sp = load_tokenizer(str(corpus_dir / manifest["tokenizer"]["file"]))
    long = " ".join(["the quick brown fox jumps over the lazy dog"] * 30)
    docs = [(0, 0, 0, "A short document."), (0, 1, 18, ""), (1, 0, 0, long),
            (1, 1, 3000, "Another one, past the first part of its file."), (1, 2, 3100, long)]
    groups = [(0, False), (1, True)]  # file 1 is cut into parts of 2,048 text bytes
    data = dataclasses.replace(cfg.data, part_text_bytes=2048, min_tail_tokens=7)
    want = []
    for f, d, offset, text in docs:
        ids = sp.encode(text)
        if ids:  # a document without tokens is dropped (and counted)
            kept = kept_tokens(len(ids), data.max_seq_len, data.min_tail_tokens)
            want.append((part_key(groups[f], offset, data.part_text_bytes),
                         (f, d, np.asarray(ids[:kept], "<i4").tobytes(),
                          num_sequences(kept, data.max_seq_len), len(ids) - kept,
                          len(text.encode()))))
    assert max(w[1][3] for w in want) > 1  # the long document makes several sequences
    assert len({w[0] for w in want}) == 3  # three parts
    batches = [(0, (0, 1), (0, 18), tuple(d[3] for d in docs[:2])),
               (1, (0, 1, 2), (0, 3000, 3100), tuple(d[3] for d in docs[2:]))]
    with in_process() as p:
        out = (p | Create(batches)
                 | TokenizeAndSplit(data, str(corpus_dir / manifest["tokenizer"]["file"]),
                                    groups)
                 | FlatMap(unpack, data.max_seq_len))
        assert_that(out, equal_to(want))


def unpack(element, max_seq_len: int):
    """(part key, DocsPack tuple) -> (part key, TokenizedDoc tuple) per document."""
    key, pack = element
    pack = DocsPack(*pack)
    ids, at = pack.column("ids"), 0
    for d, n, dropped, text_bytes in zip(*(pack.column(c) for c in (
            "doc_index", "tokens", "dropped_tokens", "text_bytes")), strict=True):
        yield key, (pack.file_index, int(d), ids[at:at + n].tobytes(),
                    num_sequences(int(n), max_seq_len), int(dropped), int(text_bytes))
        at += n


def test_write_corpus_parts_writes_the_parts_prepare_wrote(prepared, tmp_path):
    """The three composites chained over the test inputs write, to another folder, the very
    part files (sha256) and unigram counts of the prepared corpus."""
    corpus_dir, manifest, _ = prepared
    cfg, files = corpus_config(prepared)
    unigram = np.load(corpus_dir / UNIGRAM_FILE)
    groups = group_files([size for _, size in files], cfg.data.part_text_bytes)
    with in_process() as p:
        out = (read_documents(p, files, cfg.data)["docs"]
               | TokenizeAndSplit(cfg.data, str(corpus_dir / manifest["tokenizer"]["file"]),
                                  groups)
               | WriteCorpusParts(str(tmp_path), cfg.data, cfg.tokenizer.vocab_size))
        assert_that(out | Map(lambda o: (o[0], o[1].tolist())),
                    equal_to([(manifest["files"], unigram.tolist())]))
    for entry in manifest["files"]:
        assert (tmp_path / entry["name"]).read_bytes() == (corpus_dir / entry["name"]).read_bytes()
