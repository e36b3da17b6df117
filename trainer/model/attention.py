"""Self-attention with the shared relative position bias, two ways (``model.attention``):

sdpa  ``F.scaled_dot_product_attention`` with the bias and the padding mask as one additive
      (B, nh, T, T) float mask (``sdpa_bias``). The bias requires grad, which only the
      memory-efficient kernel (or the math one) accepts, and it and its gradient are built
      in full at every forward.
flex  ``flex_attention`` with a ``score_mod`` that adds ``table[bucket[q, k], h]`` inside the
      kernel and a ``block_mask`` that drops padded keys (``FlexInputs``): no (B, nh, T, T)
      tensor exists, forward or backward; the table's gradient is accumulated by the kernel.
      On CUDA the call goes through one ``torch.compile(flex_attention)`` made on first use
      (eager flex_attention is an unfused reference that builds the scores); on CPU the eager
      one runs, forward only: torch's flex_attention has no CPU backward. It has no dropout on
      the attention probabilities either, so a call asking for attention dropout > 0 runs on
      the sdpa path (same function), and the config refuses ``attention = "flex"`` with
      ``attention_dropout > 0`` so that pre-training never falls back silently.

Both compute softmax(q k^T / sqrt(hd) + bias) v over the real keys; they differ only in rows
whose keys are all padding (sdpa: a uniform average, flex: zeros), which no loss reads.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import flex_attention as flex

from trainer.model.dropout import dropout
from trainer.model.encoder_config import EncoderConfig

ATTENTION_KINDS = ("sdpa", "flex")


@dataclass(frozen=True)
class FlexInputs:
    """What every layer's flex_attention call shares for one batch."""

    score_mod: Callable | None  # adds the relative bias; None with absolute positions
    block_mask: flex.BlockMask  # padding: key k of row b is attended iff attention_mask[b, k]
    sdpa_bias: Callable[[torch.dtype], torch.Tensor]  # the sdpa path's mask, for dropout calls


def sdpa_bias(table: torch.Tensor | None, buckets: torch.Tensor | None,
              attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Relative bias plus padding as one additive float mask: (B, nh, T, T) with a (buckets,
    nh) ``table`` in nats and its (T, T) ``buckets`` index, (B, 1, 1, T) without."""
    keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): 1 = real key
    # finfo.min rather than -inf: a row whose keys are all padding then gets a uniform
    # (ignored) distribution instead of NaNs that would poison the backward pass.
    neg = torch.finfo(dtype).min
    pad = torch.where(keep, torch.zeros((), dtype=dtype, device=keep.device), neg)
    if table is None:
        return pad  # (B, 1, 1, T)
    rel = table[buckets].permute(2, 0, 1)[None].to(dtype)  # (1, nh, T, T)
    # rel + (0 or finfo.min): finfo.min absorbs any bias below ~1e31 in rounding, so this
    # is exactly where(keep, rel, finfo.min), and 2-3x faster than torch.where on CPU.
    return rel + pad  # (B, nh, T, T)


def rel_bias_score_mod(table: torch.Tensor, buckets: torch.Tensor) -> Callable:
    """score_mod adding ``table[buckets[q, k], h]``: table (buckets, nh) float (may require
    grad), buckets (T, T) long, indexed [query, key] as in ``sdpa_bias``."""

    def score_mod(score, b, h, q_idx, kv_idx):  # scalars: flex vmaps over (b, h, q, kv)
        return score + table[buckets[q_idx, kv_idx], h]

    return score_mod


def padding_block_mask(attention_mask: torch.Tensor) -> flex.BlockMask:
    """BlockMask keeping the real keys of each row (attention_mask (B, T), 1 = real); one for
    all heads. Blocks of 128 keys that are all padding are skipped by the kernel."""
    keep = attention_mask.bool()  # (B, T)
    B, T = keep.shape

    def mask_mod(b, h, q_idx, kv_idx):
        return keep[b, kv_idx]

    return flex.create_block_mask(mask_mod, B, None, T, T, device=keep.device)


def flex_inputs(table: torch.Tensor | None, buckets: torch.Tensor | None,
                attention_mask: torch.Tensor) -> FlexInputs:
    # Looked up at call time (not bound at import), so that a test can swap either builder.
    score_mod = rel_bias_score_mod(table, buckets) if table is not None else None
    return FlexInputs(score_mod, padding_block_mask(attention_mask),
                      functools.partial(sdpa_bias, table, buckets, attention_mask))


@functools.cache
def compiled_flex_attention() -> Callable:
    """One compiled flex_attention per process: each call with a new score_mod closure over
    tensors of the same shapes reuses its kernels (dynamo guards on the code, not the closure)."""
    return torch.compile(flex.flex_attention)


def flex_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                inputs: FlexInputs) -> torch.Tensor:
    """flex_attention over (B, nh, T, hd) q, k, v -> (B, nh, T, hd)."""
    if q.device.type == "cuda" and not torch.compiler.is_compiling():
        fn = compiled_flex_attention()
    else:  # inside a compiled region dynamo fuses the plain call itself; on CPU: eager
        fn = flex.flex_attention
    try:
        return fn(q, k, v, score_mod=inputs.score_mod, block_mask=inputs.block_mask)
    except NotImplementedError as e:  # e.g. a CPU backward
        raise NotImplementedError(f"model.attention = 'flex' on {q.device.type}: {e} Train "
                                  f"with model.attention = 'sdpa' there (the same weights "
                                  f"and function).") from e


class SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)  # one matmul for q, k, v
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | FlexInputs, attention_dropout: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """bias: the sdpa path's additive mask (``sdpa_bias``) or the flex path's inputs.
        attention_dropout: the rate to apply (0 = none; the caller decides whether dropout
        is on). generator: draw the attention-dropout mask from it rather than the global RNG,
        which SDPA cannot do, so that path computes the softmax itself."""
        B, T, H = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, H // self.num_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        if isinstance(bias, FlexInputs):
            if attention_dropout == 0.0:
                y = flex_attend(q, k, v, bias)  # (B, nh, T, hd)
                return self.out(y.transpose(1, 2).reshape(B, T, H))  # (B, T, H)
            bias = bias.sdpa_bias(q.dtype)  # flex has no dropout on probabilities
        if bias.dtype != q.dtype:  # only when the caller's dtype guess was wrong
            bias = bias.to(q.dtype)
        if generator is not None and attention_dropout > 0.0:
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias  # (B, nh, T, T)
            attn = dropout(scores.float().softmax(-1), attention_dropout, generator)
            y = attn.to(v.dtype) @ v  # (B, nh, T, hd)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                               dropout_p=attention_dropout)
        return self.out(y.transpose(1, 2).reshape(B, T, H))  # (B, T, H)
