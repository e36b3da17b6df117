"""generate's shard set as a plan and sealed epochs, so that a trainer can start on the first
epochs while later ones are written, and several generate runs can write disjoint epoch
ranges of one set at once (the files: trainer/data/sealed.py; the protocol:
docs/output_protocol.md).

    header = plan header (everything manifest.json holds that is known before the job)
    prep = prepare_epochs(rtd_dir, header, range(a, b), overwrite, "generate")
    write_plan(rtd_dir, prep.header)                  # plan.json, first
    for e in prep.to_write:                           # one Beam job per epoch:
        ... | KeyByEpoch | GroupByEpoch | SealEpoch   #   epoch=EEEE/_SEALED.json, last
        prep.locks[e].release()
    complete_set(rtd_dir, prep.header)                # manifest.json once all are sealed

Why one Beam job per epoch: a GroupByKey is a barrier in Beam's batch model, so a seal
written after one (or after a CombineGlobally) inside a job that writes every epoch appears
only when the whole job ends (measured on the local runner: the 4 seals of a 4-epoch job
within 0.15 s of each other, after the last part), and the parts of all epochs are written in
the shuffle's order, not epoch 0 first. Sequential jobs seal epoch e as soon as its parts are
written; each job costs a runner start (about 3 s with 2 local worker processes).

Locks are per epoch (``epoch=EEEE/.output-lock``, pipeline.output_lock): a run locks the
unsealed epochs of its range before it deletes anything there, skips sealed ones, and is
refused (exit 2, naming the holder) when a live run holds one of them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib.metadata import version

from apache_beam.io.filesystems import FileSystems

from pipeline.corpus_parts import ZSTD_LEVEL
from pipeline.errors import GenerateError
from pipeline.filesystems import exists, join, read_bytes, write_json_atomic
from pipeline.layout import Layout
from pipeline.output_lock import OutputLock, OutputLockError
from pipeline.shard_sets import OutputError, fingerprint_diff, held_locks
from trainer.config.load import to_dict
from trainer.config.run import RunConfig
from trainer.corruption.sampling import SAMPLER
from trainer.data.corpus_shards import CorpusShards
from trainer.data.manifest import MANIFEST, RTD_SCHEMA_VERSION, read_manifest
from trainer.data.rtd_format import RTD_SCHEMA, epoch_dir
from trainer.data.sealed import PLAN, SEAL, plan_fingerprint

_EPOCH = re.compile(r"epoch=(\d+)[/\\]")


def parse_epochs(spec: str | None, epochs: int) -> range:
    """``--epochs A:B`` (half-open, 0-based; either end may be left out) within the plan's
    ``epochs`` (generate.epochs); None = all of them."""
    if spec is None:
        return range(epochs)
    m = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", spec)
    if not m:
        raise GenerateError(f"--epochs {spec!r}: expected A:B, the epochs A..B-1 of the plan "
                            f"(half-open, 0-based; e.g. 0:1 for the first), within "
                            f"generate.epochs = {epochs}")
    a, b = int(m[1] or 0), int(m[2] or epochs)
    if b > epochs:
        raise GenerateError(
            f"--epochs {spec}: epoch {b - 1} is past the plan's horizon generate.epochs = "
            f"{epochs} (epochs 0..{epochs - 1}). The horizon is the time axis of the "
            "temperature schedule, so a longer set is a different plan with other bytes in "
            f"every epoch: set generate.epochs = {b} and write it to another folder (or "
            "--overwrite this one)")
    if a >= b:
        raise GenerateError(f"--epochs {spec}: an empty range; give A:B with A < B <= "
                            f"generate.epochs = {epochs}")
    return range(a, b)


@dataclass(frozen=True)
class PlanSources:
    """What plan.json is made of: a generate run's inputs, as generate opened and checked them,
    and what it derived from them before the job."""

    cfg: RunConfig
    """The resolved run config: [corruption], [generate] and data.row_group_rows."""
    corpus: CorpusShards
    """The corpus the set corrupts."""
    aux: dict | None
    """The aux checkpoint as generate describes it (path, sha256s, step, config); None when
    the replacements need no aux."""
    layout: Layout
    """How an epoch is cut into batches and parts."""
    corpus_fp: str
    """The sha256 of the corpus's manifest."""
    dtype: str
    """The numpy dtype the shards store token ids as."""
    fingerprint: dict
    """Everything that decides the shard bytes (generate.fingerprint)."""


