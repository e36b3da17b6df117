"""The batch that masking and corruption work on: its token rows and the keys (seed, epoch,
seq_id) of every random draw made for them, so that a row's draws never depend on the batch it
is in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)  # eq=False: tensor fields compare by identity, never by value
class KeyedBatch:
    """Left-aligned sequences ([CLS] at index 0, padding on the right: a draw is keyed by the
    index in the row, so left padding would change it) and the keys of their draws."""

    input_ids: torch.Tensor  # (B, T) int64
    """The token ids."""
    seq_ids: torch.Tensor  # (B,) int64
    """Each row's sequence id in the corpus, the per-row key of its draws."""
    seed: int
    """The seed of the draws: ``generate.seed`` for corruption, ``train.seed`` (or the held-out
    evaluation's fixed seed) for the corpus modes' masking."""
    epoch: int
    """The epoch the rows are drawn for: each epoch corrupts a sequence afresh."""
    attention_mask: torch.Tensor | None = None  # (B, T) bool
    """The positions that hold a token. None: every position does, or padding is [PAD], which
    masking skips as a special token anyway."""

    def __post_init__(self):
        # Shapes only: metadata, no device read.
        if self.input_ids.ndim != 2:
            raise ValueError(f"KeyedBatch: input_ids must be (B, T), got shape "
                             f"{tuple(self.input_ids.shape)}")
        B = self.input_ids.shape[0]
        if tuple(self.seq_ids.shape) != (B,):
            raise ValueError(f"KeyedBatch: seq_ids must be ({B},), one per row, got shape "
                             f"{tuple(self.seq_ids.shape)}")
        mask = self.attention_mask
        if mask is not None and mask.shape != self.input_ids.shape:
            raise ValueError(f"KeyedBatch: attention_mask must have input_ids' shape "
                             f"{tuple(self.input_ids.shape)}, got {tuple(mask.shape)}")
