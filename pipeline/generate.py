"""Beam job: corpus sequences -> per-epoch RTD shards (docs/design.md, "Data contract").

    python -m pipeline.generate --config configs/tiny.toml \\
        --set generate.aux_checkpoint=runs/tiny/aux/checkpoints/step_00000150
    # Dataflow, one L4 GPU per worker VM, one SDK process per VM (docs/scaling.md has the
    # image, the packaging and the other runners)
    python -m pipeline.generate --config configs/base.toml \\
        --set data.corpus_dir=gs://bucket/c --set generate.rtd_dir=gs://bucket/rtd \\
        --set generate.aux_checkpoint=gs://bucket/aux/step_00100000 --set generate.device=cuda \\
        --runner DataflowRunner --project P --region R --temp_location gs://bucket/tmp \\
        --sdk_container_image REGION-docker.pkg.dev/P/REPO/fast-electra-gpu:0.1.0 \\
        --sdk_location container --machine_type g2-standard-8 --experiments use_runner_v2 \\
        --experiments no_use_multiple_sdk_containers --number_of_worker_harness_threads 2 \\
        --dataflow_service_options "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"

Steps: check the corpus manifest and the aux checkpoint in the launcher -> ListCorpusParts
(one element per (epoch, corpus part)) -> AssignPositions (each seq_id's place in the epoch's
order, a keyed bijection (``trainer.data.order``); the part's sha256 is checked; one packed element
per output part it touches, tokens as uint16 where the vocabulary fits: few, large elements) ->
GroupByPart (key (epoch, output part): the one shuffle) -> IndexParts (the part's rows in
position order, over the received bytes) -> CorruptAndWrite (RunInference with
``CorruptionHandler``, pipeline/corrupt_write.py: one whole part per call, corrupted by
``trainer.corruption.corrupt.corrupt_batch`` in batches of ``batch_rows`` consecutive
positions, so a batch never depends on the runner's bundling, and streamed row group by row
group through ``pq.ParquetWriter`` to a temp name, then renamed) -> GroupByEpoch -> SealEpoch
(``epoch=EEEE/_SEALED.json``, written last for the epoch: the epoch may be read). The launcher
writes ``plan.json`` first, runs one such job per epoch of ``--epochs A:B`` (default all) and
writes manifest.json once every epoch of the plan is sealed (pipeline/epoch_seal.py). The steps
are three composite transforms (pipeline/generate_steps.py): ShuffleToParts (ListCorpusParts'
elements through AssignPositions, GroupByPart and IndexParts), CorruptAndWrite and SealEpochs
(GroupByEpoch, SealEpoch).

The frozen aux MLM loads in ``load_model``: once per SDK process (per epoch job: ~0.1 s for the
demo's aux), or ``generate.model_copies`` copies per machine shared by its processes; one local
CPU worker runs in the launcher process, not in a process of its own per job
(``runners.one_worker_in_process``); on CUDA with bf16 autocast for the encoder when
``generate.device`` is cuda, or auto with a GPU visible. A load takes the machine's lowest free
device slot and uses GPU (slot mod GPU count), so the loads of a machine go round-robin over
its GPUs (``gpu_slots.worker_device``). Model-free replacements never load a model. A worker
holds one part's input tokens (uint16: ~2 bytes/token) plus one row group of output at a time.

Every random decision is keyed by (seed, epoch, seq_id), and every batch is fixed by (epoch,
position), so a re-run or a Beam retry writes the same bytes on the same hardware. Re-running
with the same corpus, aux checkpoint and config is a no-op, and sealed epochs are skipped; a
folder holding a different shard set (or plan) is refused unless ``--overwrite``. Leftovers of
an interrupted run are removed first, in the epochs this run locks. The
shard encoding is documented in shards/README.md and ``trainer/data/rtd_format.py``.
"""

from __future__ import annotations

import os
import sys
import time

import apache_beam as beam

