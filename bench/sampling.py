"""Replacement sampling cost per masked position: ``trainer.corruption.sample_tokens`` (keyed
inverse CDF, one keyed draw per position) vs torch's own sampler on the same distribution.

    .venv/bin/python bench/sampling.py [--rows 448] [--vocab 8000,32000,128000] [--threads 1]

Prints, per vocabulary size, ns per (row x vocabulary entry) for: ``log_softmax`` alone (the
floor any exact sampler pays), ``torch.multinomial(softmax(logp / T))`` (the peer: exact but
drawn from torch's global generator, so not reproducible per (seq_id, position)), and ours at
T = 1.3; ours / peer as a ratio. 448 rows = a demo batch of 64 sequences x ~7 masked
positions. Best of --repeats after one warm-up.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from trainer.corruption import sample_tokens  # noqa: E402


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=448)
    p.add_argument("--vocab", default="8000,32000,128000")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    print(f"rows {args.rows}, {args.threads} thread(s), best of {args.repeats}; ns per element")
    print("| vocab | log_softmax | torch.multinomial (peer) | ours: sample_tokens | ours / peer |")
    print("|---:|---:|---:|---:|---:|")
    for V in (int(v) for v in args.vocab.split(",")):
        logp = (torch.randn(args.rows, V, generator=g) * 3).log_softmax(-1)
        seq, pos = torch.arange(args.rows) // 7, torch.arange(args.rows) % 7
        n = args.rows * V
        floor = best_seconds(lambda: logp.log_softmax(-1), args.repeats)
        peer = best_seconds(
            lambda: torch.multinomial(torch.softmax(logp / 1.3, -1), 1, generator=g),
            args.repeats)
        ours = best_seconds(lambda: sample_tokens(logp, 0, 0, seq, pos, 1.3), args.repeats)
        print(f"| {V:,} | {floor / n * 1e9:.2f} | {peer / n * 1e9:.2f} | "
              f"{ours / n * 1e9:.2f} | {ours / peer:.2f}x |")


if __name__ == "__main__":
    main()
