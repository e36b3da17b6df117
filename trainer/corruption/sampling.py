"""Keyed sampling: one 53-bit uniform per masked position from (seed, epoch, seq_id, position)
(trainer.corruption.keyed_rng), inverted through the CDF of softmax(log p / T) in row chunks
(``sample_tokens``, the one entry point used offline and online), or through the closed forms
of the model-free distributions (``sample_model_free``), which draw the same token without
building any (N, V) row.
"""

from __future__ import annotations

import math

import torch

from trainer.corruption.distributions import Replacement, _wsum, unigram_logprobs
from trainer.corruption.keyed_rng import (
    STREAM_SAMPLE,
    keyed_bits,
)
from trainer.tokenizer import NUM_SPECIAL

# Recorded in every shard set's manifest and fingerprint: a change of sampling algorithm changes
# the bytes, so a re-run must not take an older set for its own output.
SAMPLER = "inverse-cdf-v2"
_CHUNK_ELEMENTS = 1 << 20  # (rows x V) per chunk on CPU: bounds temporaries, stays in cache
# On a GPU 2**20 would be 8 rows per chunk at V = 128K: ~1,200 chunks of a dozen small kernels
# per 128 x 512 batch, bound by launches. 2**24 fp32 logits = 64 MiB per chunk.
_CUDA_CHUNK_ELEMENTS = 1 << 24