from pipeline.epoch_seal import (
    EpochSealing,
    PlanSources,
    add_epochs_flag,
    complete_set,
    parse_epochs,
    plan_header,
    prepare_epochs,
    read_seals,
    write_plan,
)
from pipeline.errors import GenerateError
from pipeline.filesystems import exists, join, read_bytes, write_atomic
from pipeline.generate_steps import CorruptAndWrite, SealEpochs, ShuffleToParts
from pipeline.gpu_slots import explicit_workers, local_workers, worker_device
from pipeline.job import parse_job_args, run_as_main
from pipeline.layout import Layout
from pipeline.progress import rtd_progress
from pipeline.runners import one_worker_in_process, pipeline_options, runs_locally
from pipeline.shard_sets import holds_output_locks, run_pipeline
from trainer.cli import main_guard
from trainer.config.load import to_dict, to_toml
from trainer.config.run import RunConfig
from trainer.corruption.sampling import SAMPLER
from trainer.data.corpus_shards import CorpusShards, open_corpus
from trainer.data.manifest import (
    CONFIG_FILE,
    RTD_SCHEMA_VERSION,
    manifest_fingerprint,
    sha256_uri,
)
from trainer.data.rtd_format import token_dtype
from trainer.data.sealed import plan_fingerprint
from trainer.digest import sha256_bytes
from trainer.modes.rtd import DataPlan
from trainer.pretrained import GENERATOR_KINDS, generator_config, read_meta


def build(p: beam.Pipeline, cfg: RunConfig, corpus: CorpusShards, layout: Layout,
          epochs: list[int], sealing: EpochSealing):
    """The job writing and sealing ``epochs`` of the plan (the launcher runs one per epoch:
    pipeline/epoch_seal.py says why); the steps are pipeline/generate_steps.py's."""
    dtype = token_dtype(corpus.vocab_size)
    return (
        p
        # ShuffleToParts spreads the elements over the workers itself (no second reshuffle).
        | "ListCorpusParts" >> beam.Create([(e, i) for e in epochs
                                            for i in range(len(corpus.files))], reshuffle=False)
        | "ShuffleToParts" >> ShuffleToParts(corpus.root, corpus.files, layout,
                                             cfg.generate.seed, dtype)
        | "CorruptAndWrite" >> CorruptAndWrite(cfg, layout, corpus.vocab_size, corpus.root,
                                               dtype)
        | "SealEpochs" >> SealEpochs(sealing)
    )


# ---------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------

def check_same_vocabulary(meta: dict, path: str, corpus: CorpusShards) -> None:
    """An aux speaks the corpus's ids only if both come from one vocabulary: the corpus's
    SentencePiece model, or the same HF tokenizer (its vocabulary's sha256, recorded by
    pipeline.prepare and by fast-electra hf import)."""
    entry = corpus.manifest["tokenizer"]
    ours = (entry.get("kind", "sentencepiece"), entry.get("vocab_sha256"))
    imported = meta.get("hf_import", {}).get("vocabulary", {})
    theirs = (meta["config"].get("tokenizer", {}).get("kind", "sentencepiece"),
              imported.get("vocab_sha256"))
    if ours[0] != theirs[0] or (ours[1] and theirs[1] and ours[1] != theirs[1]):
        def name(kind, sha, source):
            return f"{kind} tokenizer {source}" + (f" (vocabulary {sha[:12]})" if sha else "")
        raise GenerateError(
            f"the aux checkpoint {path} speaks the ids of "
            f"{name(*theirs, meta['config'].get('tokenizer', {}).get('model') or '?')}, the "
            f"corpus {corpus.root} was tokenised with {name(*ours, entry.get('source', '?'))}; "
            "prepare the corpus with the aux's own tokenizer (tokenizer.kind = 'hf', "
            "tokenizer.model = the folder fast-electra hf import wrote) or use an aux trained on "
            "this corpus")


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
    check_same_vocabulary(meta, path, corpus)
    if enc.position == "absolute" and enc.max_seq_len < corpus.max_seq_len:
        raise GenerateError(f"the aux checkpoint {path} takes at most {enc.max_seq_len} "
                            f"positions, the corpus {corpus.root} has sequences of "
                            f"{corpus.max_seq_len} tokens")
    state_path = join(path, "state.pt")
    if not exists(state_path):
        raise GenerateError(f"{state_path} is missing: an incomplete checkpoint")
    return {"checkpoint": path, "state_sha256": sha256_uri(state_path),
            "meta_sha256": sha256_bytes(read_bytes(join(path, "meta.json"))),
            "step": meta.get("step"), "config": meta["config"]}


