"""A local Hugging Face masked LM -> a checkpoint of this project (model_kind "mlm").

    fast-electra hf import hf/my-mlm runs/my-mlm [--config configs/base.toml]

Accepts ``BertForMaskedLM``, ``RobertaForMaskedLM`` and ``ElectraForMaskedLM`` folders
(config.json + model.safetensors or pytorch_model.bin; read locally, never downloaded) and
writes ``OUT_DIR/checkpoints/step_00000000`` with a resolved config whose [aux] sizes,
tokenizer.vocab_size and data.max_seq_len describe the model (model.position = "absolute",
model.layer_norm = "post"; everything else from ``--config``), so ``load_generator`` and
``pipeline.generate`` use it unchanged. The conversion is exact:

- q, k, v projections -> one fused qkv Linear (cat along the output dim);
- token_type embedding row 0 is added to every token by HF, so it is folded into the position
  table; RoBERTa's first padding_idx + 1 position rows are never used by right-padded input and
  are sliced off;
- Admin omegas = 1, so each LN(omega * x + f(x)) is HF's post-LN LN(x + f(x));
- the LM head's transform (dense, GELU, LayerNorm) and decoder bias -> MLMHead; its weight must
  be the input embeddings (our head is tied).

Not representable, and refused with the config key named: an activation other than exact
GELU (``hidden_act``), ELECTRA's ``embedding_size != hidden_size``, ``position_embedding_type``
other than absolute, an untied LM head; model types other than the three (DeBERTa's
disentangled attention, ALBERT's shared layers, ...) by ``model_type``.

Vocabulary: every model, shard and corruption in this project has [PAD] [UNK] [CLS] [SEP]
[MASK] at ids 0-4 (trainer.tokenizer). A model whose tokenizer already has them there (a
SentencePiece tokenizer.model meeting the contract, e.g. a model exported by ``fast-electra hf
export``) imports as is and works on the corpus's own ids. Any other (BERT's WordPiece with
[UNK] at 100, RoBERTa's byte BPE with <mask> last) is renumbered: its tokenizer (transformers'
AutoTokenizer of the folder) gives ``trainer.tokenizer.source_order``, the vocabulary rows
(tied embeddings and LM bias) are permuted into it, and the tokenizer is written beside the
checkpoint as OUT_DIR/tokenizer.json + special_tokens_map.json with tokenizer.kind = "hf" and
tokenizer.model = OUT_DIR in the checkpoint's config. ``pipeline.prepare`` with those two keys
tokenises the corpus with it in the same renumbered ids; ``pipeline.generate`` refuses a
corpus of another vocabulary; ``fast-electra hf export`` permutes the rows back, so exported models
take the original tokenizer's ids.

LayerNorm eps: ours is 1e-5 (PyTorch's default, fixed in trainer.model), BERT's 1e-12. A
LayerNorm whose input has variance v then differs by about 1e-5 / (2 v) relative, which
matters only where v is small (a freshly initialised 32-wide BERT: embeddings off by ~4e-3,
logits by ~1e-3); the import says so and reports the figure for the model's embedding
LayerNorm. Should trainer.model gain a ``model.layer_norm_eps`` key, the import sets it and
is exact.
"""

from __future__ import annotations

import json
import os

import torch

from trainer import checkpoint
from trainer.atomic import write_text_atomic
from trainer.config.load import build_config, load_config, to_dict, to_toml
from trainer.config.run import RunConfig
from trainer.errors import UserError
from trainer.model.encoder_config import EncoderConfig
from trainer.model.heads import MLMModel
from trainer.tokenizer import (
    FAMILY_TOKENS,
    HF_SPECIALS_FILE,
    HF_TOKENIZER_FILE,
    NUM_SPECIAL,
    ROLE_NAMES,
    SPECIAL_IDS,
    HFTokenizer,
    load_tokenizer,
    role_tokens,
)
from trainer.tools.hf.common import require_transformers

