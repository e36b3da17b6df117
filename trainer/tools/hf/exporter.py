"""A checkpoint of this project -> a Hugging Face model folder that ``from_pretrained`` loads,
with a fast tokenizer that ``AutoTokenizer`` loads.

    fast-electra hf export runs/base/rtd hf/my-electra                 # discriminator
    fast-electra hf export runs/base/aux hf/my-generator --role generator

Every checkpoint kind that ``load_discriminator`` / ``load_generator`` accept exports, in one
of two forms:

- absolute positions and post-LN: plain ``ElectraForPreTraining`` (discriminator) /
  ``ElectraForMaskedLM`` (generator), no custom code. Admin omegas are folded exactly: our
  post-LN block computes x' = LN(omega * x + f(x)), where x is the previous LayerNorm's output
  and f reads x; HF computes LN(x + f(x)). Multiplying the previous LayerNorm's weight and bias
  by omega makes it output omega * x; dividing the input columns of the Linear that reads it
  (qkv for attention, ffn up for the feed-forward) by omega keeps f unchanged. Each LayerNorm
  output feeds exactly one sublayer and one residual (the last one feeds the head, with no
  omega), so nothing else changes. An omega entry of 0 cannot be divided out and is refused.
  layer_norm_eps and hidden_act = "gelu" (exact GELU) are ours; token_type_embeddings are zeros
  (2 rows, so sentence-pair fine-tuning can learn them).
- anything else (T5 relative positions, pre-LN; every shipped config): the project's own
  ``configuration_fast_electra.py`` and ``modeling_fast_electra.py`` (trainer/tools/hf/remote/,
  torch and transformers only) go into the folder with an ``auto_map`` in config.json, and
  ``Auto*.from_pretrained(folder, trust_remote_code=True)`` loads FastElectraModel and its
  pre-training, masked-LM, sequence- and token-classification heads. The weights are ours
  renamed (``REMOTE_NAMES``); the relative bias table is stored in nats (times
  model.rel_bias_scale).

The tokenizer: the corpus's SentencePiece ``tokenizer.model`` (data.corpus_dir of the
checkpoint's config), when it exists and fits the model, is converted to ``tokenizer.json``
(fast_tokenizer.py: same ids as pipeline.prepare) and copied as is.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass

import torch

from trainer.config.run import RunConfig
from trainer.data.corpus_shards import CorpusShards
from trainer.data.manifest import MANIFEST
from trainer.errors import UserError
from trainer.model.encoder import Encoder
from trainer.model.encoder_config import EncoderConfig
from trainer.pretrained import (
    DISCRIMINATOR_KINDS,
    GENERATOR_KINDS,
    checkpoint_config,
    load_discriminator,
    load_generator,
    read_meta,
    resolve_checkpoint,
)
from trainer.tokenizer import PAD_ID, HFTokenizer, load_tokenizer
from trainer.tools.hf.common import require_transformers
from trainer.tools.hf.fast_tokenizer import write_fast_tokenizer, write_tokenizer_files
from trainer.tools.hf.importer import OUR_LN_EPS

ALL_KINDS = tuple(dict.fromkeys(GENERATOR_KINDS + DISCRIMINATOR_KINDS))


def electra_config(enc: EncoderConfig, transformers, pad_token_id: int = PAD_ID):
    return transformers.ElectraConfig(
        vocab_size=enc.vocab_size, embedding_size=enc.hidden_size, hidden_size=enc.hidden_size,
        num_hidden_layers=enc.num_layers, num_attention_heads=enc.num_heads,
        intermediate_size=enc.ffn_size, hidden_act="gelu", hidden_dropout_prob=enc.dropout,
        attention_probs_dropout_prob=enc.attention_dropout,
        max_position_embeddings=enc.max_seq_len, type_vocab_size=2,
        layer_norm_eps=getattr(enc, "layer_norm_eps", OUR_LN_EPS), pad_token_id=pad_token_id,
        tie_word_embeddings=True)


@torch.no_grad()
def encoder_state(encoder: Encoder, path: str) -> dict[str, torch.Tensor]:
    """HF ``electra.*`` state of a post-LN absolute-position encoder, Admin omegas folded."""
    H = encoder.cfg.hidden_size
    s: dict[str, torch.Tensor] = {
        "electra.embeddings.word_embeddings.weight": encoder.word_emb.weight,
        "electra.embeddings.position_embeddings.weight": encoder.pos_emb.weight,
        "electra.embeddings.token_type_embeddings.weight": torch.zeros(2, H),
    }
    prev_ln = ("electra.embeddings.LayerNorm", encoder.emb_ln)  # the LN that feeds what follows
    for i, block in enumerate(encoder.blocks):
        b = f"electra.encoder.layer.{i}."
        names = {"attn": b + "attention.output.LayerNorm", "ffn": b + "output.LayerNorm"}
        for sublayer, reader in (("attn", block.attn.qkv), ("ffn", block.ffn.up)):
            omega = getattr(block, f"omega_{sublayer}")  # (H,)
            if (omega == 0).any():
                raise UserError(f"{path}: encoder.blocks.{i}.omega_{sublayer} has zero "
                                "entries, which cannot be folded into the previous LayerNorm")
            name, ln = prev_ln
            s[name + ".weight"], s[name + ".bias"] = ln.weight * omega, ln.bias * omega
            w = reader.weight / omega  # (out, H): input column j divided by omega_j
            if sublayer == "attn":
                for part, wq, bq in zip(("query", "key", "value"), w.chunk(3),
                                        reader.bias.chunk(3), strict=True):
                    s[f"{b}attention.self.{part}.weight"], s[f"{b}attention.self.{part}.bias"] \
                        = wq, bq
            else:
                s[b + "intermediate.dense.weight"] = w
                s[b + "intermediate.dense.bias"] = reader.bias
            prev_ln = (names[sublayer], getattr(block, f"ln_{sublayer}"))
        for theirs, ours in (("attention.output.dense", block.attn.out),
                             ("output.dense", block.ffn.down)):
            s[b + theirs + ".weight"], s[b + theirs + ".bias"] = ours.weight, ours.bias
    name, ln = prev_ln  # the last LayerNorm feeds the head as is
    s[name + ".weight"], s[name + ".bias"] = ln.weight, ln.bias
    return s


def corpus_tokenizer(cfg: RunConfig, enc: EncoderConfig) -> str | None:
    """data.corpus_dir/tokenizer.model when it exists and fits the model's vocabulary."""
    path = os.path.join(cfg.data.corpus_dir, "tokenizer.model")
    if not os.path.isfile(path):
        return None
    size = load_tokenizer(path).get_piece_size()
    if size != enc.vocab_size:
        print(f"hf export: note: {path} has {size} pieces, the model {enc.vocab_size}; "
              "not copied (the corpus was re-prepared since?)")
        return None
    return path


