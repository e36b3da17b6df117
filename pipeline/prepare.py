"""Beam job: raw text -> token sequences ("corpus" shards, docs/design.md "Data contract").

    python -m pipeline.prepare --config configs/tiny.toml                 # local, 1 worker/core
    python -m pipeline.prepare --config configs/base.toml \\
        --set 'data.input=["gs://bucket/text/*.jsonl.zst"]' --set data.corpus_dir=gs://bucket/c \\
        --runner DataflowRunner --project P --region R --temp_location gs://bucket/tmp

Steps: list the inputs -> train (or load and check) the SentencePiece tokenizer in the launcher
-> ReadDocuments (one file per element; compressed files cannot be split) -> Reshuffle ->
Tokenize (+ split documents into [CLS] ... [SEP] sequences of at most data.max_seq_len) ->
GroupByPart -> WriteParts (zstd Parquet, temp name + rename) -> Finalize (unigram counts, then
manifest.json, written last: a folder without it is an incomplete corpus).

Re-running with the same config and inputs is a no-op; a folder that holds a different corpus
is refused unless ``--overwrite``. Leftovers of an interrupted run are removed first.
"""

from __future__ import annotations

import io
from importlib.metadata import version

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import AsList, AsSingleton, TaggedOutput

from pipeline.beam_util import exists, join, read_bytes, write_atomic, write_json_atomic
from pipeline.corpus_parts import (
    TokenizedDoc,
    encode_part,
    group_files,
    kept_tokens,
    num_sequences,
    part_key,
    part_rows,
    plan_parts,
)
from pipeline.job import already_done, parse_job_args, run_as_main, run_job
from pipeline.progress import corpus_progress
from pipeline.shard_sets import holds_output_locks
from pipeline.sources import (
    FileReport,
    InputError,
    check_undecodable,
    expand_inputs,
    read_file,
    resolve_format,
)
from pipeline.tokenizer_train import train_tokenizer
from trainer.cli import main_guard
from trainer.config.load import to_dict, to_toml
from trainer.config.run import RunConfig
from trainer.data.manifest import (
    CONFIG_FILE,
    MANIFEST,
    SCHEMA_VERSION,
    TOKENIZER_FILE,
    UNIGRAM_FILE,
)
from trainer.digest import sha256_bytes
from trainer.errors import UserError
from trainer.tokenizer import (
    HF_SPECIALS_FILE,
    HF_TOKENIZER_FILE,
    SPECIAL_IDS,
    HFTokenizer,
    TokenizerError,
    load_tokenizer_bytes,
)


class PrepareError(UserError):
    """The corpus cannot be prepared as asked."""


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


def finalize(parts: list[dict], unigram: np.ndarray, reports: list, context: dict) -> dict:
    """Write the unigram counts, then manifest.json (last: it marks the set complete)."""
    corpus_dir = context["corpus_dir"]
    inputs = [dict(report, bytes=context["inputs"][i][1]) for i, report in sorted(reports)]
    # Before anything is written: a mostly undecodable file (binary data read as text) would
    # become sequences of noise.
    check_undecodable(inputs, context["header"]["config"]["data"]["max_undecodable_fraction"])
    if not parts:
        problems = [f"{r['path']}: {r['documents']} documents, {r['bad_records']} bad records"
                    + (f" ({r['examples'][0]})" if r["examples"] else "") for r in inputs[:10]]
        raise PrepareError(f"the inputs hold no text to tokenise ({len(inputs)} file(s)): "
                           + "; ".join(problems))
    parts = sorted(parts, key=lambda p: p["name"])
    buffer = io.BytesIO()
    np.save(buffer, unigram)
    write_atomic(join(corpus_dir, UNIGRAM_FILE), buffer.getvalue())
    manifest = dict(
        context["header"],
        num_documents=sum(p["documents"] for p in parts),
        num_sequences=sum(p["rows"] for p in parts),
        num_tokens=sum(p["tokens"] for p in parts),
        num_dropped_tail_tokens=sum(p["dropped_tail_tokens"] for p in parts),
        text_bytes=sum(p["text_bytes"] for p in parts),
        shard_bytes=sum(p["bytes"] for p in parts),
        unigram={"file": UNIGRAM_FILE, "sha256": sha256_bytes(buffer.getvalue())},
        files=parts,
        inputs=inputs,
    )
    write_json_atomic(join(corpus_dir, MANIFEST), manifest)
    return manifest


# ---------------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------------

