"""EncoderConfig: everything that fixes an encoder's shape and regularisation, built from the
run config for the main model (``EncoderConfig.main``: [model]) or the auxiliary MLM
(``EncoderConfig.aux``: [aux] sizes on [model]'s settings).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from trainer.config.run import RunConfig
from trainer.config.sections import AuxConfig, ConfigError, EncoderShape, shape_fields
from trainer.tokenizer import NUM_SPECIAL


@dataclass(frozen=True)
class EncoderConfig(EncoderShape):
    """Everything that fixes an encoder's shape and regularisation: the shape fields of
    [model] (EncoderShape) plus the vocabulary and the longest sequence."""

    vocab_size: int = field(kw_only=True)
    max_seq_len: int = 512

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
        return cls(vocab_size=run_cfg.tokenizer.vocab_size, max_seq_len=run_cfg.data.max_seq_len,
                   **{name: getattr(m, name) for name in shape_fields()})

    @classmethod
    def aux(cls, run_cfg: RunConfig) -> EncoderConfig:
        """The auxiliary MLM: each [aux] key replaces [model]'s of the same name, 0 meaning
        "as the main model"; the rest as main."""
        m, a = run_cfg.model, run_cfg.aux
        sizes = {f.name: getattr(a, f.name) or getattr(m, f.name) for f in fields(AuxConfig)}
        return cls(vocab_size=run_cfg.tokenizer.vocab_size, max_seq_len=run_cfg.data.max_seq_len,
                   **({name: getattr(m, name) for name in shape_fields()} | sizes))
