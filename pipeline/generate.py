"""Beam job: corpus sequences -> per-epoch RTD shards (DESIGN.md "Data contract").

    python -m pipeline.generate --config configs/tiny.toml \\
        --set generate.aux_checkpoint=runs/tiny-aux/checkpoints/step_00000300
    python -m pipeline.generate --config configs/base.toml \\
        --set data.corpus_dir=gs://bucket/c --set generate.rtd_dir=gs://bucket/rtd \\
        --set generate.aux_checkpoint=gs://bucket/aux/step_00100000 --set generate.device=cuda \\
        --runner DataflowRunner --project P --region R --temp_location gs://bucket/tmp

Steps: check the corpus manifest and the aux checkpoint in the launcher -> ListCorpusParts
(one element per (epoch, corpus part)) -> AssignPositions (each seq_id's place in the epoch's
order: a keyed bijection, see ``pipeline.generate_fns``; the part's sha256 is checked) ->
GroupByBatch (key (epoch, output part, batch in the part): a batch's content never depends on the
runner's bundling) -> Corrupt (RunInference with ``CorruptionHandler``, one whole batch per call,
which runs ``trainer.corruption.corrupt_batch``; the frozen aux MLM loads once per worker in
``load_model``, on CUDA with bf16 autocast when ``generate.device`` is cuda, or
auto with a GPU visible; model-free replacements never load a model) -> GroupByPart ->
WriteParts (rows sorted by position, zstd Parquet, temp name + rename) -> Finalize
(manifest.json, written last: a folder without it is an incomplete shard set).

Every random decision is keyed by (seed, epoch, seq_id), so a re-run or a Beam retry writes the
same bytes on the same hardware. Re-running with the same corpus, aux checkpoint and config is a
no-op; a folder holding a different shard set is refused unless ``--overwrite``. Leftovers of an
interrupted run are removed first. The shard encoding is documented in ``trainer/shards.py``.
"""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass
from importlib.metadata import version

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.ml.inference.base import ModelHandler, RunInference

from pipeline.beam_util import (
    exists,
    join,
    pipeline_options,
    read_bytes,
    sha256_hex,
    write_atomic,
    write_json_atomic,
)
from pipeline.corpus_parts import ZSTD_LEVEL
from pipeline.generate_fns import GenerateError, Layout
from pipeline.shard_sets import prepare_output, run_pipeline
from trainer.cli import config_parser, main_guard, resolve_config
from trainer.config import RunConfig, to_dict, to_toml
from trainer.corruption import SAMPLER
from trainer.order import permute, progress
from trainer.pretrained import GENERATOR_KINDS, generator_config, load_generator, read_meta
from trainer.shards import (
    CONFIG_FILE,
    MANIFEST,
    RTD_SCHEMA,
    RTD_SCHEMA_VERSION,
    CorpusShards,
    ShardError,
    encode_rtd_rows,
    manifest_fingerprint,
    open_corpus,
    read_manifest,
    resolve_fs,
    rtd_part_name,
    sha256_file,
    token_dtype,
)
from trainer.tokenizer import PAD_ID

# ---------------------------------------------------------------------------------------------
# DoFns
# ---------------------------------------------------------------------------------------------

class AssignPositionsFn(beam.DoFn):
    """(epoch, corpus part index) -> ((epoch, part, batch), (position, seq_id, int32 token bytes))
    for every sequence of the part. The part's bytes are checked against the manifest."""

    def __init__(self, corpus_dir: str, files: list[dict], layout: Layout, seed: int):
        self.corpus_dir, self.files, self.layout, self.seed = corpus_dir, files, layout, seed

    def process(self, element):
        epoch, index = element
        entry = self.files[index]
        path = join(self.corpus_dir, entry["name"])
        data = read_bytes(path)
        if sha256_hex(data) != entry["sha256"]:
            raise ShardError(f"{path}: sha256 differs from the corpus manifest's: the file "
                             "changed or is corrupt; re-run pipeline.prepare --overwrite")
        table = pq.read_table(io.BytesIO(data))
        seq_ids = table.column("seq_id").to_numpy()
        ids = table.column("input_ids").combine_chunks()
        offsets, values = ids.offsets.to_numpy(), ids.values.to_numpy().astype("<i4")
        positions = permute(seq_ids, self.layout.num_sequences, self.seed, epoch)
        for i in range(len(seq_ids)):
            p = int(positions[i])
            yield ((epoch, *self.layout.batch_of(p)),
                   (p, int(seq_ids[i]), values[offsets[i]:offsets[i + 1]].tobytes()))


