"""Helpers the test modules share (one copy each, and the one place they are imported from;
fixtures live in tests/conftest.py): the small model overrides, the test corpus's files, launching
the trainer and the Beam jobs as users do (one process or torchrun), reading their metrics and
shard sets, a real kill -9 mid-run, and small writers and readers several test modules use.
tests/test_tests.py keeps test modules from importing one another."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import zstandard

from trainer import checkpoint
from trainer.config.load import to_dict
from trainer.data.manifest import RTD_SCHEMA_VERSION
from trainer.data.rtd_format import encode_rtd_rows, epoch_dir, rtd_part_name, token_dtype
from trainer.data.rtd_shards import RTDShards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.toml")
STDLIB = sysconfig.get_paths()["stdlib"]
# The test corpus: docstrings of these standard-library modules (real English, no download).
PROSE_MODULES = ["argparse.py", "dataclasses.py", "textwrap.py", "json/__init__.py",
                 "logging/__init__.py", "subprocess.py", "tarfile.py", "zipfile.py"]

# A model small enough for many steps a second on one core; post-LN (the paper's, base/large's
# and tiny.toml's), spelt out so that a change of tiny.toml does not change the tests' models.
MODEL_SMALL = ["model.layer_norm=post", "model.num_layers=2", "model.hidden_size=32",
               "model.num_heads=2", "model.ffn_size=64", "aux.num_layers=2",
               "tokenizer.vocab_size=600", "data.max_seq_len=64"]
# The trainer tests: MODEL_SMALL + a short mlm run logging every step.
SMALL = [*MODEL_SMALL, "train.mode=mlm", "train.warmup_steps=2", "train.lr=2e-3",
         "train.log_every=1", "train.eval_every=0", "train.holdout_fraction=0.05"]
# The pipeline tests: MODEL_SMALL (the aux checkpoints they load) in row groups of 16 rows,
# so a part holds several.
GENERATE_SMALL = [*MODEL_SMALL, "data.row_group_rows=16"]

# Beam's in-process runner: fast start, one worker. Tests of parallelism ask for more.
IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]

# Wall-clock figures of metrics.jsonl: they differ between two runs of the same computation.
TIMING_KEYS = frozenset({"tokens_per_s", "seconds_per_step", "peak_memory_gb"})


def strip_timing(records: list[dict]) -> list[dict]:
    """``records`` without their wall-clock figures: what two equal runs log alike."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def metrics(out_dir) -> list[dict]:
    """Every record of the run's metrics.jsonl, timing included."""
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_argv(corpus_dir, out_dir, *overrides: str) -> list[str]:
    argv = ["--config", TINY]
    for o in [*SMALL, f"data.corpus_dir={corpus_dir}", f"train.out_dir={out_dir}", *overrides]:
        argv += ["--set", o]
    return argv


# The rtd run a test shard set serves: one step, no evaluation, so generate's data-plan check
# (pipeline.generate.check_plan) passes on any test corpus and prints no held-out warning;
# the tests of that check set their own train.* values after these.
GENERATE_RUN = ["train.max_steps=1", "train.warmup_steps=0", "train.eval_every=0"]


def gen_argv(corpus_dir, rtd_dir, *sets: str, extra=(), beam=tuple(IN_MEMORY)) -> list[str]:
    """pipeline.generate's argv: GENERATE_SMALL, GENERATE_RUN, batches of 1024 tokens, parts
    of 200 rows (``extra`` comes after, so it may override them)."""
    argv = ["--config", TINY]
    for s in [*GENERATE_SMALL, *GENERATE_RUN, f"data.corpus_dir={corpus_dir}",
              f"generate.rtd_dir={rtd_dir}", "generate.batch_tokens=1024", *sets]:
        argv += ["--set", s]
    return [*argv, "--set", "generate.part_rows=200", *extra, *beam]


def env() -> dict:
    # One thread per process: two ranks on two cores, and identical numerics run to run.
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)


