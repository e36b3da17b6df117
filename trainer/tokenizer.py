"""The SentencePiece tokenizer contract: fixed special-token ids, loading and checking.

Every model, shard and checkpoint in the project assumes these ids, so a tokenizer file that
lacks them is refused at load time rather than producing silently wrong data:

    from trainer.tokenizer import load_tokenizer, SPECIAL_IDS
    sp = load_tokenizer("shards/tiny/corpus/tokenizer.model")
    ids = sp.encode("Hello world")          # list[int], no specials added
"""

from __future__ import annotations

import sentencepiece as spm

from trainer.errors import UserError

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
NUM_SPECIAL = 5
"""Ids below this are special tokens; ordinary pieces start here."""
SPECIAL_TOKENS: dict[str, int] = {
    "[PAD]": PAD_ID, "[UNK]": UNK_ID, "[CLS]": CLS_ID, "[SEP]": SEP_ID, "[MASK]": MASK_ID,
}
SPECIAL_IDS: dict[str, int] = {"pad": PAD_ID, "unk": UNK_ID, "cls": CLS_ID, "sep": SEP_ID,
                               "mask": MASK_ID}

# SentencePiece trainer settings that realise the contract: BPE, cased (NFKC only, no
# lower-casing), byte fallback so no text maps to [UNK], and [MASK] as a control symbol so
# the literal text "[MASK]" in a document is never turned into the mask id.
TRAINER_SPEC = dict(
    model_type="bpe",
    byte_fallback=True,
    normalization_rule_name="nmt_nfkc",
    pad_id=PAD_ID, unk_id=UNK_ID, bos_id=CLS_ID, eos_id=SEP_ID,
    pad_piece="[PAD]", unk_piece="[UNK]", bos_piece="[CLS]", eos_piece="[SEP]",
    control_symbols=["[MASK]"],
    split_digits=True,
)


class TokenizerError(UserError):
    """A tokenizer file is missing, unreadable or breaks the special-token contract."""


def check_special_tokens(sp: spm.SentencePieceProcessor, source: str) -> None:
    """Raise TokenizerError unless every special token sits at its fixed id as a control or
    unknown piece (so that ordinary text can never produce it)."""
    problems = []
    for piece, want in SPECIAL_TOKENS.items():
        got = sp.piece_to_id(piece)  # the unk id when the piece does not exist
        if piece != "[UNK]" and got == sp.unk_id():
            problems.append(f"{piece} is missing (it must have id {want})")
        elif got != want:
            problems.append(f"{piece} has id {got}, it must have id {want}")
        elif piece != "[UNK]" and not sp.is_control(want):
            problems.append(f"{piece} (id {want}) is not a control symbol")
    if problems:
        raise TokenizerError(
            f"tokenizer {source} breaks the special-token contract: {'; '.join(problems)}. "
            "Train a conforming one by leaving tokenizer.model empty (pipeline.prepare trains "
            "it), or build yours with the settings in trainer.tokenizer.TRAINER_SPEC")


def load_tokenizer_bytes(model: bytes, source: str = "<bytes>") -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(model)
    except Exception as e:  # sentencepiece raises a bare RuntimeError/OSError
        raise TokenizerError(f"{source} is not a SentencePiece model: {e}") from None
    check_special_tokens(sp, source)
    return sp


def load_tokenizer(path: str) -> spm.SentencePieceProcessor:
    """Load and check a local ``.model`` file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TokenizerError(f"cannot read tokenizer {path}: {e.strerror}; set tokenizer.model "
                             "to an existing .model file, or leave it empty to train one") from None
    return load_tokenizer_bytes(data, path)