OUR_LN_EPS = 1e-5  # nn.LayerNorm's default, which every LayerNorm in trainer.model uses
EXACT_GELU = ("gelu", "gelu_python")  # erf GELU = F.gelu, what trainer.model uses
MODEL_CLASSES = {"bert": "BertForMaskedLM", "roberta": "RobertaForMaskedLM",
                 "electra": "ElectraForMaskedLM"}
SP_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


# ---------------------------------------------------------------------------------------------
# Checks on the HF config and tokenizer
# ---------------------------------------------------------------------------------------------

def check_hf_config(hf_dir: str, config) -> None:
    """Refuse what trainer.model cannot represent exactly, naming the config.json key."""
    where = os.path.join(hf_dir, "config.json")
    model_type = config.model_type
    if model_type not in MODEL_CLASSES:
        raise UserError(f"{where}: model_type = {model_type!r}; the import supports "
                        f"{', '.join(MODEL_CLASSES)} masked LMs")

    def refuse(key: str, why: str) -> None:
        raise UserError(f"{where}: {key} = {getattr(config, key, None)!r}: {why}")

    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        refuse("position_embedding_type", "only absolute position embeddings convert exactly")
    if config.hidden_act not in EXACT_GELU:
        refuse("hidden_act", "trainer.model uses the exact (erf) GELU everywhere; a tanh "
               "approximation or another activation would change every layer's output")
    if model_type == "electra" and config.embedding_size != config.hidden_size:
        refuse("embedding_size", f"differs from hidden_size = {config.hidden_size}; ELECTRA's "
               "embeddings_project Linear has no counterpart in trainer.model")
    if getattr(config, "is_decoder", False):
        refuse("is_decoder", "a causal (decoder) model is not a masked LM")


def _token_strings(hf_dir: str, model_type: str) -> dict[str, str]:
    """Role -> token string: the folder's own names, else its family's."""
    family = FAMILY_TOKENS["roberta" if model_type == "roberta" else "bert"]
    return {**family, **role_tokens(hf_dir)}


def _vocab(hf_dir: str) -> tuple[dict[str, int], str] | None:
    """Token string -> id from the folder's tokenizer.json, vocab.txt or vocab.json."""
    path = os.path.join(hf_dir, "tokenizer.json")
    if os.path.isfile(path):
        with open(path) as f:
            data = json.load(f)
        vocab = data.get("model", {}).get("vocab", {})
        if isinstance(vocab, list):  # Unigram: [[piece, score], ...] in id order
            vocab = {piece: i for i, (piece, _) in enumerate(vocab)}
        vocab = dict(vocab)
        vocab.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
        return vocab, path
    path = os.path.join(hf_dir, "vocab.txt")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return {line.rstrip("\n"): i for i, line in enumerate(f)}, path
    path = os.path.join(hf_dir, "vocab.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f), path
    return None


def check_special_ids(hf_dir: str, model_type: str, trust: bool, transformers
                      ) -> tuple[str, HFTokenizer | None]:
    """Where the folder's special-token ids were read (or "trusted"), and, when its five
    special tokens are not at the project's ids 0-4, its fast tokenizer (an HFTokenizer whose
    renumbering the import applies to the vocabulary rows)."""
    for name in SP_FILES:
        path = os.path.join(hf_dir, name)
        if os.path.isfile(path):
            load_tokenizer(path)  # the project's own contract check, with its own message
            return path, None
    found = _vocab(hf_dir)
    if found is None:
        if trust:
            return "trusted (--trust-special-ids)", None
        raise UserError(f"{hf_dir} has no tokenizer file ({', '.join(SP_FILES)}, tokenizer.json, "
                        "vocab.txt or vocab.json), so its special-token ids cannot be checked; "
                        "copy in the tokenizer the model was trained with, or pass "
                        "--trust-special-ids if you know [PAD] [UNK] [CLS] [SEP] [MASK] are "
                        "ids 0-4")
    vocab, path = found
    names = _token_strings(hf_dir, model_type)
    if all(vocab.get(token) == SPECIAL_IDS[role] for role, token in names.items()):
        return path, None
    return path, hf_tokenizer(hf_dir, transformers)


def hf_tokenizer(hf_dir: str, transformers) -> HFTokenizer:
    """The folder's own tokenizer as transformers loads it (fast; built from vocab.txt /
    vocab.json + merges.txt when there is no tokenizer.json), with its role ids."""
    try:
        tok = transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{hf_dir}: its tokenizer does not load with transformers' "
                        f"AutoTokenizer ({e}); the corpus must be tokenised with the model's own "
                        "vocabulary, so the import needs it") from None
    backend = getattr(tok, "backend_tokenizer", None)
    ids = {role: getattr(tok, f"{role}_token_id", None) for role in ROLE_NAMES}
    missing = [role for role, i in ids.items() if i is None]
    if backend is None or missing:
        raise UserError(f"{hf_dir}: its tokenizer "
                        + (f"has no {', '.join(missing)} token" if missing else "is not a fast "
                           "(tokenizers) tokenizer")
                        + "; the corpus and the corruption need all of [PAD] [UNK] [CLS] [SEP] "
                        "[MASK] and a tokenizer.json")
    return HFTokenizer(backend.to_str(), ids, hf_dir)


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------

