# Copyright the fast-electra authors. Apache-2.0.
"""A fast-electra encoder in transformers' terms: FastElectraModel and its heads for
pre-training (replaced-token detection), masked LM, sequence and token classification.

Written into model folders by ``fast-electra hf export`` next to
configuration_fast_electra.py and loaded with ``trust_remote_code=True``. It computes what
fast-electra's trainer.model.Encoder computes, in a form that depends only on torch and
transformers (>= 5):

- embeddings: word (+ learned absolute position) -> LayerNorm -> dropout; no token types;
- attention: scaled_dot_product_attention with one additive mask = padding (from HF's
  ``attention_mask``, 1 = real token) + the shared T5 relative-position bias (in nats);
- post-LN layers: x = LN(scale * x + dropout(f(x))), scale a learned per-channel vector
  (Admin; 1 everywhere is plain BERT post-LN); pre-LN layers: x = x + dropout(f(LN(x))) and a
  final LayerNorm;
- exact (erf) GELU everywhere, LayerNorm eps from the config (1e-5).

Shapes: B batch, T sequence, H hidden, nh heads, V vocabulary.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import ModelOutput

from .configuration_fast_electra import FastElectraConfig


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """T5 bidirectional buckets of ``key_pos - query_pos`` (fast-electra's
    trainer.model.positions, repeated here so the folder needs nothing but torch and
    transformers): one bucket per distance up to num_buckets // 4 each way, then
    logarithmically wider ones up to max_distance; keys to the right use the upper half."""
    half = num_buckets // 2
    bucket = (relative_position > 0).long() * half
    distance = relative_position.abs()
    max_exact = half // 2
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(
        max_distance / max_exact)
    large = (max_exact + (log_ratio * (half - max_exact)).long()).clamp(max=half - 1)
    return bucket + torch.where(distance < max_exact, distance, large)


class FastElectraEmbeddings(nn.Module):
    def __init__(self, config: FastElectraConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = (
            nn.Embedding(config.max_position_embeddings, config.hidden_size)
            if config.position == "absolute" else None)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None
                ) -> torch.Tensor:
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        T = x.shape[1]  # x: (B, T, H)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(torch.arange(T, device=x.device))  # (T, H)
        return self.dropout(self.LayerNorm(x))


class FastElectraAttention(nn.Module):
    def __init__(self, config: FastElectraConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.output = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, T, H = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, H // self.num_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                           dropout_p=self.dropout_p if self.training else 0.0)
        return self.output(y.transpose(1, 2).reshape(B, T, H))  # (B, T, H)


class FastElectraLayer(GradientCheckpointingLayer):
    def __init__(self, config: FastElectraConfig):
        super().__init__()
        H = config.hidden_size
        self.post_ln = config.layer_norm == "post"
        self.attention = FastElectraAttention(config)
        self.intermediate = nn.Linear(H, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, H)
        self.attention_layernorm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.output_layernorm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        if self.post_ln:
            self.attention_residual_scale = nn.Parameter(torch.ones(H))
            self.output_residual_scale = nn.Parameter(torch.ones(H))

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(F.gelu(self.intermediate(x)))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if self.post_ln:
            h = self.dropout(self.attention(x, bias))
            x = self.attention_layernorm(self.attention_residual_scale * x + h)
            h = self.dropout(self.ffn(x))
            return self.output_layernorm(self.output_residual_scale * x + h)
        x = x + self.dropout(self.attention(self.attention_layernorm(x), bias))
        return x + self.dropout(self.ffn(self.output_layernorm(x)))  # (B, T, H)


class FastElectraEncoder(nn.Module):
    def __init__(self, config: FastElectraConfig):
        super().__init__()
        self.config = config
        # One (buckets, heads) table in nats for the whole stack (T5).
        self.relative_attention_bias = (
            nn.Parameter(torch.zeros(config.relative_attention_num_buckets,
                                     config.num_attention_heads))
            if config.position == "relative" else None)
        self.layer = nn.ModuleList(FastElectraLayer(config)
                                   for _ in range(config.num_hidden_layers))
        self.final_layernorm = (nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
                                if config.layer_norm == "pre" else None)

    def attention_bias(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, nh, T, T) with relative positions, (B, 1, 1, T) without."""
        T = attention_mask.shape[1]
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        # finfo.min, not -inf: an all-padding row stays finite instead of NaN.
        pad = torch.where(keep, torch.zeros((), dtype=dtype, device=keep.device),
                          torch.finfo(dtype).min)
        if self.relative_attention_bias is None:
            return pad
        pos = torch.arange(T, device=keep.device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None],  # key - query (T, T)
                                           self.config.relative_attention_num_buckets,
                                           self.config.relative_attention_max_distance)
        rel = self.relative_attention_bias[buckets].permute(2, 0, 1)[None]  # (1, nh, T, T)
        return rel.to(dtype) + pad

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor,
                output_hidden_states: bool) -> BaseModelOutput:
        dev = x.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        bias = self.attention_bias(attention_mask, dtype)
        states = [x] if output_hidden_states else None
        for layer in self.layer:
            x = layer(x, bias)  # positional: gradient checkpointing needs it so
            if states is not None:
                states.append(x)
        if self.final_layernorm is not None:
            x = self.final_layernorm(x)
            if states is not None:
                states[-1] = x
        return BaseModelOutput(last_hidden_state=x,
                               hidden_states=tuple(states) if states is not None else None)