def build(p: beam.Pipeline, files: list[tuple[str, int]], cfg: RunConfig, context: dict):
    data, corpus_dir = cfg.data, cfg.data.corpus_dir
    file_groups = group_files([size for _, size in files], data.part_text_bytes)
    read = (
        p
        | "ListInputs" >> beam.Create([(i, path) for i, (path, _) in enumerate(files)])
        | "ReshuffleFiles" >> beam.Reshuffle()
        | "ReadDocuments" >> beam.ParDo(
            ReadDocumentsFn(data.format, data.text_field, data.text_doc_split)
        ).with_outputs(ReadDocumentsFn.REPORTS, main="docs")
    )
    tokenized = (
        read.docs
        | "ReshuffleDocuments" >> beam.Reshuffle()
        | "Tokenize" >> beam.ParDo(TokenizeFn(
            join(corpus_dir, context["header"]["tokenizer"]["file"]), data.max_seq_len,
            data.min_tail_tokens, data.part_text_bytes, file_groups,
            context["header"]["tokenizer"].get("source_special_ids")))
    )
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
            WritePartFn(corpus_dir, data.row_group_rows, cfg.tokenizer.vocab_size,
                        data.max_seq_len),
            plans=AsSingleton(plans)
        ).with_outputs(WritePartFn.UNIGRAM, main="parts")
    )
    unigram = written.unigram | "SumUnigrams" >> beam.CombineGlobally(
        SumArraysFn(cfg.tokenizer.vocab_size))
    return (
        written.parts
        | "CollectParts" >> beam.combiners.ToList()
        | "Finalize" >> beam.Map(finalize, unigram=AsSingleton(unigram),
                                 reports=AsList(read.reports), context=context)
    )


# ---------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------

def preflight(files: list[tuple[str, int]], cfg: RunConfig) -> None:
    """Errors that would otherwise surface deep inside a worker: all-empty input, a Parquet
    input without the text column."""
    if all(size == 0 for _, size in files):
        raise InputError(f"all {len(files)} input file(s) are empty (first: {files[0][0]})")
    for path, _ in files:
        if resolve_format(path, cfg.data.format) == "parquet":
            try:
                with FileSystems.open(path) as f:
                    names = pq.ParquetFile(f).schema_arrow.names
            except pa.ArrowInvalid as e:
                raise InputError(f"{path} is not a readable Parquet file ({e}); fix or remove "
                                 "it, or set data.format if it is not Parquet") from None
            if cfg.data.text_field not in names:
                raise InputError(f"{path}: no column {cfg.data.text_field!r}; columns are "
                                 f"{names}. Set data.text_field to the column with the text")


def load_given_tokenizer(cfg: RunConfig) -> bytes | None:
    """The bytes of tokenizer.model when one is given, checked against the contract and
    tokenizer.vocab_size; None when it is to be trained."""
    path = cfg.tokenizer.model
    if not path:
        return None
    if not exists(path):
        raise TokenizerError(f"tokenizer.model {path!r} does not exist; give an existing "
                             ".model file or leave it empty to train one")
    model = read_bytes(path)
    sp = load_tokenizer_bytes(model, path)
    check_vocab_size(sp.get_piece_size(), path, cfg)
    return model


def check_vocab_size(size: int, path: str, cfg: RunConfig) -> None:
    if size != cfg.tokenizer.vocab_size:
        raise TokenizerError(f"tokenizer {path} has {size} tokens but tokenizer.vocab_size = "
                             f"{cfg.tokenizer.vocab_size}; set --set tokenizer.vocab_size={size}")


def given_hf_tokenizer(cfg: RunConfig) -> HFTokenizer:
    """tokenizer.kind = "hf": the Hugging Face tokenizer at tokenizer.model (a local folder or
    tokenizer.json), checked against tokenizer.vocab_size."""
    tok = HFTokenizer.from_path(cfg.tokenizer.model)
    check_vocab_size(tok.get_piece_size(), tok.source, cfg)
    return tok


def tokenizer_entry(cfg: RunConfig, model: bytes, tok: HFTokenizer | None) -> dict:
    """The manifest's "tokenizer" entry; an HF tokenizer's also records the source
    tokenizer's role ids (the renumbering) and its vocabulary's identity."""
    entry = {"file": TOKENIZER_FILE, "sha256": sha256_bytes(model),
             "vocab_size": cfg.tokenizer.vocab_size, "special_ids": SPECIAL_IDS,
             "source": cfg.tokenizer.model or "trained by prepare"}
    if tok is not None:
        entry.update(file=HF_TOKENIZER_FILE, kind="hf", source=tok.source,
                     source_special_ids=tok.source_ids, vocab_sha256=tok.vocab_sha256())
    return entry


