"""The headline RTD metrics count ordinary tokens only: the project's metric path (rtd_counts +
rtd_metrics, and trainer.evaluate's RTDAccumulator with its ROC-AUC and loss) against a plain
numpy recomputation over the positions that are real and not [CLS]/[SEP]/[UNK]/... (written
here, independent of the project's helpers), with negative controls: the all-token figures
differ on the same data, and a tampered label moves the result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.evaluate import RTDAccumulator
from trainer.joint import joint_metrics
from trainer.rtd import ordinary_mask, rtd_counts, rtd_metrics
from trainer.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID, UNK_ID

pytestmark = pytest.mark.usefixtures("one_thread")

SPECIALS = [PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID]
V, B, T = 300, 24, 48


def make_batch(seed: int, tied: bool) -> dict[str, torch.Tensor]:
    """[CLS] tokens... [SEP] [PAD]...; a few [UNK] inside; labels ~15% on ordinary tokens, 0
    on specials, garbage on padding (must never count). The specials get confident negative
    logits, as a trained discriminator gives them, so counting them would inflate accuracy."""
    rng = np.random.default_rng(seed)
    ids = np.full((B, T), PAD_ID, np.int64)
    labels = rng.integers(0, 2, (B, T)).astype(np.float32)  # garbage where padded
    for i in range(B):
        n = int(rng.integers(3, T))  # every row padded
        ids[i, :n] = rng.integers(len(SPECIALS), V, n)
        ids[i, :n][rng.random(n) < 0.03] = UNK_ID
        ids[i, 0], ids[i, n - 1] = CLS_ID, SEP_ID
        labels[i, :n] = (rng.random(n) < 0.15) & (ids[i, :n] >= len(SPECIALS))
    logits = rng.normal(size=(B, T)) * 1.5 + labels * 1.2
    special = np.isin(ids, SPECIALS)
    logits[special] = -6.0 + rng.normal(size=int(special.sum())) * 0.5
    if tied:  # many exact ties between and within the classes
        logits = np.round(logits * 2) / 2
    ids_t = torch.from_numpy(ids)
    return {"input_ids": ids_t, "attention_mask": ids_t != PAD_ID,
            "labels": torch.from_numpy(labels),
            "logits": torch.from_numpy(logits.astype(np.float32)),
            "temperature": torch.ones(B)}


def rank_auc(x: np.ndarray, y: np.ndarray) -> float:
    """Mann-Whitney: (rank sum of positives - n1 (n1 + 1) / 2) / (n1 n0), average ranks for
    ties."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse = np.unique(x, return_inverse=True)
    ranks = (np.bincount(inverse, weights=ranks) / np.bincount(inverse))[inverse]
    n1 = int(y.sum())
    n0 = len(y) - n1
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def reference(b: dict[str, torch.Tensor], ordinary_only: bool) -> dict[str, float]:
    ids = b["input_ids"].numpy()
    keep = ~np.isin(ids, SPECIALS) if ordinary_only else ids != PAD_ID
    x = b["logits"].numpy()[keep].astype(np.float64)
    y = b["labels"].numpy()[keep].astype(np.float64)
    pred = x > 0
    tp, fp = float((pred & (y == 1)).sum()), float((pred & (y == 0)).sum())
    fn = float((~pred & (y == 1)).sum())
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    bce = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
    frac = y.mean()
    return {"tokens": len(y), "accuracy": float((pred == (y == 1)).mean()),
            "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall), "loss": float(bce.mean()),
            "auc": rank_auc(x, y), "replaced_fraction": float(frac),
            "majority": max(frac, 1 - frac),
            "constant_loss": float(-(frac * np.log(frac) + (1 - frac) * np.log(1 - frac)))}


def counts_path(b: dict[str, torch.Tensor], prefix: str = "") -> dict[str, float]:
    sums = rtd_counts(b["logits"], b["labels"], b["input_ids"], b["attention_mask"])
    return rtd_metrics({k: float(v) for k, v in sums.items()}, prefix)


def accumulator_path(b: dict[str, torch.Tensor]) -> dict:
    """As trainer.evaluate.evaluate_rtd: batches added, epochs merged."""
    total = RTDAccumulator(torch.device("cpu"))
    for lo, hi in ((0, 7), (7, 15), (15, B)):
        part = RTDAccumulator(torch.device("cpu"))
        part.add(b["logits"][lo:hi], {k: v[lo:hi] for k, v in b.items()})
        total.merge(part)
    return total.metrics()


