"""A checkpoint of this project -> a Hugging Face ELECTRA folder (config.json +
model.safetensors) that ``from_pretrained`` loads.

    python -m trainer.hf export runs/base/rtd hf/my-electra                 # discriminator
    python -m trainer.hf export runs/base/aux hf/my-generator --role generator

Every checkpoint kind that ``load_discriminator`` / ``load_generator`` accept exports: the
discriminator becomes ``ElectraForPreTraining``, the generator ``ElectraForMaskedLM``. The
model must have absolute positions and post-LN (HF ELECTRA has neither T5 relative buckets nor
pre-LN); anything else is refused with the config key named.

Admin omegas are folded exactly. Our post-LN block computes x' = LN(omega * x + f(x)), where x
is the previous LayerNorm's output and f reads x; HF computes LN(x + f(x)). Multiplying the
previous LayerNorm's weight and bias by omega makes it output omega * x; dividing the input
columns of the Linear that reads it (qkv for attention, ffn up for the feed-forward) by omega
keeps f unchanged. Each LayerNorm output feeds exactly one sublayer and one residual (the last
one feeds the head, with no omega), so nothing else changes. An omega entry of 0 cannot be
divided out and is refused.

The export sets layer_norm_eps = 1e-5 (ours) and hidden_act = "gelu" (exact GELU, ours), so the
HF model computes the same logits. token_type_embeddings are zeros (2 rows, so sentence-pair
fine-tuning can learn them). The corpus's SentencePiece ``tokenizer.model`` (data.corpus_dir of
the checkpoint's config) is copied next to the weights when it exists; it is a plain
SentencePiece model (load it with ``sentencepiece.SentencePieceProcessor``), with [PAD] [UNK]
[CLS] [SEP] [MASK] at ids 0-4.
"""

from __future__ import annotations

import os
import shutil

import torch

from trainer.config.run import RunConfig
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
from trainer.tokenizer import PAD_ID, load_tokenizer
from trainer.tools.hf.common import require_transformers
from trainer.tools.hf.importer import OUR_LN_EPS

ALL_KINDS = tuple(dict.fromkeys(GENERATOR_KINDS + DISCRIMINATOR_KINDS))


def check_exportable(enc: EncoderConfig, path: str) -> None:
    if enc.position != "absolute":
        raise UserError(f"{path}: model.position = {enc.position!r}: HF ELECTRA has only "
                        "learned absolute position embeddings and cannot hold T5 relative "
                        "position buckets; only a model trained with model.position = "
                        "'absolute' can be exported")
    if enc.layer_norm != "post":
        raise UserError(f"{path}: model.layer_norm = {enc.layer_norm!r}: HF ELECTRA is a "
                        "post-LN Transformer and cannot hold a pre-LN one (its final LayerNorm "
                        "and un-normalised residual stream); only model.layer_norm = 'post' "
                        "models can be exported")


def electra_config(enc: EncoderConfig, transformers):
    return transformers.ElectraConfig(
        vocab_size=enc.vocab_size, embedding_size=enc.hidden_size, hidden_size=enc.hidden_size,
        num_hidden_layers=enc.num_layers, num_attention_heads=enc.num_heads,
        intermediate_size=enc.ffn_size, hidden_act="gelu", hidden_dropout_prob=enc.dropout,
        attention_probs_dropout_prob=enc.attention_dropout,
        max_position_embeddings=enc.max_seq_len, type_vocab_size=2,
        layer_norm_eps=getattr(enc, "layer_norm_eps", OUR_LN_EPS), pad_token_id=PAD_ID,
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


def _write_readme(folder: str, source: str, step, role: str, cls: str, tokenizer: bool) -> None:
    lines = [f"# {cls} exported by fast-electra", "",
             f"Source checkpoint: `{source}` (step {step}), role: {role}.", "",
             "Converted exactly by `python -m trainer.hf export` (Admin omegas folded into the "
             "LayerNorms and the following Linears; layer_norm_eps = 1e-5, exact GELU). "
             "token_type_embeddings are zeros.", ""]
    if tokenizer:
        lines += ["`tokenizer.model` is the corpus's SentencePiece BPE model "
                  "(`sentencepiece.SentencePieceProcessor(model_file='tokenizer.model')`); "
                  "[PAD] [UNK] [CLS] [SEP] [MASK] are ids 0-4. Encode text as "
                  "[CLS] + pieces + [SEP], as pipeline.prepare does.", ""]
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write("\n".join(lines))


def export_electra(checkpoint: str, out_dir: str, role: str | None = None,
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
    check_exportable(enc, path)
    hf_cfg = electra_config(enc, transformers)
    if role == "generator":
        model = load_generator(path)
        hf = transformers.ElectraForMaskedLM(hf_cfg)
        state = encoder_state(model.encoder, path)
        h = model.head
        state.update({"generator_predictions.dense.weight": h.dense.weight,
                      "generator_predictions.dense.bias": h.dense.bias,
                      "generator_predictions.LayerNorm.weight": h.ln.weight,
                      "generator_predictions.LayerNorm.bias": h.ln.bias,
                      "generator_lm_head.weight": h.weight, "generator_lm_head.bias": h.bias})
    else:
        model = load_discriminator(path)
        hf = transformers.ElectraForPreTraining(hf_cfg)
        state = encoder_state(model.encoder, path)
        h = model.head
        state.update({"discriminator_predictions.dense.weight": h.dense.weight,
                      "discriminator_predictions.dense.bias": h.dense.bias,
                      "discriminator_predictions.dense_prediction.weight": h.out.weight,
                      "discriminator_predictions.dense_prediction.bias": h.out.bias})
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise AssertionError(f"export bug: missing {missing[:4]}, unexpected {unexpected[:4]}")

    out_dir = out_dir.rstrip("/")
    tmp = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    hf.save_pretrained(tmp)
    tokenizer = corpus_tokenizer(cfg, enc)
    has_tokenizer = tokenizer is not None
    if has_tokenizer:
        shutil.copyfile(tokenizer, os.path.join(tmp, "tokenizer.model"))
    _write_readme(tmp, path, meta.get("step"), role, type(hf).__name__, has_tokenizer)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)  # empty, or --overwrite
    os.replace(tmp, out_dir)
    return out_dir