@dataclass
class AuxRuntime:
    """What a worker loads once: the device, the frozen aux MLM (None for model-free
    replacements) and the unigram counts (when the corruption needs them)."""

    device: str
    aux: object | None
    unigram: np.ndarray | None


class CorruptionHandler(ModelHandler):
    """RunInference handler of the corruption step. Each element is one whole deterministic
    batch ``((epoch, part, batch), [(position, seq_id, tokens)])`` grouped by GroupByBatch, so
    Beam's own batching is pinned to one element per call (results must not depend on it).
    ``load_model`` runs once per worker (per process, or once per machine with
    ``large_model``); the output is ``((epoch, part), encoded rows)``."""

    def __init__(self, cfg: RunConfig, layout: Layout, vocab_size: int, corpus_dir: str,
                 large_model: bool = False):
        super().__init__(min_batch_size=1, max_batch_size=1, large_model=large_model)
        self.corruption, self.gen = cfg.corruption, cfg.generate
        self.layout, self.vocab_size, self.corpus_dir = layout, vocab_size, corpus_dir

    def load_model(self) -> AuxRuntime:
        device = resolve_device(self.gen.device)
        aux = unigram = None
        if self.corruption.replacement == "aux":
            aux = load_generator(self.gen.aux_checkpoint, device, read_bytes)
        if ("unigram" in self.corruption.replacement
                or self.corruption.augmentation == "log_interp_unigram"):
            unigram = CorpusShards(self.corpus_dir).unigram_counts()
        return AuxRuntime(device, aux, unigram)

    def run_inference(self, batch, model: AuxRuntime, inference_args=None):
        return [corrupt_group(element, model, self.corruption, self.gen, self.layout,
                              self.vocab_size) for element in batch]

    def get_num_bytes(self, batch) -> int:
        return sum(len(row[2]) for _, rows in batch for row in rows)

    def get_metrics_namespace(self) -> str:
        return "generate"


def corrupt_group(element, runtime: AuxRuntime, corruption, gen, layout: Layout,
                  vocab_size: int) -> tuple:
    """One batch through ``corrupt_batch``: rows sorted by position, padded on the right to
    the batch's longest sequence, bf16 autocast on CUDA."""
    import torch

    from trainer.corruption import corrupt_batch

    (epoch, part, _), rows = element
    rows = sorted(rows)
    positions = np.array([r[0] for r in rows], np.int64)
    seq_ids = np.array([r[1] for r in rows], np.int64)
    seqs = [np.frombuffer(r[2], "<i4") for r in rows]
    lengths = np.array([len(s) for s in seqs], np.int64)
    ids = np.full((len(rows), int(lengths.max())), PAD_ID, np.int64)
    for i, seq in enumerate(seqs):
        ids[i, :len(seq)] = seq
    device = runtime.device
    mask = torch.arange(ids.shape[1])[None, :] < torch.from_numpy(lengths)[:, None]
    u = progress(epoch, positions, layout.num_sequences, gen.epochs, corruption.granularity)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda")
                else contextlib.nullcontext())
    with autocast:
        out = corrupt_batch(torch.from_numpy(ids).to(device), mask.to(device),
                            torch.from_numpy(seq_ids), epoch, torch.from_numpy(u), corruption,
                            gen.seed, aux=runtime.aux, unigram_counts=runtime.unigram,
                            vocab_size=vocab_size)
    corrupted = out.input_ids.cpu().numpy()
    labels = out.labels.cpu().numpy()
    tokens = np.concatenate([corrupted[i, :n] for i, n in enumerate(lengths)])
    flat_labels = np.concatenate([labels[i, :n] for i, n in enumerate(lengths)])
    return ((epoch, part),
            (positions.tobytes(), seq_ids.tobytes(), lengths.tobytes(),
             tokens.astype("<i4").tobytes(), flat_labels.astype(np.uint8).tobytes(),
             out.temperature.cpu().numpy().astype("<f4").tobytes(), device))


