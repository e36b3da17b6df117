"""The figures ``fast-electra evaluate`` reports for a discriminator: RTDAccumulator (accuracy,
precision / recall / F1 of the replaced class, BCE loss, best-constant references) and its
exact ROC-AUC (ties count 1/2), computed from counts of each distinct logit value per label,
merged every 2^20 tokens, so memory grows with the number of distinct logits, not tokens.
Past 2^23 distinct values the logits are binned, monotonically, by dropping low mantissa bits,
4 at a time; ``rtd_auc_margin`` (0 when exact) then bounds the error. tests/reference_metrics.py
holds the plain numpy references they are tested against.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from trainer.modes.rtd import RTD_SUM_KEYS, ordinary_mask, rtd_counts, rtd_metrics

_FLUSH_TOKENS = 1 << 20  # fold the buffered logits into the counts once this many wait
MAX_DISTINCT = 1 << 23  # distinct (logit, label) pairs kept exactly: 16 bytes each, 128 MiB
_COARSEN_BITS = 4  # mantissa bits dropped each time MAX_DISTINCT is exceeded


def logit_keys(logits: torch.Tensor) -> torch.Tensor:
    """int64 key of each float32 logit, strictly increasing in its value (equal floats, -0.0
    and +0.0 included, share a key)."""
    # + 0.0 turns -0.0 into +0.0.
    bits = (logits.float() + 0.0).contiguous().view(torch.int32).long()
    # Negative floats order backwards by their bit pattern: flip their magnitude bits.
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


class AUCCounts:
    """Counts of kept (label 0) and replaced (label 1) tokens per distinct logit value, as
    sorted codes ``key * 2 + label`` with their counts: exact ROC-AUC in memory proportional
    to the number of distinct logits (at most 65,536 for bf16 logits), not to the tokens.
    Past ``max_distinct`` codes, keys drop their lowest mantissa bits (logits are binned,
    monotonically) and ``auc`` reports how far that can move the value."""

    def __init__(self, max_distinct: int = MAX_DISTINCT):
        self.max_distinct = max_distinct
        self.shift = 0  # bits dropped from the keys so far (0 = exact)
        self.codes = np.zeros(0, np.int64)  # (M,) sorted, unique
        self.counts = np.zeros(0, np.int64)  # (M,)
        self._pending: list[torch.Tensor] = []
        self._pending_n = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """logits, labels (N,) of real tokens (labels 0/1), on any device."""
        self._pending.append(((logit_keys(logits) >> self.shift) << 1) | labels.long())
        self._pending_n += len(logits)
        if self._pending_n >= _FLUSH_TOKENS:
            self._flush()

    def _fold(self, codes: np.ndarray, counts: np.ndarray) -> None:
        codes = np.concatenate([self.codes, codes])
        counts = np.concatenate([self.counts, counts])
        self.codes, inverse = np.unique(codes, return_inverse=True)
        self.counts = np.bincount(inverse, weights=counts, minlength=len(self.codes)
                                  ).astype(np.int64)
        while len(self.codes) > self.max_distinct:
            self.shift += _COARSEN_BITS
            labels = self.codes & 1
            codes = (((self.codes >> 1) >> _COARSEN_BITS) << 1) | labels
            self.codes, inverse = np.unique(codes, return_inverse=True)
            self.counts = np.bincount(inverse, weights=self.counts, minlength=len(self.codes)
                                      ).astype(np.int64)

    def _flush(self) -> None:
        if self._pending:
            codes, counts = torch.unique(torch.cat(self._pending), return_counts=True)
            self._pending, self._pending_n = [], 0
            self._fold(codes.cpu().numpy(), counts.cpu().numpy())

    def merge(self, other: AUCCounts) -> None:
        other._flush()
        self._flush()
        codes = other.codes
        if other.shift < self.shift:
            codes = (((codes >> 1) >> (self.shift - other.shift)) << 1) | (codes & 1)
        elif other.shift > self.shift:
            self.codes = (((self.codes >> 1) >> (other.shift - self.shift)) << 1) \
                | (self.codes & 1)
            self.shift = other.shift
        self._fold(codes, other.counts)

    def auc(self) -> tuple[float | None, float]:
        """(ROC-AUC, ties counted 1/2; the most it can differ from the exact value: 0 unless
        logits were binned). None without both classes."""
        self._flush()
        keys, labels = self.codes >> 1, self.codes & 1
        uniq, inverse = np.unique(keys, return_inverse=True)
        neg = np.bincount(inverse, weights=self.counts * (labels == 0), minlength=len(uniq))
        pos = np.bincount(inverse, weights=self.counts * (labels == 1), minlength=len(uniq))
        pairs = neg.sum() * pos.sum()
        if pairs == 0:
            return None, 0.0
        below = np.cumsum(neg) - neg  # kept tokens with a lower logit
        tied = float((pos * neg).sum())
        margin = 0.5 * tied / pairs if self.shift else 0.0
        return float((pos * below).sum() + 0.5 * tied) / pairs, margin


def pairwise_auc(logits: np.ndarray, labels: np.ndarray) -> float:
    """Brute-force ROC-AUC over every (positive, negative) pair, ties 1/2 (for tests)."""
    pos, neg = logits[labels == 1], logits[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


class RTDAccumulator:
    """Sums over batches (kept on the device: no host sync per batch) -> metrics: the
    ``rtd_*`` headline over the ordinary tokens (``trainer.modes.rtd.ordinary_mask``), and
    ``rtd_all_accuracy/auc/loss`` over every real token."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums = {k: torch.zeros((), dtype=torch.float64, device=device)
                     for k in (*RTD_SUM_KEYS, "sequences", "temperature_sum")}
        self.auc = AUCCounts()  # the ordinary tokens
        self.auc_special = AUCCounts()  # the real special tokens ([CLS], [SEP], ...): few

    def add(self, logits: torch.Tensor, b: dict[str, torch.Tensor]) -> None:
        """logits (B, T) float32; b: a collated batch on the device."""
        real = b["attention_mask"].bool()
        ordinary = ordinary_mask(b["input_ids"], real)
        special = real & ~ordinary
        for k, v in rtd_counts(logits, b["labels"], b["input_ids"], real).items():
            self.sums[k] += v
        self.sums["sequences"] += len(b["temperature"])
        self.sums["temperature_sum"] += b["temperature"].double().sum()
        self.auc.add(logits[ordinary], b["labels"][ordinary])
        self.auc_special.add(logits[special], b["labels"][special])

    def merge(self, other: RTDAccumulator) -> None:
        for k, v in other.sums.items():
            self.sums[k] += v
        self.auc.merge(other.auc)
        self.auc_special.merge(other.auc_special)

    def all_auc(self) -> float | None:
        """ROC-AUC over every real token: the ordinary and the special counts together."""
        both = AUCCounts(self.auc.max_distinct)
        both.merge(self.auc)
        both.merge(self.auc_special)
        return both.auc()[0]

    def metrics(self) -> dict:
        s = {k: float(v) for k, v in self.sums.items()}
        tokens = s["rtd_tp"] + s["rtd_fp"] + s["rtd_fn"] + s["rtd_tn"]
        all_tokens = s["rtd_all_tp"] + s["rtd_all_fp"] + s["rtd_all_fn"] + s["rtd_all_tn"]
        if not tokens:
            return {"sequences": int(s["sequences"]), "tokens": 0,
                    "all_tokens": int(all_tokens)}
        m = rtd_metrics(s)  # rtd_accuracy ... rtd_loss, replaced_fraction, rtd_all_*
        frac = m["replaced_fraction"]
        auc, margin = self.auc.auc()
        constant = 0.0 if frac in (0.0, 1.0) else \
            -(frac * math.log(frac) + (1 - frac) * math.log(1 - frac))
        return {"sequences": int(s["sequences"]), "tokens": int(tokens),
                "all_tokens": int(all_tokens), **m,
                "rtd_auc": auc, "rtd_auc_margin": margin, "rtd_all_auc": self.all_auc(),
                "majority_accuracy": max(frac, 1 - frac), "constant_loss": constant,
                "temperature": s["temperature_sum"] / s["sequences"]}
