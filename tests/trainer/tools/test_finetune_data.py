"""Fine-tuning task data (trainer.tools.finetune.data, demo_tasks): task files in every format,
errors that name file:row and the field, pair packing and longest-first truncation, and the
demo tasks built from the `prepared` corpus.
"""

from __future__ import annotations

import os

import pytest

from tests.helpers import REPO, write_task_file
from trainer.errors import UserError
from trainer.tokenizer import CLS_ID, SEP_ID, load_tokenizer
from trainer.tools.finetune.config import TaskConfig, load_finetune_config
from trainer.tools.finetune.data import encode, label_names_from, pack, read_rows, truncate_pair
from trainer.tools.finetune.demo_tasks import continuation_task, corpus_texts, order_task

pytestmark = pytest.mark.usefixtures("one_thread")

PAIR = TaskConfig(text_a="sentence1", text_b="sentence2")
SINGLE = TaskConfig()

# ---------------------------------------------------------------------------------------------
# Reading task files
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", ["tsv", "jsonl", "parquet"])
def test_reads_single_and_pair_rows_in_every_format(tmp_path, ext):
    # A stray double quote must stay text (GLUE's TSVs are unquoted).
    pair = [{"sentence1": 'He said "hi', "sentence2": "b one", "label": 1},
            {"sentence1": "a two", "sentence2": "b two", "label": 0}]
    rows = read_rows(write_task_file(tmp_path / f"pair.{ext}", pair), PAIR)
    assert [(r.text_a, r.text_b) for r in rows] == [('He said "hi', "b one"), ("a two", "b two")]
    assert label_names_from(rows, PAIR) == ["0", "1"]
    first = "pair.parquet: row 0" if ext == "parquet" else f"pair.{ext}:{2 if ext == 'tsv' else 1}"
    assert rows[0].where.endswith(first)

    single = [{"sentence": "only one", "label": "pos", "idx": 3}]
    rows = read_rows(write_task_file(tmp_path / f"single.{ext}", single), SINGLE)
    assert (rows[0].text_a, rows[0].text_b, rows[0].label) == ("only one", None, "pos")
    test = read_rows(write_task_file(tmp_path / f"test.{ext}", [{"sentence": "x"}]), SINGLE,
                     require_label=False)
    assert test[0].label is None