class FastElectraPreTrainedModel(PreTrainedModel):
    config_class = FastElectraConfig
    config: FastElectraConfig
    base_model_prefix = "fast_electra"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["FastElectraLayer"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, FastElectraLayer) and module.post_ln:
            init.ones_(module.attention_residual_scale)
            init.ones_(module.output_residual_scale)
        elif isinstance(module, FastElectraEncoder) and module.relative_attention_bias is not None:
            init.zeros_(module.relative_attention_bias)

    def _return(self, output: ModelOutput, return_dict: bool | None):
        use = return_dict if return_dict is not None else self.config.return_dict
        return output if use else output.to_tuple()


def _check_inputs(input_ids, inputs_embeds, attention_mask, token_type_ids, output_attentions):
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("give exactly one of input_ids and inputs_embeds")
    if token_type_ids is not None and bool(token_type_ids.ne(0).any()):
        raise ValueError("a fast-electra encoder has no token type (segment) embeddings; "
                         "pass no token_type_ids (its tokenizer does not return them)")
    if output_attentions:
        raise ValueError("output_attentions is not available: attention runs in "
                         "scaled_dot_product_attention, which does not return its weights")
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (batch, sequence) with 1 for real tokens, "
                         f"got shape {tuple(attention_mask.shape)}")


class FastElectraModel(FastElectraPreTrainedModel):
    def __init__(self, config: FastElectraConfig):
        super().__init__(config)
        self.embeddings = FastElectraEmbeddings(config)
        self.encoder = FastElectraEncoder(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(self, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None,
                output_attentions: bool | None = None,
                output_hidden_states: bool | None = None,
                return_dict: bool | None = None):
        """input_ids (B, T); attention_mask (B, T), 1 = real token (None = all real)."""
        _check_inputs(input_ids, inputs_embeds, attention_mask, token_type_ids,
                      output_attentions)
        x = self.embeddings(input_ids, inputs_embeds)  # (B, T, H)
        if x.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {x.shape[1]} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}; truncate the input")
        if attention_mask is None:
            attention_mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        out = self.encoder(x, attention_mask, bool(output_hidden_states))
        return self._return(out, return_dict)


