"""Helpers the test modules share (one copy each): the small model overrides, launching the
trainer as users do (one process or torchrun), reading its metrics, a real kill -9 mid-run,
and building an expensive fixture once per test session.

Older import paths keep working: tests.trainer.test_train re-exports SMALL, train_argv, env,
train_proc, run_train and metrics; tests.conftest kill_9_when, REPO, TINY and IN_MEMORY;
tests.pipeline.test_generate its SMALL (GENERATE_SMALL here) and gen_argv."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.toml")

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


def gen_argv(corpus_dir, rtd_dir, *sets: str, extra=(), beam=tuple(IN_MEMORY)) -> list[str]:
    """pipeline.generate's argv: GENERATE_SMALL, batches of 1024 tokens, parts of 200 rows
    (``extra`` comes after, so it may override them)."""
    argv = ["--config", TINY]
    for s in [*GENERATE_SMALL, f"data.corpus_dir={corpus_dir}", f"generate.rtd_dir={rtd_dir}",
              "generate.batch_tokens=1024", *sets]:
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


_BUILT: dict[str, object] = {}


def once(key: str, build):
    """``build()`` the first time ``key`` is asked for in this test session, its result after.
    A session fixture that a module re-exports (``from tests.conftest import x``) is a second
    fixture definition to pytest, with its own cache: this keeps it to one build."""
    if key not in _BUILT:
        with single_thread():
            _BUILT[key] = build()
    return _BUILT[key]
