"""Replacement distributions as (N, V) log-probabilities, -inf (zero mass) on special tokens:
the aux model's, the model-free ones (uniform, unigram, smoothed one-hot) and their
log-interpolations. These dense forms define what the samplers (trainer.corruption.sampling)
draw from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from trainer.tokenizer import NUM_SPECIAL

INTERP_REPLACEMENTS = {"uniform->smoothed_onehot": "uniform",
                       "unigram->smoothed_onehot": "unigram"}
MODEL_FREE = ("uniform", "unigram", "smoothed_onehot", *INTERP_REPLACEMENTS)


@dataclass(frozen=True, eq=False)  # eq=False: the counts compare by identity, never by value
class Replacement:
    """A replacement distribution as ``corruption.replacement`` names it, with the settings and
    corpus statistics its kind reads; what varies per position (the original token, the p1
    weight, the aux logits, the temperature) is passed with each call."""

    kind: str
    """``corruption.replacement``: ``aux`` or one of MODEL_FREE."""
    vocab_size: int
    """V, the width of every (N, V) row."""
    alpha: float = 0.35
    """``corruption.smoothed_onehot_alpha``: the smoothed one-hot's mass on the original."""
    unigram_counts: torch.Tensor | np.ndarray | None = None  # (V,) int
    """The corpus term frequencies (``CorpusShards.unigram_counts()``), for the unigram kinds."""

    def __post_init__(self):
        # Host-side facts only: the counts' length is metadata, never a device read.
        if self.kind != "aux" and self.kind not in MODEL_FREE:
            raise ValueError(f"unknown replacement {self.kind!r}")
        if "unigram" in self.kind and self.unigram_counts is None:
            raise ValueError(f"replacement {self.kind!r} needs unigram_counts")
        shape = None if self.unigram_counts is None else tuple(np.shape(self.unigram_counts))
        if shape is not None and shape != (self.vocab_size,):
            raise ValueError(f"Replacement: unigram counts of shape {shape} for a vocabulary "
                             f"of {self.vocab_size}")


def special_mask(vocab_size: int, device=None) -> torch.Tensor:
    return torch.arange(vocab_size, device=device) < NUM_SPECIAL  # (V,) bool


def aux_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """log_softmax of aux logits (N, V) in float32, renormalised over normal tokens: the aux
    model's mass on [MASK], [PAD], ... is removed, never sampled."""
    special = special_mask(logits.shape[-1], logits.device)
    return logits.float().masked_fill(special, -math.inf).log_softmax(-1)


def uniform_logprobs(n: int, vocab_size: int, device=None) -> torch.Tensor:
    """Uniform over the V - NUM_SPECIAL normal tokens; an (n, V) expanded view (no memory)."""
    lp = torch.full((vocab_size,), -math.log(vocab_size - NUM_SPECIAL), device=device)
    return lp.masked_fill(special_mask(vocab_size, device), -math.inf).expand(n, vocab_size)


def unigram_logprobs(counts, n: int = 1, device=None) -> torch.Tensor:
    """Term frequencies of the corpus, counts (V,) int (``CorpusShards.unigram_counts()``).
    Add-one smoothing over normal tokens, so a token never seen in the corpus (e.g. an unused
    byte-fallback piece) keeps a tiny non-zero probability 1 / (total + V'), finite log-probs
    for the log-interpolations; specials (whose counts include every [CLS]/[SEP]) get zero.
    Computed in float64 then cast. Returns an (n, V) expanded view."""
    counts = torch.as_tensor(counts)
    if counts.ndim != 1 or counts.numel() <= NUM_SPECIAL or bool((counts < 0).any()):
        raise ValueError(f"unigram counts must be a (V,) non-negative vector, got shape "
                         f"{tuple(counts.shape)}")
    c = counts.to(device=device, dtype=torch.float64) + 1.0
    c[:NUM_SPECIAL] = 0.0
    lp = (c / c.sum()).log().float()  # (V,), -inf on specials
    return lp.expand(n, counts.numel())


def smoothed_onehot_logprobs(original: torch.Tensor, vocab_size: int, alpha: float
                             ) -> torch.Tensor:
    """Mass alpha on the original token (N,), the rest 1 - alpha spread uniformly over the
    other V - NUM_SPECIAL - 1 normal tokens. (N, V)."""
    others = vocab_size - NUM_SPECIAL - 1
    if others < 1:
        raise ValueError("smoothed_onehot needs at least two normal tokens")
    dev = original.device
    log_rest = torch.tensor((1.0 - alpha) / others, device=dev).log()  # -inf when alpha = 1
    lp = log_rest.expand(original.shape[0], vocab_size).clone()
    lp[:, :NUM_SPECIAL] = -math.inf
    lp.scatter_(1, original.long()[:, None], torch.tensor(alpha, device=dev).log().expand(
        original.shape[0], 1).contiguous())
    return lp


def _wsum(w: torch.Tensor, a, b) -> torch.Tensor:
    """w * a + (1 - w) * b (tensors or floats), counting 0 * (-inf) as 0: the unused side of an
    interpolation may hold log 0 without turning the result into NaN."""
    return torch.where(w == 0, 0.0, w * a) + torch.where(w == 1, 0.0, (1 - w) * b)


def log_interp(logp1: torch.Tensor, logp2: torch.Tensor, weight) -> torch.Tensor:
    """normalize(p1^w * p2^(1-w)) as log-probs (N, V); weight a float or (N,) per row. w = 1
    gives p1, w = 0 gives p2 exactly (0 * log 0 counts as 0, so a zero in the unused side does
    not turn into NaN)."""
    w = torch.as_tensor(weight, dtype=torch.float32, device=logp1.device)
    w = w.view(-1, 1) if w.ndim else w  # (N, 1) or ()
    return _wsum(w, logp1, logp2).log_softmax(-1)


def replacement_logprobs(rep: Replacement, original: torch.Tensor, weight=None,
                         aux_logits: torch.Tensor | None = None) -> torch.Tensor:
    """The replacement distribution (N, V) at N selected positions whose original tokens are
    original (N,). ``weight`` (float or (N,)) is the weight of p1 for the ``p1->p2`` kinds;
    aux_logits (N, V) are the aux model's, for kind ``aux``."""
    n, dev = original.shape[0], original.device
    if rep.kind == "aux":
        if aux_logits is None:
            raise ValueError("replacement 'aux' needs aux_logits")
        return aux_logprobs(aux_logits)
    if rep.kind == "uniform":
        return uniform_logprobs(n, rep.vocab_size, dev)
    if rep.kind == "unigram":
        return unigram_logprobs(rep.unigram_counts, n, dev)
    if rep.kind == "smoothed_onehot":
        return smoothed_onehot_logprobs(original, rep.vocab_size, rep.alpha)
    first, _ = rep.kind.split("->")  # an INTERP_REPLACEMENTS kind: Replacement checked it
    lp1 = replacement_logprobs(replace(rep, kind=first), original)
    lp2 = smoothed_onehot_logprobs(original, rep.vocab_size, rep.alpha)
    return log_interp(lp1, lp2, 1.0 if weight is None else weight)
