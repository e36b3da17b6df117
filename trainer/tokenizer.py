"""The SentencePiece tokenizer contract: fixed special-token ids, loading and checking.

Every model, shard and checkpoint in the project assumes these ids, so a tokenizer file that
lacks them is refused at load time rather than producing silently wrong data:

    from trainer.tokenizer import load_tokenizer, SPECIAL_IDS
    sp = load_tokenizer("shards/tiny/corpus/tokenizer.model")
    ids = sp.encode("Hello world")          # list[int], no specials added
"""

from __future__ import annotations

import json
import os

import numpy as np
import sentencepiece as spm

from trainer.digest import sha256_bytes
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



# ---------------------------------------------------------------------------------------------
# A Hugging Face fast tokenizer (tokenizer.kind = "hf"), renumbered onto the contract
# ---------------------------------------------------------------------------------------------

ROLE_NAMES = ("pad", "unk", "cls", "sep", "mask")
FAMILY_TOKENS = {  # role token strings when a folder does not name them
    "bert": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    "roberta": {"pad": "<pad>", "unk": "<unk>", "cls": "<s>", "sep": "</s>", "mask": "<mask>"},
}
HF_TOKENIZER_FILE = "tokenizer.json"
HF_SPECIALS_FILE = "special_tokens_map.json"


def source_order(source_ids: dict[str, int], vocab_size: int):
    """``to_source`` (V,) int64: the source tokenizer's id of each project id. The five role
    tokens take project ids 0-4 (PAD UNK CLS SEP MASK); every other id keeps its relative
    order after them. The identity when the source already meets the contract."""
    front = [source_ids[r] for r in ROLE_NAMES]
    if len(set(front)) != len(front) or not all(0 <= i < vocab_size for i in front):
        raise TokenizerError(f"special token ids {source_ids} must be distinct ids below the "
                             f"vocabulary size {vocab_size}")
    rest = np.setdiff1d(np.arange(vocab_size), front)  # sorted
    return np.concatenate([np.array(front), rest]).astype(np.int64)


def role_tokens(folder: str) -> dict[str, str]:
    """Role -> token string, for the roles the folder's tokenizer_config.json or
    special_tokens_map.json names (the latter wins)."""
    names: dict[str, str] = {}
    for fname in ("tokenizer_config.json", HF_SPECIALS_FILE):
        path = os.path.join(folder, fname)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        for role in ROLE_NAMES:
            tok = data.get(f"{role}_token")
            if isinstance(tok, dict):
                tok = tok.get("content")
            if isinstance(tok, str):
                names[role] = tok
    return names


class HFTokenizer:
    """A ``tokenizers`` fast tokenizer that speaks the project's ids: ``encode`` / ``decode``
    as SentencePieceProcessor's (no special tokens added), ids renumbered by
    ``source_order`` so that [PAD] [UNK] [CLS] [SEP] [MASK] are 0-4 everywhere in the project
    (shards, corruption, models); ``to_source`` maps them back (``fast-electra hf export`` does, so
    an exported model takes the original tokenizer's ids). Special-token text in a document
    is tokenised as text, never as a special id."""

    def __init__(self, tokenizer_json: str, source_ids: dict[str, int], source: str):
        self.tok = _parse_hf(tokenizer_json, source)
        self.tok.no_truncation()
        self.tok.no_padding()
        self.tok.encode_special_tokens = True
        self.source, self.json, self.source_ids = source, tokenizer_json, dict(source_ids)
        self.to_source = source_order(source_ids, self.get_piece_size())
        self.to_project = self.to_source.argsort()

    @classmethod
    def from_path(cls, path: str) -> HFTokenizer:
        """A folder holding tokenizer.json (an HF model or tokenizer folder, a corpus
        prepared with tokenizer.kind = "hf"), or a tokenizer.json file; the role tokens come
        from special_tokens_map.json / tokenizer_config.json beside it, else BERT's or
        RoBERTa's names, whichever the vocabulary has."""
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        file = os.path.join(path, HF_TOKENIZER_FILE) if os.path.isdir(path) else path
        try:
            with open(file, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise TokenizerError(f"cannot read {file}: {e.strerror}; tokenizer.kind = 'hf' needs "
                                 "tokenizer.model = a folder with tokenizer.json or the file "
                                 "itself (fast-electra hf import writes one next to the "
                                 "checkpoint)") from None
        vocab = _parse_hf(text, file).get_vocab(with_added_tokens=True)
        named = role_tokens(folder)
        complete = len(named) == len(ROLE_NAMES)
        for names in [named] if complete else FAMILY_TOKENS.values():
            if all(t in vocab for t in names.values()):
                return cls(text, {r: vocab[names[r]] for r in ROLE_NAMES}, file)
        names = named if complete else FAMILY_TOKENS["bert"]
        missing = {r: t for r, t in names.items() if t not in vocab}
        raise TokenizerError(f"{file}: the special tokens {missing} are not in its vocabulary; "
                             f"name them in {os.path.join(folder, HF_SPECIALS_FILE)} "
                             '({"pad_token": ..., "unk_token": ..., "cls_token": ..., '
                             '"sep_token": ..., "mask_token": ...})')

    def get_piece_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text):
        """str -> list[int]; list[str] -> list[list[int]] (batched): project ids."""
        # encode_batch_fast: no character offsets, ~25% faster per call than encode.
        texts = [text] if isinstance(text, str) else list(text)
        ids = [self.to_project[e.ids].tolist()
               for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]
        return ids[0] if isinstance(text, str) else ids

    def decode(self, ids) -> str:
        return self.tok.decode(self.to_source[list(ids)].tolist(), skip_special_tokens=True)

    def special_tokens_map(self) -> str:
        """special_tokens_map.json naming the role tokens (what from_path reads back)."""
        names = {i: t for t, i in self.tok.get_vocab(with_added_tokens=True).items()}
        return json.dumps({f"{r}_token": names[self.source_ids[r]] for r in ROLE_NAMES},
                          indent=1) + "\n"

    def vocab_sha256(self) -> str:
        """The vocabulary's identity (token -> source id, and the role ids), independent of
        how the JSON file is formatted."""
        vocab = self.tok.get_vocab(with_added_tokens=True)
        blob = json.dumps([sorted(vocab.items()), sorted(self.source_ids.items())])
        return sha256_bytes(blob.encode())


def _parse_hf(tokenizer_json: str, source: str):
    """A ``tokenizers.Tokenizer`` from tokenizer.json text, with errors that name ``source``."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise TokenizerError("tokenizer.kind = 'hf' needs the optional 'hf' dependencies: "
                             "pip install -e '.[hf]'") from None
    try:
        return Tokenizer.from_str(tokenizer_json)
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise TokenizerError(f"{source} is not a Hugging Face tokenizer.json: {e}") from None


def load_text_tokenizer(path: str, kind: str = "sentencepiece"):
    """The tokenizer at ``path`` with encode / decode / get_piece_size in project ids:
    a contract-checked SentencePieceProcessor (kind "sentencepiece") or an HFTokenizer
    (kind "hf")."""
    if kind == "hf":
        return HFTokenizer.from_path(path)
    return load_tokenizer(path)
