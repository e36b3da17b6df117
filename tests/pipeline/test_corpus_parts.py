"""Per-element steps of prepare: splitting, part layout, Parquet encoding."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.corpus_parts import (
    PartPlan,
    TokenizedDoc,
    encode_part,
    encode_part_arrays,
    group_files,
    kept_tokens,
    num_sequences,
    part_arrays,
    part_key,
    part_rows,
    plan_parts,
    split_sequences,
)
from trainer.data.corpus_shards import CORPUS_SCHEMA
from trainer.tokenizer import CLS_ID, SEP_ID


@pytest.mark.parametrize("n", [0, 1, 5, 6, 7, 12, 13, 100])
def test_split_sequences_keeps_every_token_in_order(n):
    ids = np.arange(10, 10 + n, dtype=np.int32)
    seqs = split_sequences(ids, max_seq_len=8)
    assert len(seqs) == num_sequences(n, 8)
    assert all(len(s) <= 8 and s[0] == CLS_ID and s[-1] == SEP_ID for s in seqs)
    assert all(len(s) == 8 for s in seqs[:-1])
    glued = np.concatenate([s[1:-1] for s in seqs]) if seqs else np.zeros(0)
    assert glued.tolist() == ids.tolist()


def test_short_tail_is_dropped_only_when_asked():
    assert kept_tokens(13, 8, min_tail_tokens=0) == 13  # 13 tokens = 6 + 6 + 1
    assert kept_tokens(13, 8, min_tail_tokens=2) == 12
    assert kept_tokens(12, 8, min_tail_tokens=7) == 12  # no tail: pieces are full
    # A short document is its own only piece: never dropped as a "tail".
    assert kept_tokens(1, 8, min_tail_tokens=2) == 1


def test_group_files_packs_small_files_and_isolates_big_ones():
    sizes = [10, 20, 30, 100, 5, 5, 200, 60, 60]
    groups = group_files(sizes, part_text_bytes=64)
    assert groups == [(0, False), (0, False), (0, False), (1, True), (2, False), (2, False),
                      (3, True), (4, False), (5, False)]
    # Keys are non-decreasing in (file, offset): the corpus order survives the shuffle.
    keys = [part_key(g, off, 64) for g in groups for off in (0, 63, 64, 300)]
    assert keys == sorted(keys)


def test_plan_parts_is_dense_and_ordered():
    counts = {(2, 0): (3, 5), (0, 1): (1, 4), (0, 0): (2, 2)}
    plans = plan_parts(counts)
    assert [(k, p.ordinal, p.seq_id_start, p.doc_id_start) for k, p in sorted(plans.items())] \
        == [((0, 0), 0, 0, 0), ((0, 1), 1, 2, 2), ((2, 0), 2, 6, 3)]


def test_encode_part_round_trip(tmp_path):
    seqs = [np.array([CLS_ID, 7, 8, SEP_ID], np.int32), np.array([CLS_ID, 9, SEP_ID], np.int32)]
    data = encode_part([5, 6], [1, 1], seqs, row_group_rows=1)
    path = tmp_path / "p.parquet"
    path.write_bytes(data)
    pf = pq.ParquetFile(path)
    assert pf.schema_arrow == CORPUS_SCHEMA
    assert pf.metadata.num_row_groups == 2
    table = pf.read()
    assert table.column("input_ids").to_pylist() == [s.tolist() for s in seqs]
    assert table.column("seq_id").to_pylist() == [5, 6]
    assert encode_part([5, 6], [1, 1], seqs, row_group_rows=1) == data  # deterministic bytes


@pytest.mark.parametrize("max_seq_len", [8, 9, 128])
def test_part_arrays_are_part_rows_without_a_step_per_sequence(max_seq_len):
    """The whole-part arrays WritePartFn encodes hold the rows of the per-sequence reference,
    and encode to the same bytes: documents of every length around the piece size, one
    without tokens (it still takes a doc_id), in corpus order."""
    rng = np.random.default_rng(max_seq_len)
    body = max_seq_len - 2
    sizes = [1, body - 1, body, body + 1, 2 * body, 0, *rng.integers(1, 400, 20).tolist()]
    docs = [TokenizedDoc(0, i, rng.integers(5, 8000, n).astype("<i4").tobytes(), 0, 0, 0)
            for i, n in enumerate(sizes)]
    plan = PartPlan(3, 1000, 70)
    seq_ids, doc_ids, seqs = part_rows(docs[::-1], plan, max_seq_len)
    tokens = np.array([d.tokens for d in docs])
    ids = np.frombuffer(b"".join(d.ids for d in docs), "<i4")
    seq_ids2, doc_ids2, offsets, values = part_arrays(tokens, ids, plan, max_seq_len)
    assert seq_ids2.tolist() == seq_ids and doc_ids2.tolist() == doc_ids
    assert [values[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])] == \
        [s.tolist() for s in seqs]
    assert encode_part_arrays(seq_ids2, doc_ids2, offsets, values, 16) == \
        encode_part(seq_ids, doc_ids, seqs, 16)