def _lm_head(model) -> tuple:
    """(transform dense, transform LayerNorm, decoder Linear) of an HF *ForMaskedLM."""
    if hasattr(model, "cls"):  # BERT
        p = model.cls.predictions
        return p.transform.dense, p.transform.LayerNorm, p.decoder
    if hasattr(model, "lm_head"):  # RoBERTa
        return model.lm_head.dense, model.lm_head.layer_norm, model.lm_head.decoder
    g = model.generator_predictions  # ELECTRA
    return g.dense, g.LayerNorm, model.generator_lm_head


def position_offset(config) -> int:
    """Rows of the HF position table before the one read at our position 0. RoBERTa numbers
    real tokens from padding_idx + 1 (pads get padding_idx), so with right padding token i
    reads row padding_idx + 1 + i and the rows before are never used."""
    return config.pad_token_id + 1 if config.model_type == "roberta" else 0


def convert_state(model, hf_dir: str) -> tuple[dict[str, torch.Tensor], int]:
    """Our MLMModel state dict from an HF masked LM; also the number of positions."""
    config = model.config
    base = model.base_model
    emb = base.embeddings
    word = emb.word_embeddings.weight  # (V, H)
    offset = position_offset(config)
    pos = emb.position_embeddings.weight[offset:] + emb.token_type_embeddings.weight[0]  # (P, H)
    s = {"encoder.word_emb.weight": word, "encoder.pos_emb.weight": pos,
         "encoder.emb_ln.weight": emb.LayerNorm.weight, "encoder.emb_ln.bias": emb.LayerNorm.bias}
    for i, layer in enumerate(base.encoder.layer):
        a, b = layer.attention, f"encoder.blocks.{i}."
        qkv = (a.self.query, a.self.key, a.self.value)
        s[b + "attn.qkv.weight"] = torch.cat([m.weight for m in qkv])  # (3H, H)
        s[b + "attn.qkv.bias"] = torch.cat([m.bias for m in qkv])
        for ours, theirs in (("attn.out", a.output.dense), ("ln_attn", a.output.LayerNorm),
                             ("ffn.up", layer.intermediate.dense), ("ffn.down", layer.output.dense),
                             ("ln_ffn", layer.output.LayerNorm)):
            s[b + ours + ".weight"], s[b + ours + ".bias"] = theirs.weight, theirs.bias
        s[b + "omega_attn"] = s[b + "omega_ffn"] = torch.ones(config.hidden_size)
    dense, ln, decoder = _lm_head(model)
    if not torch.equal(decoder.weight, word):
        raise UserError(f"{os.path.join(hf_dir, 'config.json')}: tie_word_embeddings = "
                        f"{config.tie_word_embeddings!r} and the LM head's weight differs from "
                        "the input embeddings; the project's MLM head is tied to them, so an "
                        "untied head cannot be converted")
    s.update({"head.dense.weight": dense.weight, "head.dense.bias": dense.bias,
              "head.ln.weight": ln.weight, "head.ln.bias": ln.bias, "head.weight": word,
              "head.bias": decoder.bias})
    # Tensors of our own (no views into HF storage), float32 as trainer.model keeps them.
    shared = word.detach().float().clone()
    state = {k: shared if v is word else v.detach().float().clone() for k, v in s.items()}
    return state, pos.shape[0]