# Our state-dict names -> the remote-code model's (the first rule that matches).
REMOTE_NAMES = [
    (r"^encoder\.word_emb\.", "fast_electra.embeddings.word_embeddings."),
    (r"^encoder\.pos_emb\.", "fast_electra.embeddings.position_embeddings."),
    (r"^encoder\.emb_ln\.", "fast_electra.embeddings.LayerNorm."),
    (r"^encoder\.rel_bias$", "fast_electra.encoder.relative_attention_bias"),
    (r"^encoder\.final_ln\.", "fast_electra.encoder.final_layernorm."),
    (r"^encoder\.blocks\.(\d+)\.attn\.qkv\.", r"fast_electra.encoder.layer.\1.attention.qkv."),
    (r"^encoder\.blocks\.(\d+)\.attn\.out\.", r"fast_electra.encoder.layer.\1.attention.output."),
    (r"^encoder\.blocks\.(\d+)\.ffn\.up\.", r"fast_electra.encoder.layer.\1.intermediate."),
    (r"^encoder\.blocks\.(\d+)\.ffn\.down\.", r"fast_electra.encoder.layer.\1.output."),
    (r"^encoder\.blocks\.(\d+)\.ln_attn\.", r"fast_electra.encoder.layer.\1.attention_layernorm."),
    (r"^encoder\.blocks\.(\d+)\.ln_ffn\.", r"fast_electra.encoder.layer.\1.output_layernorm."),
    (r"^encoder\.blocks\.(\d+)\.omega_attn$",
     r"fast_electra.encoder.layer.\1.attention_residual_scale"),
    (r"^encoder\.blocks\.(\d+)\.omega_ffn$",
     r"fast_electra.encoder.layer.\1.output_residual_scale"),
]
REMOTE_HEADS = {
    "discriminator": [(r"^head\.dense\.", "discriminator_predictions.dense."),
                      (r"^head\.out\.", "discriminator_predictions.dense_prediction.")],
    "generator": [(r"^head\.dense\.", "generator_predictions.dense."),
                  (r"^head\.ln\.", "generator_predictions.LayerNorm."),
                  (r"^head\.weight$", "generator_lm_head.weight"),
                  (r"^head\.bias$", "generator_lm_head.bias")],
}
REMOTE_DIR = os.path.join(os.path.dirname(__file__), "remote")
REMOTE_FILES = ("configuration_fast_electra.py", "modeling_fast_electra.py")


def needs_remote_code(enc: EncoderConfig) -> bool:
    """Whether HF ELECTRA cannot hold the encoder (T5 relative positions or pre-LN)."""
    return enc.position != "absolute" or enc.layer_norm != "post"


