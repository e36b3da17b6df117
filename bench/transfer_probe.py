"""Linear probe of a frozen encoder: what a task can read off its states without fine-tuning.

Features per example (the encoder in eval mode, no dropout): the [CLS] state and the mean of
the real tokens' states of the last layer, and the mean of the word embeddings. Each feature
set is standardised with the training rows' mean and spread, then a multinomial logistic
regression with an L2 penalty is fitted on the training rows (full-batch L-BFGS, float64,
deterministic) and scored on dev. A random-initialised encoder of the same shape is the peer:
its features are random projections of the words, which already separate topics.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from trainer.model.encoder import Encoder
from trainer.tools.finetune.data import EncodedData
from trainer.tools.finetune.model import pool

L2 = 1e-3
"""Penalty on the probe's weights (mean loss + L2 * |W|^2); the features are standardised."""
FEATURES = ("cls", "mean", "embeddings")


@torch.no_grad()
def features(encoder: Encoder, data: EncodedData, batch_size: int = 256
             ) -> dict[str, np.ndarray]:
    """{"cls", "mean", "embeddings"}: (N, H) float64 features of every example, in order."""
    encoder.eval()
    out: dict[str, list[np.ndarray]] = {k: [] for k in FEATURES}
    for input_ids, mask, _ in data.batches(np.arange(len(data)), batch_size):
        hidden = encoder(input_ids, mask)  # (B, T, H)
        out["cls"].append(pool(hidden, mask, "cls").double().numpy())
        out["mean"].append(pool(hidden, mask, "mean").double().numpy())
        words = encoder.word_emb(input_ids)  # (B, T, H)
        out["embeddings"].append(pool(words, mask, "mean").double().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, dev_x: np.ndarray,
                   dev_y: np.ndarray, num_classes: int, l2: float = L2) -> float:
    """Dev accuracy of an L2-penalised multinomial logistic regression fitted on train."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-8
    x = torch.from_numpy((train_x - mu) / sd)  # (N, H)
    y = torch.from_numpy(train_y).long()
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, tolerance_grad=1e-9,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (torch.from_numpy((dev_x - mu) / sd) @ w + b).argmax(-1).numpy()
    return float((pred == dev_y).mean())


def probe(encoder: Encoder, train: EncodedData, dev: EncodedData, num_classes: int
          ) -> dict[str, float]:
    """{"cls", "mean", "embeddings"}: the probe's dev accuracy on each feature set."""
    f_train, f_dev = features(encoder, train), features(encoder, dev)
    y_train, y_dev = np.asarray(train.labels), np.asarray(dev.labels)
    return {k: probe_accuracy(f_train[k], y_train, f_dev[k], y_dev, num_classes)
            for k in FEATURES}


def run(argv: list[str] | None = None) -> dict:
    """``python -m bench.transfer_probe --checkpoint C --task T.toml --train F --dev F --json
    OUT [--random-init]``: probe one encoder (or, with --random-init, a random-initialised
    encoder of the checkpoint's shape, seed 0) on one task; write the accuracies to OUT."""
    import argparse
    import json

    from trainer.atomic import write_text_atomic
    from trainer.tools.finetune.config import load_finetune_config
    from trainer.tools.finetune.inputs import TaskFiles, effective_max_seq_len, open_pretrained

    p = argparse.ArgumentParser(prog="python -m bench.transfer_probe", description=run.__doc__)
    for flag in ("--checkpoint", "--task", "--train", "--dev", "--json"):
        p.add_argument(flag, required=True)
    p.add_argument("--random-init", action="store_true")
    args = p.parse_args(argv)
    spec = load_finetune_config(args.task)
    pre = open_pretrained(args.checkpoint, None, from_scratch=False)
    encoder = pre.encoder
    if args.random_init:
        torch.manual_seed(0)
        encoder = Encoder(pre.encoder_cfg)
    data = TaskFiles(spec.task, args.train, args.dev, None).encoded(
        pre.sp, effective_max_seq_len(spec.finetune, pre.encoder_cfg))
    result = probe(encoder, data.train, data.dev, len(data.label_names))
    result["majority"] = float(np.bincount(data.dev.labels).max() / len(data.dev))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    write_text_atomic(args.json, json.dumps(result, indent=1) + "\n")
    print(" ".join(f"{k} {v:.4f}" for k, v in result.items()), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    from trainer.cli import main_guard

    return main_guard(run, argv)


if __name__ == "__main__":
    sys.exit(main())
