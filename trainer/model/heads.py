"""The two heads and the two models built on the encoder: MLMHead (tied to the word embeddings,
run at the masked positions only) + Encoder = MLMModel, the auxiliary model (generator);
RTDHead (one logit per token) + Encoder = Discriminator, the model being pre-trained.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.model.dropout import DropoutPlan
from trainer.model.encoder import Encoder, _init_bert
from trainer.model.encoder_config import EncoderConfig

# ---------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------

class MLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> vocabulary projection tied to the word embeddings."""

    def __init__(self, cfg: EncoderConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.weight = word_embeddings.weight  # tied: the very same Parameter, (V, H)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.apply(_init_bert)

    @torch.no_grad()
    def init_unigram_(self, logprobs: torch.Tensor) -> None:
        """Start the vocabulary bias at the corpus's log unigram frequencies (V,): an untrained
        model then predicts the unigram baseline instead of a uniform guess, and its first
        steps go into context rather than into learning token frequencies. Non-finite entries
        (special tokens, never a target) get the smallest finite one."""
        if logprobs.shape != self.bias.shape:
            raise ValueError(f"unigram log-probabilities must have shape "
                             f"{tuple(self.bias.shape)}, got {tuple(logprobs.shape)}")
        finite = torch.isfinite(logprobs)
        self.bias.copy_(torch.where(finite, logprobs, logprobs[finite].min()))

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor | None = None,
                index: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (B, T, H); positions (B, T) bool selects where to predict, or ``index`` (N,)
        long (``selected_index``) the same positions as flat indices into the B x T tokens.
        Returns (N, V) in row-major (batch, then time) order, or (B, T, V) with neither.
        ``index`` is the training step's form: N comes from the index's shape, where a bool
        gather must read N from the device."""
        if index is not None:
            if positions is not None or index.dtype != torch.long or index.dim() != 1:
                raise ValueError(f"index must be a 1-d long tensor given without positions, got "
                                 f"{index.dtype} {tuple(index.shape)}")
            hidden = hidden.flatten(0, 1).index_select(0, index)  # (N, H)
        elif positions is not None:
            if positions.dtype != torch.bool or positions.shape != hidden.shape[:2]:
                raise ValueError(f"positions must be a bool mask of shape "
                                 f"{tuple(hidden.shape[:2])}, got {positions.dtype} "
                                 f"{tuple(positions.shape)}")
            # Gather first: the (H x V) projection is the dominant cost and only ~15% of the
            # positions are predicted.
            hidden = hidden[positions]  # (N, H)
        h = self.ln(F.gelu(self.dense(hidden)))  # (..., H)
        return F.linear(h, self.weight, self.bias)  # (..., V)


def selected_index(mask: torch.Tensor, count: int) -> torch.Tensor:
    """The flat indices (count,) long of mask's (B, T) True entries in row-major order, for
    ``MLMHead``'s ``index``. ``count`` must be mask's number of True entries, known on the host
    (the batch's MLM labels have that length): ``nonzero_static`` then needs no host read of
    the count, which ``nonzero`` and a bool gather make on a GPU."""
    return torch.nonzero_static(mask.flatten(), size=count).squeeze(1)


class RTDHead(nn.Module):
    """dense -> GELU -> dense to one logit: "was this token replaced?"."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, 1)
        self.apply(_init_bert)

    @torch.no_grad()
    def init_prior_(self, replaced_fraction: float) -> None:
        """Start the output bias at the prior log-odds of "replaced". With a zero bias the
        cheapest way down from BCE(0.5) to the class prior is to push every token's hidden
        state onto one shared direction (the RTD "collapse": all logits equal, F1 0), which
        a single Adam-updated scalar reaches only after ~|logit(p)| / lr steps."""
        if not 0.0 < replaced_fraction < 1.0:
            raise ValueError(f"replaced_fraction must be in (0, 1), got {replaced_fraction}")
        self.out.bias.fill_(math.log(replaced_fraction / (1.0 - replaced_fraction)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.dense(hidden))).squeeze(-1)  # (B, T)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

def _num_parameters(model: nn.Module, exclude_embeddings: bool) -> int:
    # parameters() yields a tied Parameter once, so the MLM projection is not double counted.
    n = sum(p.numel() for p in model.parameters())
    if exclude_embeddings:
        n -= sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return n


class MLMModel(nn.Module):
    """Encoder + tied MLM head: the auxiliary model (generator)."""

    def __init__(self, cfg: EncoderConfig, word_embeddings: nn.Embedding | None = None):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg, word_embeddings)
        self.head = MLMHead(cfg, self.encoder.word_emb)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                positions_mask: torch.Tensor | None = None, dropout: DropoutPlan | None = None,
                positions_index: torch.Tensor | None = None) -> torch.Tensor:
        """(N, V) logits at positions_mask (or at positions_index, ``MLMHead``), or (B, T, V)
        without either."""
        return self.head(self.encoder(input_ids, attention_mask, dropout=dropout),
                         positions_mask, positions_index)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        return _num_parameters(self, exclude_embeddings)


class Discriminator(nn.Module):
    """Encoder + RTD head: the main model."""

    def __init__(self, cfg: EncoderConfig, word_embeddings: nn.Embedding | None = None):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg, word_embeddings)
        self.head = RTDHead(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        return self.head(self.encoder(input_ids, attention_mask))  # (B, T)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        return _num_parameters(self, exclude_embeddings)