def fingerprint(cfg: RunConfig, corpus_fp: str, aux: dict | None, layout: Layout,
                dtype: str) -> dict:
    """Everything that decides the shard bytes, to recognise a re-run of the same job:
    batch_rows too, as the dropout augmentations draw one rate per batch. Not the device,
    the runner or generate.model_copies, which do not change the bytes on the same hardware.
    generate.head_precision only when not fp32, so fp32 sets keep their fingerprint."""
    head = cfg.generate.head_precision
    return {"schema_version": RTD_SCHEMA_VERSION, "sampler": SAMPLER, "corpus": corpus_fp,
            "aux_state_sha256": aux and aux["state_sha256"],
            "corruption": to_dict(cfg)["corruption"], "seed": cfg.generate.seed,
            "epochs": cfg.generate.epochs, "rows_per_part": layout.rows_per_part,
            "batch_rows": layout.batch_rows, "row_group_rows": cfg.data.row_group_rows,
            "token_dtype": dtype, **({"aux_head_precision": head} if head != "fp32" else {})}


def plan_local_gpus(cfg: RunConfig, beam_argv: list[str]) -> list[str]:
    """Local workers see the launcher's GPUs: check them before any work (not in every
    worker) and default the worker count to the GPUs (``gpu_slots.local_workers``)."""
    import torch

    gen, count = cfg.generate, torch.cuda.device_count()
    worker_device(gen.device, count, 0)
    if count == 0 and gen.head_precision != "fp32":
        raise GenerateError(f"generate.head_precision = {gen.head_precision!r} needs a GPU and "
                            "none is visible: a CPU computes the head in fp32 only; set "
                            "generate.head_precision = 'fp32'")
    copies = gen.model_copies if cfg.corruption.replacement == "aux" else 0
    explicit = explicit_workers(beam_argv)
    n = local_workers(count, copies, os.cpu_count() or 1, explicit)
    if n is None or explicit is not None:
        return beam_argv
    print(f"generate: {count} GPU(s), generate.model_copies = {gen.model_copies}: {n} local "
          "worker process(es) (--direct_num_workers N to choose)", flush=True)
    return [f"--direct_num_workers={n}", *beam_argv]


def on_cpu(device: str) -> bool:
    """Whether generate.device puts the corruption on the CPU here: ``cpu``, or ``auto`` with
    no GPU visible. Only then does one local worker run in the launcher
    (``runners.one_worker_in_process``): a GPU worker claims a device slot per model load,
    held for its process's life (``gpu_slots``), so it keeps a process per job."""
    if device == "cpu":
        return True
    if device != "auto":
        return False
    import torch

    return torch.cuda.device_count() == 0


def print_summary(m: dict) -> None:
    tokens = max(m["num_tokens"], 1)
    temps = [(f["temperature_min"], f["temperature_max"]) for f in m["files"]]
    print(f"generate: {m['epochs']} epoch(s) x {m['num_sequences']:,} sequences, "
          f"{m['num_tokens']:,} tokens in {len(m['files'])} parts; replaced "
          f"{m['num_replaced'] / tokens:.2%} of tokens; temperature "
          f"{min(t[0] for t in temps):.4g}..{max(t[1] for t in temps):.4g}; "
          f"{m['shard_bytes'] / tokens:.3f} shard bytes/token")


def check_plan(cfg: RunConfig, corpus: CorpusShards) -> None:
    """generate.epochs x the corpus's sequences against the rtd run of the same config, before
    any work: a set too small for train.max_steps is refused (the trainer would refuse it
    after the whole job), one with no epoch left over for evaluation is warned about. Other
    train.mode values do not read the shards, so their [train] says nothing about them."""
    if cfg.train.mode != "rtd":
        return
    plan = DataPlan.of(cfg, cfg.generate.epochs, corpus.num_sequences)
    if not plan.feasible:
        raise GenerateError(plan.shortfall(f"the corpus {corpus.root} (data.corpus_dir) with "
                                           "generate.epochs gives",
                                           "raise generate.epochs or lower train.max_steps"))
    if cfg.train.eval_every and (warning := plan.heldout_warning("to hold one out, set")):
        print(f"generate: {warning}", file=sys.stderr, flush=True)


