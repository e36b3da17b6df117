"""Corruption for replaced token detection: masking, replacement distributions, curriculum
schedules, augmentations and keyed inverse-CDF sampling. ONE implementation, used offline (the Beam
``generate`` job) and online (the trainer's joint / fast-online modes), so that both produce the
same bytes for the same (seed, epoch, seq_id).

    from trainer.corruption import corrupt_batch, schedule_value

    out = corrupt_batch(input_ids, attention_mask,   # (B, T) long / bool, [CLS] at index 0
                        seq_ids, epoch, u,            # (B,) long, int, (B,) fraction done
                        cfg.corruption, seed, aux=aux_model, unigram_counts=None)
    out.input_ids, out.labels                         # (B, T) corrupted ids, uint8 RTD labels
    out.temperature                                   # (B,) float32 schedule value used
    schedule_value("exponential", 0.0, t0=2.0, tau=0.1)  # -> 2.0 (Eq. 2)

Randomness: ``trainer.keyed_rng`` (counter-based, no generator state, 64-bit row keys;
bit-exact everywhere but where a float rounding of the CDF moves a draw across a boundary, and
the dropout augmentations' masks, drawn from a per-call torch generator seeded by the batch's
keys).

Cost at scale (128K vocabulary): one keyed 53-bit uniform per masked position, inverted through
the CDF (``sample_tokens``); the aux LM head runs at the masked positions only, in float32 even
under autocast, in row chunks of at most 2**20 logits (2**24 on a GPU), each sampled
before the next is made, so no (N, V) tensor exists; the model-free distributions have closed
forms (``sample_model_free``) that draw the same token as the dense inverse CDF without building
any (N, V) row.

Sequences are left-aligned ([CLS] at index 0, padding on the right): the position counter is
the index in the row, so left padding would change the draws.

Schedules and the meaning of the schedule value. ``schedule_value`` returns a temperature-like
value T(u), T = 1 meaning "no augmentation", for every schedule; the augmentation *strength* is
g(u) = T(u) - 1, from g_max = t0 - 1 at the start of training to (about) 0 at the end. That value
T is what the ``temperature`` column of the RTD shards stores, for every augmentation. The
curriculum always goes from EASY to HARD, as in Fast-ELECTRA (T > 1 flattens the auxiliary
distribution, so early replacements are more random and easier to detect; T -> 1 gives the
auxiliary model's own, harder, replacements):

- ``temperature``: sample from softmax(log p / T). Also valid for model-free replacements
  (flattens them toward uniform over normal tokens). Note that log p / T is exactly the
  log-interpolation of p with the uniform distribution with weight 1 - 1/T.
- ``log_interp_unigram``: p ~ p_unigram^g * p_aux^(1-g): starts at the unigram distribution
  (g = 1 when t0 = 2; frequent tokens, context-free, easy) and ends at the aux model (g = 0).
- ``dropout`` / ``drop_attention``: the frozen aux model samples in train mode with hidden /
  attention dropout rate g (a degraded, easier generator), ending with no dropout (g = 0).
- ``drop_token``: a fraction g of the aux model's input tokens (normal, not selected) become
  [UNK], so it sees less context (easier replacements), ending with full context.
- Replacements ``p1->p2`` (``uniform->smoothed_onehot``, ``unigram->smoothed_onehot``): the
  schedule drives the replacement itself, p ~ p1^g * p2^(1-g): from p1 at the start (g = 1 when
  t0 = 2; every selected token replaced by a context-free token, easy) to p2 = smoothed one-hot
  at the end (g = 0; the original kept with mass alpha, so fewer and sparser replacements; the
  replaced tokens stay context-free either way, which is why these are ablations). Their
  augmentation must be the default ``temperature``, which for them means exactly this.

Strengths used as weights or rates must lie in [0, 1] (dropout rates in [0, 1)), i.e.
1 <= t0 <= 2; ``validate_corruption`` raises ConfigError otherwise. Granularity: the caller
passes u per sample; with ``corruption.granularity = "epoch"`` it passes the epoch's u for every
sample of the epoch. The dropout augmentations act on a whole forward pass, so they use one rate
per batch (the mean strength of its samples; consecutive samples have nearly equal u) and report
1 + that rate as every sample's temperature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trainer.config.sections import ConfigError, CorruptionConfig
from trainer.corruption.keyed_rng import (
    STREAM_DROP_TOKEN,
    STREAM_DROPOUT,
    STREAM_MASK_KIND,
    STREAM_RANDOM_TOKEN,
    STREAM_SAMPLE,
    STREAM_SELECT,
    keyed_bits,
    threshold,
)
from trainer.model.encoder import DropoutPlan
from trainer.tokenizer import MASK_ID, NUM_SPECIAL, UNK_ID

# Recorded in every shard set's manifest and fingerprint: a change of sampling algorithm changes
# the bytes, so a re-run must not take an older set for its own output.
SAMPLER = "inverse-cdf-v2"
_CHUNK_ELEMENTS = 1 << 20  # (rows x V) per chunk on CPU: bounds temporaries, stays in cache
# On a GPU 2**20 would be 8 rows per chunk at V = 128K: ~1,200 chunks of a dozen small kernels
# per 128 x 512 batch, bound by launches. 2**24 fp32 logits = 64 MiB per chunk.
_CUDA_CHUNK_ELEMENTS = 1 << 24

INTERP_REPLACEMENTS = {"uniform->smoothed_onehot": "uniform",
                       "unigram->smoothed_onehot": "unigram"}
MODEL_FREE = ("uniform", "unigram", "smoothed_onehot", *INTERP_REPLACEMENTS)
DROPOUT_AUGMENTATIONS = ("dropout", "drop_attention")


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------

SCHEDULES = ("exponential", "constant", "polynomial", "stepwise", "fixed")


def schedule_value(kind: str, u, t0: float, tau: float):
    """T(u), the schedule value at training progress u in [0, 1] (float, or a tensor of any
    shape, e.g. (B,) per sample); T = 1 + g where g is the augmentation strength:

    exponential  T = 1 + (t0 - 1) exp(-u / tau)               Eq. 2; paper t0 = 2, tau = 0.1
    constant     T = t0
    polynomial   T = 1 + (t0 - 1) (1 - u)**tau                tau = the power (1 = linear)
    stepwise     T = 1 + (t0 - 1) (1 - floor(u tau) / tau)    tau = the number of steps
    fixed        T = 1                                        no curriculum (ablation)

    u is clamped to [0, 1]. A tensor is computed in its own dtype (pass float64 for values
    that do not depend on the device's float32 exp).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; valid: {', '.join(SCHEDULES)}")
    scalar = not isinstance(u, torch.Tensor)
    uu = torch.tensor(float(u), dtype=torch.float64) if scalar else u
    uu = uu.clamp(0.0, 1.0)
    g_max = t0 - 1.0
    if kind == "exponential":
        value = 1.0 + g_max * torch.exp(-uu / tau)
    elif kind == "constant":
        value = torch.full_like(uu, t0)
    elif kind == "polynomial":
        value = 1.0 + g_max * (1.0 - uu) ** tau
    elif kind == "stepwise":
        value = 1.0 + g_max * (1.0 - torch.floor(uu * tau) / tau)
    else:
        value = torch.ones_like(uu)
    return float(value) if scalar else value


def schedule_strength(kind: str, u, t0: float, tau: float):
    """g(u) = T(u) - 1: the augmentation strength (weight, rate or fraction), g_max = t0 - 1."""
    return schedule_value(kind, u, t0, tau) - 1.0


# ---------------------------------------------------------------------------------------------
# Masking
# ---------------------------------------------------------------------------------------------

def mask_positions(input_ids: torch.Tensor, seq_ids: torch.Tensor, seed: int, epoch: int,
                   mask_prob: float, mask_token_prob: float, random_token_prob: float = 0.0,
                   vocab_size: int | None = None, attention_mask: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Select positions to predict and build the masked input.

    input_ids (B, T) long, seq_ids (B,) long. Returns (masked_input_ids (B, T), selected (B, T)
    bool). Exactly max(1, round(mask_prob * n)) (half up) of a sequence's n normal tokens (ids >=
    NUM_SPECIAL, inside attention_mask) are selected (ELECTRA / BERT select an exact count,
    which keeps short sequences from getting none): every sequence with a normal token
    contributes at least one prediction; specials ([PAD], [UNK], [CLS], [SEP], [MASK]) never.
    Of the selected, each independently becomes [MASK] with probability mask_token_prob, a
    uniformly random normal token with random_token_prob (needs vocab_size), or keeps the
    original: ELECTRA's recipe is 0.85 / 0 / 0.15, BERT's MLM recipe 0.8 / 0.1 / 0.1.
    """
    if mask_token_prob + random_token_prob > 1.0 + 1e-12 or random_token_prob < 0.0:
        raise ValueError(f"mask_token_prob ({mask_token_prob}) + random_token_prob "
                         f"({random_token_prob}) must be <= 1")
    if random_token_prob > 0.0 and (vocab_size is None or vocab_size <= NUM_SPECIAL):
        raise ValueError("random_token_prob > 0 needs vocab_size > NUM_SPECIAL")
    B, T = input_ids.shape
    normal = input_ids >= NUM_SPECIAL  # (B, T)
    if attention_mask is not None:
        normal &= attention_mask.bool()
    # Exact count round(mask_prob * n), half up, in integers so no device float enters:
    # mask_prob to 2**-32, plus 2**-16 of slack so a decimal half such as 0.15 * 50 = 7.5
    # rounds up as written although the float 0.15 is slightly below 0.15.
    n = normal.sum(1)  # (B,)
    k = (n * threshold(mask_prob) + 2**31 + 2**16) >> 32
    k = torch.where(n > 0, k.clamp(min=1), 0)  # (B,)
    # The k normal positions with the smallest keyed draws; others sort last. A stable sort
    # breaks (2**-32-rare) ties by position, so padding and batch never change the choice.
    bits = keyed_bits(seed, epoch, seq_ids, STREAM_SELECT, (T,))  # (B, T)
    score = torch.where(normal, bits, 1 << 32)
    order = torch.sort(score, dim=1, stable=True).indices  # (B, T)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(T, device=input_ids.device).expand(B, T))
    selected = rank < k[:, None]  # (B, T)

    kind = keyed_bits(seed, epoch, seq_ids, STREAM_MASK_KIND, (T,))  # (B, T)
    t_mask = threshold(mask_token_prob)
    t_rand = t_mask + threshold(random_token_prob)
    masked = torch.where(selected & (kind < t_mask), MASK_ID, input_ids)
    if random_token_prob > 0.0:
        r = keyed_bits(seed, epoch, seq_ids, STREAM_RANDOM_TOKEN, (T,))
        # Multiply-shift maps 32 bits onto [0, V - NUM_SPECIAL) with bias < V / 2**32.
        rand_ids = NUM_SPECIAL + ((r * (vocab_size - NUM_SPECIAL)) >> 32)  # (B, T)
        masked = torch.where(selected & (kind >= t_mask) & (kind < t_rand), rand_ids, masked)
    return masked, selected


def drop_tokens(input_ids: torch.Tensor, selected: torch.Tensor, seq_ids: torch.Tensor,
                seed: int, epoch: int, rate) -> torch.Tensor:
    """The ``drop_token`` augmentation: each normal, non-selected token of the aux model's
    input becomes [UNK] with probability rate (float or (B,) per sample), keyed (own stream).
    input_ids, selected (B, T) -> (B, T)."""
    B, T = input_ids.shape
    rate = torch.as_tensor(rate, dtype=torch.float64).cpu().expand(B)
    # Per-row integer thresholds computed on the host in float64: identical on every device.
    thr = torch.tensor([threshold(float(r)) for r in rate], device=input_ids.device)  # (B,)
    bits = keyed_bits(seed, epoch, seq_ids, STREAM_DROP_TOKEN, (T,))  # (B, T)
    drop = (input_ids >= NUM_SPECIAL) & ~selected & (bits < thr[:, None])
    return torch.where(drop, UNK_ID, input_ids)


# ---------------------------------------------------------------------------------------------
# Replacement distributions: (N, V) log-probabilities, -inf (zero mass) on special tokens
# ---------------------------------------------------------------------------------------------

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


def replacement_logprobs(replacement: str, original: torch.Tensor, vocab_size: int, *,
                         weight=None, alpha: float = 0.35, unigram_counts=None,
                         aux_logits: torch.Tensor | None = None) -> torch.Tensor:
    """The replacement distribution (N, V) at N selected positions whose original tokens are
    original (N,). ``weight`` (float or (N,)) is the weight of p1 for the ``p1->p2`` kinds."""
    n, dev = original.shape[0], original.device
    if replacement == "aux":
        if aux_logits is None:
            raise ValueError("replacement 'aux' needs aux_logits")
        return aux_logprobs(aux_logits)
    if replacement == "uniform":
        return uniform_logprobs(n, vocab_size, dev)
    if replacement == "unigram":
        if unigram_counts is None:
            raise ValueError("replacement 'unigram' needs unigram_counts")
        return unigram_logprobs(unigram_counts, n, dev)
    if replacement == "smoothed_onehot":
        return smoothed_onehot_logprobs(original, vocab_size, alpha)
    if replacement in INTERP_REPLACEMENTS:
        first, _ = replacement.split("->")
        lp1 = replacement_logprobs(first, original, vocab_size, unigram_counts=unigram_counts)
        lp2 = smoothed_onehot_logprobs(original, vocab_size, alpha)
        return log_interp(lp1, lp2, 1.0 if weight is None else weight)
    raise ValueError(f"unknown replacement {replacement!r}")


# ---------------------------------------------------------------------------------------------
# Augmentations
# ---------------------------------------------------------------------------------------------

def validate_corruption(cfg: CorruptionConfig) -> None:
    """Raise ConfigError for combinations that make no sense (called by corrupt_batch; call it
    at start-up to fail before any work)."""
    rep, aug = cfg.replacement, cfg.augmentation
    if rep != "aux" and aug != "temperature":
        hint = ("the log-interpolated replacements 'unigram->smoothed_onehot' / "
                "'uniform->smoothed_onehot' already mix with the unigram"
                if aug == "log_interp_unigram" else
                f"'{aug}' acts on the auxiliary model, which a model-free replacement never runs")
        raise ConfigError(f"corruption.augmentation: '{aug}' does not apply to the model-free "
                          f"corruption.replacement = '{rep}' ({hint}); use augmentation = "
                          "'temperature' or replacement = 'aux'")
    if cfg.schedule == "stepwise" and cfg.tau < 1:
        raise ConfigError(f"corruption.tau: the stepwise schedule uses tau as its number of "
                          f"steps, which must be >= 1, got {cfg.tau}")
    weight_like = rep in INTERP_REPLACEMENTS or aug == "log_interp_unigram"
    rate_like = aug in (*DROPOUT_AUGMENTATIONS, "drop_token")
    if (weight_like or rate_like) and cfg.schedule != "fixed":
        g_max = cfg.t0 - 1.0
        ok = 0.0 <= g_max < 1.0 if rate_like else 0.0 <= g_max <= 1.0
        what = (f"the initial {aug} rate" if rate_like else "the initial interpolation weight")
        if not ok:
            bound = "[1, 2)" if rate_like else "[1, 2]"
            raise ConfigError(f"corruption.t0: {what} is t0 - 1 = {g_max:g}, which must be a "
                              f"{'rate' if rate_like else 'weight'}; set t0 in {bound}, e.g. "
                              f"t0 = {1.2 if rate_like else 2.0} for "
                              f"{0.2 if rate_like else 1.0}")


@dataclass(frozen=True)
class AugmentationPlan:
    """What the schedule value asks for, for one batch of B samples."""

    temperature: torch.Tensor  # (B,) divide log-probs by this (1 = unchanged)
    weight: torch.Tensor  # (B,) weight of the easy side of a log-interpolation (0 = none)
    drop_token: torch.Tensor  # (B,) fraction of aux input tokens to replace by [UNK]
    hidden_dropout: float  # rates to set on the aux encoder (train mode); both 0 = eval mode
    attention_dropout: float
    used: torch.Tensor  # (B,) float32 schedule value actually used (the shards' column)


def plan_augmentation(cfg: CorruptionConfig, value: torch.Tensor) -> AugmentationPlan:
    """Map the schedule value T (B,) (float64 preferred) to the augmentation's parameters."""
    value = value.double()
    g = value - 1.0  # (B,) strength
    ones, zeros = torch.ones_like(value), torch.zeros_like(value)
    aug, rep = cfg.augmentation, cfg.replacement
    temperature, weight, drop, hidden, attention, used = ones, zeros, zeros, 0.0, 0.0, value
    if rep in INTERP_REPLACEMENTS or aug == "log_interp_unigram":
        weight = g
    elif aug == "temperature":
        temperature = value
    elif aug == "drop_token":
        drop = g
    elif aug in DROPOUT_AUGMENTATIONS:
        # One forward pass has one dropout rate: use the batch's mean strength.
        rate = float(g.mean()) if g.numel() else 0.0
        hidden, attention = (rate, 0.0) if aug == "dropout" else (0.0, rate)
        used = torch.full_like(value, 1.0 + rate)
    return AugmentationPlan(temperature, weight, drop, hidden, attention, used.float())


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------

def _row_chunks(n: int, vocab_size: int, device: torch.device):
    elements = _CUDA_CHUNK_ELEMENTS if device.type == "cuda" else _CHUNK_ELEMENTS
    step = max(1, elements // vocab_size)
    return (slice(i, min(i + step, n)) for i in range(0, n, step))


def keyed_sample_uniform(seed: int, epoch: int, seq_ids: torch.Tensor,
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


def sample_tokens(logp: torch.Tensor, seed: int, epoch: int, seq_ids: torch.Tensor,
                  positions: torch.Tensor, temperature=None) -> torch.Tensor:
    """One exact draw per row of softmax(logp / T), logp (N, V) (normalised or not), by
    inverse CDF at a uniform keyed by (seed, epoch, seq_ids (N,), positions (N,)): one keyed
    draw per position rather than one per vocabulary entry (the Gumbel-max alternative hashes
    N x V counters, 20-40x the cost of the softmax itself). A row's sample does not depend on
    the other rows. temperature: None, float or (N,). Returns (N,) long. Processed in row
    chunks to bound the (rows, V) temporaries."""
    N, V = logp.shape
    out = torch.empty(N, dtype=torch.long, device=logp.device)
    temperature = torch.as_tensor(1.0 if temperature is None else temperature,
                                  dtype=torch.float32, device=logp.device).expand(N)
    u = keyed_sample_uniform(seed, epoch, seq_ids.to(logp.device), positions.to(logp.device))
    for rows in _row_chunks(N, V, logp.device):
        out[rows] = _inverse_cdf_chunk(logp[rows], u[rows], temperature[rows])
    return out


# Closed forms of the model-free distributions (their dense definitions are
# ``replacement_logprobs``; tests/trainer/test_corruption.py checks each sampler against it).
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


def sample_model_free(replacement: str, u: torch.Tensor, original: torch.Tensor,
                      vocab_size: int, temperature: torch.Tensor, weight: torch.Tensor,
                      alpha: float, unigram_counts=None) -> torch.Tensor:
    """Exact draws from ``replacement_logprobs(replacement, original, ...) / T`` at keyed
    uniforms u (N,) float64 (``keyed_sample_uniform``), in closed form. temperature, weight
    (N,): the plan's T and the p1 weight of the ``p1->p2`` kinds. Returns (N,) long."""
    dev = u.device
    t = temperature.double().to(dev)
    w = weight.double().to(dev)
    k = vocab_size - NUM_SPECIAL - 1  # the other normal tokens
    if replacement == "uniform":  # flat at any temperature
        return NUM_SPECIAL + (u * (vocab_size - NUM_SPECIAL)).long()
    if replacement in ("unigram", "unigram->smoothed_onehot"):
        log_unigram = unigram_logprobs(unigram_counts, 1, dev)[0].double()  # (V,)
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


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------

@dataclass
class CorruptedBatch:
    input_ids: torch.Tensor  # (B, T) long: the discriminator's input
    labels: torch.Tensor  # (B, T) uint8: 1 = replaced by a different token
    temperature: torch.Tensor  # (B,) float32: the schedule value used for each sample
    selected: torch.Tensor  # (B, T) bool: the positions that were masked and resampled


def aux_autocast(device: torch.device | str):
    """The precision of the aux encoder for every caller that corrupts with it (generate's
    workers, fast-online's training step): bf16 autocast on CUDA, float32 elsewhere, whatever
    autocast surrounds the call (the trainer's ``train.precision``), so fast-online reproduces
    the rows generate writes on the same hardware. The LM head is float32 in any case
    (``_aux_head_fp32``)."""
    dev = torch.device(device)
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")


def _aux_hidden(aux, input_ids, attention_mask, selected, plan, seed, epoch, seq_ids
                ) -> torch.Tensor:
    """The frozen aux encoder's hidden states at the selected positions (N, H), in the
    caller's autocast. The dropout augmentations pass their rates and a generator for this
    call (``DropoutPlan``): the shared model is never switched to train mode or re-rated, and
    no global RNG is touched, so RunInference threads sharing one model cannot disturb each
    other. Dropout masks cannot be keyed per sequence, so the generator is seeded from the
    batch's keys: reproducible for the same batch (e.g. a Beam retry)."""
    generator = None
    if plan.hidden_dropout > 0 or plan.attention_dropout > 0:
        generator = torch.Generator(device=input_ids.device)
        generator.manual_seed(int(keyed_bits(seed, epoch, seq_ids, STREAM_DROPOUT, (1,)).sum()))
    dropout = DropoutPlan(plan.hidden_dropout, plan.attention_dropout, generator)
    return aux.encoder(input_ids, attention_mask, dropout=dropout)[selected]  # (N, H)


def _aux_head_fp32(aux, hidden: torch.Tensor) -> torch.Tensor:
    """The aux LM head on hidden (n, H) in float32 whatever the surrounding autocast: bf16
    logits move ~1% of the samples, so CPU and GPU workers would write different bytes."""
    with torch.autocast(hidden.device.type, enabled=False):
        return aux.head(hidden.float())  # (n, V) float32


def corrupt_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor, seq_ids: torch.Tensor,
                  epoch: int, u, cfg: CorruptionConfig, seed: int, aux=None,
                  unigram_counts=None, vocab_size: int | None = None) -> CorruptedBatch:
    """Mask, sample replacements and label one batch; the same code offline and online.

    input_ids (B, T) long (left-aligned, [CLS] first), attention_mask (B, T), seq_ids (B,)
    long, u: float or (B,) training progress per sample (granularity is the caller's: pass the
    epoch's u for every sample for ``epoch``), aux: the frozen ``MLMModel`` (replacement
    ``aux`` only; model-free replacements never touch a model), unigram_counts (V,) for the
    unigram-based kinds, vocab_size when neither aux nor unigram_counts fixes it.
    The aux model runs under inference_mode with its LM head only at selected positions; every
    sample is drawn by ``sample_tokens`` at the selected positions, including those that kept
    their original token in the aux input (ELECTRA). Labels are 1 where the sample differs from the
    original token.
    """
    validate_corruption(cfg)
    rep, aug = cfg.replacement, cfg.augmentation
    if rep == "aux" and aux is None:
        raise ValueError("corruption.replacement = 'aux' needs the auxiliary model (aux=...)")
    needs_unigram = "unigram" in rep or aug == "log_interp_unigram"
    if needs_unigram and unigram_counts is None:
        raise ValueError(f"corruption '{rep}' / '{aug}' needs the corpus unigram counts "
                         "(CorpusShards.unigram_counts())")
    sizes = {"vocab_size": vocab_size,
             "the auxiliary model": None if aux is None else aux.cfg.vocab_size,
             "the unigram counts": None if unigram_counts is None else len(unigram_counts)}
    known = {k: v for k, v in sizes.items() if v is not None}
    if len(set(known.values())) != 1:
        raise ValueError("corrupt_batch: the vocabulary size must be given (vocab_size, aux or "
                         f"unigram_counts) and agree; got {known}")
    V = next(iter(known.values()))
    B, T = input_ids.shape
    dev = input_ids.device
    seq_ids = seq_ids.to(dev).long()
    u = torch.as_tensor(u, dtype=torch.float64).cpu().expand(B)
    # On the host in float64: the schedule value (and any threshold derived from it) must not
    # depend on the device's float32 exp.
    plan = plan_augmentation(cfg, schedule_value(cfg.schedule, u, cfg.t0, cfg.tau))

    with torch.inference_mode():
        masked, selected = mask_positions(input_ids, seq_ids, seed, epoch, cfg.mask_prob,
                                          cfg.mask_token_prob, attention_mask=attention_mask)
        b_idx, t_idx = selected.nonzero(as_tuple=True)  # (N,) each, batch-then-time order
        original = input_ids[b_idx, t_idx]  # (N,)
        sel_ids = seq_ids[b_idx]  # (N,)
        temp = plan.temperature.float().to(dev)[b_idx]  # (N,)
        weight = plan.weight.float().to(dev)[b_idx]  # (N,)
        sampled = torch.empty_like(original)
        if rep != "aux":
            u_draw = keyed_sample_uniform(seed, epoch, sel_ids, t_idx)  # (N,) float64
            sampled = sample_model_free(rep, u_draw, original, V, temp, weight,
                                        cfg.smoothed_onehot_alpha, unigram_counts)
        elif original.numel():
            aux_in = masked
            if aug == "drop_token":
                aux_in = drop_tokens(masked, selected, seq_ids, seed, epoch, plan.drop_token)
            hidden = _aux_hidden(aux, aux_in, attention_mask, selected, plan, seed, epoch,
                                 seq_ids)  # (N, H)
            # Row chunks: at no time more than a bounded (n, V) block of logits exists.
            for rows in _row_chunks(original.numel(), V, dev):
                lp = aux_logprobs(_aux_head_fp32(aux, hidden[rows]))  # (n, V) float32
                if aug == "log_interp_unigram":
                    lp = log_interp(unigram_logprobs(unigram_counts, lp.shape[0], dev), lp,
                                    weight[rows])
                sampled[rows] = sample_tokens(lp, seed, epoch, sel_ids[rows], t_idx[rows],
                                              temp[rows])
    # Leave inference mode with ordinary tensors: the discriminator's embedding saves its
    # indices for backward, which an inference tensor refuses.
    corrupted = input_ids.clone()
    corrupted[b_idx.clone(), t_idx.clone()] = sampled.clone()
    labels = (corrupted != input_ids).to(torch.uint8)
    return CorruptedBatch(corrupted, labels, plan.used.to(dev), selected.clone())
