"""The ELECTRA encoder: a BERT-style Transformer with T5 relative position buckets (one bias
table shared by all layers, trainer.model.positions) or learned absolute positions, SDPA or
flex attention (trainer.model.attention), post-LN with Admin initialisation (default) or
pre-LN. Its two heads and the models built on it are in trainer.model.heads, its shape in
trainer.model.encoder_config, exact parameter counts (paper Table 2) in
trainer.model.params.

    from trainer.config.load import load_config
    from trainer.model.dropout import DropoutPlan
    from trainer.model.encoder_config import EncoderConfig
    from trainer.model.heads import Discriminator, MLMModel
    from trainer.model.params import count_parameters

    cfg = load_config("configs/base.toml")
    disc = Discriminator(EncoderConfig.main(cfg))         # the model being pre-trained
    aux = MLMModel(EncoderConfig.aux(cfg))                # the auxiliary MLM (generator)

    rtd_logits = disc(input_ids, attention_mask)          # (B, T) one logit per token
    mlm_logits = aux(input_ids, attention_mask,           # (N, V): the vocabulary projection
                     positions_mask=input_ids == MASK_ID) # runs only at the N masked positions
    aux.encoder.set_dropout(0.2, 0.2)                     # takes effect at the next forward
    aux(ids, mask, positions_mask=sel,                    # per-call rates and masks from
        dropout=DropoutPlan(0.2, 0.0, generator))         # one generator: thread-safe
    count_parameters(EncoderConfig.main(cfg), head="rtd") # {"embeddings": ..., "total": ...}

Initialisation. Every Linear / Embedding weight is N(0, 0.02) with zero biases (BERT). Post-LN
blocks additionally use Admin (Liu et al. 2020, "Understanding the Difficulty of Training
Transformers"): each residual is ``LN(omega * x + f(x))`` with a learnable per-channel
``omega``. Plain post-LN leans heavily on its residual branches (a branch as large as its input
is half of the block's output), which amplifies the effect of each parameter update by the
depth; at a peak learning rate of 1e-3 (train.lr) and 24 layers that is the classic post-LN
divergence, and the project's setting (model.layer_norm: "post-LN, with Admin-style init")
follows the paper there. Residual i (attn 1, ffn 1, attn 2, ...) starts at omega_i = sqrt(i):
the scale a pre-LN stream reaches when the embedding and each branch before it add one unit of
variance, so that a unit-size branch is ~1/(i+1) of its output, as in pre-LN (sqrt(4) = 2 at
the last residual of a 2-layer model, sqrt(24) = 4.9 for 12 layers, sqrt(48) = 6.9 for 24).
Why not the branch variances Admin profiles: the paper's Xavier-initialised branches have
Var[f] ~ Var[x], ours have 0.003 (width 128) to 0.25 (width 1024) at init, which gives omegas
of about 1 (1.6 at the last base residual, 2.7 large: close to a no-op), and that smallness
does not outlast the start of training (Var[f] / Var[x] > 10 after 25 steps at lr 1e-3 in a
small model, measured). ``Encoder.admin_init_`` still runs Admin's profiling pass, counting
each branch at max(1, Var[f] / Var[x]): every BERT-initialised model here gets exactly sqrt(i),
a re-profiled trained one (real data may be passed) its measured sizes, and
``min_branch_var=0`` the literal profile. It runs at construction on a small random batch (no
data needed) and is skipped on the meta device; imports of HF checkpoints set omega = 1 (plain
post-LN, exact). Pre-LN needs no such fix: its residual stream is never normalised, so it uses
plain BERT init and a final LayerNorm.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.model.attention import FlexInputs, SelfAttention, flex_inputs, sdpa_bias
from trainer.model.dropout import DropoutPlan, dropout
from trainer.model.encoder_config import EncoderConfig
from trainer.model.positions import relative_bias_prior, relative_position_bucket
from trainer.tokenizer import NUM_SPECIAL

INIT_STD = 0.02  # BERT


class FeedForward(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.up = nn.Linear(cfg.hidden_size, cfg.ffn_size)
        self.down = nn.Linear(cfg.ffn_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))  # (B, T, H)


class Block(nn.Module):
    """post: x = LN(omega * x + drop(f(x)))   (Admin; omega = 1 is plain BERT post-LN)
    pre:  x = x + drop(f(LN(x)))"""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.post_ln = cfg.layer_norm == "post"
        self.attn = SelfAttention(cfg)
        self.ffn = FeedForward(cfg)
        self.ln_attn = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.ln_ffn = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        if self.post_ln:
            self.omega_attn = nn.Parameter(torch.ones(cfg.hidden_size))
            self.omega_ffn = nn.Parameter(torch.ones(cfg.hidden_size))

    def forward(self, x: torch.Tensor, bias: torch.Tensor, p: float, p_attention: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """p / p_attention: the hidden / attention dropout rates to apply (0 = none)."""
        if self.post_ln:
            h = self.attn(x, bias, p_attention, generator)
            x = self.ln_attn(self.omega_attn * x + dropout(h, p, generator))
            h = self.ffn(x)
            return self.ln_ffn(self.omega_ffn * x + dropout(h, p, generator))
        x = x + dropout(self.attn(self.ln_attn(x), bias, p_attention, generator), p, generator)
        return x + dropout(self.ffn(self.ln_ffn(x)), p, generator)  # (B, T, H)


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------

class Encoder(nn.Module):
    """Token ids -> contextual hidden states (B, T, H).

    ``word_embeddings`` lets two encoders share one embedding table (joint ELECTRA training);
    by default the encoder owns its own.
    """

    def __init__(self, cfg: EncoderConfig, word_embeddings: nn.Embedding | None = None):
        super().__init__()
        self.cfg = cfg
        # Plain attributes, read at every forward, so that set_dropout (the dropout curricula
        # of the corruption schedule) needs no rebuild and no module surgery.
        self.dropout = cfg.dropout
        self.attention_dropout = cfg.attention_dropout
        if word_embeddings is not None and tuple(word_embeddings.weight.shape) != (
                cfg.vocab_size, cfg.hidden_size):
            raise ValueError(f"shared word_embeddings have shape "
                             f"{tuple(word_embeddings.weight.shape)}, this encoder needs "
                             f"({cfg.vocab_size}, {cfg.hidden_size})")
        self.word_emb = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.pos_emb = (nn.Embedding(cfg.max_seq_len, cfg.hidden_size)
                        if cfg.position == "absolute" else None)
        # One (buckets, heads) table for the whole stack: T5 / the paper share it across layers.
        # Stored divided by cfg.rel_bias_scale and multiplied back in _rel_table: Adam
        # moves every entry by about lr per step whatever its scale, and a bias needs several
        # nats to single out a neighbour among dozens of keys, far more than a small run's
        # sum of learning rates; the scale makes its effective lr rel_bias_scale x train.lr.
        self.rel_bias = (nn.Parameter(torch.zeros(cfg.rel_num_buckets, cfg.num_heads))
                         if cfg.position == "relative" else None)
        self.emb_ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_ln = (nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
                         if cfg.layer_norm == "pre" else None)

        self.apply(_init_bert)
        if self.rel_bias is not None:
            with torch.no_grad():
                prior = relative_bias_prior(cfg.rel_num_buckets, cfg.rel_max_distance,
                                            cfg.num_heads).to(self.rel_bias.device)
                self.rel_bias.normal_(std=INIT_STD).add_(prior).div_(cfg.rel_bias_scale)
        if word_embeddings is not None:  # after apply(): a shared table keeps its values
            self.word_emb = word_embeddings
        if cfg.layer_norm == "post" and self.word_emb.weight.device.type != "meta":
            self.admin_init_()

    def set_dropout(self, hidden: float, attention: float) -> None:
        """Dropout rates for all subsequent forwards (train mode only)."""
        for name, p in (("hidden", hidden), ("attention", attention)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"set_dropout: {name} rate must be in [0, 1), got {p}")
        self.dropout, self.attention_dropout = float(hidden), float(attention)

    def _rel_table(self, T: int, device: torch.device
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The relative bias table in nats (buckets, nh) and the (T, T) bucket of each
        (query, key), or (None, None) with absolute positions."""
        if self.rel_bias is None:
            return None, None
        pos = torch.arange(T, device=device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None],  # key - query, (T, T)
                                           self.cfg.rel_num_buckets, self.cfg.rel_max_distance)
        return self.rel_bias * self.cfg.rel_bias_scale, buckets  # (buckets, nh), (T, T)

    def attention_bias(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Relative position bias plus padding mask as one additive float mask for SDPA:
        (B, nh, T, T) with relative positions, (B, 1, 1, T) without."""
        table, buckets = self._rel_table(attention_mask.shape[1], attention_mask.device)
        return sdpa_bias(table, buckets, attention_mask, dtype)

    def attention_inputs(self, attention_mask: torch.Tensor, dtype: torch.dtype
                         ) -> torch.Tensor | FlexInputs:
        """What every block's attention takes for this batch, by ``cfg.attention``: the sdpa
        mask (``attention_bias``) or the flex path's score_mod and block mask (nothing of
        size T x T per head)."""
        if self.cfg.attention == "sdpa":
            return self.attention_bias(attention_mask, dtype)
        table, buckets = self._rel_table(attention_mask.shape[1], attention_mask.device)
        return flex_inputs(table, buckets, attention_mask)

    def embed(self, input_ids: torch.Tensor, p: float = 0.0,
              generator: torch.Generator | None = None) -> torch.Tensor:
        B, T = input_ids.shape
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.cfg.max_seq_len}")
        x = self.word_emb(input_ids)  # (B, T, H)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(T, device=input_ids.device))  # (T, H) broadcast
        return dropout(self.emb_ln(x), p, generator)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                num_layers: int | None = None, dropout: DropoutPlan | None = None
                ) -> torch.Tensor:
        """input_ids (B, T) long; attention_mask (B, T) bool/int, 1 = real token (None = all
        real); num_layers runs only the first blocks (early exit); dropout: this call's rates
        and RNG (None = the module's rates, in train mode only). Returns (B, T, H)."""
        return self.exits(input_ids, attention_mask, [num_layers or len(self.blocks)],
                          dropout)[0]

    def exits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
              layers: list[int], dropout: DropoutPlan | None = None) -> list[torch.Tensor]:
        """The hidden states (B, T, H) after each of ``layers`` blocks (ascending), from one
        pass that stops at the last of them (the early-exit generator's exits)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        if dropout is None:
            on = self.training
            dropout = DropoutPlan(self.dropout if on else 0.0,
                                  self.attention_dropout if on else 0.0)
        p, p_attn, gen = dropout.hidden, dropout.attention, dropout.generator
        x = self.embed(input_ids, p, gen)  # (B, T, H)
        dev = x.device.type
        # Build the mask once, in the dtype SDPA will see, instead of casting it in every layer.
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        bias = self.attention_inputs(attention_mask, dtype)
        out = []
        for i, block in enumerate(self.blocks[:max(layers)], start=1):
            x = block(x, bias, p, p_attn, gen)
            if i in layers:
                out.append(x if self.final_ln is None else self.final_ln(x))
        return out  # [(B, T, H)] * len(layers)

    @torch.no_grad()
    def admin_init_(self, input_ids: torch.Tensor | None = None,
                    attention_mask: torch.Tensor | None = None,
                    min_branch_var: float = 1.0) -> list[float]:
        """Admin profiling (post-LN only): set every omega from one forward pass.

        Walking the residuals in order (attn 1, ffn 1, attn 2, ...), residual i gets

            omega_1 = 1,   omega_{i+1}^2 = omega_i^2 + max(min_branch_var, Var[f_i] / Var[x_i])

        where x_i is the residual's input and f_i = f_i(x_i) its branch: omega_i is the std
        that an un-normalised (pre-LN) stream would have reached, in units of the embedding's,
        had each branch before it added its variance relative to its input. Liu et al. profile
        Var[f] as measured (``min_branch_var=0``), with Xavier-initialised branches where it is
        O(1); under our N(0, 0.02) init it is 0.003-0.25 and a transient that training leaves
        within tens of steps, so by default each branch counts as at least one unit, the size
        Admin's analysis assumes: every BERT-initialised encoder here gets omega_i = sqrt(i),
        and only branches already larger than their input (a trained model re-profiled on real
        data) count at their measured size. The statistics are taken without dropout over real
        tokens only. Without arguments the batch is random non-special tokens (seeded, leaves
        the global RNG alone). Returns the omegas in residual order.
        """
        if self.cfg.layer_norm != "post":
            raise ValueError("admin_init_ applies to post-LN encoders only")
        if not min_branch_var >= 0.0:
            raise ValueError(f"admin_init_: min_branch_var must be >= 0, got {min_branch_var}")
        dev = self.word_emb.weight.device
        if input_ids is None:
            gen = torch.Generator().manual_seed(0)
            T = min(self.cfg.max_seq_len, 128)
            input_ids = torch.randint(NUM_SPECIAL, self.cfg.vocab_size, (2, T), generator=gen)
            input_ids = input_ids.to(dev)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        real = attention_mask.bool()  # (B, T)
        was_training = self.training
        self.eval()
        x = self.embed(input_ids)  # (B, T, H)
        bias = self.attention_inputs(attention_mask, x.dtype)
        omega_sq, omegas = 1.0, []
        for block in self.blocks:
            for sublayer in ("attn", "ffn"):  # the two residuals of Block.forward, in order
                w = getattr(block, f"omega_{sublayer}")
                ln = getattr(block, f"ln_{sublayer}")
                h = block.attn(x, bias, 0.0) if sublayer == "attn" else block.ffn(x)
                omega = math.sqrt(omega_sq)
                w.fill_(omega)
                omegas.append(omega)
                ratio = h[real].float().var().item() / x[real].float().var().item()
                omega_sq += max(min_branch_var, ratio)
                x = ln(w * x + h)
        self.train(was_training)
        return omegas

    @torch.no_grad()
    def rescale_to_init_(self, rms: float = INIT_STD) -> float:
        """Rescale the word embeddings back to the initialisation's RMS ``rms``; the embedding
        LayerNorm that follows removes their scale, so the function is unchanged up to its eps.
        With relative positions each row is rescaled on its own; with absolute positions the
        word and position tables by one common factor (LN(c (w + p)) = LN(w + p)).

        Why: Adam's steps have a fixed size, so a row in front of a normalisation that grew
        c-fold turns c-fold slower. Pre-training at the demo's lr grows the word embeddings
        ~2.4x, and a fine-tuning run started from them then adapts them far slower than a
        random init's: measured, that costs the pre-trained encoder ~3 accuracy points
        (docs/evaluation-and-finetuning.md, "Does pre-training pay?"). Returns the mean factor
        applied."""
        w = self.word_emb.weight  # (V, H)
        if self.pos_emb is None:
            c = rms / w.pow(2).mean(1, keepdim=True).sqrt().clamp(min=1e-12)  # (V, 1)
        else:
            c = rms / w.pow(2).mean().sqrt().clamp(min=1e-12)
            self.pos_emb.weight.mul_(c)
        w.mul_(c)
        return c.mean().item()


def _init_bert(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=INIT_STD)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=INIT_STD)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
