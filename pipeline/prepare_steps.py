"""prepare's Beam steps as composite transforms, each usable in a pipeline of one's own:

    docs = (p | beam.Create([(0, "a.txt"), (1, "b.jsonl.zst")])
              | ReadDocuments(cfg.data))                      # {"docs", "reports"}
    seqs = docs["docs"] | TokenizeAndSplit(cfg.data, "corpus/tokenizer.model", file_groups)
    out = seqs | WriteCorpusParts("corpus", cfg.data, vocab_size)   # (entries, unigram)

ReadDocuments: (file index, path) -> ``DocBatch``es, runs of consecutive documents of one file
(file index, doc indices, text offsets, texts), the file's FileReport as the "reports" output.
TokenizeAndSplit: those -> (part key, ``DocsPack``): the tokens of a batch's documents of one
part as columns, each document later cut to whole sequences of at most data.max_seq_len.
WriteCorpusParts: those -> one zstd Parquet part per key (temp name + rename), then one element:
the parts' manifest entries and the corpus's unigram counts. pipeline.prepare chains them and
writes the manifest.

Documents travel in batches (``DOC_BATCH_CHARS`` of text, at most ``DOC_BATCH_DOCS`` documents)
because Beam's cost is per element and per step: one element per document made the job's
bookkeeping (the reshuffle, the per-part counts, the grouping) cost about as much as
tokenising (bench/prepare.py). A batch never spans files, so a document's (file index, doc
index) and text offset, which decide its part and ids, are the same whatever the batching.
"""

from __future__ import annotations

import itertools

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsSingleton, TaggedOutput

from pipeline.corpus_parts import (
    DocsPack,
    PartKey,
    TokenizedDoc,
    encode_part_arrays,
    num_sequences,
    part_arrays,
    plan_parts,
)
from pipeline.filesystems import join, read_bytes, write_atomic
from pipeline.sources import FileReport, read_file
from trainer.config.sections import DataConfig
from trainer.digest import sha256_bytes
from trainer.tokenizer import HFTokenizer, load_tokenizer_bytes

DOC_BATCH_CHARS = 1 << 18
"""Text characters per ``DocBatch`` (a batch closes at the document that reaches it): large
enough that Beam's per-element cost is noise next to tokenising, small enough that a big input
file still spreads over the workers (ReshuffleDocuments) and a batch's texts fit in memory."""
DOC_BATCH_DOCS = 4096
"""At most this many documents per ``DocBatch`` (many tiny documents)."""

DocBatch = tuple[int, tuple[int, ...], tuple[int, ...], tuple[str, ...]]
"""(file index, doc indices, text offsets, texts): consecutive documents of one input file, as
plain tuples so that Beam's fast coder moves them without pickling."""


def doc_batches(file_index: int, docs, max_chars: int = DOC_BATCH_CHARS,
                max_docs: int = DOC_BATCH_DOCS):
    """``read_file``'s documents of file ``file_index`` -> ``DocBatch``es in file order."""
    indices, offsets, texts, chars = [], [], [], 0
    for doc in docs:
        indices.append(doc.doc_index)
        offsets.append(doc.offset)
        texts.append(doc.text)
        chars += len(doc.text)
        if chars >= max_chars or len(texts) >= max_docs:
            yield file_index, tuple(indices), tuple(offsets), tuple(texts)
            indices, offsets, texts, chars = [], [], [], 0
    if texts:
        yield file_index, tuple(indices), tuple(offsets), tuple(texts)


def batch_documents(batch: DocBatch):
    """A ``DocBatch`` -> its documents as (file index, doc index, offset, text)."""
    file_index, indices, offsets, texts = batch
    for d, offset, text in zip(indices, offsets, texts, strict=True):
        yield file_index, d, offset, text


# ---------------------------------------------------------------------------------------------
# DoFns
# ---------------------------------------------------------------------------------------------


class ReadDocumentsFn(beam.DoFn):
    """(file_index, path) -> the file's documents as ``DocBatch``es; the file's FileReport as
    a side output, so bad bytes and records are counted, never silently lost."""

    REPORTS = "reports"

    def __init__(self, fmt: str, text_field: str, doc_split: str):
        self.fmt, self.text_field, self.doc_split = fmt, text_field, doc_split
        self.documents = Metrics.counter("prepare", "documents")
        self.undecodable = Metrics.counter("prepare", "undecodable_bytes")

    def process(self, element):
        file_index, path = element
        report = FileReport(path)
        yield from doc_batches(file_index, read_file(path, self.fmt, report, self.text_field,
                                                     self.doc_split))
        self.documents.inc(report.documents)
        self.undecodable.inc(report.undecodable_bytes)
        yield TaggedOutput(self.REPORTS, (file_index, report.as_dict()))


