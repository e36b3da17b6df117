"""How much of a batch is padding, and what trimming it saves.

    python bench/padding.py --config configs/tiny.toml              # the demo's RTD shards
    python bench/padding.py --config configs/tiny.toml --corpus \\
        --set data.corpus_dir=DIR --set data.max_seq_len=512 --steps 0   # a prepared corpus

Part 1 reads the sequence lengths of the micro-batches a run trains on, in training order
(RTD shards: consecutive positions of each epoch; ``--corpus``: the mlm/electra order of
trainer.data.corpus_tokens), and prints, for three ways of padding a batch (to
data.max_seq_len, to the batch's longest sequence as the trainer does, to the bucket above it
as train.compile does with train.compile_pad_multiple), the share of token positions that
are padding and the share of attention FLOPs spent on padding (the score and value matmuls
cost T^2 per sequence; a real sequence of length L needs L^2 of its T^2).

Part 2 (``--steps`` > 0, RTD shards) trains the config's discriminator for a few steps; each
step runs the forward and backward of its micro-batch twice on the same weights, padded to
data.max_seq_len and as the trainer pads it (to the longest), alternating which goes first,
and prints each one's real tokens/s (the optimizer step counted for both), their ratio, and
the largest loss difference between the two (padding is masked: ~0, rounding only). Dropout
is off (model.dropout = model.attention_dropout = 0) so the two see the same network.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainer.config.load import load_config  # noqa: E402
from trainer.data.corpus_shards import CorpusShards  # noqa: E402
from trainer.data.corpus_tokens import CorpusTokens, TrainOrder  # noqa: E402
from trainer.data.padding import bucket_width, pad_batch  # noqa: E402
from trainer.data.rtd_shards import RTDShards  # noqa: E402
from trainer.distributed import Dist  # noqa: E402
from trainer.modes.rtd import RTDTask  # noqa: E402
from trainer.optim import build_optimizer  # noqa: E402

CPU = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def rtd_batches(root: str, batch: int, limit: int) -> list[np.ndarray]:
    """Lengths of the first ``limit`` micro-batches of ``batch`` rows, in position order."""
    rtd = RTDShards(root)
    out = []
    for epoch in range(rtd.num_epochs):
        for start in range(0, rtd.rows_per_epoch - batch + 1, batch):
            out.append(rtd.read_range(epoch, start, start + batch).lengths.copy())
            if len(out) == limit:
                return out
    return out


def corpus_batches(cfg, batch: int, limit: int) -> list[np.ndarray]:
    tokens = CorpusTokens(CorpusShards(cfg.data.corpus_dir), cfg.data.cache_dir)
    train_ids, _ = tokens.split(cfg.train.holdout_fraction)
    order = TrainOrder(train_ids, batch, cfg.train.seed)
    lengths = np.diff(np.asarray(tokens.offsets))
    limit = min(limit, len(train_ids) // batch)
    return [lengths[order.micro_batch(s, 0, 0, 1, batch)[0]] for s in range(limit)]


def shares(batches: list[np.ndarray], width) -> tuple[float, float]:
    """(padding share of positions, padding share of attention FLOPs) when each batch is
    padded to ``width(longest)``."""
    real = sum(float(b.sum()) for b in batches)
    real2 = sum(float((b.astype(np.float64) ** 2).sum()) for b in batches)
    pos = sum(len(b) * float(width(int(b.max()))) for b in batches)
    att = sum(len(b) * float(width(int(b.max()))) ** 2 for b in batches)
    return 1 - real / pos, 1 - real2 / att


def report_padding(batches: list[np.ndarray], max_len: int, multiple: int) -> float:
    lengths = np.concatenate(batches)
    print(f"{len(batches)} micro-batches of {len(batches[0])}, {len(lengths):,} sequences: "
          f"length mean {lengths.mean():.1f}, median {np.median(lengths):.0f}, "
          f"max {lengths.max()} (data.max_seq_len {max_len}); "
          f"{(lengths == max_len).mean():.1%} of sequences are full")
    policies = [("pad to max_seq_len", lambda longest: max_len),
                ("pad to batch longest", lambda longest: longest),
                (f"pad to bucket (multiple {multiple})",
                 lambda longest: bucket_width(longest, multiple, max_len))]
    print(f"{'policy':<32} {'padding positions':>18} {'padding attn FLOPs':>19}")
    out = {}
    for name, width in policies:
        pos, att = shares(batches, width)
        out[name] = att
        print(f"{name:<32} {pos:>18.1%} {att:>19.1%}")
    return out["pad to max_seq_len"]


def speed(cfg, steps: int, warmup: int) -> None:
    """Each step: forward + backward of the micro-batch padded to data.max_seq_len, then of
    the same micro-batch as the trainer pads it, on the same weights; the optimizer steps on
    the second's gradients. The optimizer step's time counts for both."""
    task = RTDTask(cfg, CPU)
    t, model = cfg.train, task.model
    opt = build_optimizer(model, t, t.lr)
    names = ("pad to max_seq_len", "trim to longest")
    seconds = dict.fromkeys(names, 0.0)
    tokens, max_diff = 0, 0.0
    for step in range(warmup + steps):
        batch = task.micro_batch(step, 0, CPU)
        losses = {}
        # Alternating which variant goes first: neither always runs on a warm cache.
        for name in names[::1 if step % 2 else -1]:
            b = pad_batch(batch, cfg.data.max_seq_len) if name == names[0] else batch
            opt.zero_grad(set_to_none=True)
            start = time.perf_counter()
            loss, _ = task.loss(model, b)
            loss.backward()
            if step >= warmup:
                seconds[name] += time.perf_counter() - start
            losses[name] = loss.item()
            if name == names[1]:
                grads = [p.grad for p in model.parameters()]
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g
        start = time.perf_counter()
        opt.step()
        if step >= warmup:
            for name in names:
                seconds[name] += time.perf_counter() - start
            tokens += int(batch["attention_mask"].sum())
        max_diff = max(max_diff, abs(losses[names[0]] - losses[names[1]]))
    rate = {k: tokens / s for k, s in seconds.items()}
    print(f"\n{steps} training steps (after {warmup} warm-up) of micro-batch "
          f"{t.micro_batch_size_per_rank}, {torch.get_num_threads()} CPU thread(s), "
          f"{model.num_parameters():,}-parameter discriminator:")
    for name, r in rate.items():
        print(f"  {name:<20} {r:>10,.0f} real tokens/s")
    print(f"  speed-up of trimming: {rate[names[1]] / rate[names[0]]:.2f}x; largest loss "
          f"difference between the two on the same weights: {max_diff:.1e}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/tiny.toml")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--corpus", action="store_true",
                   help="measure the corpus (mlm/electra order), not the RTD shards")
    p.add_argument("--batches", type=int, default=1000, help="micro-batches measured")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per variant")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    # No dropout: the two copies would draw different masks (the draws follow the padded
    # shape), and their losses could not be compared. --set may turn it back on.
    cfg = load_config(a.config, ["model.dropout=0", "model.attention_dropout=0", *a.overrides])
    batch = cfg.train.micro_batch_size_per_rank
    if a.corpus:
        print(f"corpus {cfg.data.corpus_dir}")
        batches = corpus_batches(cfg, batch, a.batches)
    else:
        root = cfg.train.rtd_dir or cfg.generate.rtd_dir
        print(f"RTD shards {root}")
        batches = rtd_batches(root, batch, a.batches)
    waste = report_padding(batches, cfg.data.max_seq_len, cfg.train.compile_pad_multiple)
    print(f"padding to max_seq_len would spend {waste:.1%} of attention FLOPs on padding "
          f"({'above' if waste > 0.2 else 'below'} 20%); the trainer pads to the longest")
    if a.steps and not a.corpus:
        speed(cfg, a.steps, a.warmup)


if __name__ == "__main__":
    main()
