"""Parameters as numbers and as optimizer groups: the exact count from an EncoderConfig without
building the model (paper Table 2; trainer.tools.cost), and AdamW's decay / no-decay groups.
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn

from trainer.model.encoder_config import EncoderConfig


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: no decay on biases, LayerNorm, Admin omegas (all 1-D) and the
    relative position bias table (a bias, though 2-D). Tied parameters appear once."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # deduplicated: tied weights appear once
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith("rel_bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def count_parameters(cfg: EncoderConfig, head: Literal["none", "mlm", "rtd"] = "none"
                     ) -> dict[str, int]:
    """Exact parameter count from the config, without building the model.

    Returns ``embeddings`` (word + absolute position tables; the tied MLM projection is counted
    here, once), ``encoder`` (everything in Encoder, embeddings included), ``head`` and
    ``total``. tests/trainer/model/test_params.py checks it against sum(p.numel()) of real models.
    """
    H, F_, V, L = cfg.hidden_size, cfg.ffn_size, cfg.vocab_size, cfg.num_layers
    embeddings = V * H + (cfg.max_seq_len * H if cfg.position == "absolute" else 0)
    per_block = (3 * H * H + 3 * H) + (H * H + H)  # attention: qkv + output projection
    per_block += (H * F_ + F_) + (F_ * H + H)  # feed-forward
    per_block += 2 * 2 * H  # two LayerNorms
    per_block += 2 * H if cfg.layer_norm == "post" else 0  # Admin omegas
    encoder = embeddings + 2 * H + L * per_block  # + embedding LayerNorm
    encoder += cfg.rel_num_buckets * cfg.num_heads if cfg.position == "relative" else 0
    encoder += 2 * H if cfg.layer_norm == "pre" else 0  # final LayerNorm
    heads = {"none": 0,
             "mlm": (H * H + H) + 2 * H + V,  # dense, LayerNorm, output bias (weight tied)
             "rtd": (H * H + H) + (H + 1)}
    return {"embeddings": embeddings, "encoder": encoder, "head": heads[head],
            "total": encoder + heads[head]}