def test_bad_rows_are_named_by_file_row_and_field(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("sentence1\tsentence2\tlabel\na\tb\t1\nonly a\n")
    with pytest.raises(UserError, match=r"train\.tsv:3: field 'sentence2' is missing"):
        read_rows(str(tsv), PAIR)
    with pytest.raises(UserError, match=r"x\.tsv:1: no column 'sentence2'"):
        read_rows(write_task_file(tmp_path / "x.tsv", [{"sentence1": "a", "label": 0}]), PAIR)

    jl = write_task_file(tmp_path / "dev.jsonl", [{"sentence": "a", "label": 0},
                                                  {"sentence": None, "label": 1}])
    with pytest.raises(UserError, match=r"dev\.jsonl:2: field 'sentence' is empty"):
        read_rows(jl, SINGLE)
    pqf = write_task_file(tmp_path / "s.parquet", [{"sentence": "a", "label": "0.5"},
                                                   {"sentence": "b", "label": "high"}])
    reg = TaskConfig(type="regression")
    with pytest.raises(UserError, match=r"s\.parquet: row 1: field 'label' = 'high' is not a "
                                        r"finite number"):
        encode(read_rows(pqf, reg), reg, [], _FakeSp(), 16)

    train = read_rows(write_task_file(tmp_path / "t.jsonl", [{"sentence": "a", "label": "x"},
                                                             {"sentence": "b", "label": "y"}]),
                      SINGLE)
    dev = read_rows(write_task_file(tmp_path / "d.tsv", [{"sentence": "a", "label": "x"},
                                                         {"sentence": "c", "label": "z"}]),
                    SINGLE)
    with pytest.raises(UserError, match=r"d\.tsv:3: field 'label' = 'z' is not a known label "
                                        r"\['x', 'y'\]"):
        encode(dev, SINGLE, label_names_from(train, SINGLE), _FakeSp(), 16)


class _FakeSp:
    """Whitespace "tokenizer" for tests of the label checks only (tokenization is not under
    test there; the real SentencePiece model is used everywhere else)."""

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [[10 + len(w) for w in t.split()] for t in texts]


def test_pair_packing_and_longest_first_truncation():
    assert truncate_pair(10, 3, 8) == (5, 3)
    assert truncate_pair(4, 4, 6) == (3, 3)
    assert truncate_pair(2, 9, 6) == (2, 4)
    ids = pack([11, 12, 13, 14], [21, 22], 7)  # budget 4: a loses two tokens
    assert ids.tolist() == [CLS_ID, 11, 12, SEP_ID, 21, 22, SEP_ID]
    assert pack([11, 12, 13], None, 4).tolist() == [CLS_ID, 11, 12, SEP_ID]


def test_continuation_demo_task_from_a_corpus(prepared, tmp_path):
    corpus_dir, _, _ = prepared
    paths = continuation_task(str(corpus_dir), str(tmp_path), num_train=60, num_dev=20)
    task = load_finetune_config(os.path.join(REPO, "configs", "finetune", "demo.toml")).task
    train, dev = read_rows(paths["train"], task), read_rows(paths["dev"], task)
    assert len(train) == 60 and len(dev) == 20
    assert sorted(r.label for r in train).count("1") == 30
    assert {r.text_a for r in train}.isdisjoint(r.text_a for r in dev)
    assert all(r.text_a and r.text_b for r in train + dev)
    # No length shortcut: a negative's second half has as many tokens as the true one
    # (the test corpus has one of every needed length within +-2 tokens).
    sp = load_tokenizer(os.path.join(str(corpus_dir), "tokenizer.model"))
    truth = {a: b for _, (a, b), _ in corpus_texts(str(corpus_dir))["train"]}
    gaps = [abs(len(sp.encode(r.text_b)) - len(sp.encode(truth[r.text_a])))
            for r in train if r.label == "0"]
    assert len(gaps) == 30 and sum(gaps) / len(gaps) <= 2, gaps
    with pytest.raises(UserError, match="ask for fewer examples"):
        continuation_task(str(corpus_dir), str(tmp_path), num_train=10**6)


def test_order_demo_task_from_a_corpus(prepared, tmp_path):
    """Label 0 rows are a label-1-like text with exactly one window of 4 words permuted: the
    same multiset of words, a different order. Negative control: the label-1 rows are
    corpus text verbatim."""
    corpus_dir, _, _ = prepared
    paths = order_task(str(corpus_dir), str(tmp_path), num_train=60, num_dev=20, seed=3)
    task = load_finetune_config(os.path.join(REPO, "configs", "finetune",
                                             "demo_order.toml")).task
    train, dev = read_rows(paths["train"], task), read_rows(paths["dev"], task)
    assert len(train) == 60 and len(dev) == 20
    assert sorted(r.label for r in train).count("1") == 30
    assert {r.text_a for r in train}.isdisjoint(r.text_a for r in dev)
    # Every row's words come from one corpus sequence; a shuffled row differs from it in one
    # window of 4 words that holds the same words.
    texts = [" ".join(h) for _, h, _ in corpus_texts(str(corpus_dir))["train"]]
    by_words = {}
    for t in texts:
        by_words.setdefault(tuple(sorted(t.split(" "))), []).append(t.split(" "))
    for r in train:
        words = r.text_a.split(" ")
        sources = by_words[tuple(sorted(words))]
        if r.label == "1":
            assert words in sources
        else:
            assert words not in sources
            diffs = [[i for i, (a, b) in enumerate(zip(words, src)) if a != b]
                     for src in sources]
            assert any(d and d[-1] - d[0] < 4 for d in diffs), words
    # Same seed, same files.
    again = order_task(str(corpus_dir), str(tmp_path / "again"), num_train=60, num_dev=20,
                       seed=3)
    with open(paths["train"]) as a, open(again["train"]) as b:
        assert a.read() == b.read()
    with pytest.raises(UserError, match="ask for fewer examples"):
        order_task(str(corpus_dir), str(tmp_path), num_train=10**6)