def _row_chunks(n: int, vocab_size: int, device: torch.device):
    elements = _CUDA_CHUNK_ELEMENTS if device.type == "cuda" else _CHUNK_ELEMENTS
    step = max(1, elements // vocab_size)
    return (slice(i, min(i + step, n)) for i in range(0, n, step))


def keyed_sample_uniform(seed: int, epoch: int | torch.Tensor, seq_ids: torch.Tensor,
                         positions: torch.Tensor) -> torch.Tensor:
    """One uniform in the open interval (0, 1) per sampled position, float64 with 53 random
    bits (two 32-bit draws), keyed by (seed, epoch, seq_id, position): (N,)."""
    bits = keyed_bits(seed, epoch, seq_ids, STREAM_SAMPLE, (2,), sub_ids=positions)  # (N, 2)
    k = (bits[:, 0] << 21) | (bits[:, 1] >> 11)  # [0, 2**53)
    return (k.double() + 0.5) * 2.0**-53


def _block_size(vocab_size: int) -> int:
    """Entries per CDF block: a divisor of V near 256 when there is one (no padding copy)."""
    for b in range(256, 127, -1):
        if vocab_size % b == 0:
            return b
    return 256


def _last_positive(x: torch.Tensor) -> torch.Tensor:
    """Index of the last entry > 0 of each row of x (n, k) (rows with none: 0)."""
    k = x.shape[1]
    return k - 1 - (x.flip(1) > 0).to(torch.uint8).argmax(1)


def _inverse_cdf_chunk(logp: torch.Tensor, u: torch.Tensor, temperature: torch.Tensor
                       ) -> torch.Tensor:
    """The token whose CDF interval of softmax(logp / T) holds u: logp (n, V), u (n,) float64,
    T (n,) -> (n,). The weights exp(logp / T - max) in fp32 (whatever the logits' dtype: bf16
    logits would move ~1% of the draws); the CDF in float64 (at V = 128K fp32 rounding would
    move real mass), built in two levels so that no float64 (n, V) copy and no sequential scan
    over V is needed: block sums (n, V / b), then a scan of the one chosen block (n, b).
    Tokens of weight 0 (specials, -inf) own an empty interval and are never drawn."""
    n, V = logp.shape
    b = _block_size(V)
    nb = -(-V // b)
    # logp / T - max / T (T > 0, so that is the max of logp / T), then exp, in place in one
    # buffer: fewer passes over (n, V) than softmax and a cast (memory-bound at 128K).
    logp = logp.float()
    inv_t = temperature.float().reciprocal()[:, None]  # (n, 1)
    shift = -logp.amax(1, keepdim=True) * inv_t  # (n, 1)
    w = torch.full((n, nb * b), -math.inf, device=logp.device) if nb * b != V else \
        torch.empty((n, V), device=logp.device)
    torch.mul(logp, inv_t, out=w[:, :V])
    w[:, :V].add_(shift)
    w.exp_()  # (n, nb * b) unnormalised weights, max 1, 0 on -inf and padding
    blocks = w.view(n, nb, b)
    # Block sums in fp32 (torch's cascade summation: ~1e-7 relative, the order of the fp32
    # weights' own rounding), accumulated over blocks in float64, where an fp32 scan over 128K
    # entries would drift by up to ~1% of the mass.
    block_cdf = blocks.sum(-1).double().cumsum_(-1)  # (n, nb)
    x = u * block_cdf[:, -1]  # (n,) u scaled to the row's total
    k = torch.searchsorted(block_cdf, x[:, None], right=True).squeeze(1)  # (n,) the block
    # x < total, so k < nb; the clamp is for a u rounded onto the very end of the row.
    k = torch.minimum(k, _last_positive(torch.diff(block_cdf, dim=1, prepend=torch.zeros_like(
        block_cdf[:, :1]))))
    rows = torch.arange(n, device=logp.device)
    before = torch.where(k > 0, block_cdf[rows, (k - 1).clamp(min=0)], 0.0)  # (n,)
    inner = blocks[rows, k].double()  # (n, b) the chosen block's weights
    j = torch.searchsorted(inner.cumsum(-1), (x - before)[:, None], right=True).squeeze(1)
    # The block's own scan can sum to a hair less than its total (another summation order):
    # a draw in that gap takes the block's last token of non-zero weight.
    j = torch.minimum(j, _last_positive(inner))
    return k * b + j


def sample_tokens(logp: torch.Tensor, seed: int, epoch: int | torch.Tensor, seq_ids: torch.Tensor,
                  positions: torch.Tensor, temperature=None) -> torch.Tensor:
    """One exact draw per row of softmax(logp / T), logp (N, V) (normalised or not), by
    inverse CDF at a uniform keyed by (seed, epoch, seq_ids (N,), positions (N,)): one keyed
    draw per position rather than one per vocabulary entry (the Gumbel-max alternative hashes
    N x V counters, 20-40x the cost of the softmax itself). A row's sample does not depend on
    the other rows. epoch: an int, or (N,) int64 per row. temperature: None, float or (N,).
    Returns (N,) long. Processed in row chunks to bound the (rows, V) temporaries."""
    N, V = logp.shape
    out = torch.empty(N, dtype=torch.long, device=logp.device)
    # None: filled on the device; a Python float would be a blocking host-to-device copy.
    temperature = torch.ones(N, device=logp.device) if temperature is None else \
        torch.as_tensor(temperature, dtype=torch.float32, device=logp.device).expand(N)
    u = keyed_sample_uniform(seed, epoch, seq_ids.to(logp.device), positions.to(logp.device))
    for rows in _row_chunks(N, V, logp.device):
        out[rows] = _inverse_cdf_chunk(logp[rows], u[rows], temperature[rows])
    return out


# Closed forms of the model-free distributions (their dense definitions are
# ``replacement_logprobs``; tests/trainer/corruption/test_sampling.py checks each sampler
# against it).
# They use the very uniform ``sample_tokens`` would (``keyed_sample_uniform``), cost O(1) per
# position (uniform, smoothed one-hot and its uniform mix) or O(V) per distinct exponent plus
# O(log V) per position (the unigram family), and never build an (N, V) tensor.

def _unigram_power(u: torch.Tensor, log_unigram: torch.Tensor, power: torch.Tensor,
                   original: torch.Tensor | None = None, log_keep: torch.Tensor | None = None,
                   log_other: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse-CDF draws at u (N,) from p(x) proportional to unigram(x)^power (power (N,)
    float64; one (V,) CDF per distinct value, shared by its rows). With ``original``: the
    original token's unnormalised log-mass is log_keep (N,) instead, every other token x has
    log_other + power * log unigram(x) (the log-interpolations with the smoothed one-hot); the
    original's interval is resized in place, so the draw is the one ``sample_tokens`` makes
    from the dense row."""
    out = torch.empty_like(u, dtype=torch.long)
    finite = torch.isfinite(log_unigram)
    top = float(log_unigram[finite].max())
    last = len(log_unigram) - 1
    for e in torch.unique(power).tolist():
        rows = (power == e).nonzero(as_tuple=True)[0]
        w = torch.where(finite, ((log_unigram - top) * e).exp(), 0.0)  # (V,) / e^(e * top)
        cdf = w.cumsum(0)  # (V,) float64
        if original is None:
            out[rows] = torch.searchsorted(cdf, u[rows] * cdf[-1], right=True).clamp_(max=last)
            continue
        o = original[rows]
        start_o = cdf[o] - w[o]  # (n,) mass before the original
        # The original's mass on the same scale as w; inf when the others have none (alpha 1).
        keep = (log_keep[rows] - log_other[rows] - e * top).exp()  # (n,)
        x = u[rows] * (cdf[-1] - w[o] + keep)  # (n,) inside the resized total
        after = x - keep + w[o]  # past the original: back on cdf's scale
        found = torch.searchsorted(cdf, torch.where(x < start_o, x, after).unsqueeze(1),
                                   right=True).squeeze(1).clamp_(max=last)
        kept = (x >= start_o) & (x < start_o + keep) | torch.isinf(keep)
        out[rows] = torch.where(kept, o, found)
    return out


def sample_model_free(rep: Replacement, u: torch.Tensor, original: torch.Tensor,
                      temperature: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Exact draws from ``replacement_logprobs(rep, original, weight) / T`` at keyed uniforms u
    (N,) float64 (``keyed_sample_uniform``), in closed form. temperature, weight (N,): the
    plan's T and the p1 weight of the ``p1->p2`` kinds. Returns (N,) long."""
    replacement, vocab_size, alpha = rep.kind, rep.vocab_size, rep.alpha
    dev = u.device
    t = temperature.double().to(dev)
    w = weight.double().to(dev)
    k = vocab_size - NUM_SPECIAL - 1  # the other normal tokens
    if replacement == "uniform":  # flat at any temperature
        return NUM_SPECIAL + (u * (vocab_size - NUM_SPECIAL)).long()
    if replacement in ("unigram", "unigram->smoothed_onehot"):
        log_unigram = unigram_logprobs(rep.unigram_counts, 1, dev)[0].double()  # (V,)
        if replacement == "unigram":
            return _unigram_power(u, log_unigram, 1.0 / t)
        lu_o = log_unigram[original]
        log_keep = _wsum(w, lu_o, math.log(alpha) if alpha > 0 else -math.inf) / t
        log_other = _wsum(w, 0.0, math.log1p(-alpha) - math.log(k) if alpha < 1
                          else -math.inf) / t
        return _unigram_power(u, log_unigram, w / t, original, log_keep, log_other)
    if replacement in ("smoothed_onehot", "uniform->smoothed_onehot"):
        if k < 1:
            raise ValueError("smoothed_onehot needs at least two normal tokens")
        if replacement == "smoothed_onehot":
            w = torch.zeros_like(w)
        flat = -math.log(vocab_size - NUM_SPECIAL)
        log_keep = _wsum(w, flat, math.log(alpha) if alpha > 0 else -math.inf) / t
        log_other = _wsum(w, flat, math.log1p(-alpha) - math.log(k) if alpha < 1
                          else -math.inf) / t
        # Index order, as the dense CDF: k equal intervals q with the original's (keep) among
        # them at its own place.
        q = 1.0 / (k + (log_keep - log_other).exp())  # (N,) one other token's probability
        p_keep = 1.0 - k * q
        x = u  # the total is 1
        before = (original - NUM_SPECIAL) * q  # (N,) mass before the original
        j = torch.where(x < before, x / q,
                        (x - p_keep) / q).long().clamp_(max=k - 1)  # index among the others
        tok = NUM_SPECIAL + j + (j >= original - NUM_SPECIAL).long()
        kept = ((x >= before) & (x < before + p_keep)) | (q == 0)
        return torch.where(kept, original, tok)
    raise ValueError(f"unknown model-free replacement {replacement!r}")
