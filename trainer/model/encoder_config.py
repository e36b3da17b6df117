"""EncoderConfig: everything that fixes an encoder's shape and regularisation, built from the
run config for the main model (``EncoderConfig.main``: [model]) or the auxiliary MLM
(``EncoderConfig.aux``: [aux] sizes on [model]'s settings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trainer.config.run import RunConfig
from trainer.config.sections import ConfigError
from trainer.tokenizer import NUM_SPECIAL


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
    attention: Literal["sdpa", "flex"] = "sdpa"

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
        check(self.attention in ("sdpa", "flex"), "attention",
              f"must be 'sdpa' or 'flex', got {self.attention!r}")
        check(self.attention != "flex" or self.attention_dropout == 0.0, "attention",
              f"'flex' has no dropout on attention probabilities: set attention_dropout to 0 "
              f"(got {self.attention_dropout}) or use 'sdpa'")

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
                   attention_dropout=m.attention_dropout, layer_norm_eps=m.layer_norm_eps,
                   attention=m.attention)

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
                   attention_dropout=m.attention_dropout, layer_norm_eps=m.layer_norm_eps,
                   attention=m.attention)
