"""The headline RTD metrics count ordinary tokens only: the project's metric path (rtd_counts +
rtd_metrics, and fast-electra evaluate's RTDAccumulator with its ROC-AUC and loss) against the plain
numpy references of tests.reference_metrics (positions within each row's length and not
[CLS]/[SEP]/[UNK]/...), with negative controls: each wrong variant of the reference (shifted
threshold, padding or specials counted, the kept class as positive) disagrees with the
reported figures, and a tampered label moves the result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.reference_metrics import disagreeing, rtd_reference
from trainer.modes.joint import joint_metrics
from trainer.modes.rtd import ordinary_mask, rtd_counts, rtd_metrics
from trainer.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID, UNK_ID
from trainer.tools.eval_metrics import RTDAccumulator

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


def as_numpy(b: dict[str, torch.Tensor]) -> list[dict]:
    """The batch as tests.reference_metrics reads it: row lengths instead of the mask."""
    return [{"logits": b["logits"].numpy(), "labels": b["labels"].numpy(),
             "input_ids": b["input_ids"].numpy(),
             "lengths": (b["input_ids"] != PAD_ID).sum(1).numpy()}]


def counts_path(b: dict[str, torch.Tensor], prefix: str = "") -> dict[str, float]:
    sums = rtd_counts(b["logits"], b["labels"], b["input_ids"], b["attention_mask"])
    return rtd_metrics({k: float(v) for k, v in sums.items()}, prefix)


def accumulator_path(b: dict[str, torch.Tensor]) -> dict:
    """As trainer.tools.evaluate.evaluate_rtd: batches added, epochs merged."""
    total = RTDAccumulator(torch.device("cpu"))
    for lo, hi in ((0, 7), (7, 15), (15, B)):
        part = RTDAccumulator(torch.device("cpu"))
        part.add(b["logits"][lo:hi], {k: v[lo:hi] for k, v in b.items()})
        total.merge(part)
    return total.metrics()


HEADLINE = ("rtd_accuracy", "rtd_precision", "rtd_recall", "rtd_f1", "rtd_loss",
            "replaced_fraction", "rtd_all_accuracy", "rtd_all_loss")


def check_headline(b: dict[str, torch.Tensor]) -> None:
    ref = rtd_reference(as_numpy(b))
    m, acc = counts_path(b), accumulator_path(b)
    for key in HEADLINE:
        assert m[key] == pytest.approx(ref[key], abs=1e-6), key
        assert acc[key] == pytest.approx(ref[key], abs=1e-6), key
    for key in ("rtd_auc", "rtd_all_auc", "majority_accuracy", "constant_loss"):
        assert acc[key] == pytest.approx(ref[key], abs=1e-9), key
    assert acc["rtd_auc_margin"] == 0.0
    assert acc["tokens"] == ref["tokens"] and acc["all_tokens"] == ref["all_tokens"]
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


# Each wrong definition of the reference, and the reported figures it must then disagree with:
# proof that check_headline would catch the same mistake in the project's metric code.
WRONG = {
    "threshold_0.5": (  # a probability cut applied to logits
        {"threshold": 0.5}, ("rtd_accuracy", "rtd_precision", "rtd_recall", "rtd_f1")),
    # [PAD] is a special id, so only the every-real-token figures can see padding.
    "padding_counted": ({"count_padding": True},
                        ("all_tokens", "rtd_all_accuracy", "rtd_all_loss", "rtd_all_auc")),
    "specials_in_headline": (  # [CLS]/[SEP]/[UNK] counted in rtd_*
        {"count_specials": True},
        ("tokens", "rtd_accuracy", "rtd_loss", "rtd_auc", "replaced_fraction")),
    "kept_class_positive": ({"positive": 0}, ("rtd_precision", "rtd_recall", "rtd_f1")),
}


@pytest.mark.parametrize("wrong", WRONG)
@pytest.mark.parametrize("tied", [False, True])
def test_a_wrong_reference_disagrees_with_the_reported_metrics(wrong, tied):
    b = make_batch(0, tied)
    kwargs, keys = WRONG[wrong]
    reported = {**counts_path(b), **accumulator_path(b)}
    assert disagreeing(reported, rtd_reference(as_numpy(b)), keys) == []
    assert disagreeing(reported, rtd_reference(as_numpy(b), **kwargs), keys) == list(keys)


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
