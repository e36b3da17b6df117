"""Benchmarks of ``pipeline.generate``, one section per question, each printing its own table.

    make demo                                   # the corpus and aux checkpoint it needs
    OMP_NUM_THREADS=1 .venv/bin/python bench/generate.py [--config configs/tiny.toml] \\
        [--set section.key=value ...] [--sections throughput,memory,sampling]
    # without an aux checkpoint: a model-free replacement
    OMP_NUM_THREADS=1 .venv/bin/python bench/generate.py --set corruption.replacement=uniform

Sections (``SECTIONS``; add one as a function ``(args, cfg) -> None`` that prints its lines):

throughput  --throughput-epochs (2) epochs of the config's corpus: sequences/s of the Beam job
            (1 worker, which runs in the launcher process (runners.one_worker_in_process);
            2 worker processes on the LocalRunner and on the DaskRunner; one torch thread
            each; generate.part_rows 1024 unless set, as parts are what the workers share
            out) vs a bare loop doing the same masking + aux inference + sampling
            (``corrupt_batch``, one thread, same batch size) over the same epochs, as ratios:
            "vs loop" against the loop in corpus order (the reference), "vs same" against the
            loop over generate's own batches (the epoch's order: same padding). The loops and
            the 1-worker job run --runs (3) interleaved rounds, the median is reported, with
            each epoch job's seconds (from the launcher's "sealed epoch" lines); with an aux
            model, the speed-up of the masked-only LM head over the full-vocabulary head on
            the same batches; shard bytes per token vs raw int32 token arrays.
sampling    Per vocabulary size (8K, 32K, 128K), over one generate batch of a random-weight
            aux of the config's width: ``sample_tokens`` time / ``log_softmax`` time over the
            same logits (goal <= 2), / the aux forward time, and the closed-form model-free
            sampler / the dense route (``bench/sampling.py`` prints the full table).
memory      For two ``generate.part_rows`` (--part-rows), with a model-free replacement
            (``corruption.replacement = uniform``: no model in the figures): (1) part 0 alone,
            in a fresh process: the peak RSS that corrupting and writing it (``index_part`` +
            ``write_part``, the CorruptAndWrite step) adds to holding its received chunks; the
            claim it checks: that does not grow with the part (the part costs its uint16
            input tokens, held as received, and nothing proportional to it on top). (2) the
            whole job on LocalRunner with 2 worker processes: peak RSS (VmHWM, polled from
            /proc) of each worker and of the launcher, which include the runner's own
            buffering (FnApiRunner sends each worker its whole share of a stage at once).

``--set`` overrides apply to every run (e.g. ``generate.aux_checkpoint=...``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.corrupt_write import Corrupter, write_part  # noqa: E402
from pipeline.generate import run  # noqa: E402
from pipeline.generate_steps import AssignPositionsFn, index_part  # noqa: E402
from pipeline.layout import Layout  # noqa: E402
from trainer.config.load import load_config  # noqa: E402
from trainer.corruption.batch import KeyedBatch  # noqa: E402
from trainer.corruption.corrupt import corrupt_batch  # noqa: E402
from trainer.corruption.masking import mask_positions  # noqa: E402
from trainer.data.corpus_shards import CorpusShards  # noqa: E402
from trainer.data.corpus_tokens import CorpusTokens  # noqa: E402
from trainer.data.order import permute  # noqa: E402
from trainer.data.rtd_format import token_dtype  # noqa: E402
from trainer.pretrained import load_generator  # noqa: E402


def generate_argv(args, rtd_dir: str, defaults=(), forced=()) -> list[str]:
    """pipeline.generate's arguments: ``defaults``, then the user's ``--set``s, then
    ``forced`` (what a section measures)."""
    argv = ["--config", args.config]
    # A benchmark's shards serve no training run: generate's sizing check reads a one-step run.
    for s in ["generate.epochs=1", "generate.device=cpu", "train.max_steps=1",
              "train.warmup_steps=0", "train.eval_every=0", *defaults, *args.set,
              f"generate.rtd_dir={rtd_dir}", *forced]:
        argv += ["--set", s]
    return argv


# ---------------------------------------------------------------------------------------------
# throughput
# ---------------------------------------------------------------------------------------------

_SEALED = re.compile(r"generate: sealed epoch\(s\) [\d, ]+ \(([\d.]+)s\)")


def beam_seconds(args, rtd_dir: str, workers: int, epochs: int,
                 runner: tuple = ()) -> tuple[float, list[float], dict]:
    """One ``pipeline.generate`` run, in this process as a user's call would be: (its seconds,
    each epoch job's seconds (from the launcher's "sealed epoch" lines, to 0.1 s), the
    manifest)."""
    # Parts are the unit of parallelism of the corruption step: 1024 rows make 9 parts of
    # the demo corpus, work for both workers (its default 65,536 would make one).
    argv = generate_argv(args, rtd_dir, defaults=["generate.part_rows=1024"],
                         forced=[f"generate.epochs={epochs}"])
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        manifest = run([*argv, *(runner or [f"--direct_num_workers={workers}"])])
    secs = time.perf_counter() - start
    sealed = [float(t) for t in _SEALED.findall(out.getvalue())]
    return secs, [b - a for a, b in zip([0.0, *sealed], sealed)], manifest


def loop_seconds(cfg, tokens, aux, counts, batch_rows: int, epoch: int, order: str) -> float:
    """The bare loop over one epoch: ``corrupt_batch`` (mask + aux + sample) on batches of
    ``batch_rows`` sequences, in corpus order (``order`` "corpus", the reference) or in the
    epoch's order (``order`` "epoch": generate's very batches, so the same padding)."""
    n = len(tokens)
    seq = np.arange(n)
    if order == "epoch":
        seq = np.argsort(permute(seq, n, cfg.generate.seed, epoch))  # seq_id at each position
    start = time.perf_counter()
    for i in range(0, n, batch_rows):
        seq_ids = seq[i:i + batch_rows]
        ids, attn = tokens.batch(seq_ids)
        u = torch.from_numpy(seq_ids / n).float()
        batch = KeyedBatch(ids, torch.from_numpy(seq_ids), cfg.generate.seed, epoch,
                           attention_mask=attn)
        corrupt_batch(batch, u, cfg.corruption, aux=aux, unigram_counts=counts)
    return time.perf_counter() - start


def throughput(args, cfg) -> None:
    corpus = CorpusShards(cfg.data.corpus_dir)
    tokens = CorpusTokens(corpus)
    n, epochs = len(tokens), args.throughput_epochs
    use_aux = cfg.corruption.replacement == "aux"
    aux = load_generator(cfg.generate.aux_checkpoint) if use_aux else None
    counts = torch.from_numpy(corpus.unigram_counts())
    batch_rows = Layout.plan(corpus.num_sequences, corpus.max_seq_len,
                             cfg.generate.batch_tokens, 1024).batch_rows
    # --runs rounds, interleaved (loops, then the 1-worker job), so that a busy spell of the
    # machine weighs on all of them; each row reports its median round.
    loops = {"corpus": [], "epoch": []}
    one = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.runs):
            for order, rounds in loops.items():
                rounds.append([loop_seconds(cfg, tokens, aux, counts, batch_rows, e, order)
                               for e in range(epochs)])
            one.append(beam_seconds(args, os.path.join(tmp, f"rtd1_{r}"), 1, epochs))
        two = beam_seconds(args, os.path.join(tmp, "rtd2"), 2, epochs)
        # The same job on dask.distributed: its own 2-process loopback cluster per epoch job,
        # started and stopped inside the timed call (pipeline/dask_runner.py).
        dask = beam_seconds(args, os.path.join(tmp, "rtd_dask"), 2, epochs,
                            runner=["--runner", "DaskRunner", "--dask_workers", "2"])
    manifest = one[0][2]

    def median(rows: list[list[float]]) -> list[float]:
        """The round with the median total, as [total, epoch 0, epoch 1, ...]."""
        rows = sorted(([sum(r), *r] for r in rows), key=lambda r: r[0])
        return rows[len(rows) // 2]

    loop, same = median(loops["corpus"]), median(loops["epoch"])
    one_row = sorted(([s, *per] for s, per, _ in one), key=lambda r: r[0])[len(one) // 2]
    what = f"aux {cfg.generate.aux_checkpoint}" if use_aux else cfg.corruption.replacement
    print(f"throughput: corpus {cfg.data.corpus_dir}: {n:,} sequences x {epochs} epochs, vocab "
          f"{corpus.vocab_size}, batches of {batch_rows} sequences, "
          f"{manifest['layout']['parts_per_epoch']} parts/epoch, replacement {what}; "
          f"{os.cpu_count()} cores, 1 torch thread per process; median of {args.runs} "
          "interleaved rounds where marked (*)")
    per = " ".join(f"{f'epoch {e}':>8s}" for e in range(epochs))
    print(f"{'':54s} {'seconds':>8s} {'seq/s':>9s} {'vs loop':>8s} {'vs same':>8s} {per}")

    def row(name: str, total: float, epochs_s: list[float]) -> None:
        cells = " ".join(f"{t:8.2f}" for t in epochs_s)
        print(f"{name:54s} {total:8.2f} {epochs * n / total:9.1f} {loop[0] / total:7.2f}x "
              f"{same[0] / total:7.2f}x {cells}")

    row("bare torch loop, corpus order (*)", loop[0], loop[1:])
    row("bare torch loop, generate's batches (*)", same[0], same[1:])
    row("pipeline.generate, 1 worker, in the launcher (*)", one_row[0], one_row[1:])
    print(f"{'  its runs':54s} " + ", ".join(f"{s:.2f}" for s, _, _ in one))
    row("pipeline.generate, LocalRunner, 2 worker processes", two[0], two[1])
    row("pipeline.generate, DaskRunner, 2 worker processes", dask[0], dask[1])
    if use_aux:
        masked_only, full = lm_head_seconds(cfg, tokens, aux, batch_rows)
        print(f"LM head: masked-only {masked_only:.3f} s vs full vocabulary {full:.3f} s -> "
              f"{full / masked_only:.2f}x faster")
    print(f"shards: {manifest['shard_bytes'] / manifest['num_tokens']:.3f} bytes/token vs 4.000 "
          f"for raw int32 arrays ({4 * manifest['num_tokens'] / manifest['shard_bytes']:.2f}x "
          "smaller)")


def lm_head_seconds(cfg, tokens, aux, batch_rows: int) -> tuple[float, float]:
    """LM head on the same batches: masked positions only vs the whole (B, T, V), gathered."""
    masked_only = full = 0.0
    order = np.arange(len(tokens))
    with torch.inference_mode():
        for i in range(0, min(len(order), 40 * batch_rows), batch_rows):
            seq_ids = order[i:i + batch_rows]
            ids, attn = tokens.batch(seq_ids)
            masked, selected = mask_positions(KeyedBatch(ids, torch.from_numpy(seq_ids), 0, 0),
                                              cfg.corruption)
            hidden = aux.encoder(masked, attn)
            t0 = time.perf_counter()
            aux.head(hidden, selected)
            t1 = time.perf_counter()
            aux.head(hidden)[selected]
            masked_only += t1 - t0
            full += time.perf_counter() - t1
    return masked_only, full


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------

def _proc_tree() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{name}/stat") as f:
                parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
    return parents


def _peak_rss_kib(pid: int | str) -> int | None:
    """VmHWM (the peak resident set size so far) of a live process, in KiB."""
    return _status_kib("VmHWM", pid)


def _status_kib(field: str, pid: int | str = "self") -> int | None:
    """A ``/proc/<pid>/status`` memory field (VmRSS, VmHWM, ...) in KiB."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return None