class WritePartFn(beam.DoFn):
    """((epoch, part), [encoded batches]) -> the part's manifest entry. Rows sorted by
    position; idempotent: a retry writes the same bytes to the same name."""

    def __init__(self, rtd_dir: str, layout: Layout, dtype: str, row_group_rows: int):
        self.rtd_dir, self.layout, self.dtype = rtd_dir, layout, dtype
        self.row_group_rows = row_group_rows

    def process(self, element):
        (epoch, part), batches = element
        cols = [[], [], [], [], [], []]
        devices = set()
        for *b, device in batches:
            devices.add(device)
            for c, raw, dt in zip(cols, b, ("<i8", "<i8", "<i8", "<i4", "u1", "<f4"),
                                  strict=True):
                c.append(np.frombuffer(raw, dt))
        positions, seq_ids, lengths, tokens, labels, temps = (np.concatenate(c) for c in cols)
        lo, hi = self.layout.part_range(part)
        order = np.argsort(positions, kind="stable")
        if not np.array_equal(positions[order], np.arange(lo, hi)):
            raise GenerateError(f"epoch {epoch} part {part}: positions are not exactly "
                                f"[{lo}, {hi}) (a corrupt or changed corpus?); re-run with "
                                "--overwrite")
        starts = np.concatenate([[0], np.cumsum(lengths)])
        table = encode_rtd_rows(
            positions[order], seq_ids[order],
            [tokens[starts[i]:starts[i + 1]] for i in order],
            [labels[starts[i]:starts[i + 1]] for i in order], temps[order], self.dtype)
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd", compression_level=ZSTD_LEVEL,
                       row_group_size=self.row_group_rows)
        data = sink.getvalue()
        name = rtd_part_name(epoch, part)
        write_atomic(join(self.rtd_dir, name), data)
        yield {
            "name": name, "epoch": epoch, "part": part, "rows": hi - lo,
            "position_start": lo, "position_end": hi, "bytes": len(data),
            "sha256": sha256_hex(data), "tokens": int(lengths.sum()),
            "replaced": int(labels.sum()), "temperature_min": float(temps.min()),
            "temperature_max": float(temps.max()), "devices": sorted(devices),
        }


def finalize(parts: list[dict], context: dict) -> dict:
    """Check that every part is there, then write manifest.json (last: it marks the set
    complete)."""
    parts = sorted(parts, key=lambda p: p["name"])
    expected = context["expected_parts"]
    if len(parts) != expected:
        raise GenerateError(f"{context['rtd_dir']}: {len(parts)} parts were written, "
                            f"{expected} expected; re-run pipeline.generate")
    tokens = sum(p["tokens"] for p in parts)
    manifest = dict(
        context["header"],
        num_tokens=tokens,
        num_replaced=sum(p["replaced"] for p in parts),
        devices=sorted({d for p in parts for d in p["devices"]}),
        shard_bytes=sum(p["bytes"] for p in parts),
        files=parts,
    )
    write_json_atomic(join(context["rtd_dir"], MANIFEST), manifest)
    return manifest


# ---------------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------------

def build(p: beam.Pipeline, cfg: RunConfig, corpus: CorpusShards, layout: Layout,
          context: dict):
    gen = cfg.generate
    return (
        p
        | "ListCorpusParts" >> beam.Create([(e, i) for e in range(gen.epochs)
                                            for i in range(len(corpus.files))])
        | "ReshuffleParts" >> beam.Reshuffle()
        | "AssignPositions" >> beam.ParDo(AssignPositionsFn(corpus.root, corpus.files, layout,
                                                            gen.seed))
        | "GroupByBatch" >> beam.GroupByKey()
        | "Corrupt" >> RunInference(CorruptionHandler(cfg, layout, corpus.vocab_size,
                                                      corpus.root))
        | "GroupByPart" >> beam.GroupByKey()
        | "WriteParts" >> beam.ParDo(WritePartFn(gen.rtd_dir, layout, context["header"][
            "token_dtype"], cfg.data.row_group_rows))
        | "CollectParts" >> beam.combiners.ToList()
        | "Finalize" >> beam.Map(finalize, context=context)
    )


