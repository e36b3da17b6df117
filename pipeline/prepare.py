"""Beam job: raw text -> token sequences ("corpus" shards, docs/design.md "Data contract").

    python -m pipeline.prepare --config configs/tiny.toml                 # local, 1 worker/core
    python -m pipeline.prepare --config configs/base.toml \\
        --set 'data.input=["gs://bucket/text/*.jsonl.zst"]' --set data.corpus_dir=gs://bucket/c \\
        --runner DataflowRunner --project P --region R --temp_location gs://bucket/tmp

Steps: list the inputs -> train (or load and check) the SentencePiece tokenizer in the launcher
-> ReadDocuments (one file per element; compressed files cannot be split; documents travel in
batches) -> TokenizeAndSplit (documents into [CLS] ... [SEP] sequences of at most
data.max_seq_len) -> WriteCorpusParts (GroupByPart, zstd Parquet, temp name + rename, then the
entries and unigram counts collected) -> Finalize (unigram counts, then manifest.json, written
last: a folder without it is an incomplete corpus). The three middle steps are composite
transforms of pipeline/prepare_steps.py. With one local worker the job runs in this process
(runners.one_worker_in_process).

Re-running with the same config and inputs is a no-op; a folder that holds a different corpus
is refused unless ``--overwrite``. Leftovers of an interrupted run are removed first.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from importlib.metadata import version

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import AsList

from pipeline.corpus_parts import group_files
from pipeline.filesystems import exists, join, read_bytes, write_atomic, write_json_atomic
from pipeline.job import JobOutput, claim_output, parse_job_args, run_as_main, run_job
from pipeline.prepare_steps import ReadDocuments, TokenizeAndSplit, WriteCorpusParts
from pipeline.progress import corpus_progress
from pipeline.runners import one_worker_in_process
from pipeline.shard_sets import holds_output_locks
from pipeline.sources import InputError, check_undecodable, expand_inputs, resolve_format
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


@dataclass(frozen=True)
class CorpusContext:
    """What Finalize needs besides the job's outputs: where the corpus goes, the inputs as
    (path, size) and the manifest's header (every field known before the job runs)."""

    corpus_dir: str
    inputs: list[tuple[str, int]]
    header: dict


def finalize(written: tuple[list[dict], np.ndarray], reports: list,
             context: CorpusContext) -> dict:
    """WriteCorpusParts' (part entries, unigram counts) -> write the unigram counts, then
    manifest.json (last: it marks the set complete)."""
    parts, unigram = written
    corpus_dir = context.corpus_dir
    inputs = [dict(report, bytes=context.inputs[i][1]) for i, report in sorted(reports)]
    # Before anything is written: a mostly undecodable file (binary data read as text) would
    # become sequences of noise.
    check_undecodable(inputs, context.header["config"]["data"]["max_undecodable_fraction"])
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
        context.header,
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

def build(p: beam.Pipeline, files: list[tuple[str, int]], cfg: RunConfig,
          context: CorpusContext):
    data, tokenizer = cfg.data, context.header["tokenizer"]
    file_groups = group_files([size for _, size in files], data.part_text_bytes)
    read = (
        p
        # ReadDocuments spreads the files over the workers itself (no second reshuffle).
        | "ListInputs" >> beam.Create([(i, path) for i, (path, _) in enumerate(files)],
                                      reshuffle=False)
        | "ReadDocuments" >> ReadDocuments(data)
    )
    return (
        read["docs"]
        | "TokenizeAndSplit" >> TokenizeAndSplit(
            data, join(context.corpus_dir, tokenizer["file"]), file_groups,
            tokenizer.get("source_special_ids"))
        | "WriteCorpusParts" >> WriteCorpusParts(context.corpus_dir, data,
                                                 cfg.tokenizer.vocab_size)
        | "Finalize" >> beam.Map(finalize, reports=AsList(read["reports"]), context=context)
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
def run(argv: list[str] | None = None) -> dict:
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
    output = JobOutput(corpus_dir, "corpus", "prepare", "this corpus (same config and inputs)",
                       ["part-*.parquet", UNIGRAM_FILE], print_summary)
    done = claim_output(output, fp, args.overwrite)
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

    context = CorpusContext(
        corpus_dir=corpus_dir,
        inputs=files,
        header={
            "schema_version": SCHEMA_VERSION,
            "kind": "corpus",
            "created_by": f"fast-electra {version('fast-electra')}",
            "tokenizer": tokenizer,
            "max_seq_len": cfg.data.max_seq_len,
            "columns": {"seq_id": "int64", "doc_id": "int64", "input_ids": "list<int32>"},
            "fingerprint": fp,
            "config": {"data": to_dict(cfg)["data"], "tokenizer": to_dict(cfg)["tokenizer"]},
        },
    )
    # One local worker runs in this process (runners.one_worker_in_process).
    return run_job(lambda p: build(p, files, cfg, context), one_worker_in_process(beam_argv),
                   output,
                   corpus_progress(corpus_dir, files, cfg.data.part_text_bytes,
                                   args.progress_s))


def main(argv: list[str] | None = None) -> int:
    return main_guard(run, argv)


if __name__ == "__main__":
    run_as_main("pipeline.prepare")