def plan_header(src: PlanSources) -> dict:
    """plan.json: everything manifest.json holds that is known before any part is written;
    the manifest adds the totals and the parts (trainer.data.sealed.SET_TOTALS)."""
    cfg, corpus, layout, dtype = src.cfg, src.corpus, src.layout, src.dtype
    gen = cfg.generate
    corruption = to_dict(cfg)["corruption"]
    return {
        "schema_version": RTD_SCHEMA_VERSION,
        "kind": "rtd",
        "sampler": SAMPLER,
        "created_by": f"fast-electra {version('fast-electra')}",
        "corpus": {"dir": corpus.root, "manifest_sha256": src.corpus_fp,
                   "num_sequences": corpus.num_sequences, "vocab_size": corpus.vocab_size,
                   "special_ids": corpus.manifest["tokenizer"]["special_ids"],
                   "tokenizer_sha256": corpus.manifest["tokenizer"]["sha256"],
                   "max_seq_len": corpus.max_seq_len},
        "aux": src.aux,
        "corruption": corruption,
        "schedule": {k: corruption[k] for k in ("schedule", "t0", "tau", "granularity")}
        | {"u": "(e * N + p) / (E * N)" if corruption["granularity"] == "sample"
           else "e / E"},
        "order": {"kind": "feistel-cycle-walk", "key": "(seed, epoch)"},
        "seed": gen.seed,
        "epochs": gen.epochs,
        "num_sequences": corpus.num_sequences,
        "vocab_size": corpus.vocab_size,
        "token_dtype": dtype,
        "layout": {"rows_per_part": layout.rows_per_part, "batch_rows": layout.batch_rows,
                   "row_group_rows": cfg.data.row_group_rows,
                   "parts_per_epoch": layout.num_parts,
                   "path": "epoch=EEEE/part-PPPPP.parquet"},
        "columns": {f.name: str(f.type) for f in RTD_SCHEMA},
        "encoding": {"input_ids": f"raw {dtype} bytes",
                     "labels": "np.packbits(bitorder='little'), length from input_ids",
                     "compression": f"zstd level {ZSTD_LEVEL}"},
        "fingerprint": src.fingerprint,
    }


def add_epochs_flag(parser) -> None:
    parser.add_argument(
        "--epochs", metavar="A:B", default=None,
        help="write only epochs A..B-1 of the plan (half-open, 0-based; default: all "
             "generate.epochs). The bytes do not depend on the range: generate.epochs stays "
             "the schedule's time axis. Disjoint ranges of one set may run at once; sealed "
             "epochs are skipped")


# ---------------------------------------------------------------------------------------------
# In the pipeline: part entries -> one seal per epoch
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EpochSealing:
    """What sealing an epoch checks against: the set's folder, the parts every epoch has
    (``Layout.num_parts``) and the fingerprint of the plan the parts follow."""

    rtd_dir: str
    parts_per_epoch: int
    plan_fp: str


def by_epoch(entry: dict) -> tuple[int, dict]:
    return entry["epoch"], entry


