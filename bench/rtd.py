"""Benchmark of the offline ``rtd`` mode's data path, in one run.

    make demo                                   # the RTD shards it reads
    .venv/bin/python bench/rtd.py [--config configs/tiny.toml] [--steps 40] [--set k=v ...]
    .venv/bin/python bench/rtd.py --set train.rtd_dir=/tmp/rtd_uniform   # another shard set

Everything runs on one core: one torch thread, and pyarrow with one CPU and one I/O thread.
Prints:
1. the reader (RTDTask.micro_batch over consecutive steps: find the row groups, decode,
   slice, pad to tensors) in tokens/s, vs the limit: a bare ``pq.read_table`` of the same
   files plus the numpy decode (``decode_rtd_table``) of each whole file, with no padding;
   goals: >= 0.5x the bare read and >= 5M tokens/s; and the same reader as rank 0 of
   --world ranks (it keeps its 1/world of each global batch, but decodes nearly every row
   group);
2. seconds per step training the discriminator on batches streamed from the shards (the
   trainer's background Prefetcher over RTDTask.micro_batch) vs the same loop over the same
   batches already in memory as tensors: the loader overhead (goal: <= 3%).
Both training loops are identical (forward, backward, clip, AdamW step) apart from the batch
source. Each figure is the best of --repeats runs (the machine may be shared).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from trainer.config.load import load_config  # noqa: E402
from trainer.data.prefetch import Prefetcher  # noqa: E402
from trainer.data.rtd_format import decode_rtd_table  # noqa: E402
from trainer.data.rtd_shards import RTDShards  # noqa: E402
from trainer.distributed import Dist  # noqa: E402
from trainer.modes.rtd import RTDTask  # noqa: E402
from trainer.optim import build_optimizer  # noqa: E402


def train_seconds(task: RTDTask, next_batch, steps: int) -> float:
    model = task.model
    opt = build_optimizer(model, task.cfg.train)
    start = time.perf_counter()
    for _ in range(steps):
        loss, _ = task.loss(model, next_batch())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def reader_seconds(task: RTDTask, d: Dist, steps: int) -> tuple[float, int]:
    """(seconds, real tokens) of rank ``d.rank``'s micro-batches of ``steps`` consecutive
    steps of one micro-batch per rank, from a fresh reader (no file open, nothing decoded)."""
    task.rtd = RTDShards(task.rtd.root)
    task.cfg.train.global_batch_size = task.cfg.train.micro_batch_size_per_rank * d.world_size
    start = time.perf_counter()
    tokens = sum(int(task.micro_batch(s, 0, d)["attention_mask"].sum()) for s in range(steps))
    return time.perf_counter() - start, tokens


def bare_seconds(rtd: RTDShards, files: list[dict]) -> tuple[float, int]:
    """(seconds, tokens) of reading ``files`` whole and decoding them with numpy."""
    start, tokens = time.perf_counter(), 0
    for entry in files:
        table = pq.read_table(f"{rtd.path}/{entry['name']}", filesystem=rtd.fs)
        tokens += len(decode_rtd_table(table, rtd.dtype).tokens)
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/tiny.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--steps", type=int, default=40, help="training steps per loop")
    parser.add_argument("--reader-rows", type=int, default=1 << 18,
                        help="at least this many rows (whole files) for the reader figures")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--world", type=int, default=8,
                        help="also time the reader as rank 0 of this many ranks")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    cfg = load_config(args.config, ["train.mode=rtd", "train.max_steps=1",
                                    "train.warmup_steps=0", *args.overrides])
    d = Dist(0, 1, 0, torch.device("cpu"))
    cfg.train.global_batch_size = cfg.train.micro_batch_size_per_rank  # one micro-batch/step
    task = RTDTask(cfg, d)
    rtd, size = task.rtd, cfg.train.micro_batch_size_per_rank

    # The reader's figures: the first files of the stream (global order) in whole.
    files, rows = [], 0
    for entry in sorted(rtd.files, key=lambda f: (f["epoch"], f["position_start"])):
        if rows >= args.reader_rows:
            break
        files.append(entry)
        rows += entry["rows"]
    read_steps = rows // size
    rank0 = Dist(0, args.world, 0, torch.device("cpu"))
    runs = [(reader_seconds(task, d, read_steps), bare_seconds(rtd, files),
             reader_seconds(task, rank0, rows // (size * args.world)))
            for _ in range(args.repeats)]  # interleaved, so a busy spell hits all alike
    read, bare, ranked = (min(r[i] for r in runs) for i in range(3))
    reader_tps, bare_tps = read[1] / read[0], bare[1] / bare[0]
    cfg.train.global_batch_size = size  # one micro-batch per step again

    steps = args.steps
    batches = [task.micro_batch(s, 0, d) for s in range(steps)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    torch.manual_seed(0)
    warm = iter(batches)
    train_seconds(task, lambda: next(warm), min(5, steps))  # first steps pay one-off costs
    start_state = copy.deepcopy(task.model.state_dict())
    in_memory_s = streamed_s = float("inf")
    for _ in range(args.repeats):  # interleaved, so a busy spell hits both alike
        task.model.load_state_dict(start_state)
        memory = iter(batches)
        in_memory_s = min(in_memory_s, train_seconds(task, lambda: next(memory), steps))
        task.model.load_state_dict(start_state)
        task.rtd = RTDShards(rtd.root)
        prefetch = Prefetcher(lambda s, m: task.micro_batch(s, m, d), 0, steps, 1)
        streamed_s = min(streamed_s, train_seconds(task, prefetch.get, steps))
        prefetch.close()

    print(f"shards {rtd.root}: {len(files)} file(s), {rows:,} rows for the reader; "
          f"micro-batch {size}; discriminator {task.model.num_parameters():,} parameters; "
          f"1 torch thread, pyarrow 1 CPU + 1 I/O thread; {os.cpu_count()} cores; "
          f"best of {args.repeats}")
    print(f"reader (RTDTask.micro_batch, {read_steps} consecutive steps): "
          f"{reader_tps:,.0f} tokens/s/core ({read[1]:,} tokens in {read[0]:.3f} s)")
    print(f"bare pq.read_table + numpy decode, same files: {bare_tps:,.0f} tokens/s/core "
          f"({bare[1]:,} tokens in {bare[0]:.3f} s)")
    print(f"reader / bare read: {reader_tps / bare_tps:.2f}x (goal >= 0.5x); reader "
          f"{reader_tps / 1e6:.2f}M tokens/s/core (goal >= 5M)")
    print(f"reader as rank 0 of {args.world} (micro-batch {size}, global batch "
          f"{size * args.world}): {ranked[1] / ranked[0]:,.0f} tokens/s/core of its own rows "
          f"({ranked[1]:,} tokens in {ranked[0]:.3f} s)")
    print(f"{'':44s} {'s/step':>8s} {'vs memory':>10s}")
    print(f"{'train on in-memory tensors':44s} {in_memory_s / steps:8.4f} {1.0:10.3f}x")
    print(f"{'train streaming the shards (Prefetcher)':44s} {streamed_s / steps:8.4f} "
          f"{streamed_s / in_memory_s:10.3f}x  (loader overhead "
          f"{streamed_s / in_memory_s - 1:+.1%}, goal <= 3%)")
    print(f"training consumes {tokens / in_memory_s:,.0f} tokens/s: the reader is "
          f"{reader_tps / (tokens / in_memory_s):.0f}x faster than needed")


if __name__ == "__main__":
    main()