def train_proc(argv: list[str], nproc: int = 1, module: str = "trainer.train"
               ) -> subprocess.Popen:
    """``python -m module argv``, or under torchrun (gloo) with ``nproc`` ranks."""
    if nproc == 1:
        cmd = [sys.executable, "-m", module, *argv]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(nproc), "-m", module, *argv]
    return subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_train(argv: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    p = train_proc(argv, nproc)
    out, err = p.communicate(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def kill_9_when(module: str, argv: list[str], ready, settle: float = 0.0,
                env: dict | None = None) -> None:
    """Run ``python -m module argv``, wait until ``ready()`` (then ``settle`` seconds more),
    check it is still running, and kill -9 its whole process group: a real crash mid-run."""
    proc = subprocess.Popen([sys.executable, "-m", module, *argv], cwd=REPO,
                            env=env or dict(os.environ, PYTHONPATH=REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while not ready() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(settle)
    assert proc.poll() is None, f"{module} finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def shard_files(folder) -> list[str]:
    """The part files and temporaries (``.tmp-*``) under a shard-set folder (epoch subfolders
    included), as relative paths: what an interrupted run leaves and the next run clears."""
    out = []
    for root, _, names in os.walk(folder):
        out += [os.path.relpath(os.path.join(root, n), folder) for n in names
                if n.startswith(("part-", ".tmp-"))]
    return sorted(out)


def part_started(folder) -> bool:
    """Whether a part file or a part's temporary exists under a shard-set folder: the point
    where a killed run leaves output behind (other files' temporaries, such as the
    tokenizer's or config.toml's, are renamed out of the pattern at once)."""
    return any(os.path.basename(n).startswith(("part-", ".tmp-part-"))
               for n in shard_files(folder))


def bare_rtd_rows(root, epoch: int) -> list[tuple[int, int, np.ndarray, np.ndarray, float]]:
    """(position, seq_id, input_ids, labels, temperature) of every row of ``epoch`` of the RTD
    set at ``root``, in position order, by a plain pyarrow read decoded as shards/README.md
    documents (not through trainer.data)."""
    manifest = json.loads((root / "manifest.json").read_text())
    out = []
    for f in sorted(manifest["files"], key=lambda f: f["position_start"]):
        if f["epoch"] != epoch:
            continue
        for r in pq.read_table(root / f["name"]).to_pylist():
            ids = np.frombuffer(r["input_ids"], manifest["token_dtype"])
            bits = np.unpackbits(np.frombuffer(r["labels"], np.uint8), bitorder="little")
            out.append((r["position"], r["seq_id"], ids, bits[:len(ids)], r["temperature"]))
    return out


@contextlib.contextmanager
def single_thread():
    """One torch thread here and in the worker processes started meanwhile (Beam workers
    read OMP_NUM_THREADS): the tests' models are tiny, and on a shared 2-core machine
    oversubscribed threads make them (and vocabulary-wide sampling) up to ~15x slower."""
    threads, old = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if old is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = old


def write_corpus(root, docs: list[str]) -> dict[str, list[str]]:
    """Spread ``docs`` over a plain-text, a gzip text, a zstd JSONL and a Parquet file, plus
    one very long document; returns {path: documents in file order}."""
    root.mkdir(parents=True, exist_ok=True)
    q = len(docs) // 4
    # In a plain-text file a blank line ends a document, so paragraphs become lines there.
    one_block = [re.sub(r"\n\s*\n", "\n", d) for d in docs[:2 * q]]
    files = {
        str(root / "a.txt"): one_block[:q],
        str(root / "b.txt.gz"): one_block[q:],
        str(root / "c.jsonl.zst"): docs[2 * q:3 * q],
        str(root / "d.parquet"): docs[3 * q:] + [" ".join(docs[:40])],  # >> max_seq_len
    }
    blocks = lambda ds: "\n\n".join(ds).encode() + b"\n"  # noqa: E731
    (root / "a.txt").write_bytes(blocks(files[str(root / "a.txt")]))
    (root / "b.txt.gz").write_bytes(gzip.compress(blocks(files[str(root / "b.txt.gz")]), mtime=0))
    jsonl = "".join(json.dumps({"text": d, "id": i}) + "\n"
                    for i, d in enumerate(files[str(root / "c.jsonl.zst")]))
    (root / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl.encode()))
    pq.write_table(pa.table({"text": files[str(root / "d.parquet")]}), root / "d.parquet")
    return files


def prepare_argv(inputs_dir, corpus_dir, *extra: str, vocab: int = 600,
                 max_seq_len: int = 64) -> list[str]:
    return ["--config", TINY,
            "--set", f'data.input=["{inputs_dir}/*"]',
            "--set", "data.format=auto",
            "--set", f"data.corpus_dir={corpus_dir}",
            "--set", f"data.max_seq_len={max_seq_len}",
            "--set", "data.part_text_bytes=20000",
            "--set", "data.row_group_rows=64",
            "--set", f"tokenizer.vocab_size={vocab}",
            *extra]


def timeless_metrics(out_dir) -> list[dict]:
    """The run's records without their wall-clock figures."""
    return strip_timing(metrics(out_dir))


# write_rtd_set's default shape: files and row groups of awkward sizes, so that reads cross both.
RTD_SET_ROWS, RTD_SET_EPOCHS, RTD_SET_PART_ROWS, RTD_SET_GROUP_ROWS = 700, 2, 300, 128
RTD_SET_VOCAB = 600


def write_rtd_set(root, n=RTD_SET_ROWS, epochs=RTD_SET_EPOCHS, part_rows=RTD_SET_PART_ROWS,
                  group_rows=RTD_SET_GROUP_ROWS):
    """An RTD shard set of ``epochs`` x ``n`` rows of random lengths 1..70 (every label byte
    count, padded bits included), ``part_rows`` rows per file, ``group_rows`` per row group,
    written with the real encoding."""
    rng = np.random.default_rng(1)
    dtype = token_dtype(RTD_SET_VOCAB)
    files = []
    for e in range(epochs):
        for part, lo in enumerate(range(0, n, part_rows)):
            hi = min(lo + part_rows, n)
            lengths = rng.integers(1, 71, hi - lo)
            table = encode_rtd_rows(np.arange(lo, hi), rng.permutation(n)[:hi - lo],
                                    [rng.integers(5, RTD_SET_VOCAB, t) for t in lengths],
                                    [rng.integers(0, 2, t) for t in lengths],
                                    np.full(hi - lo, 2.0 - e / epochs), dtype)
            name = rtd_part_name(e, part)
            (root / epoch_dir(e)).mkdir(parents=True, exist_ok=True)
            pq.write_table(table, root / name, row_group_size=group_rows, compression="zstd")
            files.append({"name": name, "epoch": e, "part": part, "rows": hi - lo,
                          "position_start": lo, "position_end": hi,
                          "sha256": hashlib.sha256((root / name).read_bytes()).hexdigest()})
    (root / "manifest.json").write_text(json.dumps({
        "kind": "rtd", "schema_version": RTD_SCHEMA_VERSION, "epochs": epochs,
        "num_sequences": n, "vocab_size": RTD_SET_VOCAB, "token_dtype": dtype, "files": files}))
    return root


def save_model(out_dir, model: torch.nn.Module, cfg, kind: str) -> str:
    """A step-1 checkpoint of ``model`` alone (no optimizer state), as rank 0 of 1 writes it."""
    meta = {"step": 1, "mode": cfg.train.mode, "config": to_dict(cfg), "model_kind": kind}
    return checkpoint.save(str(out_dir), 1, {"model": model.state_dict()}, meta,
                           checkpoint.SaveContext.single_process())


# What fast-electra evaluate reports per epoch, each recomputed by tests.reference_metrics; the
# trainer's own held-out eval logs the first eight (eval_*).
LOGGED_KEYS = ("rtd_accuracy", "rtd_precision", "rtd_recall", "rtd_f1", "rtd_loss",
               "replaced_fraction", "rtd_all_accuracy", "rtd_all_loss")
RTD_KEYS = (*LOGGED_KEYS, "tokens", "all_tokens", "rtd_auc", "rtd_all_auc",
            "majority_accuracy", "constant_loss")


def disc_batches(model, rtd: RTDShards, epoch: int, count: int, size: int) -> list[dict]:
    """The discriminator's logits on positions [0, count) of ``epoch``, in batches of
    ``size``, as numpy arrays with each row's length (tests.reference_metrics' input)."""
    # Imported here: trainer.modes.rtd brings the training task with it, and every test
    # imports this module (through tests/conftest.py); only the scoring tests need it.
    from trainer.modes.rtd import collate

    out = []
    for lo in range(0, count, size):
        part = rtd.read_range(epoch, lo, min(lo + size, count))
        b = collate([part])
        with torch.no_grad():
            logits = model(b["input_ids"], b["attention_mask"]).float()
        out.append({"logits": logits.numpy(), "labels": b["labels"].numpy(),
                    "input_ids": b["input_ids"].numpy(), "lengths": part.lengths})
    return out


def corpus_lines(prose: list[str], n: int = 2000) -> list[str]:
    """``n`` non-blank lines of real text: the documents' lines, then source lines."""
    lines = [ln for doc in prose for ln in doc.splitlines() if ln.strip()]
    with open(os.path.join(STDLIB, "difflib.py"), encoding="utf-8") as f:
        lines = (lines + [ln for ln in f.read().splitlines() if ln.strip()])[:n]
    assert len(lines) == n
    return lines


def write_task_file(path, records: list[dict]) -> str:
    """The same records as TSV (header row), JSONL or Parquet, by the file's extension."""
    path = str(path)
    if path.endswith(".tsv"):
        cols = list(records[0])
        lines = ["\t".join(cols)] + ["\t".join(str(r[c]) for c in cols) for r in records]
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
    elif path.endswith(".jsonl"):
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


# The trainer's SMALL model with learned absolute positions: the layout Hugging Face's BERT-like
# models have, so import and export map one to one.
ABSOLUTE = [s for s in SMALL if not s.startswith("train.mode")] + ["model.position=absolute"]


def padded_batch(seed: int = 1, vocab: int = 600) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids of ordinary tokens, right-padded to lengths 20, 13, 7; the (B, T) mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (3, 20), generator=g)
    mask = torch.arange(20)[None, :] < torch.tensor([20, 13, 7])[:, None]
    return ids.masked_fill(~mask, 0), mask


def colour_pixels(path, colour: str) -> int:
    """How many pixels of the PNG at ``path`` have the matplotlib colour ``colour`` (within
    rounding): a drawn series leaves its colour, an empty or blank figure none."""
    from matplotlib.colors import to_rgb
    from matplotlib.image import imread

    rgb = imread(str(path))[..., :3]  # (H, W, 3) floats in [0, 1]
    return int((np.abs(rgb - np.array(to_rgb(colour))).max(-1) < 2 / 255).sum())


def need_file(path: str, package: str) -> None:
    """Skip the test when Debian's ``package`` has not installed ``path``; under
    FAST_ELECTRA_REQUIRE_EXTRAS=1 (CI) fail instead, as a missing optional module does."""
    if not os.path.exists(path):
        if os.environ.get("FAST_ELECTRA_REQUIRE_EXTRAS") == "1":
            pytest.fail(f"{path} missing: `make test` installs Debian's {package}")
        pytest.skip(f"Debian package {package} not installed ({path})")