@holds_output_locks
def run(argv: list[str] | None = None) -> dict:
    """Run generate; returns the RTD manifest, or, while epochs of the plan are missing,
    the plan with the files of the sealed epochs and ``complete: False``."""
    from trainer.corruption.augmentations import validate_corruption

    args, cfg, beam_argv = parse_job_args(
        "python -m pipeline.generate", __doc__, argv,
        "replace a different shard set already in generate.rtd_dir", add_epochs_flag)
    gen, rtd_dir = cfg.generate, cfg.generate.rtd_dir
    validate_corruption(cfg.corruption)
    wanted = parse_epochs(args.epochs, gen.epochs)
    if gen.device != "cpu" and runs_locally(beam_argv):
        beam_argv = plan_local_gpus(cfg, beam_argv)
    if on_cpu(gen.device):
        # One local worker: in this process, which imports torch and loads the aux once per
        # epoch job in ~0.1 s instead of starting a worker process per job (~2-3 s).
        beam_argv = one_worker_in_process(beam_argv)

    corpus = open_corpus(cfg)
    check_plan(cfg, corpus)
    aux = check_aux(cfg, corpus)
    layout = Layout.plan(corpus.num_sequences, corpus.max_seq_len, gen.batch_tokens,
                         gen.part_rows)
    corpus_fp = manifest_fingerprint(corpus.manifest)
    dtype = token_dtype(corpus.vocab_size)
    fp = fingerprint(cfg, corpus_fp, aux, layout, dtype)
    header = plan_header(PlanSources(cfg, corpus, aux, layout, corpus_fp, dtype, fp))
    prep = prepare_epochs(rtd_dir, header, wanted, args.overwrite, "generate")
    if prep.done is not None:
        print(f"generate: {rtd_dir} already holds this shard set (same corpus, aux checkpoint "
              "and config); nothing to do. Pass --overwrite to rebuild it.")
        print_summary(prep.done)
        return prep.done
    if prep.sealed:
        print(f"generate: epoch(s) {', '.join(map(str, prep.sealed))} of {rtd_dir} are sealed "
              "already: skipped", flush=True)

    write_atomic(join(rtd_dir, CONFIG_FILE), to_toml(cfg).encode())
    write_plan(rtd_dir, prep.header)
    if prep.to_write:
        print(f"generate: epoch(s) {prep.to_write[0]}..{prep.to_write[-1]} of {gen.epochs} x "
              f"{corpus.num_sequences:,} sequences from {corpus.root} -> {rtd_dir} "
              f"({layout.num_parts} part(s)/epoch, {layout.batch_rows} sequences/batch, "
              f"replacement {cfg.corruption.replacement})", flush=True)
    sealing = EpochSealing(rtd_dir, layout.num_parts, plan_fingerprint(prep.header))
    # One job per epoch, each sealing its epoch as it ends (epoch_seal: a seal inside one
    # job for every epoch would appear only at that job's end).
    jobs = [[e] for e in prep.to_write]
    start = time.monotonic()
    with rtd_progress(rtd_dir, prep.to_write, layout, args.progress_s if jobs else 0):
        for epochs in jobs:
            p = beam.Pipeline(options=pipeline_options(beam_argv))
            build(p, cfg, corpus, layout, epochs, sealing)
            run_pipeline(p)
            for e in epochs:
                prep.locks[e].release()
            print(f"generate: sealed epoch(s) {', '.join(map(str, epochs))} "
                  f"({time.monotonic() - start:.1f}s)", flush=True)
    manifest = complete_set(rtd_dir, prep.header)
    if manifest is not None:
        print_summary(manifest)
        return manifest
    sealed = read_seals(rtd_dir, sealing.plan_fp, range(gen.epochs))
    missing = [e for e in range(gen.epochs) if e not in sealed]
    print(f"generate: {rtd_dir} has {len(sealed)} of {gen.epochs} epoch(s) sealed; the set is "
          f"complete (manifest.json) once epoch(s) {', '.join(map(str, missing))} are "
          "(pipeline.generate --epochs A:B)", flush=True)
    return dict(prep.header, complete=False, sealed_epochs=sorted(sealed),
                files=sorted((f for s in sealed.values() for f in s["files"]),
                             key=lambda f: f["name"]))


def main(argv: list[str] | None = None) -> int:
    return main_guard(run, argv)


if __name__ == "__main__":
    run_as_main("pipeline.generate")
