"""The real fine-tuning tasks (trainer.tools.finetune.real_tasks): built from the Debian packages'
own files, their sizes, balance and train/dev disjointness are pinned; the parsing rules are
checked on small sources written here, each with the wrong rule it would catch."""

from __future__ import annotations

import os

import pytest

from tests.helpers import need_file
from trainer.tools.finetune.data import TaskDataError
from trainer.tools.finetune.demo_tasks import main as finetune_data_main
from trainer.tools.finetune.real_tasks import (
    FORTUNES_CLASSES,
    FORTUNES_DIR,
    WORDNET_DIR,
    fortunes_task,
    fortunes_texts,
    split_balanced,
    wordnet_task,
    wordnet_texts,
)

SOURCES = {"wordnet": (wordnet_task, os.path.join(WORDNET_DIR, "data.noun"), "wordnet-base"),
           "fortunes": (fortunes_task, os.path.join(FORTUNES_DIR, "computers"), "fortunes")}
SIZES = {"wordnet": (6, 500, 200), "fortunes": (5, 480, 120)}  # classes, train / dev per class


def need_source(name: str) -> None:
    need_file(*SOURCES[name][1:])


def read_tsv(path: str) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert lines[0] == "sentence\tlabel"
    rows = [tuple(line.split("\t")) for line in lines[1:]]
    assert all(len(r) == 2 and r[0] for r in rows), "a row without exactly text TAB label"
    return rows


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_real_task_sizes_balance_and_disjoint_splits(tmp_path, name):
    need_source(name)
    build = SOURCES[name][0]
    paths = build(str(tmp_path / "a"))
    classes, per_train, per_dev = SIZES[name]
    rows = {split: read_tsv(paths[split]) for split in ("train", "dev")}
    for split, per in (("train", per_train), ("dev", per_dev)):
        labels = [label for _, label in rows[split]]
        assert len(set(labels)) == classes
        assert all(labels.count(c) == per for c in set(labels)), f"{split} is not balanced"
    assert len(rows["train"]) >= 2000 and len(rows["dev"]) >= 500
    texts = {split: [t for t, _ in r] for split, r in rows.items()}
    assert len(set(texts["train"])) == len(texts["train"]), "a duplicate train text"
    assert not set(texts["train"]) & set(texts["dev"]), "a text in both train and dev"
    # Deterministic: a second build writes the same bytes.
    again = build(str(tmp_path / "b"))
    for split in ("train", "dev"):
        with open(paths[split], "rb") as f1, open(again[split], "rb") as f2:
            assert f1.read() == f2.read()


def test_wordnet_text_is_the_definition_without_examples(tmp_path):
    (tmp_path / "data.noun").write_text(
        "  1 This software and database is being provided ...\n"
        '00001 05 n 01 dog 0 000 | a member of the genus Canis; "the dog barked all night"\n'
        '00002 13 n 01 bread 0 000 | food made from dough; "bread is a staple"  \n'
        "00003 09 n 01 idea 0 000 | a thing thought of by a mind\n"  # noun.cognition: not a class
        "00004 20 n 01 moss 0 000 | tiny\n")  # under 3 words: too short to be a definition
    texts = wordnet_texts(str(tmp_path))
    # Would catch keeping the usage example (it names the word) or the lexnames filter.
    assert texts["animal"] == ["a member of the genus Canis"]
    assert texts["food"] == ["food made from dough"]
    assert sum(len(v) for v in texts.values()) == 2


def test_fortunes_are_one_line_each_and_overstrikes_removed(tmp_path):
    for c in FORTUNES_CLASSES:
        (tmp_path / c).write_text(f"first {c}\nsecond line\n%\nB\bBold\tword\n%\n")
    texts = fortunes_texts(str(tmp_path))
    assert texts["science"] == ["first science second line", "Bold word"]


def test_split_drops_texts_under_two_labels_and_orders_by_hash():
    texts = {"a": ["x1", "x2", "x3", "shared"], "b": ["y1", "y2", "y3", "shared"]}
    out = split_balanced(texts, {"train": 2, "dev": 1}, "src")
    everything = [t for split in out.values() for t, _ in split]
    assert "shared" not in everything  # would catch keeping a text filed under both labels
    # The split does not depend on the order of the source: reversed input, same split.
    again = split_balanced({k: v[::-1] for k, v in texts.items()}, {"train": 2, "dev": 1}, "src")
    assert again == out
    with pytest.raises(TaskDataError, match=r"src: only 3 distinct texts labelled 'a', 4 needed"):
        split_balanced(texts, {"train": 3, "dev": 1}, "src")


def finetune_data(capsys, *argv: str) -> tuple[int, str, str]:
    """``fast-electra finetune-data argv`` in this process: (exit status, stdout,
    stderr)."""
    try:
        rc = finetune_data_main(list(argv))
    except SystemExit as e:  # argparse's own usage errors exit
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_builds_a_real_task_and_refuses_a_missing_source(tmp_path, capsys):
    rc, _, err = finetune_data(capsys, str(tmp_path / "x"), "--task", "wordnet",
                               "--source", str(tmp_path / "nowhere"))
    assert rc == 2 and "Traceback" not in err
    assert "apt-get install wordnet-base" in err
    rc, _, err = finetune_data(capsys, str(tmp_path / "x"), "--task", "order")
    assert rc == 2 and "CORPUS_DIR OUT_DIR" in err
    need_source("fortunes")
    rc, out, err = finetune_data(capsys, str(tmp_path / "f"), "--task", "fortunes")
    assert rc == 0, err
    assert "fortunes task: 2400 train / 600 dev examples" in out
    assert os.path.isfile(tmp_path / "f" / "source.json")