def check_headline(b: dict[str, torch.Tensor]) -> None:
    ref, ref_all = reference(b, True), reference(b, False)
    m, acc = counts_path(b), accumulator_path(b)
    for key in ("accuracy", "precision", "recall", "f1", "loss"):
        assert m[f"rtd_{key}"] == pytest.approx(ref[key], abs=1e-6), key
        assert acc[f"rtd_{key}"] == pytest.approx(ref[key], abs=1e-6), key
    assert m["replaced_fraction"] == pytest.approx(ref["replaced_fraction"], abs=1e-12)
    assert acc["rtd_auc"] == pytest.approx(ref["auc"], abs=1e-6)
    assert acc["rtd_auc_margin"] == 0.0
    assert acc["tokens"] == ref["tokens"] and acc["all_tokens"] == ref_all["tokens"]
    assert acc["majority_accuracy"] == pytest.approx(ref["majority"], abs=1e-12)
    assert acc["constant_loss"] == pytest.approx(ref["constant_loss"], abs=1e-9)
    # The all-token figures, kept under their own names.
    for key in ("accuracy", "loss"):
        assert m[f"rtd_all_{key}"] == pytest.approx(ref_all[key], abs=1e-6), key
        assert acc[f"rtd_all_{key}"] == pytest.approx(ref_all[key], abs=1e-6), key
    assert acc["rtd_all_auc"] == pytest.approx(ref_all["auc"], abs=1e-6)
    # The same sums give the same metrics under the train/eval (and joint) prefixes.
    e = counts_path(b, "eval_")
    assert all(e[f"eval_{k}"] == v for k, v in m.items())
    sums = {k: float(v) for k, v in rtd_counts(b["logits"], b["labels"], b["input_ids"],
                                               b["attention_mask"]).items()}
    j = joint_metrics({**sums, "gen_correct": 1.0, "gen_count": 2.0}, "eval_")
    assert all(j[k] == v for k, v in e.items())


@pytest.mark.parametrize("tied", [False, True])
def test_headline_metrics_count_ordinary_tokens_only(tied):
    b = make_batch(0, tied)
    check_headline(b)

    # Negative control: over all real tokens the figures differ (the specials are easy
    # negatives), so a regression to all tokens would fail the checks above.
    ref, ref_all = reference(b, True), reference(b, False)
    m, acc = counts_path(b), accumulator_path(b)
    for key in ("accuracy", "loss", "auc", "replaced_fraction"):
        assert abs(ref[key] - ref_all[key]) > 1e-3, key
    assert m["rtd_accuracy"] < m["rtd_all_accuracy"]  # the specials flatter accuracy
    assert abs(acc["rtd_auc"] - ref_all["auc"]) > 1e-3
    assert abs(acc["rtd_loss"] - ref_all["loss"]) > 1e-3


def test_the_mask_and_tampered_labels():
    b = make_batch(1, False)
    ids, real = b["input_ids"], b["attention_mask"]
    assert torch.equal(ordinary_mask(ids, real),
                       torch.from_numpy(~np.isin(ids.numpy(), SPECIALS)))
    base, base_acc = counts_path(b), accumulator_path(b)

    # An ordinary token's label: the headline moves, and still matches the reference.
    i, j = 3, 1
    assert int(ids[i, j]) not in SPECIALS
    tampered = {**b, "labels": b["labels"].clone()}
    tampered["labels"][i, j] = 1 - tampered["labels"][i, j]
    check_headline(tampered)
    m = counts_path(tampered)
    assert m["rtd_accuracy"] != base["rtd_accuracy"] and m["rtd_loss"] != base["rtd_loss"]
    assert accumulator_path(tampered)["rtd_auc"] != base_acc["rtd_auc"]

    # A [CLS] label: only the rtd_all_* figures see it.
    cls = {**b, "labels": b["labels"].clone()}
    cls["labels"][i, 0] = 1.0
    m, acc = counts_path(cls), accumulator_path(cls)
    assert all(m[k] == base[k] for k in base if not k.startswith("rtd_all_"))
    assert acc["rtd_auc"] == base_acc["rtd_auc"]
    assert m["rtd_all_accuracy"] != base["rtd_all_accuracy"]
    assert acc["rtd_all_auc"] != base_acc["rtd_all_auc"]

    # A padded position: nothing sees it.
    pad = {**b, "labels": b["labels"].clone()}
    row = int(torch.nonzero(~real.all(1))[0])
    col = int(real[row].sum())
    pad["labels"][row, col] = 1 - pad["labels"][row, col]
    assert counts_path(pad) == base