@dataclass
class FastElectraForPreTrainingOutput(ModelOutput):
    """loss: BCE of the replaced-token labels over real tokens; logits (B, T)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class _HeadModel(FastElectraPreTrainedModel):
    """A FastElectraModel under ``self.fast_electra`` and a head; ``encode`` runs the former."""

    def get_input_embeddings(self):
        return self.fast_electra.embeddings.word_embeddings

    def encode(self, input_ids, attention_mask, token_type_ids, inputs_embeds,
               output_attentions, output_hidden_states) -> BaseModelOutput:
        return self.fast_electra(input_ids, attention_mask, token_type_ids, inputs_embeds,
                                 output_attentions, output_hidden_states, return_dict=True)


class FastElectraDiscriminatorPredictions(nn.Module):
    """dense -> GELU -> one logit per token: "was this token replaced?"."""

    def __init__(self, config: FastElectraConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dense_prediction = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dense_prediction(F.gelu(self.dense(hidden))).squeeze(-1)  # (B, T)


class FastElectraForPreTraining(_HeadModel):
    """The discriminator: replaced-token detection logits."""

    def __init__(self, config: FastElectraConfig):
        super().__init__(config)
        self.fast_electra = FastElectraModel(config)
        self.discriminator_predictions = FastElectraDiscriminatorPredictions(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        """labels (B, T): 1 = replaced, 0 = original; the loss counts real tokens only."""
        out = self.encode(input_ids, attention_mask, token_type_ids, inputs_embeds,
                          output_attentions, output_hidden_states)
        logits = self.discriminator_predictions(out.last_hidden_state)  # (B, T)
        loss = None
        if labels is not None:
            real = (attention_mask.bool() if attention_mask is not None
                    else torch.ones_like(logits, dtype=torch.bool))
            loss = F.binary_cross_entropy_with_logits(logits[real], labels[real].float())
        return self._return(FastElectraForPreTrainingOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states), return_dict)


class FastElectraGeneratorPredictions(nn.Module):
    """dense -> GELU -> LayerNorm, before the tied vocabulary projection."""

    def __init__(self, config: FastElectraConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(hidden)))


class FastElectraForMaskedLM(_HeadModel):
    """The generator (auxiliary MLM); its output projection is the word embeddings."""

    _tied_weights_keys = {
        "generator_lm_head.weight": "fast_electra.embeddings.word_embeddings.weight"}

    def __init__(self, config: FastElectraConfig):
        super().__init__(config)
        self.fast_electra = FastElectraModel(config)
        self.generator_predictions = FastElectraGeneratorPredictions(config)
        self.generator_lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_output_embeddings(self):
        return self.generator_lm_head

    def set_output_embeddings(self, value):
        self.generator_lm_head = value

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        """labels (B, T): target ids, -100 where no prediction is scored."""
        out = self.encode(input_ids, attention_mask, token_type_ids, inputs_embeds,
                          output_attentions, output_hidden_states)
        logits = self.generator_lm_head(
            self.generator_predictions(out.last_hidden_state))  # (B, T, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return self._return(MaskedLMOutput(loss=loss, logits=logits,
                                           hidden_states=out.hidden_states), return_dict)


def classifier_dropout(config: FastElectraConfig) -> nn.Dropout:
    """The classification heads' dropout: classifier_dropout, else hidden_dropout_prob."""
    p = config.classifier_dropout
    return nn.Dropout(config.hidden_dropout_prob if p is None else p)


class FastElectraClassificationHead(nn.Module):
    """On the first ([CLS]) token: dropout -> dense -> GELU -> dropout -> labels (as ELECTRA)."""

    def __init__(self, config: FastElectraConfig):
        super().__init__()
        self.dropout = classifier_dropout(config)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.dropout(hidden[:, 0])  # (B, H)
        return self.out_proj(self.dropout(F.gelu(self.dense(x))))  # (B, num_labels)


class FastElectraForSequenceClassification(_HeadModel):
    def __init__(self, config: FastElectraConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.fast_electra = FastElectraModel(config)
        self.classifier = FastElectraClassificationHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        """labels (B,): class ids; floats with num_labels = 1 (regression); (B, num_labels)
        floats for multi-label."""
        out = self.encode(input_ids, attention_mask, token_type_ids, inputs_embeds,
                          output_attentions, output_hidden_states)
        logits = self.classifier(out.last_hidden_state)  # (B, num_labels)
        loss = None
        if labels is not None:
            kind = self.config.problem_type
            if kind is None:
                kind = ("regression" if self.num_labels == 1 else "single_label_classification"
                        if labels.dtype in (torch.long, torch.int) else
                        "multi_label_classification")
                self.config.problem_type = kind
            if kind == "regression":
                loss = F.mse_loss(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype))
            elif kind == "single_label_classification":
                loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
            else:
                loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return self._return(SequenceClassifierOutput(loss=loss, logits=logits,
                                                     hidden_states=out.hidden_states),
                            return_dict)


class FastElectraForTokenClassification(_HeadModel):
    def __init__(self, config: FastElectraConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.fast_electra = FastElectraModel(config)
        self.dropout = classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        """labels (B, T): class ids, -100 where no label is scored."""
        out = self.encode(input_ids, attention_mask, token_type_ids, inputs_embeds,
                          output_attentions, output_hidden_states)
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1),
                                   ignore_index=-100)
        return self._return(TokenClassifierOutput(loss=loss, logits=logits,
                                                  hidden_states=out.hidden_states), return_dict)


AUTO_MAP = {
    "AutoConfig": "configuration_fast_electra.FastElectraConfig",
    "AutoModel": "modeling_fast_electra.FastElectraModel",
    "AutoModelForPreTraining": "modeling_fast_electra.FastElectraForPreTraining",
    "AutoModelForMaskedLM": "modeling_fast_electra.FastElectraForMaskedLM",
    "AutoModelForSequenceClassification":
        "modeling_fast_electra.FastElectraForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_fast_electra.FastElectraForTokenClassification",
}