def _is_worker(pid: int) -> bool:
    """A Beam SDK worker process (not the ``sh -c`` that the local runner starts it with)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
        return b"apache_beam.runners.worker.sdk_worker_main" in f.read().split(b"\0")
    return False


def peak_rss(argv: list[str], log_path: str) -> tuple[int, dict[int, int]]:
    """Run ``python -m pipeline.generate argv`` and poll /proc every 20 ms: (launcher peak KiB,
    {worker pid: peak KiB}). VmHWM only grows, so the last reading of each process is its
    peak up to 20 ms before it exits."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.generate", *argv], cwd=REPO,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        launcher, workers = 0, {}
        while proc.poll() is None:
            tree = _proc_tree()
            descendants, frontier = set(), {proc.pid}
            while frontier:
                frontier = {p for p, parent in tree.items() if parent in frontier}
                descendants |= frontier
            for pid in descendants:
                if pid in workers or _is_worker(pid):
                    workers[pid] = max(workers.get(pid, 0), _peak_rss_kib(pid) or 0)
            launcher = max(launcher, _peak_rss_kib(proc.pid) or 0)
            time.sleep(0.02)
    if proc.returncode:
        with open(log_path) as f:
            raise SystemExit(f"pipeline.generate failed:\n{f.read()[-3000:]}")
    return launcher, workers