class TokenizeFn(beam.DoFn):
    """``DocBatch`` -> (part key, ``DocsPack``) for each part its documents fall in, in
    document order; documents without tokens are dropped (and counted). Each document keeps
    its ids but a short tail (``kept_tokens``), and makes ``num_sequences`` sequences. The
    tokenizer loads once per worker in ``setup``: the SentencePiece model at tokenizer_path,
    or, given ``hf_special_ids`` (role -> the source tokenizer's id), the Hugging Face
    tokenizer.json there, renumbered onto the project's ids. SentencePiece encodes a batch in
    one call on one thread (a worker is one core's work); the HF tokenizer one document per
    call (its batch call spreads over threads).

    ``tokenize_document`` is the same for one document, as the TokenizedDoc it adds to the
    corpus (or None): what a test of the ids that prepare stores calls."""

    def __init__(self, tokenizer_path: str, max_seq_len: int, min_tail_tokens: int,
                 part_text_bytes: int, file_groups: list[tuple[int, bool]],
                 hf_special_ids: dict[str, int] | None = None):
        self.tokenizer_path, self.hf_special_ids = tokenizer_path, hf_special_ids
        self.max_seq_len, self.min_tail_tokens = max_seq_len, min_tail_tokens
        self.part_text_bytes, self.file_groups = part_text_bytes, file_groups
        self.empty = Metrics.counter("prepare", "documents_without_tokens")

    def setup(self):
        data = read_bytes(self.tokenizer_path)
        self.sp = (HFTokenizer(data.decode("utf-8"), self.hf_special_ids, self.tokenizer_path)
                   if self.hf_special_ids else load_tokenizer_bytes(data, self.tokenizer_path))
        self.out_type = int
        if not isinstance(self.sp, HFTokenizer):
            try:  # int32 arrays straight from C++ (sentencepiece >= 0.2.1): no Python ints
                self.sp.encode(["a"], num_threads=1, out_type="numpy")
                self.out_type = "numpy"
            except (ValueError, TypeError, RuntimeError):
                pass

    def encode(self, texts: tuple[str, ...]) -> list:
        """The texts' ids (no special tokens), one list or int array per text."""
        if isinstance(self.sp, HFTokenizer):
            return [self.sp.encode(text) for text in texts]
        return self.sp.encode(list(texts), num_threads=1, out_type=self.out_type)

    def packs(self, batch: DocBatch) -> tuple[list[tuple[PartKey, DocsPack]], int]:
        """(the batch's (part key, DocsPack)s in document order, documents without tokens)."""
        file_index, indices, offsets, texts = batch
        encoded = self.encode(texts)
        n = np.fromiter(map(len, encoded), np.int64, len(encoded))
        ids = (np.concatenate(encoded).astype("<i4", copy=False) if self.out_type == "numpy"
               else np.fromiter(itertools.chain.from_iterable(encoded), "<i4", int(n.sum())))
        tail = n % (self.max_seq_len - 2)  # kept_tokens, for every document at once
        kept = np.where((n > self.max_seq_len - 2) & (tail > 0) & (tail < self.min_tail_tokens),
                        n - tail, n)
        if (kept < n).any():  # drop the short tails: each document's first kept ids stay
            starts = np.repeat(np.cumsum(n) - n, n)
            ids = ids[np.arange(len(ids)) - starts < np.repeat(kept, n)]
        text_bytes = np.fromiter((len(t.encode()) for t in texts), np.int64, len(texts))
        index, chunked = self.file_groups[file_index]
        chunk = (np.asarray(offsets, np.int64) // self.part_text_bytes if chunked
                 else np.zeros(len(texts), np.int64))
        ends = np.cumsum(kept)
        out = []
        # Offsets ascend within a file, so each part's documents are one run of the batch.
        cuts = [0, *(np.flatnonzero(np.diff(chunk)) + 1).tolist(), len(texts)]
        for a, b in itertools.pairwise(cuts):
            has = np.flatnonzero(n[a:b]) + a
            if not len(has):
                continue
            lo, hi = (int(ends[a - 1]) if a else 0), int(ends[b - 1])
            out.append(((index, int(chunk[a])), DocsPack(
                file_index, np.asarray(indices, "<i8")[has].tobytes(),
                kept[has].astype("<i8").tobytes(), (n - kept)[has].astype("<i8").tobytes(),
                text_bytes[has].astype("<i8").tobytes(), ids[lo:hi].tobytes())))
        return out, int((n == 0).sum())

    def tokenize_document(self, file_index: int, doc_index: int, text: str
                          ) -> TokenizedDoc | None:
        packs, _ = self.packs((file_index, (doc_index,), (0,), (text,)))
        if not packs:
            return None
        pack = packs[0][1]
        return TokenizedDoc(file_index, doc_index, pack.ids,
                            num_sequences(int(pack.column("tokens")[0]), self.max_seq_len),
                            int(pack.column("dropped_tokens")[0]),
                            int(pack.column("text_bytes")[0]))

    def process(self, element):
        packs, empty = self.packs(element)
        if empty:
            self.empty.inc(empty)
        for key, pack in packs:
            yield key, tuple(pack)


