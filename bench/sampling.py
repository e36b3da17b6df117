"""Replacement sampling cost at the paper's vocabulary sizes, against the floor (a
``log_softmax`` over the same logits), the peer (``torch.multinomial``) and the aux forward
pass that makes the logits, in one run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sampling.py [--config configs/tiny.toml] \\
        [--vocab 8000,32000,128000] [--sequences N] [--repeats 5]

For each vocabulary size a random-weight aux MLM of the config's width ([aux] / [model],
data.max_seq_len) is built (trained weights would not change any of these costs), and a batch
of random full-length sequences (default: one ``generate`` batch, generate.batch_tokens /
data.max_seq_len) is masked as ``generate`` masks it (15%). Over
the same (N, V) logits at the N masked positions it times, best of ``--repeats`` after a
warm-up, one torch thread:

- ``log_softmax``: the floor: every exact sampler of softmax(logits / T) reads the row;
- ``torch.multinomial(softmax(logp / T))``: the peer (exact, but from a global generator, so
  not reproducible per (seq_id, position));
- ours, ``sample_tokens`` (keyed inverse CDF, T = 1.3);
- the aux forward pass (encoder + LM head at the masked positions) that made the logits;
- the closed-form model-free samplers (``sample_model_free``) for unigram at T = 1.3 and the
  smoothed one-hot, against the dense route (``replacement_logprobs`` + ``sample_tokens``).

Goals: ours / log_softmax <= 2.0; ours a small share of the aux forward.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from trainer.config.load import load_config  # noqa: E402
from trainer.corruption.batch import KeyedBatch
from trainer.corruption.distributions import Replacement, aux_logprobs, replacement_logprobs
from trainer.corruption.masking import mask_positions
from trainer.corruption.sampling import keyed_sample_uniform, sample_model_free, sample_tokens
from trainer.model.encoder_config import EncoderConfig
from trainer.model.heads import MLMModel  # noqa: E402
from trainer.tokenizer import NUM_SPECIAL  # noqa: E402


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(cfg, vocab: int, sequences: int, repeats: int) -> dict[str, float]:
    """Seconds of each step for one batch at vocabulary ``vocab``; "N" = masked positions."""
    cfg.tokenizer.vocab_size = vocab
    enc = EncoderConfig.aux(cfg)
    g = torch.Generator().manual_seed(vocab)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        aux = MLMModel(enc).eval()
    T = cfg.data.max_seq_len
    ids = torch.randint(NUM_SPECIAL, vocab, (sequences, T), generator=g)
    attn = torch.ones_like(ids, dtype=torch.bool)
    seq_ids = torch.arange(sequences)
    masked, selected = mask_positions(KeyedBatch(ids, seq_ids, 0, 0), cfg.corruption)
    b_idx, t_idx = selected.nonzero(as_tuple=True)
    n = len(b_idx)
    with torch.inference_mode():
        logits = aux(masked, attn, positions_mask=selected)  # (N, V)
        logp = aux_logprobs(logits)
        seq, pos = seq_ids[b_idx], t_idx
        temp = torch.full((n,), 1.3)
        original = ids[b_idx, t_idx]
        counts = torch.randint(0, 10**6, (vocab,), generator=g)
        u = keyed_sample_uniform(0, 0, seq, pos)
        weight = torch.zeros(n)
        out = {"N": n}
        out["log_softmax"] = best_seconds(lambda: logits.log_softmax(-1), repeats)
        out["multinomial"] = best_seconds(
            lambda: torch.multinomial(torch.softmax(logp / 1.3, -1), 1, generator=g), repeats)
        out["ours"] = best_seconds(lambda: sample_tokens(logp, 0, 0, seq, pos, temp), repeats)
        out["aux forward"] = best_seconds(
            lambda: aux(masked, attn, positions_mask=selected), repeats)
        for kind in ("unigram", "smoothed_onehot"):
            rep = Replacement(kind, vocab, 0.35, counts)
            out[f"{kind} closed"] = best_seconds(
                lambda r=rep: sample_model_free(r, u, original, temp, weight), repeats)
            out[f"{kind} dense"] = best_seconds(
                lambda r=rep: sample_tokens(replacement_logprobs(r, original), 0, 0, seq, pos,
                                            temp), repeats)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/tiny.toml")
    p.add_argument("--vocab", default="8000,32000,128000")
    p.add_argument("--sequences", type=int, default=0, help="0: one generate batch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    enc = EncoderConfig.aux(cfg)
    args.sequences = args.sequences or max(1, cfg.generate.batch_tokens // cfg.data.max_seq_len)
    print(f"{args.config}: aux {enc.num_layers} layer(s) x {enc.hidden_size} wide, "
          f"{args.sequences} sequences x {cfg.data.max_seq_len} tokens, masked "
          f"{cfg.corruption.mask_prob:.0%}; {args.threads} thread(s), best of {args.repeats}; "
          "ns per (masked position x vocabulary entry)")
    print("| vocab | N | log_softmax | multinomial (peer) | ours | ours / log_softmax | "
          "ours / peer | aux forward | ours / aux forward | unigram closed / dense | "
          "smoothed one-hot closed / dense |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for vocab in (int(v) for v in args.vocab.split(",")):
        m = measure(cfg, vocab, args.sequences, args.repeats)
        per = 1e9 / (m["N"] * vocab)
        print(f"| {vocab:,} | {m['N']:,} | {m['log_softmax'] * per:.2f} | "
              f"{m['multinomial'] * per:.2f} | {m['ours'] * per:.2f} | "
              f"{m['ours'] / m['log_softmax']:.2f}x | {m['ours'] / m['multinomial']:.2f}x | "
              f"{m['aux forward'] * per:.2f} | {m['ours'] / m['aux forward']:.2f}x | "
              f"{m['unigram closed'] / m['unigram dense']:.3f}x | "
              f"{m['smoothed_onehot closed'] / m['smoothed_onehot dense']:.4f}x |")


if __name__ == "__main__":
    main()
