"""The fine-tuning model: the pre-trained encoder plus ELECTRA's head (dropout, dense, GELU,
dropout, out_proj) on [CLS] or on the mean token state, and its optimizer with ELECTRA's
layer-wise lr decay.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.model.encoder import INIT_STD, Encoder
from trainer.model.params import weight_decay_groups
from trainer.tools.finetune.config import (
    FinetuneConfig,
)


class ClassificationHead(nn.Module):
    """On the pooled state: dropout, dense, activation, dropout, out_proj (ELECTRA)."""

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float, activation: str):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, num_outputs)
        self.dropout = dropout
        self.activation = torch.tanh if activation == "tanh" else F.gelu
        for layer in (self.dense, self.out_proj):
            nn.init.normal_(layer.weight, std=INIT_STD)
            nn.init.zeros_(layer.bias)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        x = F.dropout(cls, self.dropout, self.training)  # (B, H)
        x = F.dropout(self.activation(self.dense(x)), self.dropout, self.training)
        return self.out_proj(x)  # (B, C)


class FinetuneModel(nn.Module):
    """Encoder + ClassificationHead: (B, C) logits, or (B, 1) predictions for regression."""

    def __init__(self, encoder: Encoder, num_outputs: int, ft: FinetuneConfig):
        super().__init__()
        self.encoder = encoder
        self.encoder.set_dropout(ft.dropout, ft.attention_dropout)
        self.head = ClassificationHead(encoder.cfg.hidden_size, num_outputs, ft.dropout,
                                       ft.head_activation)
        self.pooling = ft.pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask)  # (B, T, H)
        return self.head(pool(hidden, attention_mask, self.pooling))  # (B, C)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, H) token states -> (B, H): the [CLS] state, or the mean over the real tokens
    (attention_mask (B, T), 1 = token, 0 = padding)."""
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def layer_depth(name: str, num_layers: int) -> int:
    """ELECTRA's depth of a parameter: embeddings 0, block k k+1, head num_layers + 2. The
    relative position table, shared by all blocks and read with the inputs, counts as an
    embedding; a pre-LN final LayerNorm belongs to the top block."""
    if name.startswith("head."):
        return num_layers + 2
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    if name.startswith("encoder.final_ln."):
        return num_layers
    return 0


def param_groups(model: FinetuneModel, ft: FinetuneConfig) -> list[dict]:
    """One group per (depth, decayed or not), lr = ft.lr * layer_decay^(L + 2 - depth), as in
    ELECTRA's _get_layer_lrs (so the top block gets lr * d^2 and the embeddings
    lr * d^(L+2)); which parameters are decayed is trainer.model.params.weight_decay_groups'
    rule."""
    decayed = {id(p) for p in weight_decay_groups(model, ft.weight_decay)[0]["params"]}
    L = model.encoder.cfg.num_layers
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        depth, decay = layer_depth(name, L), id(p) in decayed
        group = groups.setdefault((depth, decay), {
            "params": [], "names": [], "depth": depth,
            "lr": ft.lr * ft.layer_decay ** (L + 2 - depth),
            "weight_decay": ft.weight_decay if decay else 0.0})
        group["params"].append(p)
        group["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: FinetuneModel, ft: FinetuneConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, ft)
    betas = (ft.adam_beta1, ft.adam_beta2)
    if ft.optimizer == "adamax":
        return torch.optim.Adamax(groups, lr=ft.lr, betas=betas, eps=ft.adam_eps)
    return torch.optim.AdamW(groups, lr=ft.lr, betas=betas, eps=ft.adam_eps)
