"""Per-element steps of ``prepare``, as plain functions: split a tokenized document into
sequences, lay parts out so that seq_ids and doc_ids are dense and deterministic, and encode a
part as a Parquet file.

Layout rule: the corpus order is (input file, document in file, piece of document). Runs of
consecutive small input files are packed into one part of about ``data.part_text_bytes``
(measured by file size on disk); a file at least that large gets parts of its own, cut by the
text offset of each document. Part keys (group, chunk) increase with the corpus order, parts
are numbered in key order, and a part's first seq_id/doc_id is the number of sequences/
documents in all parts before it. Nothing depends on worker, bundle or runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.data.corpus_shards import CORPUS_SCHEMA
from trainer.tokenizer import CLS_ID, SEP_ID

PartKey = tuple[int, int]
ZSTD_LEVEL = 3


class TokenizedDoc(NamedTuple):
    """One tokenised document as the corpus keeps it (``TokenizeFn.tokenize_document``, the
    input of ``part_rows``); between Tokenize and WriteParts documents travel as
    ``DocsPack``s."""

    file_index: int
    """Place of the document's file in the input list."""
    doc_index: int
    """Place of the document in its input file."""
    ids: bytes
    """The kept token ids (no specials) as little-endian int32."""
    num_sequences: int
    """Sequences the kept ids make (see split_sequences)."""
    dropped_tokens: int
    """Tokens of a short tail dropped per data.min_tail_tokens."""
    text_bytes: int
    """UTF-8 bytes of the document's text."""

    @property
    def tokens(self) -> int:
        return len(self.ids) // 4


class DocsPack(NamedTuple):
    """Tokenised documents of one input file bound for one part, in flight between Tokenize
    and WriteParts as columns: a tuple of one int and five byte strings, whatever the number
    of documents (Beam's fast coder moves it without pickling, and its cost per element and
    per step is paid once per pack, not per document). ``DocsPack(*t)`` restores the
    names."""

    file_index: int
    """Place of the documents' file in the input list."""
    doc_index: bytes
    """Place of each document in its file, little-endian int64, ascending."""
    tokens: bytes
    """Kept token ids per document (little-endian int64): the lengths of ``ids``' pieces."""
    dropped_tokens: bytes
    """Tokens of a short tail dropped per document (little-endian int64)."""
    text_bytes: bytes
    """UTF-8 bytes of each document's text (little-endian int64)."""
    ids: bytes
    """The documents' kept token ids (no specials), concatenated, little-endian int32."""

    def column(self, name: str) -> np.ndarray:
        return np.frombuffer(getattr(self, name), "<i4" if name == "ids" else "<i8")


@dataclass(frozen=True)
class PartPlan:
    ordinal: int
    """The part's number: part-{ordinal:05d}.parquet."""
    seq_id_start: int
    doc_id_start: int


def kept_tokens(num_tokens: int, max_seq_len: int, min_tail_tokens: int = 0) -> int:
    """How many of a document's tokens to keep: all, except that the last piece of a document
    split into several is dropped when shorter than ``min_tail_tokens``."""
    body = max_seq_len - 2
    tail = num_tokens % body
    if num_tokens > body and 0 < tail < min_tail_tokens:
        return num_tokens - tail
    return num_tokens