def renumbered(state: dict[str, torch.Tensor], vocab: HFTokenizer) -> dict[str, torch.Tensor]:
    """The vocabulary rows (tied embeddings / LM head, LM bias) in the project's order: row p
    is the source tokenizer's token ``vocab.to_source[p]`` (special tokens first)."""
    order = torch.as_tensor(vocab.to_source)
    word = state["encoder.word_emb.weight"][order].clone()
    return {**state, "encoder.word_emb.weight": word, "head.weight": word,
            "head.bias": state["head.bias"][order].clone()}


def embedding_eps_effect(state: dict[str, torch.Tensor], hf_eps: float) -> float:
    """Median relative change of the normalised embeddings caused by eps 1e-5 instead of
    ``hf_eps``, over (token, position) pairs of the first tokens and positions."""
    word = state["encoder.word_emb.weight"][NUM_SPECIAL:NUM_SPECIAL + 4096]  # (V', H)
    pos = state["encoder.pos_emb.weight"][:8]  # (8, H): a sample keeps this small
    var = (word[:, None, :] + pos[None, :, :]).var(-1, unbiased=False)  # (V', 8)
    change = 1 - torch.sqrt((var + hf_eps) / (var + OUR_LN_EPS))
    return float(change.abs().median())


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

def our_eps(cfg: RunConfig) -> float:
    """The LayerNorm eps trainer.model will use for ``cfg``."""
    return float(getattr(cfg.model, "layer_norm_eps", OUR_LN_EPS))


def run_config(base: RunConfig, config, max_seq_len: int, tokenizer_dir: str | None
               ) -> RunConfig:
    """``base`` with the sections that describe the imported model overwritten;
    ``tokenizer_dir``: where the import wrote the model's own tokenizer (tokenizer.kind =
    "hf"), None when the model speaks the corpus's SentencePiece ids."""
    raw = to_dict(base)
    raw["model"].update(position="absolute", layer_norm="post",
                        dropout=float(config.hidden_dropout_prob),
                        attention_dropout=float(config.attention_probs_dropout_prob))
    raw["aux"] = {"num_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
                  "num_heads": config.num_attention_heads, "ffn_size": config.intermediate_size}
    raw["tokenizer"]["vocab_size"] = config.vocab_size
    if tokenizer_dir is not None:
        raw["tokenizer"].update(kind="hf", model=tokenizer_dir)
    raw["data"]["max_seq_len"] = max_seq_len
    raw["train"]["mode"] = "mlm"
    if "layer_norm_eps" in raw["model"]:  # a trainer.model that can take HF's eps: exact
        raw["model"]["layer_norm_eps"] = float(config.layer_norm_eps)
    return build_config(raw, "the imported model's config")