# ---------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------

def resolve_device(device: str) -> str:
    """generate.device as a torch device string ("cuda:0" or "cpu")."""
    from trainer.distributed import pick_device

    return str(pick_device(device, 0, "generate.device"))


def check_aux(cfg: RunConfig, corpus: CorpusShards) -> dict | None:
    """The aux checkpoint's provenance (sha256s, step, config), checked against the corpus;
    None for a model-free replacement."""
    gen = cfg.generate
    if cfg.corruption.replacement != "aux":
        return None
    if not gen.aux_checkpoint:
        raise GenerateError("corruption.replacement = 'aux' needs generate.aux_checkpoint (a "
                            "checkpoint folder of a train.mode = 'mlm' run); set it, or choose "
                            "a model-free corruption.replacement such as 'uniform'")
    path = gen.aux_checkpoint.rstrip("/")
    meta = read_meta(path, "generator (generate.aux_checkpoint)", GENERATOR_KINDS, read_bytes)
    enc = generator_config(meta)
    if enc.vocab_size != corpus.vocab_size:
        raise GenerateError(f"the aux checkpoint {path} has a vocabulary of {enc.vocab_size} "
                            f"tokens but the corpus tokenizer of {corpus.root} has "
                            f"{corpus.vocab_size}; use an aux model trained on this corpus's "
                            "tokenizer")
    if enc.position == "absolute" and enc.max_seq_len < corpus.max_seq_len:
        raise GenerateError(f"the aux checkpoint {path} takes at most {enc.max_seq_len} "
                            f"positions, the corpus {corpus.root} has sequences of "
                            f"{corpus.max_seq_len} tokens")
    state_path = join(path, "state.pt")
    if not exists(state_path):
        raise GenerateError(f"{state_path} is missing: an incomplete checkpoint")
    return {"checkpoint": path, "state_sha256": sha256_file(*resolve_fs(state_path)),
            "meta_sha256": sha256_hex(read_bytes(join(path, "meta.json"))),
            "step": meta.get("step"), "config": meta["config"]}


def fingerprint(cfg: RunConfig, corpus_fp: str, aux: dict | None, layout: Layout,
                row_group_rows: int) -> dict:
    """Everything that decides the shard bytes, to recognise a re-run of the same job."""
    return {"schema_version": RTD_SCHEMA_VERSION, "sampler": SAMPLER, "corpus": corpus_fp,
            "aux_state_sha256": aux and aux["state_sha256"],
            "corruption": to_dict(cfg)["corruption"], "seed": cfg.generate.seed,
            "epochs": cfg.generate.epochs, "rows_per_part": layout.rows_per_part,
            "row_group_rows": row_group_rows}


def print_summary(m: dict) -> None:
    tokens = max(m["num_tokens"], 1)
    temps = [(f["temperature_min"], f["temperature_max"]) for f in m["files"]]
    print(f"generate: {m['epochs']} epoch(s) x {m['num_sequences']:,} sequences, "
          f"{m['num_tokens']:,} tokens in {len(m['files'])} parts; replaced "
          f"{m['num_replaced'] / tokens:.2%} of tokens; temperature "
          f"{min(t[0] for t in temps):.4g}..{max(t[1] for t in temps):.4g}; "
          f"{m['shard_bytes'] / tokens:.3f} shard bytes/token")


