# Copyright the fast-electra authors. Apache-2.0.
"""FastElectraConfig: the shape of a fast-electra encoder, for transformers' Auto classes.

This file and modeling_fast_electra.py are written into every model folder that
``fast-electra hf export`` makes for an encoder HF ELECTRA cannot hold (T5 relative
positions, pre-LN, Admin residual scales). They depend only on torch and transformers (>= 5).
"""

from transformers import PreTrainedConfig


class FastElectraConfig(PreTrainedConfig):
    """Fields keep transformers' usual names where one exists."""

    model_type = "fast_electra"

    vocab_size: int = 32000
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    position: str = "relative"
    """"relative": one T5 bucketed bias table shared by all layers; "absolute": learned rows."""
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    max_position_embeddings: int = 512
    """Longest input; the absolute position table has this many rows."""
    layer_norm: str = "post"
    """"post": x = LN(scale * x + f(x)) with learned per-channel residual scales (Admin);
    "pre": x = x + f(LN(x)) and a final LayerNorm."""
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None
    """Dropout of the sequence / token classification heads; None = hidden_dropout_prob."""
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        if self.position not in ("relative", "absolute"):
            raise ValueError(f"FastElectraConfig.position must be 'relative' or 'absolute', "
                             f"got {self.position!r}")
        if self.layer_norm not in ("post", "pre"):
            raise ValueError(f"FastElectraConfig.layer_norm must be 'post' or 'pre', "
                             f"got {self.layer_norm!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"FastElectraConfig.num_attention_heads ({self.num_attention_heads})"
                             f" must divide hidden_size ({self.hidden_size})")
        super().__post_init__(**kwargs)
