"""prepare's Beam steps as composite transforms, each usable in a pipeline of one's own:

    docs = (p | beam.Create([(0, "a.txt"), (1, "b.jsonl.zst")])
              | ReadDocuments(cfg.data))                      # {"docs", "reports"}
    seqs = docs["docs"] | TokenizeAndSplit(cfg.data, "corpus/tokenizer.model", file_groups)
    out = seqs | WriteCorpusParts("corpus", cfg.data, vocab_size)   # {"parts", "unigram"}

ReadDocuments: (file index, path) -> (file index, doc index, text offset, text), the file's
FileReport as the "reports" output. TokenizeAndSplit: those -> (part key, TokenizedDoc), the
document's tokens cut to whole sequences of at most data.max_seq_len. WriteCorpusParts: those ->
one zstd Parquet part per key (temp name + rename) and its manifest entry, plus the corpus's
unigram counts. pipeline.prepare chains them and writes the manifest.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsSingleton, TaggedOutput

from pipeline.corpus_parts import (
    TokenizedDoc,
    encode_part,
    kept_tokens,
    num_sequences,
    part_key,
    part_rows,
    plan_parts,
)
from pipeline.filesystems import join, read_bytes, write_atomic
from pipeline.sources import FileReport, read_file
from trainer.config.sections import DataConfig
from trainer.digest import sha256_bytes
from trainer.tokenizer import HFTokenizer, load_tokenizer_bytes

# ---------------------------------------------------------------------------------------------
# DoFns
# ---------------------------------------------------------------------------------------------


class ReadDocumentsFn(beam.DoFn):
    """(file_index, path) -> (file_index, doc_index, offset, text)...; the file's FileReport
    as a side output, so bad bytes and records are counted, never silently lost. Elements
    are plain tuples so that Beam's fast coder moves them without pickling."""

    REPORTS = "reports"

    def __init__(self, fmt: str, text_field: str, doc_split: str):
        self.fmt, self.text_field, self.doc_split = fmt, text_field, doc_split
        self.documents = Metrics.counter("prepare", "documents")
        self.undecodable = Metrics.counter("prepare", "undecodable_bytes")

    def process(self, element):
        file_index, path = element
        report = FileReport(path)
        for doc in read_file(path, self.fmt, report, self.text_field, self.doc_split):
            yield file_index, doc.doc_index, doc.offset, doc.text
        self.documents.inc(report.documents)
        self.undecodable.inc(report.undecodable_bytes)
        yield TaggedOutput(self.REPORTS, (file_index, report.as_dict()))


class TokenizeFn(beam.DoFn):
    """(file_index, doc_index, offset, text) -> (part key, tuple(TokenizedDoc)). The
    tokenizer loads once per worker in ``setup``: the SentencePiece model at tokenizer_path,
    or, given ``hf_special_ids`` (role -> the source tokenizer's id), the Hugging Face
    tokenizer.json there, renumbered onto the project's ids."""

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

    def process(self, element):
        file_index, doc_index, offset, text = element
        ids = self.sp.encode(text)
        if not ids:
            self.empty.inc()
            return
        kept = kept_tokens(len(ids), self.max_seq_len, self.min_tail_tokens)
        doc = TokenizedDoc(file_index, doc_index, np.asarray(ids[:kept], "<i4").tobytes(),
                           num_sequences(kept, self.max_seq_len), len(ids) - kept,
                           len(text.encode()))
        yield part_key(self.file_groups[file_index], offset, self.part_text_bytes), tuple(doc)


def count_part(element) -> tuple:
    key, doc = element
    return key, (1, TokenizedDoc(*doc).num_sequences)


def sum_pairs(pairs) -> tuple[int, int]:
    docs, seqs = 0, 0
    for d, s in pairs:
        docs, seqs = docs + d, seqs + s
    return docs, seqs


