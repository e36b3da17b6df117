"""The ELECTRA encoder, its two heads, and exact parameter counts (paper Table 2).

Everything is in this one file, nanoGPT style: a BERT-style Transformer encoder with T5 relative
position buckets (one bias table shared by all layers) or learned absolute positions, SDPA
attention, post-LN with Admin initialisation (default) or pre-LN, an MLM head tied to the word
embeddings and an RTD (replaced token detection) head.

    from trainer.config import load_config
    from trainer.model import Discriminator, EncoderConfig, MLMModel, count_parameters

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
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.config.sections import ConfigError, RunConfig
from trainer.tokenizer import NUM_SPECIAL

INIT_STD = 0.02  # BERT


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EncoderConfig:
    """Everything that fixes an encoder's shape and regularisation."""

    vocab_size: int
    num_layers: int
    hidden_size: int
    num_heads: int
    ffn_size: int
    position: Literal["relative", "absolute"] = "relative"
    rel_num_buckets: int = 32
    rel_max_distance: int = 128
    rel_bias_scale: float = 1.0
    max_seq_len: int = 512
    layer_norm: Literal["post", "pre"] = "post"
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        def check(ok: bool, name: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"EncoderConfig.{name}: {msg}")

        check(self.vocab_size > NUM_SPECIAL, "vocab_size",
              f"must be > {NUM_SPECIAL} (the special tokens), got {self.vocab_size}")
        for name in ("num_layers", "hidden_size", "num_heads", "ffn_size", "max_seq_len"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        check(self.hidden_size % self.num_heads == 0, "num_heads",
              f"must divide hidden_size ({self.hidden_size}), got {self.num_heads}")
        check(self.position in ("relative", "absolute"), "position",
              f"must be 'relative' or 'absolute', got {self.position!r}")
        check(self.layer_norm in ("post", "pre"), "layer_norm",
              f"must be 'post' or 'pre', got {self.layer_norm!r}")
        if self.position == "relative":
            # Bidirectional T5 buckets: half per direction, half of those exact, so at least 4
            # buckets are needed for one exact and one logarithmic bucket per direction.
            check(self.rel_num_buckets >= 4, "rel_num_buckets",
                  f"must be >= 4 for bidirectional buckets, got {self.rel_num_buckets}")
            check(self.rel_max_distance > self.rel_num_buckets // 4, "rel_max_distance",
                  f"must be > rel_num_buckets // 4 = {self.rel_num_buckets // 4} (the largest "
                  f"exactly bucketed distance), got {self.rel_max_distance}")
        check(self.rel_bias_scale > 0, "rel_bias_scale", f"must be > 0, got {self.rel_bias_scale}")
        for name in ("dropout", "attention_dropout"):
            p = getattr(self, name)
            check(0.0 <= p < 1.0, name, f"must be in [0, 1), got {p}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def main(cls, run_cfg: RunConfig) -> EncoderConfig:
        """The discriminator: [model] plus the tokenizer's vocabulary and data.max_seq_len."""
        m = run_cfg.model
        return cls(vocab_size=run_cfg.tokenizer.vocab_size, num_layers=m.num_layers,
                   hidden_size=m.hidden_size, num_heads=m.num_heads, ffn_size=m.ffn_size,
                   position=m.position, rel_num_buckets=m.rel_num_buckets,
                   rel_max_distance=m.rel_max_distance, rel_bias_scale=m.rel_bias_scale,
                   max_seq_len=run_cfg.data.max_seq_len,
                   layer_norm=m.layer_norm, dropout=m.dropout,
                   attention_dropout=m.attention_dropout, layer_norm_eps=m.layer_norm_eps)

    @classmethod
    def aux(cls, run_cfg: RunConfig) -> EncoderConfig:
        """The auxiliary MLM: [aux] sizes, 0 meaning "as the main model"; the rest as main."""
        m, a = run_cfg.model, run_cfg.aux
        return cls(vocab_size=run_cfg.tokenizer.vocab_size, num_layers=a.num_layers,
                   hidden_size=a.hidden_size or m.hidden_size,
                   num_heads=a.num_heads or m.num_heads, ffn_size=a.ffn_size or m.ffn_size,
                   position=m.position, rel_num_buckets=m.rel_num_buckets,
                   rel_max_distance=m.rel_max_distance, rel_bias_scale=m.rel_bias_scale,
                   max_seq_len=run_cfg.data.max_seq_len,
                   layer_norm=m.layer_norm, dropout=m.dropout,
                   attention_dropout=m.attention_dropout, layer_norm_eps=m.layer_norm_eps)


# ---------------------------------------------------------------------------------------------
# Relative positions (T5)
# ---------------------------------------------------------------------------------------------

def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """T5 bidirectional buckets of ``key_pos - query_pos``: one bucket per distance up to
    num_buckets // 4 in each direction, then logarithmically wider buckets up to max_distance,
    beyond which all distances share the last bucket."""
    half = num_buckets // 2
    bucket = (relative_position > 0).long() * half  # keys to the right use the upper half
    distance = relative_position.abs()
    max_exact = half // 2
    # clamp(min=1) only keeps log() finite where the exact branch is taken anyway
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(
        max_distance / max_exact)
    large = (max_exact + (log_ratio * (half - max_exact)).long()).clamp(max=half - 1)
    return bucket + torch.where(distance < max_exact, distance, large)


def relative_bias_prior(num_buckets: int, max_distance: int, num_heads: int) -> torch.Tensor:
    """Initial (buckets, heads) relative bias in nats: head h prefers nearby keys by
    -slope_h * log(1 + d), d the smallest distance in the bucket, slopes evenly spaced from 0
    (head 0: no preference, global) to 2 (last head: a neighbour gets ~2.2 nats more than a
    key 2 tokens further). Symmetric: which side matters is left to training. A locality
    prior (as in ALiBi) gives a small model word order from step 0 instead of after the
    table has drifted there. Computed on the CPU (also under a meta-device context)."""
    cpu = torch.device("cpu")
    d = torch.arange(-2 * max_distance, 2 * max_distance + 1, device=cpu)
    buckets = relative_position_bucket(d, num_buckets, max_distance)
    nearest = torch.full((num_buckets,), float(2 * max_distance), device=cpu)
    nearest = nearest.scatter_reduce(0, buckets, d.abs().float(), reduce="amin")
    slopes = torch.linspace(0.0, 2.0, num_heads, device=cpu)
    return -nearest.log1p()[:, None] * slopes[None, :]  # (buckets, heads)


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DropoutPlan:
    """Dropout for one forward pass, given by the caller instead of read from the module:
    these rates apply whatever the module's train/eval mode, with masks drawn from
    ``generator`` (the global RNG when None). A shared frozen model (the aux of the
    corruption step, used by several RunInference threads) is then never mutated, and each
    call's masks depend on its own generator only."""

    hidden: float = 0.0
    attention: float = 0.0
    generator: torch.Generator | None = None

    def __post_init__(self):
        for name, p in (("hidden", self.hidden), ("attention", self.attention)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"DropoutPlan: {name} rate must be in [0, 1), got {p}")


def dropout(x: torch.Tensor, p: float, generator: torch.Generator | None = None
            ) -> torch.Tensor:
    """Inverted dropout at rate p (0 = identity), its mask from ``generator`` if given."""
    if p == 0.0:
        return x
    if generator is None:
        return F.dropout(x, p, True)
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return x * keep / (1.0 - p)


class SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)  # one matmul for q, k, v
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, attention_dropout: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """attention_dropout: the rate to apply (0 = none; the caller decides whether dropout
        is on). generator: draw the attention-dropout mask from it rather than the global RNG,
        which SDPA cannot do, so that path computes the softmax itself."""
        B, T, H = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, H // self.num_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
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
        # Stored divided by cfg.rel_bias_scale and multiplied back in attention_bias: Adam
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

    def attention_bias(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Relative position bias plus padding mask as one additive float mask for SDPA:
        (B, nh, T, T) with relative positions, (B, 1, 1, T) without."""
        B, T = attention_mask.shape
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): 1 = real key
        # finfo.min rather than -inf: a row whose keys are all padding then gets a uniform
        # (ignored) distribution instead of NaNs that would poison the backward pass.
        neg = torch.finfo(dtype).min
        pad = torch.where(keep, torch.zeros((), dtype=dtype, device=keep.device), neg)
        if self.rel_bias is None:
            return pad  # (B, 1, 1, T)
        pos = torch.arange(T, device=keep.device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None],  # key - query, (T, T)
                                           self.cfg.rel_num_buckets, self.cfg.rel_max_distance)
        table = self.rel_bias * self.cfg.rel_bias_scale  # (buckets, nh), in nats
        rel = table[buckets].permute(2, 0, 1)[None].to(dtype)  # (1, nh, T, T)
        # rel + (0 or finfo.min): finfo.min absorbs any bias below ~1e31 in rounding, so this
        # is exactly where(keep, rel, finfo.min), and 2-3x faster than torch.where on CPU.
        return rel + pad  # (B, nh, T, T)

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
        bias = self.attention_bias(attention_mask, dtype)
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
        bias = self.attention_bias(attention_mask, x.dtype)
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


def _init_bert(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=INIT_STD)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=INIT_STD)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


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

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor | None = None
                ) -> torch.Tensor:
        """hidden (B, T, H); positions (B, T) bool selects where to predict. Returns (N, V)
        for the N selected positions in row-major (batch, then time) order, or (B, T, V)."""
        if positions is not None:
            if positions.dtype != torch.bool or positions.shape != hidden.shape[:2]:
                raise ValueError(f"positions must be a bool mask of shape "
                                 f"{tuple(hidden.shape[:2])}, got {positions.dtype} "
                                 f"{tuple(positions.shape)}")
            # Gather first: the (H x V) projection is the dominant cost and only ~15% of the
            # positions are predicted.
            hidden = hidden[positions]  # (N, H)
        h = self.ln(F.gelu(self.dense(hidden)))  # (..., H)
        return F.linear(h, self.weight, self.bias)  # (..., V)


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
                positions_mask: torch.Tensor | None = None, dropout: DropoutPlan | None = None
                ) -> torch.Tensor:
        """(N, V) logits at positions_mask, or (B, T, V) without one."""
        return self.head(self.encoder(input_ids, attention_mask, dropout=dropout),
                         positions_mask)

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


# ---------------------------------------------------------------------------------------------
# Analytic parameter count
# ---------------------------------------------------------------------------------------------

def count_parameters(cfg: EncoderConfig, head: Literal["none", "mlm", "rtd"] = "none"
                     ) -> dict[str, int]:
    """Exact parameter count from the config, without building the model.

    Returns ``embeddings`` (word + absolute position tables; the tied MLM projection is counted
    here, once), ``encoder`` (everything in Encoder, embeddings included), ``head`` and
    ``total``. tests/trainer/test_model.py checks it against sum(p.numel()) of real models.
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