def fingerprint(cfg: RunConfig, files: list[tuple[str, int]], model: bytes | None) -> dict:
    """Everything that decides the corpus bytes, to recognise a re-run of the same job."""
    # Where the corpus goes, where trainers cache it and the undecodable-input limit (a
    # refusal, not a change) do not change its bytes.
    data = {k: v for k, v in to_dict(cfg)["data"].items()
            if k not in ("corpus_dir", "cache_dir", "max_undecodable_fraction")}
    tok = dict(to_dict(cfg)["tokenizer"], model_sha256=sha256_bytes(model) if model else None)
    return {"schema_version": SCHEMA_VERSION, "data": data, "tokenizer": tok,
            "inputs": [list(f) for f in files]}


def print_summary(m: dict) -> None:
    problems = [r for r in m["inputs"] if r["undecodable_bytes"] or r["bad_records"]]
    for r in problems:
        print(f"prepare: warning: {r['path']}: {r['undecodable_bytes']} undecodable bytes "
              f"replaced by U+FFFD, {r['bad_records']} bad records skipped"
              + "".join(f"\n    {e}" for e in r["examples"]))
    tokens = max(m["num_tokens"], 1)
    print(f"prepare: {len(m['inputs'])} input files -> {m['num_documents']:,} documents, "
          f"{m['num_sequences']:,} sequences, {m['num_tokens']:,} tokens in {len(m['files'])} "
          f"parts; {m['text_bytes'] / tokens:.2f} text bytes/token, "
          f"{m['shard_bytes'] / tokens:.2f} shard bytes/token"
          + (f"; {m['num_dropped_tail_tokens']:,} tail tokens dropped"
             if m["num_dropped_tail_tokens"] else ""))


@holds_output_locks
def run(argv: list[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict:
    """Run prepare; returns the corpus manifest."""
    args, cfg, beam_argv = parse_job_args(
        "python -m pipeline.prepare", __doc__, argv,
        "replace a different corpus already in data.corpus_dir")
    corpus_dir = cfg.data.corpus_dir

    files = expand_inputs(cfg.data.input)
    preflight(files, cfg)
    hf = given_hf_tokenizer(cfg) if cfg.tokenizer.kind == "hf" else None
    given = hf.json.encode("utf-8") if hf else load_given_tokenizer(cfg)
    fp = fingerprint(cfg, files, given)
    done = already_done(corpus_dir, "corpus", fp, args.overwrite,
                        ["part-*.parquet", UNIGRAM_FILE], "prepare",
                        "this corpus (same config and inputs)", print_summary)
    if done is not None:
        return done

    total_mb = sum(size for _, size in files) / 2**20
    print(f"prepare: {len(files)} input file(s), {total_mb:.1f} MiB -> {corpus_dir}", flush=True)
    if given is None:
        print("prepare: training the SentencePiece tokenizer "
              f"(vocab {cfg.tokenizer.vocab_size})", flush=True)
    model = given or train_tokenizer(files, cfg.tokenizer, cfg.data)
    tokenizer = tokenizer_entry(cfg, model, hf)
    write_atomic(join(corpus_dir, tokenizer["file"]), model)
    if hf is not None:  # the role tokens beside tokenizer.json make the folder loadable
        write_atomic(join(corpus_dir, HF_SPECIALS_FILE), hf.special_tokens_map().encode())
    write_atomic(join(corpus_dir, CONFIG_FILE), to_toml(cfg).encode())

    context = {
        "corpus_dir": corpus_dir,
        "inputs": files,
        "header": {
            "schema_version": SCHEMA_VERSION,
            "kind": "corpus",
            "created_by": f"fast-electra {version('fast-electra')}",
            "tokenizer": tokenizer,
            "max_seq_len": cfg.data.max_seq_len,
            "columns": {"seq_id": "int64", "doc_id": "int64", "input_ids": "list<int32>"},
            "fingerprint": fp,
            "config": {"data": to_dict(cfg)["data"], "tokenizer": to_dict(cfg)["tokenizer"]},
        },
    }
    return run_job(lambda p: build(p, files, cfg, context), test_pipeline, beam_argv,
                   corpus_dir, "corpus", print_summary,
                   corpus_progress(corpus_dir, files, cfg.data.part_text_bytes, args.progress_s))


def main(argv: list[str] | None = None) -> int:
    return main_guard(run, argv)


if __name__ == "__main__":
    run_as_main("pipeline.prepare")
