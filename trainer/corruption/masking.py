"""Which positions a sample's corruption selects (BERT-style masking keyed by (seed, epoch,
seq_id, position), so a draw never depends on the batch, world size or resumption), and the
drop_token augmentation's [UNK] inputs to the aux.
"""

from __future__ import annotations

import torch

from trainer.config.run import MLMConfig
from trainer.config.sections import CorruptionConfig
from trainer.corruption.batch import KeyedBatch
from trainer.corruption.keyed_rng import (
    STREAM_DROP_TOKEN,
    STREAM_MASK_KIND,
    STREAM_RANDOM_TOKEN,
    STREAM_SELECT,
    keyed_bits,
    threshold,
)
from trainer.tokenizer import MASK_ID, NUM_SPECIAL, UNK_ID


def mask_positions(batch: KeyedBatch, rates: CorruptionConfig | MLMConfig,
                   vocab_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Select positions to predict and build the masked input.

    Returns (masked_input_ids (B, T), selected (B, T) bool). Exactly max(1, round(mask_prob *
    n)) (half up) of a sequence's n normal tokens (ids >= NUM_SPECIAL, inside the batch's
    attention_mask) are selected (ELECTRA / BERT select an exact count, which keeps short
    sequences from getting none): every sequence with a normal token contributes at least one
    prediction; specials ([PAD], [UNK], [CLS], [SEP], [MASK]) never. Of the selected, each
    independently becomes [MASK] with probability mask_token_prob, a uniformly random normal
    token with random_token_prob (needs vocab_size), or keeps the original. The rates are
    those of the section that sets them: ``corruption`` (ELECTRA's recipe, 0.85 / 0 / 0.15) or
    ``mlm`` (BERT's, 0.8 / 0.1 / 0.1).
    """
    mask_prob, mask_token_prob = rates.mask_prob, rates.mask_token_prob
    # ELECTRA's corruption masks or keeps; a random token at selection is BERT's alone.
    random_token_prob = rates.random_token_prob if isinstance(rates, MLMConfig) else 0.0
    if mask_token_prob + random_token_prob > 1.0 + 1e-12 or random_token_prob < 0.0:
        raise ValueError(f"mask_token_prob ({mask_token_prob}) + random_token_prob "
                         f"({random_token_prob}) must be <= 1")
    if random_token_prob > 0.0 and (vocab_size is None or vocab_size <= NUM_SPECIAL):
        raise ValueError("random_token_prob > 0 needs vocab_size > NUM_SPECIAL")
    input_ids, seq_ids, seed, epoch = batch.input_ids, batch.seq_ids, batch.seed, batch.epoch
    B, T = input_ids.shape
    normal = input_ids >= NUM_SPECIAL  # (B, T)
    if batch.attention_mask is not None:
        normal &= batch.attention_mask.bool()
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
