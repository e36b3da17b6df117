"""Benchmark of the offline ``rtd`` mode's data path, in one run.

    make demo                                   # the RTD shards it reads
    .venv/bin/python bench/rtd.py [--config configs/tiny.toml] [--steps 40]

Prints:
1. seconds per step training the discriminator on batches streamed from the shards (the
   trainer's background Prefetcher over RTDTask.micro_batch) vs the same loop over the same
   batches already in memory as tensors: the loader overhead;
2. the reader alone (RTDTask.micro_batch: read row groups, decode, pad) in tokens/s on one
   core vs the tokens/s the training step consumes.
Both loops are identical (forward, backward, clip, AdamW step) apart from the batch source.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from trainer.config import load_config  # noqa: E402
from trainer.data import Prefetcher  # noqa: E402
from trainer.distributed import Dist  # noqa: E402
from trainer.optim import build_optimizer  # noqa: E402
from trainer.rtd import RTDTask  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/tiny.toml")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    cfg = load_config(args.config, ["train.mode=rtd", "train.max_steps=1", "train.warmup_steps=0"])
    d = Dist(0, 1, 0, torch.device("cpu"))
    cfg.train.global_batch_size = cfg.train.micro_batch_size_per_rank  # one micro-batch/step
    task = RTDTask(cfg, d)
    steps = args.steps

    start = time.perf_counter()
    batches = [task.micro_batch(s, 0, d) for s in range(steps)]
    read_s = time.perf_counter() - start
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)

    torch.manual_seed(0)
    warm = iter(batches)
    train_seconds(task, lambda: next(warm), min(5, steps))  # first steps pay one-off costs
    memory = iter(batches)
    in_memory_s = train_seconds(task, lambda: next(memory), steps)
    task.model = type(task.model)(task.model.encoder.cfg)  # fresh weights, same shapes
    prefetch = Prefetcher(lambda s, m: task.micro_batch(s, m, d), 0, steps, 1)
    streamed_s = train_seconds(task, prefetch.get, steps)
    prefetch.close()

    print(f"shards {task.rtd.root}: {steps} steps of {cfg.train.micro_batch_size_per_rank} "
          f"sequences ({tokens:,} tokens), discriminator {task.model.num_parameters():,} "
          f"parameters, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores")
    print(f"{'':44s} {'s/step':>8s} {'vs memory':>10s}")
    print(f"{'train on in-memory tensors':44s} {in_memory_s / steps:8.4f} {1.0:10.3f}x")
    print(f"{'train streaming the shards (Prefetcher)':44s} {streamed_s / steps:8.4f} "
          f"{streamed_s / in_memory_s:10.3f}x  (loader overhead "
          f"{streamed_s / in_memory_s - 1:+.1%})")
    print(f"reader alone, 1 core: {tokens / read_s:,.0f} tokens/s; training consumes "
          f"{tokens / in_memory_s:,.0f} tokens/s -> reader is "
          f"{(tokens / read_s) / (tokens / in_memory_s):.1f}x faster than needed")


if __name__ == "__main__":
    main()