def remote_config(enc: EncoderConfig, pad_token_id: int = PAD_ID):
    from trainer.tools.hf.remote.configuration_fast_electra import FastElectraConfig
    return FastElectraConfig(
        vocab_size=enc.vocab_size, hidden_size=enc.hidden_size, num_hidden_layers=enc.num_layers,
        num_attention_heads=enc.num_heads, intermediate_size=enc.ffn_size,
        position=enc.position, relative_attention_num_buckets=enc.rel_num_buckets,
        relative_attention_max_distance=enc.rel_max_distance,
        max_position_embeddings=enc.max_seq_len, layer_norm=enc.layer_norm,
        hidden_dropout_prob=enc.dropout, attention_probs_dropout_prob=enc.attention_dropout,
        layer_norm_eps=enc.layer_norm_eps, pad_token_id=pad_token_id)


@torch.no_grad()
def remote_state(model: torch.nn.Module, role: str) -> dict[str, torch.Tensor]:
    """The remote-code model's state dict of our Discriminator / MLMModel."""
    rules = REMOTE_NAMES + REMOTE_HEADS[role]
    out = {}
    for name, tensor in model.state_dict().items():
        new = next((re.sub(pat, rep, name) for pat, rep in rules if re.search(pat, name)), None)
        if new is None:
            raise AssertionError(f"export bug: no remote name for {name}")
        if name == "encoder.rel_bias":
            tensor = tensor * model.encoder.cfg.rel_bias_scale  # stored scaled down, see Encoder
        out[new] = tensor
    return out


def electra_state(model: torch.nn.Module, role: str, path: str) -> dict[str, torch.Tensor]:
    """HF ELECTRA's state dict of our Discriminator / MLMModel (absolute, post-LN)."""
    state = encoder_state(model.encoder, path)
    h = model.head
    if role == "generator":
        state.update({"generator_predictions.dense.weight": h.dense.weight,
                      "generator_predictions.dense.bias": h.dense.bias,
                      "generator_predictions.LayerNorm.weight": h.ln.weight,
                      "generator_predictions.LayerNorm.bias": h.ln.bias,
                      "generator_lm_head.weight": h.weight, "generator_lm_head.bias": h.bias})
    else:
        state.update({"discriminator_predictions.dense.weight": h.dense.weight,
                      "discriminator_predictions.dense.bias": h.dense.bias,
                      "discriminator_predictions.dense_prediction.weight": h.out.weight,
                      "discriminator_predictions.dense_prediction.bias": h.out.bias})
    return state


def source_vocabulary(cfg: RunConfig, path: str) -> HFTokenizer | None:
    """A model trained on an HF tokenizer's ids (tokenizer.kind = "hf", renumbered so the
    special tokens are 0-4): that tokenizer, from the model's corpus (whose manifest decides)
    or else tokenizer.model; None for the SentencePiece contract."""
    if os.path.isfile(os.path.join(cfg.data.corpus_dir, MANIFEST)):  # the ids it trained on
        tok = CorpusShards(cfg.data.corpus_dir).tokenizer()
        return tok if isinstance(tok, HFTokenizer) else None
    if cfg.tokenizer.kind != "hf":
        return None
    if os.path.exists(cfg.tokenizer.model):
        return HFTokenizer.from_path(cfg.tokenizer.model)
    raise UserError(f"{path} was trained on the ids of the HF tokenizer {cfg.tokenizer.model!r} "
                    f"(tokenizer.kind = 'hf'), and neither it nor its corpus "
                    f"{cfg.data.corpus_dir!r} is here; the export needs it to put the "
                    "vocabulary back in the tokenizer's order")


def to_source_order(state: dict[str, torch.Tensor], vocab: HFTokenizer) -> None:
    """Vocabulary rows back in the source tokenizer's order (row s = its token s)."""
    order = torch.as_tensor(vocab.to_project)
    for name in list(state):
        if name.endswith(("word_embeddings.weight", "generator_lm_head.weight",
                          "generator_lm_head.bias")):
            state[name] = state[name][order]