def _reset_peak_rss() -> None:
    """Restart this process's VmHWM from its current RSS (Linux: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def part_probe(config: str, sets: list[str], part_rows: int) -> tuple[int, int]:
    """In a fresh process: what corrupting and writing part 0 of epoch 0 adds to the peak RSS
    of a process already holding the part's packed chunks as received (the warm-up pass on
    the same part first pays the one-time costs: torch kernels, pyarrow's zstd writer).
    Returns (the part's input token bytes, peak KiB above holding them)."""
    cfg = load_config(config, [*sets, "corruption.replacement=uniform",
                               f"generate.part_rows={part_rows}"])
    corpus = CorpusShards(cfg.data.corpus_dir)
    layout = Layout.plan(corpus.num_sequences, corpus.max_seq_len, cfg.generate.batch_tokens,
                         part_rows)
    dtype = token_dtype(corpus.vocab_size)
    assign = AssignPositionsFn(corpus.root, corpus.files, layout, cfg.generate.seed, dtype)
    chunks = [packed for i in range(len(corpus.files))
              for (_, part), packed in assign.process((0, i)) if part == 0]
    corrupter = Corrupter("cpu", None, None, cfg, corpus.num_sequences, corpus.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        for measured in (False, True):
            gc.collect()
            if measured:
                _reset_peak_rss()
                base = _status_kib("VmHWM")
            write_part(index_part(((0, 0), chunks), layout, dtype), corrupter, tmp,
                       layout.batch_rows, cfg.data.row_group_rows, dtype)
    return sum(len(c[3]) for c in chunks), _status_kib("VmHWM") - base


def memory(args, cfg) -> None:
    sizes = [int(x) for x in args.part_rows.split(",")]
    rows = []
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        for part_rows in sizes:
            rtd_dir = os.path.join(tmp, f"rtd{part_rows}")
            argv = [*generate_argv(args, rtd_dir, forced=[
                "corruption.replacement=uniform", f"generate.part_rows={part_rows}",
                f"generate.epochs={args.epochs}"]), "--direct_num_workers=2"]
            launcher, workers = peak_rss(argv, os.path.join(tmp, "log"))
            with open(os.path.join(rtd_dir, "manifest.json")) as f:
                manifest = json.load(f)
            with spawn.Pool(1) as pool:
                part_bytes, probe = pool.apply(part_probe, (args.config, args.set, part_rows))
            rows.append((part_rows, len(manifest["files"]), part_bytes, probe, workers,
                         launcher))
    print(f"memory: corruption.replacement = uniform, {args.epochs} epoch(s) of "
          f"{manifest['num_sequences']:,} sequences ({cfg.data.corpus_dir}), batch_rows "
          f"{manifest['layout']['batch_rows']}, row groups of "
          f"{manifest['layout']['row_group_rows']}. Part 0 alone: peak RSS that corrupting and "
          "writing it adds to a process holding its received chunks. LocalRunner, 2 worker "
          "processes: peak RSS (VmHWM) of each, and of the launcher (the runner)")
    mib = 1 / 1024
    print(f"{'generate.part_rows':>18s} {'parts':>6s} {'part 0 input tokens':>20s} "
          f"{'part 0 alone: peak':>19s} {'LocalRunner worker peaks':>31s} {'launcher':>11s}")
    for part_rows, parts, part_bytes, probe, workers, launcher in rows:
        each = ", ".join(f"{v * mib:.1f}" for v in sorted(workers.values()))
        print(f"{part_rows:18d} {parts:6d} {part_bytes / 2**20:16.2f} MiB "
              f"{probe * mib:+15.1f} MiB {each:>27s} MiB {launcher * mib:7.1f} MiB")


def sampling(args, cfg) -> None:
    """Per vocabulary size (--vocab), over one generate batch of a random-weight aux of the
    config's width: sampling vs log_softmax over the same logits, vs the aux forward that
    makes them, and the closed-form model-free samplers vs the dense route (bench/sampling.py,
    which prints the full table)."""
    sys.path.insert(0, os.path.join(REPO, "bench"))
    from sampling import measure

    sequences = max(1, cfg.generate.batch_tokens // cfg.data.max_seq_len)
    print(f"sampling: random-weight aux of {args.config}'s width, {sequences} sequences x "
          f"{cfg.data.max_seq_len} tokens per batch, 1 thread, best of 3")
    print(f"{'vocab':>8s} {'masked N':>9s} {'ours/log_softmax':>17s} {'ours/aux forward':>17s} "
          f"{'unigram closed/dense':>21s}")
    for vocab in (int(v) for v in args.vocab.split(",")):
        m = measure(load_config(args.config, args.set), vocab, sequences, 3)
        print(f"{vocab:8,d} {m['N']:9,d} {m['ours'] / m['log_softmax']:16.2f}x "
              f"{m['ours'] / m['aux forward']:16.2f}x "
              f"{m['unigram closed'] / m['unigram dense']:20.3f}x")


SECTIONS = {"throughput": throughput, "memory": memory, "sampling": sampling}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/tiny.toml")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override for every run (repeatable)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, of: {', '.join(SECTIONS)}")
    parser.add_argument("--runs", type=int, default=3,
                        help="throughput: interleaved rounds of the loops and the 1-worker "
                             "job (the median is reported)")
    parser.add_argument("--throughput-epochs", type=int, default=2,
                        help="throughput: epochs per run (generate.epochs)")
    parser.add_argument("--part-rows", default="2048,8192",
                        help="memory: the generate.part_rows to compare")
    parser.add_argument("--epochs", type=int, default=2, help="memory: generate.epochs")
    parser.add_argument("--vocab", default="8000,32000,128000",
                        help="sampling: the vocabulary sizes")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # Beam workers inherit it
    torch.set_num_threads(1)
    cfg = load_config(args.config, args.set)
    for name in args.sections.split(","):
        SECTIONS[name](args, cfg)


if __name__ == "__main__":
    main()
