"""Benchmark of ``pipeline.generate`` against a bare torch loop, in one run.

    make demo                                   # the corpus and aux checkpoint it needs
    OMP_NUM_THREADS=1 .venv/bin/python bench/generate.py [--config configs/tiny.toml]

Prints, for one epoch of the config's corpus with its aux checkpoint:
1. sequences/s of the Beam job (local runner, 1 and 2 worker processes, one torch thread
   each) vs a bare loop over the same sequences doing the same masking + aux inference +
   sampling (``trainer.corruption.corrupt_batch``, one thread, same batch size), as a ratio;
2. the speed-up of the masked-only LM head (vocabulary projection at the masked positions
   only) over the full-vocabulary head, on the same batches;
3. bytes per token of the written shards vs raw int32 token arrays.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.generate import run  # noqa: E402
from trainer.config import load_config  # noqa: E402
from trainer.corruption import corrupt_batch, mask_positions  # noqa: E402
from trainer.data import CorpusTokens  # noqa: E402
from trainer.pretrained import load_generator  # noqa: E402
from trainer.shards import CorpusShards  # noqa: E402


def beam_seconds(config: str, rtd_dir: str, workers: int) -> tuple[float, dict]:
    argv = ["--config", config, "--set", "generate.epochs=1", "--set",
            f"generate.rtd_dir={rtd_dir}", "--set", "generate.device=cpu",
            f"--direct_num_workers={workers}"]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        manifest = run(argv)
    return time.perf_counter() - start, manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/tiny.toml")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # Beam workers inherit it
    torch.set_num_threads(1)
    cfg = load_config(args.config)
    corpus = CorpusShards(cfg.data.corpus_dir)
    tokens = CorpusTokens(corpus)
    n = len(tokens)

    with tempfile.TemporaryDirectory() as tmp:
        beam = {w: beam_seconds(args.config, os.path.join(tmp, f"rtd{w}"), w) for w in (1, 2)}
    manifest = beam[1][1]
    batch_rows = manifest["layout"]["batch_rows"]

    aux = load_generator(cfg.generate.aux_checkpoint)
    counts = torch.from_numpy(corpus.unigram_counts())
    order = np.arange(n)
    start = time.perf_counter()
    for i in range(0, n, batch_rows):
        seq_ids = order[i:i + batch_rows]
        ids, attn = tokens.batch(seq_ids)
        u = torch.from_numpy(seq_ids / n).float()
        corrupt_batch(ids, attn, torch.from_numpy(seq_ids), 0, u, cfg.corruption,
                      cfg.generate.seed, aux=aux, unigram_counts=counts)
    loop_s = time.perf_counter() - start

    # LM head: masked positions only vs the whole (B, T, V) then gathered.
    heads = {"masked-only": 0.0, "full vocabulary": 0.0}
    with torch.inference_mode():
        for i in range(0, min(n, 40 * batch_rows), batch_rows):
            seq_ids = order[i:i + batch_rows]
            ids, attn = tokens.batch(seq_ids)
            masked, selected = mask_positions(ids, torch.from_numpy(seq_ids), 0, 0,
                                              cfg.corruption.mask_prob,
                                              cfg.corruption.mask_token_prob)
            hidden = aux.encoder(masked, attn)
            t0 = time.perf_counter()
            aux.head(hidden, selected)
            t1 = time.perf_counter()
            aux.head(hidden)[selected]
            heads["masked-only"] += t1 - t0
            heads["full vocabulary"] += time.perf_counter() - t1

    print(f"corpus {cfg.data.corpus_dir}: {n:,} sequences, vocab {corpus.vocab_size}, "
          f"batches of {batch_rows} sequences, aux {cfg.generate.aux_checkpoint}; "
          f"{os.cpu_count()} cores, 1 torch thread per process")
    print(f"{'':52s} {'seconds':>8s} {'seq/s':>9s} {'vs loop':>8s}")
    print(f"{'bare torch loop (mask + aux + sample), 1 process':52s} {loop_s:8.2f} "
          f"{n / loop_s:9.1f} {1.0:8.2f}x")
    for w, (secs, _) in beam.items():
        print(f"{f'pipeline.generate, LocalRunner, {w} worker(s)':52s} {secs:8.2f} "
              f"{n / secs:9.1f} {loop_s / secs:8.2f}x")
    print(f"LM head: masked-only {heads['masked-only']:.3f} s vs full vocabulary "
          f"{heads['full vocabulary']:.3f} s -> "
          f"{heads['full vocabulary'] / heads['masked-only']:.2f}x faster")
    print(f"shards: {manifest['shard_bytes'] / manifest['num_tokens']:.3f} bytes/token vs 4.000 "
          f"for raw int32 arrays ({4 * manifest['num_tokens'] / manifest['shard_bytes']:.2f}x "
          "smaller)")


if __name__ == "__main__":
    main()