def run(argv: list[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> dict:
    """Run generate; returns the RTD manifest."""
    from trainer.corruption import validate_corruption

    parser = config_parser("python -m pipeline.generate", __doc__)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a different shard set already in generate.rtd_dir")
    args, beam_argv = parser.parse_known_args(argv)
    cfg = resolve_config(args)
    gen, rtd_dir = cfg.generate, cfg.generate.rtd_dir
    validate_corruption(cfg.corruption)
    runner = [a.split("=", 1)[-1] for a in beam_argv if a.startswith("--runner=")]
    local = not any(a.startswith("--runner") for a in beam_argv) or any(
        "Direct" in r or "LocalRunner" in r for r in runner)
    if gen.device == "cuda" and local:
        resolve_device(gen.device)  # local run: the workers see what the launcher sees

    corpus = open_corpus(cfg)
    aux = check_aux(cfg, corpus)
    layout = Layout.plan(corpus.num_sequences, corpus.max_seq_len, gen.batch_tokens,
                         gen.part_rows)
    corpus_fp = manifest_fingerprint(corpus.manifest)
    fp = fingerprint(cfg, corpus_fp, aux, layout, cfg.data.row_group_rows)
    if not prepare_output(rtd_dir, "rtd", fp, args.overwrite,
                          ["epoch=*/part-*.parquet", "epoch=*/.tmp-*"], "generate"):
        print(f"generate: {rtd_dir} already holds this shard set (same corpus, aux checkpoint "
              "and config); nothing to do. Pass --overwrite to rebuild it.")
        manifest = read_manifest(rtd_dir, "rtd")
        print_summary(manifest)
        return manifest

    print(f"generate: {gen.epochs} epoch(s) of {corpus.num_sequences:,} sequences from "
          f"{corpus.root} -> {rtd_dir} ({layout.num_parts} part(s)/epoch, "
          f"{layout.batch_rows} sequences/batch, replacement {cfg.corruption.replacement})",
          flush=True)
    write_atomic(join(rtd_dir, CONFIG_FILE), to_toml(cfg).encode())
    corruption = to_dict(cfg)["corruption"]
    context = {
        "rtd_dir": rtd_dir,
        "expected_parts": gen.epochs * layout.num_parts,
        "header": {
            "schema_version": RTD_SCHEMA_VERSION,
            "kind": "rtd",
            "sampler": SAMPLER,
            "created_by": f"fast-electra {version('fast-electra')}",
            "corpus": {"dir": corpus.root, "manifest_sha256": corpus_fp,
                       "num_sequences": corpus.num_sequences, "vocab_size": corpus.vocab_size,
                       "special_ids": corpus.manifest["tokenizer"]["special_ids"],
                       "tokenizer_sha256": corpus.manifest["tokenizer"]["sha256"],
                       "max_seq_len": corpus.max_seq_len},
            "aux": aux,
            "corruption": corruption,
            "schedule": {k: corruption[k] for k in ("schedule", "t0", "tau", "granularity")}
            | {"u": "(e * N + p) / (E * N)" if corruption["granularity"] == "sample"
               else "e / E"},
            "order": {"kind": "feistel-cycle-walk", "key": "(seed, epoch)"},
            "seed": gen.seed,
            "epochs": gen.epochs,
            "num_sequences": corpus.num_sequences,
            "vocab_size": corpus.vocab_size,
            "token_dtype": token_dtype(corpus.vocab_size),
            "layout": {"rows_per_part": layout.rows_per_part, "batch_rows": layout.batch_rows,
                       "row_group_rows": cfg.data.row_group_rows,
                       "parts_per_epoch": layout.num_parts,
                       "path": "epoch=EEEE/part-PPPPP.parquet"},
            "columns": {f.name: str(f.type) for f in RTD_SCHEMA},
            "encoding": {"input_ids": f"raw {token_dtype(corpus.vocab_size)} bytes",
                         "labels": "np.packbits(bitorder='little'), length from input_ids",
                         "compression": f"zstd level {ZSTD_LEVEL}"},
            "fingerprint": fp,
        },
    }
    p = test_pipeline or beam.Pipeline(options=pipeline_options(beam_argv))
    build(p, cfg, corpus, layout, context)
    run_pipeline(p)
    manifest = read_manifest(rtd_dir, "rtd")
    print_summary(manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    return main_guard(run, argv)


if __name__ == "__main__":
    # Re-import by module name so Beam pickles the DoFns by reference, not from __main__.
    from pipeline import generate

    sys.exit(generate.main())
