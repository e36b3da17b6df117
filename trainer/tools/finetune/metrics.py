"""Fine-tuning dev / test metrics in numpy, all higher-is-better: accuracy, F1 (binary, or macro
over classes), Matthews correlation, Pearson and Spearman; ``score`` picks a task's set.
"""

from __future__ import annotations

import math

import numpy as np

from trainer.tools.finetune.config import (
    TaskConfig,
)


def confusion(pred: np.ndarray, gold: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows = gold class, columns = predicted class."""
    return np.bincount(gold * num_classes + pred, minlength=num_classes ** 2).reshape(
        num_classes, num_classes).astype(np.float64)


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(pred == gold))


def f1(pred: np.ndarray, gold: np.ndarray, num_classes: int) -> float:
    """Binary: F1 of class 1. Multi-class: the unweighted mean of the per-class F1 (macro).
    A class never predicted and never present scores 0, as in scikit-learn."""
    c = confusion(pred, gold, num_classes)
    tp = np.diag(c)
    denom = c.sum(0) + c.sum(1)  # 2 tp + fp + fn
    per_class = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(per_class[1] if num_classes == 2 else per_class.mean())


def mcc(pred: np.ndarray, gold: np.ndarray, num_classes: int) -> float:
    """Matthews correlation (Gorodkin's multi-class R_K; the usual MCC for two classes);
    0 when every prediction or every gold label is one class."""
    c = confusion(pred, gold, num_classes)
    s, correct = c.sum(), np.trace(c)
    p, t = c.sum(0), c.sum(1)  # predicted / true counts per class
    denom = math.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((correct * s - p @ t) / denom) if denom > 0 else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.astype(np.float64) - x.mean(), y.astype(np.float64) - y.mean()
    denom = math.sqrt((x @ x) * (y @ y))
    return float(x @ y / denom) if denom > 0 else 0.0


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Start index of each run of equal values, and each element's run.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    run_of = np.cumsum(np.r_[True, sorted_x[1:] != sorted_x[:-1]]) - 1
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[run_of]  # mean of ranks start+1 .. end
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(average_ranks(x), average_ranks(y))


def score(task: TaskConfig, pred: np.ndarray, gold: np.ndarray, num_classes: int
          ) -> dict[str, float]:
    if task.type == "regression":
        return {"pearson": pearson(pred, gold), "spearman": spearman(pred, gold)}
    return {"accuracy": accuracy(pred, gold), "f1": f1(pred, gold, num_classes),
            "mcc": mcc(pred, gold, num_classes)}