class WritePartFn(beam.DoFn):
    """(part key, [TokenizedDoc]) -> the part's manifest entry; its unigram counts as a side
    output. Idempotent: a retry writes the same bytes to the same name."""

    UNIGRAM = "unigram"

    def __init__(self, corpus_dir: str, row_group_rows: int, vocab_size: int, max_seq_len: int):
        self.corpus_dir, self.row_group_rows = corpus_dir, row_group_rows
        self.vocab_size, self.max_seq_len = vocab_size, max_seq_len

    def process(self, element, plans):
        key, docs = element
        docs = [TokenizedDoc(*d) for d in docs]
        plan = plans[key]
        seq_ids, doc_ids, seqs = part_rows(docs, plan, self.max_seq_len)
        data = encode_part(seq_ids, doc_ids, seqs, self.row_group_rows)
        name = f"part-{plan.ordinal:05d}.parquet"
        write_atomic(join(self.corpus_dir, name), data)
        yield {
            "name": name, "rows": len(seqs), "bytes": len(data), "sha256": sha256_bytes(data),
            "seq_id_start": plan.seq_id_start, "doc_id_start": plan.doc_id_start,
            "documents": len(docs), "tokens": sum(d.tokens for d in docs),
            "dropped_tail_tokens": sum(d.dropped_tokens for d in docs),
            "text_bytes": sum(d.text_bytes for d in docs),
        }
        yield TaggedOutput(self.UNIGRAM,
                           np.bincount(np.concatenate(seqs), minlength=self.vocab_size))


class SumArraysFn(beam.CombineFn):
    """Element-wise sum of equal-length int64 count vectors."""

    def __init__(self, length: int):
        self.length = length

    def create_accumulator(self):
        return np.zeros(self.length, np.int64)

    def add_input(self, acc, counts):
        acc += counts
        return acc

    def merge_accumulators(self, accs):
        accs = iter(accs)
        total = next(accs).copy()
        for a in accs:
            total += a
        return total

    def extract_output(self, acc):
        return acc


# ---------------------------------------------------------------------------------------------
# Composite transforms
# ---------------------------------------------------------------------------------------------

class ReadDocuments(beam.PTransform):
    """(file_index, path) -> {"docs": (file_index, doc_index, offset, text), "reports":
    (file_index, FileReport.as_dict())}. Files are spread over the workers first: one
    element per file, as a compressed file cannot be split."""

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
    """ReadDocuments' docs -> (part key, tuple(TokenizedDoc)): each document tokenised with the
    tokenizer file at ``tokenizer_path`` (``hf_special_ids``: an HF tokenizer.json, see
    TokenizeFn) and cut to data.max_seq_len sequences, keyed by the corpus part it belongs
    to (``file_groups``: ``corpus_parts.group_files`` of the input sizes)."""

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
    """TokenizeAndSplit's output -> {"parts": one manifest entry per written part file,
    "unigram": the corpus's token counts, one int64 vector of ``vocab_size``}. Parts are
    numbered and given their first seq_id/doc_id from the counts of every part
    (``corpus_parts.plan_parts``, a side input), then written to ``corpus_dir``."""

    def __init__(self, corpus_dir: str, data: DataConfig, vocab_size: int):
        super().__init__()
        self.corpus_dir, self.data, self.vocab_size = corpus_dir, data, vocab_size

    def expand(self, tokenized):
        plans = (
            tokenized
            | "CountPerPart" >> beam.Map(count_part)
            | "SumPerPart" >> beam.CombinePerKey(sum_pairs)
            | "CollectCounts" >> beam.combiners.ToDict()
            | "PlanParts" >> beam.Map(plan_parts)
        )
        written = (
            tokenized
            | "GroupByPart" >> beam.GroupByKey()
            | "WriteParts" >> beam.ParDo(
                WritePartFn(self.corpus_dir, self.data.row_group_rows, self.vocab_size,
                            self.data.max_seq_len),
                plans=AsSingleton(plans)
            ).with_outputs(WritePartFn.UNIGRAM, main="parts")
        )
        unigram = written.unigram | "SumUnigrams" >> beam.CombineGlobally(
            SumArraysFn(self.vocab_size))
        return {"parts": written.parts, "unigram": unigram}
