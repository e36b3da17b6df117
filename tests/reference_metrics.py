"""Plain-numpy references for the metrics the project reports, written from their definitions
(fast-electra evaluate's docstring, trainer.modes.rtd.ordinary_mask, trainer.modes.mlm.MLMTask),
sharing no code with trainer.modes or trainer.tools: the tests compare what the trainer,
fast-electra evaluate and pipeline.fair_eval report against these.

Each reference takes keyword switches that reproduce a plausible bug (a shifted decision
threshold, padding or specials counted, the wrong positive class, labels read from the
corrupted input, no smoothing of the unigram baseline). The tests run those variants as
negative controls: a variant must disagree with the reported figures, which shows that the
comparison with the correct reference has the power to catch that bug."""

from __future__ import annotations

import numpy as np

# The special ids of trainer.tokenizer, spelt out: [PAD] [UNK] [CLS] [SEP] [MASK].
SPECIAL_IDS = (0, 1, 2, 3, 4)
PAD = 0


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def rank_auc(x: np.ndarray, y: np.ndarray) -> float | None:
    """Mann-Whitney ROC-AUC: (rank sum of the positives - n1 (n1 + 1) / 2) / (n1 n0), tied
    values sharing their average rank. None without both classes."""
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return None
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse = np.unique(x, return_inverse=True)
    ranks = (np.bincount(inverse, weights=ranks) / np.bincount(inverse))[inverse]
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _binary(x: np.ndarray, y: np.ndarray, threshold: float, positive: int) -> dict:
    """Accuracy, P/R/F1 of class ``positive``, mean BCE, AUC of logits x against labels y."""
    pred = x > threshold  # predicted "replaced"
    gold = y == 1
    if positive == 0:
        pred, gold = ~pred, ~gold
    tp = float((pred & gold).sum())
    fp = float((pred & ~gold).sum())
    fn = float((~pred & gold).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    bce = -(y * _log_sigmoid(x) + (1 - y) * _log_sigmoid(-x))
    return {"accuracy": float((pred == gold).mean()), "precision": precision,
            "recall": recall, "f1": f1, "loss": float(bce.mean()), "auc": rank_auc(x, y)}


def rtd_reference(batches: list[dict], *, threshold: float = 0.0, count_padding: bool = False,
                  count_specials: bool = False, positive: int = 1) -> dict:
    """The RTD figures of fast-electra evaluate (same key names) over ``batches``: dicts of numpy
    ``logits``, ``labels``, ``input_ids`` (B, T, right-padded) and ``lengths`` (B,).

    Headline ``rtd_*``: the ordinary tokens, i.e. within each row's length and not a special
    id; a token is predicted replaced when its logit > 0 (probability > 1/2); precision,
    recall and F1 are those of the replaced class; the loss is the mean binary cross-entropy
    of sigmoid(logit). ``rtd_all_*``: every token within the rows' lengths. ``tokens`` and
    ``all_tokens`` count both sets; ``replaced_fraction`` is the share of ordinary tokens
    labelled 1; the constant guess is the majority class (accuracy) and the replaced fraction
    as probability (loss = its binary entropy)."""
    xs, ys, xs_all, ys_all = [], [], [], []
    for b in batches:
        width = b["input_ids"].shape[1]
        real = np.arange(width)[None, :] < np.asarray(b["lengths"])[:, None]
        if count_padding:
            real = np.ones_like(real)
        ordinary = real & ~np.isin(b["input_ids"], SPECIAL_IDS)
        if count_specials:
            ordinary = real
        logits = np.asarray(b["logits"], np.float64)
        labels = np.asarray(b["labels"], np.float64)
        xs.append(logits[ordinary])
        ys.append(labels[ordinary])
        xs_all.append(logits[real])
        ys_all.append(labels[real])
    x, y = np.concatenate(xs), np.concatenate(ys)
    x_all, y_all = np.concatenate(xs_all), np.concatenate(ys_all)
    head = _binary(x, y, threshold, positive)
    every = _binary(x_all, y_all, threshold, positive)
    frac = float(y.mean())
    constant = 0.0 if frac in (0.0, 1.0) else \
        float(-(frac * np.log(frac) + (1 - frac) * np.log(1 - frac)))
    return {"tokens": len(y), "all_tokens": len(y_all),
            **{f"rtd_{k}": v for k, v in head.items()},
            **{f"rtd_all_{k}": every[k] for k in ("accuracy", "loss", "auc")},
            "replaced_fraction": frac, "majority_accuracy": max(frac, 1 - frac),
            "constant_loss": constant}


def mlm_reference(batches: list[dict], unigram_counts: np.ndarray, *,
                  count_unselected: bool = False, labels_from_input: bool = False,
                  smooth_unigram: bool = True) -> dict:
    """The held-out MLM figures of fast-electra evaluate / MLMTask (same key names) over
    ``batches``: dicts of numpy ``logits`` (B, T, V) of the model on the masked input,
    ``input_ids`` (the masked input), ``original_ids``, ``selected`` (B, T) bool.

    Counted: the selected positions. ``mlm_loss``: mean cross-entropy of softmax(logits)
    against the original token; ``mlm_accuracy``: the share whose argmax is the original
    token; ``unigram_loss``: the mean -log p(original) under the corpus unigram with the
    special ids at probability 0 and every ordinary id's count raised by 1 (an unseen token
    stays finite); ``masked_tokens``: how many were counted."""
    counts = np.asarray(unigram_counts, np.float64).copy()
    counts[list(SPECIAL_IDS)] = 0
    if smooth_unigram:
        counts[len(SPECIAL_IDS):] += 1
    with np.errstate(divide="ignore"):
        unigram_logp = np.log(counts / counts.sum())
    nll, correct, uni, n = 0.0, 0, 0.0, 0
    for b in batches:
        where = b["selected"] if not count_unselected else b["original_ids"] != PAD
        logits = np.asarray(b["logits"], np.float64)[where]  # (N, V)
        gold = (b["input_ids"] if labels_from_input else b["original_ids"])[where]  # (N,)
        top = logits.max(-1, keepdims=True)
        log_z = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[:, 0]
        nll += float((log_z - logits[np.arange(len(gold)), gold]).sum())
        correct += int((logits.argmax(-1) == gold).sum())
        uni -= float(unigram_logp[gold].sum())
        n += len(gold)
    return {"masked_tokens": n, "mlm_loss": nll / n, "mlm_accuracy": correct / n,
            "unigram_loss": uni / n}


def disagreeing(reported: dict, variant: dict, keys, rel: float = 1e-5) -> list[str]:
    """The keys among ``keys`` on which a (deliberately wrong) variant reference differs from
    the reported figures by more than ``rel`` (relative; the tolerance the tests compare the
    correct reference with): a negative control passes when this is not empty."""
    out = []
    for k in keys:
        a, b = reported[k], variant[k]
        if a is None or b is None:
            if (a is None) != (b is None):
                out.append(k)
        elif abs(a - b) > max(rel * max(abs(a), abs(b)), 1e-9):
            out.append(k)
    return out