def count_part(element, max_seq_len: int) -> tuple:
    """(part key, DocsPack tuple) -> (part key, (documents, sequences))."""
    key, pack = element
    tokens = DocsPack(*pack).column("tokens")
    return key, (len(tokens), int(num_sequences(tokens, max_seq_len).sum()))


class PartCountsFn(beam.CombineFn):
    """(part key, (documents, sequences))... -> {part key: (documents, sequences)}, summed
    per key: ``plan_parts``' input, in one global combine."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, element):
        key, (docs, seqs) = element
        d, s = acc.get(key, (0, 0))
        acc[key] = (d + docs, s + seqs)
        return acc

    def merge_accumulators(self, accs):
        accs = iter(accs)
        total = dict(next(accs))
        for acc in accs:
            for key, value in acc.items():
                total = self.add_input(total, (key, value))
        return total

    def extract_output(self, acc):
        return acc


def corpus_order(packs: list[DocsPack]) -> tuple[np.ndarray, np.ndarray]:
    """One part's packs (any order) -> (kept tokens per document, their ids concatenated),
    the documents in corpus order: by (file index, doc index)."""
    files = np.concatenate([np.full(len(p.doc_index) // 8, p.file_index, np.int64)
                            for p in packs])
    order = np.lexsort((np.concatenate([p.column("doc_index") for p in packs]), files))
    tokens = np.concatenate([p.column("tokens") for p in packs])
    ids = np.concatenate([p.column("ids") for p in packs])
    if (np.diff(order) == 1).all():
        return tokens, ids
    starts = (np.cumsum(tokens) - tokens)[order]
    tokens = tokens[order]
    ends = np.cumsum(tokens)
    return tokens, ids[np.repeat(starts - (ends - tokens), tokens) + np.arange(int(ends[-1]))]


class WritePartFn(beam.DoFn):
    """(part key, [DocsPack tuples]) -> (the part's manifest entry, its unigram counts).
    Idempotent: a retry writes the same bytes to the same name (the documents are put in
    corpus order, whatever batches they came in)."""

    def __init__(self, corpus_dir: str, row_group_rows: int, vocab_size: int, max_seq_len: int):
        self.corpus_dir, self.row_group_rows = corpus_dir, row_group_rows
        self.vocab_size, self.max_seq_len = vocab_size, max_seq_len

    def process(self, element, plans):
        key, packs = element
        packs = [DocsPack(*p) for p in packs]
        plan = plans[key]
        tokens, ids = corpus_order(packs)
        seq_ids, doc_ids, offsets, values = part_arrays(tokens, ids, plan, self.max_seq_len)
        data = encode_part_arrays(seq_ids, doc_ids, offsets, values, self.row_group_rows)
        name = f"part-{plan.ordinal:05d}.parquet"
        write_atomic(join(self.corpus_dir, name), data)
        entry = {
            "name": name, "rows": len(seq_ids), "bytes": len(data), "sha256": sha256_bytes(data),
            "seq_id_start": plan.seq_id_start, "doc_id_start": plan.doc_id_start,
            "documents": len(tokens), "tokens": int(tokens.sum()),
            "dropped_tail_tokens": sum(int(p.column("dropped_tokens").sum()) for p in packs),
            "text_bytes": sum(int(p.column("text_bytes").sum()) for p in packs),
        }
        yield entry, np.bincount(values, minlength=self.vocab_size)


class CollectPartsFn(beam.CombineFn):
    """(manifest entry, unigram counts)... -> (the entries sorted by name, the counts summed:
    one int64 vector of ``length``)."""

    def __init__(self, length: int):
        self.length = length

    def create_accumulator(self):
        return [], np.zeros(self.length, np.int64)

    def add_input(self, acc, element):
        entry, counts = element
        acc[0].append(entry)
        np.add(acc[1], counts, out=acc[1])
        return acc

    def merge_accumulators(self, accs):
        entries, total = self.create_accumulator()
        for more, counts in accs:
            entries += more
            total += counts
        return entries, total

    def extract_output(self, acc):
        return sorted(acc[0], key=lambda e: e["name"]), acc[1]


# ---------------------------------------------------------------------------------------------
# Composite transforms
# ---------------------------------------------------------------------------------------------

class ReadDocuments(beam.PTransform):
    """(file_index, path) -> {"docs": ``DocBatch``es (``batch_documents`` lists a batch's
    documents), "reports": (file_index, FileReport.as_dict())}. Files are spread over the
    workers first: one element per file, as a compressed file cannot be split."""

    def __init__(self, data: DataConfig):
        super().__init__()
        self.data = data

    def expand(self, files):
        read = (
            files
            | "ReshuffleFiles" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(
                ReadDocumentsFn(self.data.format, self.data.text_field,
                                self.data.text_doc_split)
            ).with_outputs(ReadDocumentsFn.REPORTS, main="docs")
        )
        return {"docs": read.docs, "reports": read.reports}


class TokenizeAndSplit(beam.PTransform):
    """ReadDocuments' ``DocBatch``es -> (part key, ``DocsPack`` tuple): each document
    tokenised with the tokenizer file at ``tokenizer_path`` (``hf_special_ids``: an HF
    tokenizer.json, see TokenizeFn), keyed by the corpus part it belongs to (``file_groups``:
    ``corpus_parts.group_files`` of the input sizes); a batch's documents of one part travel
    together, as one pack. The batches are spread over the
    workers first (ReshuffleDocuments), so one large input file is tokenised by all of
    them."""

    def __init__(self, data: DataConfig, tokenizer_path: str,
                 file_groups: list[tuple[int, bool]], hf_special_ids: dict[str, int] | None = None):
        super().__init__()
        self.fn = TokenizeFn(tokenizer_path, data.max_seq_len, data.min_tail_tokens,
                             data.part_text_bytes, file_groups, hf_special_ids)

    def expand(self, docs):
        return (
            docs
            | "ReshuffleDocuments" >> beam.Reshuffle()
            | "Tokenize" >> beam.ParDo(self.fn)
        )


class WriteCorpusParts(beam.PTransform):
    """TokenizeAndSplit's (part key, DocsPack tuple)s -> one element: (the manifest entry
    of every written part file, sorted by name; the corpus's unigram counts, one int64
    vector of ``vocab_size``). Parts are numbered and given their first seq_id/doc_id from
    the counts of every part (``corpus_parts.plan_parts``, a side input), then written to
    ``corpus_dir``. The per-part counts and the collected entries are one global combine
    each: every step is a stage with a fixed cost on the runner."""

    def __init__(self, corpus_dir: str, data: DataConfig, vocab_size: int):
        super().__init__()
        self.corpus_dir, self.data, self.vocab_size = corpus_dir, data, vocab_size

    def expand(self, tokenized):
        plans = (
            tokenized
            | "CountPerPart" >> beam.Map(count_part, max_seq_len=self.data.max_seq_len)
            | "CollectCounts" >> beam.CombineGlobally(PartCountsFn())
            | "PlanParts" >> beam.Map(plan_parts)
        )
        return (
            tokenized
            | "GroupByPart" >> beam.GroupByKey()
            | "WriteParts" >> beam.ParDo(
                WritePartFn(self.corpus_dir, self.data.row_group_rows, self.vocab_size,
                            self.data.max_seq_len),
                plans=AsSingleton(plans))
            | "CollectParts" >> beam.CombineGlobally(CollectPartsFn(self.vocab_size))
        )