def num_sequences(num_tokens: int, max_seq_len: int) -> int:
    return -(-num_tokens // (max_seq_len - 2))


def split_sequences(ids: np.ndarray, max_seq_len: int) -> list[np.ndarray]:
    """Cut one document's token ids (no specials) into [CLS] piece [SEP] sequences of at
    most ``max_seq_len``; never joins two documents (paper, appendix B)."""
    body = max_seq_len - 2
    cls, sep = np.array([CLS_ID], np.int32), np.array([SEP_ID], np.int32)
    return [np.concatenate([cls, ids[s:s + body], sep]) for s in range(0, len(ids), body)]


def group_files(sizes: list[int], part_text_bytes: int) -> list[tuple[int, bool]]:
    """Per input file: (group, chunked). Consecutive small files share a group until it would
    exceed ``part_text_bytes``; a file of at least that size is a group alone, chunked by
    document offset."""
    groups, group, filled = [], -1, part_text_bytes
    for size in sizes:
        big = size >= part_text_bytes
        if big or filled + size > part_text_bytes:
            group, filled = group + 1, 0
        groups.append((group, big))
        filled = part_text_bytes if big else filled + size
    return groups


def part_key(group: tuple[int, bool], offset: int, part_text_bytes: int) -> PartKey:
    """The part of a document at text ``offset`` of a file in ``group`` (from group_files)."""
    index, chunked = group
    return (index, offset // part_text_bytes if chunked else 0)


def plan_parts(counts: dict[PartKey, tuple[int, int]]) -> dict[PartKey, PartPlan]:
    """{key: (documents, sequences)} of every non-empty part -> {key: PartPlan}."""
    plans, seq_start, doc_start = {}, 0, 0
    for ordinal, key in enumerate(sorted(counts)):
        plans[key] = PartPlan(ordinal, seq_start, doc_start)
        doc_start += counts[key][0]
        seq_start += counts[key][1]
    return plans


def part_rows(docs: list[TokenizedDoc], plan: PartPlan, max_seq_len: int):
    """(seq_ids, doc_ids, sequences) of one part in corpus order, one array per sequence (the
    reference for ``part_arrays``, which WritePartFn uses)."""
    seq_ids, doc_ids, seqs = [], [], []
    doc_id = plan.doc_id_start
    for doc in sorted(docs, key=lambda d: (d.file_index, d.doc_index)):
        for s in split_sequences(np.frombuffer(doc.ids, "<i4"), max_seq_len):
            seq_ids.append(plan.seq_id_start + len(seqs))
            doc_ids.append(doc_id)
            seqs.append(s)
        doc_id += 1
    return seq_ids, doc_ids, seqs


def part_arrays(tokens: np.ndarray, ids: np.ndarray, plan: PartPlan, max_seq_len: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``part_rows`` as whole-part arrays, without a Python step per sequence: the part's
    documents in corpus order as their kept token counts (``tokens``) and their ids
    concatenated (``ids``) -> (seq_ids int64, doc_ids int64, offsets int32 (sequences + 1),
    values int32), sequence i being ``values[offsets[i]:offsets[i + 1]]``: each document cut
    into [CLS] piece [SEP] sequences of at most ``max_seq_len``, as ``part_rows`` does."""
    tokens = np.asarray(tokens, np.int64)
    body = max_seq_len - 2
    seqs_per_doc = -(-tokens // body)
    n = int(seqs_per_doc.sum())
    doc_of_seq = np.repeat(np.arange(len(tokens)), seqs_per_doc)
    piece = np.arange(n) - np.repeat(np.cumsum(seqs_per_doc) - seqs_per_doc, seqs_per_doc)
    lengths = np.minimum(body, tokens[doc_of_seq] - piece * body) + 2
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    # The pieces of the documents in order are their tokens in order: values is that stream
    # with [CLS] and [SEP] around each piece.
    values = np.empty(int(offsets[-1]), np.int32)
    ordinary = np.ones(len(values), bool)
    ordinary[offsets[:-1]] = ordinary[offsets[1:] - 1] = False
    values[offsets[:-1]], values[offsets[1:] - 1] = CLS_ID, SEP_ID
    values[ordinary] = ids
    return (plan.seq_id_start + np.arange(n, dtype=np.int64),
            plan.doc_id_start + doc_of_seq.astype(np.int64), offsets, values)


def encode_part(seq_ids: list[int], doc_ids: list[int], seqs: list[np.ndarray],
                row_group_rows: int) -> bytes:
    """One part as Parquet bytes: CORPUS_SCHEMA, zstd, ``row_group_rows`` rows per group."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int32, count=len(seqs))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(seqs) if seqs else np.zeros(0, np.int32)
    return encode_part_arrays(np.asarray(seq_ids, np.int64), np.asarray(doc_ids, np.int64),
                              offsets, values, row_group_rows)


def encode_part_arrays(seq_ids: np.ndarray, doc_ids: np.ndarray, offsets: np.ndarray,
                       values: np.ndarray, row_group_rows: int) -> bytes:
    """``encode_part`` of ``part_arrays``' arrays (the same bytes for the same rows)."""
    input_ids = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                         pa.array(values, pa.int32()),
                                         type=CORPUS_SCHEMA.field("input_ids").type)
    table = pa.Table.from_arrays(
        [pa.array(seq_ids, pa.int64()), pa.array(doc_ids, pa.int64()), input_ids],
        schema=CORPUS_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", compression_level=ZSTD_LEVEL,
                   row_group_size=row_group_rows)
    return sink.getvalue().to_pybytes()
