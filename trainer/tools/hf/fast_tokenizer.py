"""The corpus's SentencePiece model -> a Hugging Face fast tokenizer folder that gives exactly
the ids ``pipeline.prepare`` gives:

    tok = AutoTokenizer.from_pretrained(folder)
    tok("some text")["input_ids"] == [CLS] + sp.encode("some text") + [SEP]

Written: ``tokenizer.json`` (the ``tokenizers`` pipeline), ``tokenizer_config.json`` and
``special_tokens_map.json``. The pipeline mirrors SentencePiece's own steps:

- normaliser: the model's precompiled character map (nmt_nfkc for the project's models), then
  SentencePiece's whitespace handling (strip and collapse spaces, spaces to "▁", one "▁" in
  front of the text);
- pre-tokeniser: split before every "▁" (no piece of a whitespace-split model crosses one);
- model: BPE with merges ranked by the merged piece's score (SentencePiece merges the pair whose
  result scores highest), or Unigram with the pieces' scores; byte fallback as the model has it;
- post-processor: [CLS] A [SEP] and [CLS] A [SEP] B [SEP], truncation to the model's length.

The five special tokens are registered as special (``skip_special_tokens`` drops them) but are
never matched in text: ``split_special_tokens`` is set, so a document that contains the
literal text "[MASK]" is tokenised as SentencePiece does, into ordinary pieces.
"""

from __future__ import annotations

import json
import os

from trainer.errors import UserError
from trainer.tokenizer import SPECIAL_TOKENS, load_tokenizer
from trainer.tools.hf.spm_proto import (
    BPE,
    NORMAL,
    UNIGRAM,
    UNKNOWN,
    USER_DEFINED,
    SpmModel,
    parse_spm,
)

ROLES = {"[PAD]": "pad_token", "[UNK]": "unk_token", "[CLS]": "cls_token",
         "[SEP]": "sep_token", "[MASK]": "mask_token"}


def bpe_merges(model: SpmModel) -> list[tuple[str, str]]:
    """Every (left, right) split of a normal piece into two normal pieces, best merged score
    first, then lower id (SentencePiece's order among equal scores)."""
    normal = {p.piece: (p.score, i) for i, p in enumerate(model.pieces) if p.type == NORMAL}
    ranked = []
    for piece, (score, i) in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, i, cut, left, right))
    return [(left, right) for *_, left, right in sorted(ranked)]


def check_convertible(model: SpmModel, path: str) -> None:
    problems = []
    if model.model_type not in (BPE, UNIGRAM):
        problems.append(f"model_type {model.model_type} (only BPE = 2 and Unigram = 1 convert)")
    if model.treat_whitespace_as_suffix:
        problems.append("treat_whitespace_as_suffix is set")
    if any(p.type == USER_DEFINED for p in model.pieces):
        problems.append("it has user-defined pieces")
    if not model.escape_whitespaces:
        problems.append("escape_whitespaces is off")
    if problems:
        raise UserError(f"{path}: cannot be converted to an exactly equivalent fast tokenizer: "
                        f"{'; '.join(problems)}. Tokenizers trained by pipeline.prepare "
                        "(trainer.tokenizer.TRAINER_SPEC) always convert")


def build_tokenizer(sp_path: str, pair_type_ids: bool = True):
    """A ``tokenizers.Tokenizer`` equivalent to the SentencePiece model at ``sp_path``."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    load_tokenizer(sp_path)  # the special-token contract, with its own message
    with open(sp_path, "rb") as f:
        model = parse_spm(f.read())
    check_convertible(model, sp_path)
    unk = next(p.piece for p in model.pieces if p.type == UNKNOWN)
    if model.model_type == BPE:
        vocab = {p.piece: i for i, p in enumerate(model.pieces)}
        core = models.BPE(vocab=vocab, merges=bpe_merges(model), unk_token=unk, fuse_unk=True,
                          byte_fallback=model.byte_fallback)
    else:
        core = models.Unigram([(p.piece, p.score) for p in model.pieces],
                              unk_id=vocab_index(model, unk), byte_fallback=model.byte_fallback)
    tok = Tokenizer(core)

    steps = []
    if model.precompiled_charsmap:
        steps.append(normalizers.Precompiled(model.precompiled_charsmap))
    if model.remove_extra_whitespaces:  # spaces only: SentencePiece leaves other whitespace
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""),
                  normalizers.Replace(Regex(" {2,}"), " ")]
    steps.append(normalizers.Replace(" ", "▁"))
    if model.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never",
                                                 split=True)
    dec = [decoders.Replace("▁", " ")]
    if model.byte_fallback:
        dec.append(decoders.ByteFallback())
    dec.append(decoders.Fuse())
    if model.add_dummy_prefix:
        dec.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(dec)

    cls, sep = ("[CLS]", SPECIAL_TOKENS["[CLS]"]), ("[SEP]", SPECIAL_TOKENS["[SEP]"])
    b = ":1" if pair_type_ids else ""
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair=f"[CLS] $A [SEP] $B{b} [SEP]{b}", special_tokens=[cls, sep])
    return tok


def vocab_index(model: SpmModel, piece: str) -> int:
    return next(i for i, p in enumerate(model.pieces) if p.piece == piece)


def sentencepiece_json(sp_path: str, token_type_ids: bool) -> str:
    """tokenizer.json of the SentencePiece model, its five special tokens registered."""
    from tokenizers import AddedToken

    tok = build_tokenizer(sp_path, pair_type_ids=token_type_ids)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in SPECIAL_TOKENS])
    return tok.to_str()  # no truncation here: transformers truncates to model_max_length


def write_tokenizer_files(out_dir: str, tokenizer_json: str, roles: dict[str, str],
                          max_len: int, token_type_ids: bool) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json to ``out_dir``.
    roles: "pad_token" ... "mask_token" -> token string. ``token_type_ids``: whether the
    model takes them (HF ELECTRA does, the remote-code model has no segment embeddings)."""
    inputs = ["input_ids", "token_type_ids", "attention_mask"] if token_type_ids else \
        ["input_ids", "attention_mask"]
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
              "padding_side": "right", "truncation_side": "right", "split_special_tokens": True,
              "clean_up_tokenization_spaces": False, "model_input_names": inputs, **roles}
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tokenizer_json)
    for name, data in (("tokenizer_config.json", config), ("special_tokens_map.json", roles)):
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")


def write_fast_tokenizer(sp_path: str, out_dir: str, max_len: int,
                         token_type_ids: bool) -> None:
    """The SentencePiece model at ``sp_path`` as a fast tokenizer folder in ``out_dir``."""
    roles = {role: token for token, role in ROLES.items()}
    write_tokenizer_files(out_dir, sentencepiece_json(sp_path, token_type_ids), roles,
                          max_len, token_type_ids)
