"""The tokenizer contract: fixed special ids, byte fallback, determinism, clear refusals."""

from __future__ import annotations

import io

import pytest
import sentencepiece as spm

from pipeline.tokenizer_train import train_tokenizer
from trainer.config.sections import DataConfig, TokenizerConfig
from trainer.tokenizer import (
    MASK_ID,
    SPECIAL_TOKENS,
    TokenizerError,
    load_tokenizer,
    load_tokenizer_bytes,
)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, prose):
    path = tmp_path_factory.mktemp("tok") / "prose.txt"
    path.write_text("\n\n".join(prose))
    return [(str(path), path.stat().st_size)]


def test_trained_model_meets_the_contract_and_is_deterministic(text_file):
    tok = TokenizerConfig(vocab_size=500)
    model = train_tokenizer(text_file, tok, DataConfig())
    sp = load_tokenizer_bytes(model)
    assert sp.get_piece_size() == 500
    assert {p: sp.piece_to_id(p) for p in SPECIAL_TOKENS} == SPECIAL_TOKENS
    # Cased, byte fallback (no [UNK] for unseen characters), literal "[MASK]" stays text.
    ids = sp.encode("Über [MASK] ☃")
    assert MASK_ID not in ids and sp.unk_id() not in ids
    assert sp.decode(ids) == "Über [MASK] ☃"
    assert sp.encode("Hello") != sp.encode("hello")
    assert train_tokenizer(text_file, tok, DataConfig()) == model


def test_vocab_too_large_for_the_sample(text_file):
    with pytest.raises(TokenizerError, match="lower tokenizer.vocab_size"):
        train_tokenizer(text_file, TokenizerConfig(vocab_size=60_000), DataConfig())


def test_foreign_tokenizer_is_refused(text_file, tmp_path):
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(input=text_file[0][0], model_writer=buffer, vocab_size=400,
                                   minloglevel=2)  # SentencePiece defaults: <unk> <s> </s>
    path = tmp_path / "foreign.model"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(TokenizerError) as e:
        load_tokenizer(str(path))
    assert "[PAD] is missing (it must have id 0)" in str(e.value)
    assert "[MASK] is missing" in str(e.value)
    with pytest.raises(TokenizerError, match="cannot read tokenizer"):
        load_tokenizer(str(tmp_path / "none.model"))
    with pytest.raises(TokenizerError, match="is not a SentencePiece model"):
        load_tokenizer_bytes(b"not a model", "junk.model")
