"""Sequence-length buckets for compiled training: a batch padded on the right to the bucket
above its longest sequence, so that a model compiled with static shapes sees a fixed, small
set of lengths.

    width = bucket_width(longest=70, multiple=64, cap=128)      # 128
    num_buckets(64, 128)                                        # 2: lengths 64 and 128
    batch = pad_batch(task.micro_batch(step, micro, d), width)  # every (B, T) tensor -> width

Padding is exact: the added positions are [PAD] ids with ``attention_mask`` False, which every
mode masks out of attention (a finfo.min bias on padded keys), of its loss and of its metrics;
relative position buckets depend on key - query distances only, and right padding moves no
real token. Masking (``trainer.corruption.masking``) is keyed by position and is drawn before
the padding, so a bucketed batch holds the same masks and labels as the unpadded one.
"""

from __future__ import annotations

import torch

from trainer.tokenizer import PAD_ID

# Per-token tensors that hold token ids: padded with [PAD]. Every other per-token tensor
# (attention_mask, selected, RTD labels) is padded with 0 / False, which reads as "not there".
_ID_KEYS = frozenset({"input_ids", "original_ids"})


def bucket_width(longest: int, multiple: int, cap: int) -> int:
    """The smallest multiple of ``multiple`` >= ``longest``, at most ``cap`` (never below
    ``longest``); ``multiple`` 0 = ``longest`` itself (no bucketing)."""
    if longest < 0 or multiple < 0:
        raise ValueError(f"bucket_width: longest ({longest}) and multiple ({multiple}) must be "
                         ">= 0")
    if multiple == 0:
        return longest
    return max(longest, min(cap, -(-longest // multiple) * multiple))


def num_buckets(multiple: int, cap: int) -> int:
    """How many widths ``bucket_width`` returns for lengths 1..cap: ceil(cap / multiple)
    (the last may be ``cap`` itself, which need not be a multiple); ``cap`` when 0."""
    return -(-cap // multiple) if multiple else cap


def pad_batch(batch: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """``batch`` with every per-token tensor (2-d, the shape of ``attention_mask``) padded on
    the right to ``width`` columns; other tensors (per-sequence, flat MLM labels, scalars)
    unchanged. ``width`` below the batch's width is an error: trimming is never silent."""
    mask = batch["attention_mask"]
    shape = tuple(mask.shape)
    B, T = shape
    if width < T:
        raise ValueError(f"pad_batch: width {width} is below the batch's {T} columns")
    if width == T:
        return batch
    out = {}
    for k, v in batch.items():
        if v.dim() == 2 and tuple(v.shape) == shape:
            padded = torch.full((B, width), PAD_ID if k in _ID_KEYS else 0, dtype=v.dtype,
                                device=v.device)
            padded[:, :T] = v
            v = padded
        out[k] = v
    return out


def bucket_batch(batch: dict[str, torch.Tensor], multiple: int, cap: int
                 ) -> dict[str, torch.Tensor]:
    """``batch`` (padded to its longest sequence, as every task builds it) padded further to
    that length's bucket (``bucket_width``)."""
    return pad_batch(batch, bucket_width(batch["attention_mask"].shape[1], multiple, cap))