def seal_epoch(element: tuple, sealing: EpochSealing) -> dict:
    """GroupByEpoch's (epoch, part entries) -> ``epoch=EEEE/_SEALED.json``, written (atomically)
    after every part of the epoch is renamed into place -> the seal. Checks that every part
    is there and that plan.json is still the plan the parts follow."""
    epoch, parts = element
    parts = sorted(parts, key=lambda p: p["name"])
    rtd_dir, expected = sealing.rtd_dir, sealing.parts_per_epoch
    if len(parts) != expected:
        raise GenerateError(f"{rtd_dir}: {len(parts)} parts of epoch {epoch} were written, "
                            f"{expected} expected; re-run fast-electra generate --epochs "
                            f"{epoch}:{epoch + 1}")
    plan_path = join(rtd_dir, PLAN)
    if not exists(plan_path) or plan_fingerprint(json.loads(read_bytes(plan_path))) != \
            sealing.plan_fp:
        raise GenerateError(f"{plan_path} changed while epoch {epoch} was written (another "
                            f"run replaced the set): epoch {epoch} is not sealed; write the "
                            "set to a folder no other run writes")
    seal = {"epoch": epoch, "plan": sealing.plan_fp, **totals(parts), "files": parts}
    write_json_atomic(join(rtd_dir, epoch_dir(epoch), SEAL), seal)
    return seal


def totals(parts: list[dict]) -> dict:
    return {"rows": sum(p["rows"] for p in parts),
            "num_tokens": sum(p["tokens"] for p in parts),
            "num_replaced": sum(p["replaced"] for p in parts),
            "devices": sorted({d for p in parts for d in p["devices"]}),
            "shard_bytes": sum(p["bytes"] for p in parts)}


# ---------------------------------------------------------------------------------------------
# In the launcher: the plan, the locks, the manifest
# ---------------------------------------------------------------------------------------------

def read_seals(rtd_dir: str, plan_fp: str, epochs) -> dict[int, dict]:
    """The seals of ``epochs`` that belong to the plan ``plan_fp``."""
    out = {}
    for e in epochs:
        path = join(rtd_dir, epoch_dir(e), SEAL)
        if exists(path):
            seal = json.loads(read_bytes(path))
            if seal.get("plan") == plan_fp and seal.get("epoch") == e:
                out[e] = seal
    return out


def complete_set(rtd_dir: str, header: dict) -> dict | None:
    """manifest.json from the seals once every epoch of the plan is sealed (whichever run
    seals the last one writes it; two that finish together write the same bytes) -> the
    manifest, or None while an epoch is missing."""
    seals = read_seals(rtd_dir, plan_fingerprint(header), range(header["epochs"]))
    if len(seals) < header["epochs"]:
        return None
    parts = sorted((p for s in seals.values() for p in s["files"]), key=lambda p: p["name"])
    manifest = dict(header, **{k: v for k, v in totals(parts).items() if k != "rows"},
                    files=parts)
    path = join(rtd_dir, MANIFEST)
    if not exists(path) or json.loads(read_bytes(path)) != manifest:
        write_json_atomic(path, manifest)
    return manifest


def write_plan(rtd_dir: str, header: dict) -> None:
    """plan.json, written before any part of the set (kept when already there)."""
    path = join(rtd_dir, PLAN)
    if not exists(path):
        write_json_atomic(path, header)


@dataclass
class EpochsToWrite:
    """What a generate run writes: its plan header (the one already in the folder when it
    continues a set), the epochs of its range not yet sealed (each locked by this run), the
    ones skipped as sealed, or the manifest of a complete set that needs nothing."""

    header: dict
    to_write: list[int] = field(default_factory=list)
    sealed: list[int] = field(default_factory=list)
    locks: dict[int, OutputLock] = field(default_factory=dict)
    done: dict | None = None


def _lock(rtd_dir: str, epoch: int, job: str) -> OutputLock:
    lock = OutputLock(join(rtd_dir, epoch_dir(epoch)), job)
    return held_locks().enter_context(lock)


def _epoch_dirs(rtd_dir: str) -> set[int]:
    """The epochs with a file in their folder (listed by file: object stores have no
    folders)."""
    found = FileSystems.match([join(rtd_dir, "epoch=*/*")])[0].metadata_list
    return {int(m.group(1)) for f in found if (m := _EPOCH.search(f.path))}