def build_hf_model(model: torch.nn.Module, enc: EncoderConfig, role: str, path: str,
                   transformers, vocab: HFTokenizer | None = None):
    """The HF model (ELECTRA, or the remote-code one) holding ``model``'s weights; with
    ``vocab``, its vocabulary rows in that tokenizer's order."""
    pad = PAD_ID if vocab is None else vocab.source_ids["pad"]
    if needs_remote_code(enc):
        from trainer.tools.hf.remote import modeling_fast_electra as remote
        cls = (remote.FastElectraForMaskedLM if role == "generator"
               else remote.FastElectraForPreTraining)
        hf = cls(remote_config(enc, pad))
        hf.config.auto_map = dict(remote.AUTO_MAP)
        state = remote_state(model, role)
    else:
        cls = (transformers.ElectraForMaskedLM if role == "generator"
               else transformers.ElectraForPreTraining)
        hf = cls(electra_config(enc, transformers, pad))
        state = electra_state(model, role, path)
    if vocab is not None:
        to_source_order(state, vocab)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise AssertionError(f"export bug: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return hf.eval()


@dataclass(frozen=True)
class ReadmeFields:
    """What an exported folder's README.md says about the export."""

    source: str
    """The checkpoint folder exported."""
    step: int | None
    """Its training step (meta.json's)."""
    role: str
    """The model exported: generator or discriminator."""
    cls: str
    """The transformers class of the exported model."""
    remote: bool
    """Whether the folder holds its own model code (loaded with trust_remote_code)."""
    tokenizer: bool
    """Whether the corpus's SentencePiece tokenizer is written beside the model."""
    vocab: HFTokenizer | None
    """The Hugging Face tokenizer the model was trained with, written as it was; None for a
    SentencePiece corpus."""


def _write_readme(folder: str, r: ReadmeFields) -> None:
    trust = ", trust_remote_code=True" if r.remote else ""
    lines = [f"# {r.cls} exported by fast-electra", "",
             f"Source checkpoint: `{r.source}` (step {r.step}), role: {r.role}.", "",
             "```python",
             "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
             "tok = AutoTokenizer.from_pretrained(folder)",
             "model = AutoModelForSequenceClassification.from_pretrained(folder, "
             f"num_labels=2{trust})",
             "```", ""]
    if r.remote:
        lines += ["The model code is `modeling_fast_electra.py` in this folder (T5 relative "
                  "positions shared by all layers, or pre-LN, which HF ELECTRA cannot hold); "
                  "it depends on torch and transformers only. The encoder has no token type "
                  "embeddings.", ""]
    else:
        lines += ["Converted exactly to HF ELECTRA by `fast-electra hf export` (Admin "
                  "omegas folded into the LayerNorms and the following Linears; exact GELU). "
                  "token_type_embeddings are zeros.", ""]
    if r.tokenizer:
        lines += ["`tokenizer.json` encodes text as the corpus's SentencePiece model "
                  "(`tokenizer.model`, also here) does, as `[CLS] text [SEP]` and "
                  "`[CLS] a [SEP] b [SEP]`; [PAD] [UNK] [CLS] [SEP] [MASK] are ids 0-4.", ""]
    if r.vocab is not None:
        lines += [f"`tokenizer.json` is the tokenizer the model was trained with "
                  f"(`{r.vocab.source}`), with its own ids and templates.", ""]
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write("\n".join(lines))


def export_model(checkpoint: str, out_dir: str, role: str | None = None,
                 overwrite: bool = False) -> str:
    """Write the HF folder; returns ``out_dir``."""
    transformers = require_transformers()
    path = resolve_checkpoint(checkpoint)
    if role is None:
        kind = read_meta(path, "model", ALL_KINDS)["model_kind"]
        role = "generator" if kind == "mlm" else "discriminator"
    meta = read_meta(path, role, GENERATOR_KINDS if role == "generator" else DISCRIMINATOR_KINDS)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise UserError(f"{out_dir} exists and is not empty; pass --overwrite to replace it")
    cfg: RunConfig = checkpoint_config(meta)
    enc = EncoderConfig.aux(cfg) if role == "generator" else EncoderConfig.main(cfg)
    model = load_generator(path) if role == "generator" else load_discriminator(path)
    vocab = source_vocabulary(cfg, path)
    hf = build_hf_model(model, enc, role, path, transformers, vocab)
    remote = needs_remote_code(enc)

    out_dir = out_dir.rstrip("/")
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    hf.save_pretrained(tmp)
    if remote:
        for name in REMOTE_FILES:
            shutil.copyfile(os.path.join(REMOTE_DIR, name), os.path.join(tmp, name))
    tokenizer = None if vocab is not None else corpus_tokenizer(cfg, enc)
    if tokenizer is not None:
        shutil.copyfile(tokenizer, os.path.join(tmp, "tokenizer.model"))
        write_fast_tokenizer(tokenizer, tmp, enc.max_seq_len, token_type_ids=not remote)
    if vocab is not None:  # the source tokenizer as it was, with its own templates
        write_tokenizer_files(tmp, vocab.json, json.loads(vocab.special_tokens_map()),
                              enc.max_seq_len, token_type_ids=not remote)
    _write_readme(tmp, ReadmeFields(path, meta.get("step"), role, type(hf).__name__, remote,
                                    tokenizer is not None, vocab))
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)  # empty, or --overwrite
    os.replace(tmp, out_dir)
    return out_dir