def import_mlm(hf_dir: str, out_dir: str, config_path: str | None = None,
               trust_special_ids: bool = False) -> str:
    """Convert ``hf_dir`` and write the checkpoint; returns the checkpoint folder."""
    transformers = require_transformers()
    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        raise UserError(f"{hf_dir} has no config.json: give a local folder written by "
                        "save_pretrained (the import never downloads)")
    if checkpoint.list_steps(out_dir):
        raise UserError(f"{out_dir} already holds checkpoints; give a new OUT_DIR")
    base = load_config(config_path) if config_path else RunConfig()
    try:
        config = transformers.AutoConfig.from_pretrained(hf_dir, local_files_only=True)
    except (OSError, ValueError) as e:  # bad JSON, an unknown model_type
        raise UserError(f"{os.path.join(hf_dir, 'config.json')} is unreadable as a Hugging "
                        f"Face config: {e}") from None
    check_hf_config(hf_dir, config)
    special_source, vocab = check_special_ids(hf_dir, config.model_type, trust_special_ids,
                                              transformers)
    if vocab is not None and vocab.get_piece_size() != config.vocab_size:
        raise UserError(f"{hf_dir}: its tokenizer has {vocab.get_piece_size()} tokens but "
                        f"config.json says vocab_size = {config.vocab_size}; the vocabulary "
                        "rows are renumbered by the tokenizer's ids, so the two must agree")
    pad = SPECIAL_IDS["pad"] if vocab is None else vocab.source_ids["pad"]
    if config.pad_token_id != pad:
        raise UserError(f"{os.path.join(hf_dir, 'config.json')}: pad_token_id = "
                        f"{config.pad_token_id!r}, but its tokenizer's pad token is id {pad}")
    cls = getattr(transformers, MODEL_CLASSES[config.model_type])
    model, info = cls.from_pretrained(hf_dir, local_files_only=True, output_loading_info=True)
    if info.get("mismatched_keys"):
        raise UserError(f"{hf_dir}: weights of the wrong shape for config.json: "
                        f"{sorted(info['mismatched_keys'])[:4]}; the folder is inconsistent")
    if info["missing_keys"]:
        raise UserError(f"{hf_dir} has no weights for {sorted(info['missing_keys'])[:4]}: it "
                        f"does not hold a {cls.__name__} (a discriminator or a bare encoder has "
                        "no MLM head); give a masked-LM folder")
    state, max_seq_len = convert_state(model.eval(), hf_dir)
    if vocab is not None:
        state = renumbered(state, vocab)
    tokenizer_dir = None if vocab is None else os.path.abspath(out_dir)
    cfg = run_config(base, config, max_seq_len, tokenizer_dir)
    enc = EncoderConfig.aux(cfg)
    with torch.device("meta"):  # shapes only: no init, no Admin profiling pass
        want = MLMModel(enc).state_dict()
    wrong = [k for k in want if k not in state or state[k].shape != want[k].shape]
    if wrong or set(state) != set(want):
        raise AssertionError(f"conversion bug: state keys/shapes differ at {wrong[:4]}")

    eps = float(config.layer_norm_eps)
    if eps != our_eps(cfg):
        print(f"hf import: note: {hf_dir} uses LayerNorm eps {eps:g}, trainer.model uses "
              f"{OUR_LN_EPS:g}, so the logits are close to HF's but not equal: a LayerNorm "
              f"whose input has variance v is off by about {OUR_LN_EPS:g} / (2 v) relative; "
              f"at this model's embedding LayerNorm that is a median "
              f"{embedding_eps_effect(state, eps):.1e}")
    meta = {"step": 0, "mode": "mlm", "model_kind": "mlm", "config": to_dict(cfg),
            "hf_import": {"source": os.path.abspath(hf_dir), "model_type": config.model_type,
                          "class": cls.__name__, "layer_norm_eps": eps,
                          "position_offset": position_offset(config),
                          "special_ids_checked_in": special_source}}
    os.makedirs(out_dir, exist_ok=True)
    if vocab is not None:
        meta["hf_import"]["vocabulary"] = {"vocab_sha256": vocab.vocab_sha256(),
                                           "source_special_ids": vocab.source_ids}
        write_text_atomic(os.path.join(out_dir, HF_TOKENIZER_FILE), vocab.json)
        write_text_atomic(os.path.join(out_dir, HF_SPECIALS_FILE), vocab.special_tokens_map())
    path = checkpoint.save(out_dir, 0, {"model": state}, meta,
                           checkpoint.SaveContext.single_process())
    write_text_atomic(os.path.join(out_dir, "config.toml"), to_toml(cfg))
    return path