def _clear(rtd_dir: str, epochs, job: str) -> None:
    """Delete the parts, seals and temporaries of ``epochs`` (locked by this run)."""
    stale = [m.path for e in epochs for pattern in ("part-*", SEAL, ".tmp-*")
             for m in FileSystems.match([join(rtd_dir, epoch_dir(e), pattern)])[0].metadata_list]
    if stale:
        print(f"{job}: removing {len(stale)} file(s) of an earlier run from {rtd_dir}",
              flush=True)
        FileSystems.delete(stale)


def prepare_epochs(rtd_dir: str, header: dict, wanted: range, overwrite: bool,
                   job: str) -> EpochsToWrite:
    """Lock and clear the epochs of ``wanted`` this run must write (see EpochsToWrite). A
    complete set or a plan of another fingerprint is refused unless ``overwrite``, which
    locks every epoch (refused while a live run holds one) and deletes the whole set first:
    manifest, then plan, then seals and parts, so no reader takes the folder for a set."""
    fp, manifest_path, plan_path = header["fingerprint"], join(rtd_dir, MANIFEST), \
        join(rtd_dir, PLAN)
    old = None
    if exists(manifest_path):
        old, what = read_manifest(rtd_dir, "rtd"), "a different rtd shard set"
    elif exists(plan_path):
        old, what = read_manifest(rtd_dir, "rtd", PLAN), \
            f"the plan ({PLAN}) of a different rtd shard set in progress"
    if old is not None and old.get("fingerprint") == fp and not overwrite:
        if exists(manifest_path):
            return EpochsToWrite(old, done=old)
        header = old  # continue the set: its plan is the one on disk
    elif old is not None and not overwrite:
        differ = fingerprint_diff(old.get("fingerprint"), fp)
        why = (" A set's epochs are fixed by its plan: generate.epochs is the time axis of "
               "the temperature schedule, so a set with other epochs has other bytes in every "
               "epoch." if "epochs" in differ else "")
        raise OutputError(f"{rtd_dir} already holds {what} (differs in: "
                          f"{', '.join(differ) or 'unknown'}).{why} Pass --overwrite to "
                          "replace it, or write to another folder")
    elif old is not None:  # --overwrite: the whole set goes
        everything = sorted(_epoch_dirs(rtd_dir) | set(range(header["epochs"])))
        locks = {e: _lock(rtd_dir, e, job) for e in everything}
        for path in (manifest_path, plan_path):
            if exists(path):
                FileSystems.delete([path])
        _clear(rtd_dir, everything, job)
        stale = FileSystems.match([join(rtd_dir, ".tmp-*")])[0].metadata_list
        if stale:
            FileSystems.delete([m.path for m in stale])
        for e in everything:
            if e not in wanted:
                locks[e].release()
        return EpochsToWrite(header, to_write=list(wanted),
                             locks={e: locks[e] for e in wanted})

    plan_fp = plan_fingerprint(header)
    out = EpochsToWrite(header)
    for e in wanted:
        if read_seals(rtd_dir, plan_fp, [e]):
            out.sealed.append(e)
            continue
        lock = _lock(rtd_dir, e, job)
        if read_seals(rtd_dir, plan_fp, [e]):  # sealed by a run that ended meanwhile
            lock.release()
            out.sealed.append(e)
            continue
        out.locks[e] = lock
        out.to_write.append(e)
    _clear(rtd_dir, out.to_write, job)
    if old is None:
        # A folder without a plan holds no set: leftovers of an interrupted or older run, in
        # epochs no live run holds, go too.
        for e in sorted(_epoch_dirs(rtd_dir) - set(wanted)):
            try:
                with OutputLock(join(rtd_dir, epoch_dir(e)), job):
                    _clear(rtd_dir, [e], job)
            except OutputLockError:
                continue  # a live run's epoch (of a range started beside this one)
    return out
