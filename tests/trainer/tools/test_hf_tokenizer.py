"""The exported fast tokenizer gives exactly pipeline.prepare's ids: its own TokenizeFn on real
corpus lines and documents, non-ASCII text, byte fallback, whitespace and literal special-token
text; the templates and truncation; and each conversion step's negative control."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.corpus_parts import split_sequences
from pipeline.prepare_steps import TokenizeFn
from tests.helpers import corpus_lines
from trainer.tokenizer import load_tokenizer
from trainer.tools.hf import fast_tokenizer
from trainer.tools.hf.fast_tokenizer import write_fast_tokenizer

transformers = pytest.importorskip("transformers")

MAX_LEN = 64
ODD = ["", " ", "  two  spaces  ", "\ttab\tand\nnewline\n", "line\r\nbreak", "\u3000wide",
       "naïve café Ünïcödé ÅÄÖ", "東京 and 😀 and 👩‍👩‍👧", "ﬁnance ｆｕｌｌｗｉｄｔｈ ① ¼ ™",
       "a\u00a0b x\u200by", "[MASK] [CLS] [SEP] [PAD] [UNK] literal", "<0x41> ▁ ▁▁x",
       "12345 6.78e-9", "\x00\x01 control", "x" * 300]


def prepare_ids(fn: TokenizeFn, text: str) -> list[int]:
    """The token ids pipeline.prepare stores for ``text`` (its TokenizeFn, no specials)."""
    doc = fn.tokenize_document(0, 0, text)
    return [] if doc is None else np.frombuffer(doc.ids, "<i4").tolist()


@pytest.fixture(scope="module")
def setup(prepared, prose, tmp_path_factory):
    corpus_dir, _, _ = prepared
    sp_path = str(corpus_dir / "tokenizer.model")
    fn = TokenizeFn(sp_path, MAX_LEN, 0, 1 << 30, [(0, True)])
    fn.setup()
    return sp_path, fn, corpus_lines(prose) + ODD + prose[:200], tmp_path_factory.mktemp("tok")


def load(sp_path: str, folder) -> object:
    write_fast_tokenizer(sp_path, str(folder), MAX_LEN, token_type_ids=True)
    return transformers.AutoTokenizer.from_pretrained(str(folder))


def mismatches(tok, fn, texts) -> list[str]:
    return [t for t in texts if tok(t)["input_ids"] != [2, *prepare_ids(fn, t), 3]]


def test_same_ids_as_prepare(setup, tmp_path):
    sp_path, fn, texts, _ = setup
    tok = load(sp_path, tmp_path)
    assert mismatches(tok, fn, texts) == []
    sp = load_tokenizer(sp_path)
    fallback = [t for t in texts if any(sp.is_byte(i) for i in prepare_ids(fn, t))]
    assert len(fallback) >= 3  # the byte-fallback path is exercised (emoji, CJK, ...)
    literal = tok("[MASK] x")["input_ids"]
    assert tok.mask_token_id == 4 and 4 not in literal  # text never becomes a special id

    # Templates and truncation: [CLS] a [SEP] b [SEP]; the first sequence prepare writes.
    a, b = texts[10], texts[11]
    pair = tok(a, b)
    assert pair["input_ids"] == [2, *prepare_ids(fn, a), 3, *prepare_ids(fn, b), 3]
    assert pair["token_type_ids"] == [0] * (len(prepare_ids(fn, a)) + 2) + \
        [1] * (len(prepare_ids(fn, b)) + 1)
    long = max(texts, key=lambda t: len(prepare_ids(fn, t)))
    first = split_sequences(np.array(prepare_ids(fn, long), np.int32), MAX_LEN)[0]
    assert len(prepare_ids(fn, long)) > MAX_LEN
    assert tok(long, truncation=True)["input_ids"] == first.tolist()
    assert tok.decode(tok("naïve café 東京")["input_ids"], skip_special_tokens=True) \
        == "naïve café 東京"


def test_wrong_merge_order_is_caught(setup, tmp_path, monkeypatch):
    """Negative control: BPE merges ranked worst-first give other pieces on real text."""
    sp_path, fn, texts, _ = setup
    right = fast_tokenizer.bpe_merges
    monkeypatch.setattr(fast_tokenizer, "bpe_merges", lambda m: right(m)[::-1])
    assert len(mismatches(load(sp_path, tmp_path), fn, texts)) > 100


def test_missing_normaliser_is_caught(setup, tmp_path):
    """Negative control: without the model's NFKC character map the odd lines differ."""
    sp_path, fn, texts, _ = setup
    load(sp_path, tmp_path)
    path = tmp_path / "tokenizer.json"
    data = json.loads(path.read_text())
    steps = data["normalizer"]["normalizers"]
    data["normalizer"]["normalizers"] = [s for s in steps if s["type"] != "Precompiled"]
    assert len(steps) == len(data["normalizer"]["normalizers"]) + 1
    path.write_text(json.dumps(data))
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert "ﬁnance ｆｕｌｌｗｉｄｔｈ ① ¼ ™" in mismatches(tok, fn, ODD)
