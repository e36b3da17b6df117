"""Real labelled tasks, built offline from text that people wrote and labelled for another
purpose, shipped by Debian packages (no download at run time):

    fast-electra finetune-data data/wordnet --task wordnet     # apt-get install wordnet-base
    fast-electra finetune-data data/fortunes --task fortunes   # apt-get install fortunes

``wordnet``: topic of a dictionary definition. Every noun synset of WordNet 3.0 carries the
lexicographer file its editors filed it under (noun.animal, noun.food, ...); the text is the
synset's gloss without its quoted usage examples (they name the word), the label its file.
Six files, WORDNET_PER_CLASS rows each.

``fortunes``: topic of a fortune cookie. The fortune-mod collection files each quotation or
joke under a topic by its curators (computers, politics, ...); the text is the fortune, one
line, the label its file. Five files, FORTUNES_PER_CLASS rows each.

Both are balanced (majority-class accuracy 1 / classes) and split train / dev by the sha256 of
the normalised text within each class, so the split does not depend on file order and no text
is in both; a text filed under two labels is dropped. A folder gets ``train.tsv``, ``dev.tsv``
(header ``sentence<TAB>label``) and ``source.json`` (the source files' sha256 and the counts).
Neither source shares text with the demo corpus (Python docstrings).
"""

from __future__ import annotations

import json
import os
import re

from trainer.atomic import write_text_atomic
from trainer.digest import sha256_bytes, sha256_file
from trainer.tools.finetune.data import TaskDataError

WORDNET_DIR = "/usr/share/wordnet"
WORDNET_CLASSES = {"05": "animal", "06": "artifact", "10": "communication", "13": "food",
                   "18": "person", "20": "plant"}
"""Lexicographer file number (WordNet's lexnames) -> label."""
WORDNET_PER_CLASS = {"train": 500, "dev": 200}

FORTUNES_DIR = "/usr/share/games/fortunes"
FORTUNES_CLASSES = ("computers", "politics", "science", "songs-poems", "work")
FORTUNES_PER_CLASS = {"train": 480, "dev": 120}

_SPACE = re.compile(r"\s+")


def _one_line(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _need(path: str, package: str) -> str:
    if not os.path.exists(path):
        raise TaskDataError(f"{path} not found: the task is built from the Debian package "
                            f"{package}; install it (apt-get install {package}) or pass "
                            "--source DIR where its files are")
    return path


def wordnet_texts(source: str = WORDNET_DIR) -> dict[str, list[str]]:
    """label -> the glosses (usage examples removed) of WordNet's noun synsets filed under
    that label's lexicographer file, in file order."""
    path = _need(os.path.join(source, "data.noun"), "wordnet-base")
    texts: dict[str, list[str]] = {label: [] for label in WORDNET_CLASSES.values()}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, 1):
            if line.startswith("  "):  # the licence header
                continue
            fields = line.split(" ", 2)
            if len(fields) < 3 or "|" not in line:
                raise TaskDataError(f"{path}:{line_no}: not a WordNet data line (offset "
                                    "lex_filenum ... | gloss); is this WordNet 3.0's data.noun?")
            label = WORDNET_CLASSES.get(fields[1])
            if label is None:
                continue
            gloss = line.split("|", 1)[1]
            definition = gloss.split('; "', 1)[0].split(' "', 1)[0]  # usage examples name the word
            definition = _one_line(definition).rstrip(";")
            if len(definition.split()) >= 3:
                texts[label].append(definition)
    return texts


def fortunes_texts(source: str = FORTUNES_DIR) -> dict[str, list[str]]:
    """label -> the fortunes of that topic file (one line each, overstrikes removed)."""
    texts = {}
    for label in FORTUNES_CLASSES:
        path = _need(os.path.join(source, label), "fortunes")
        with open(path, encoding="utf-8", errors="replace") as f:
            raw = f.read()
        raw = re.sub(".\b", "", raw)  # nroff-style overstrike (x BACKSPACE x)
        texts[label] = [t for t in (_one_line(c) for c in raw.split("\n%\n")) if t and t != "%"]
    return texts


def _sha(text: str) -> str:
    return sha256_bytes(text.encode("utf-8"))


def split_balanced(texts: dict[str, list[str]], per_class: dict[str, int], where: str
                   ) -> dict[str, list[tuple[str, str]]]:
    """{"train": [(text, label)], "dev": [...]}: per label, its distinct texts (a text filed
    under two labels is dropped) ordered by sha256; the first per_class["dev"] go to dev, the
    next per_class["train"] to train. Rows are ordered by (label, sha256)."""
    owners: dict[str, set[str]] = {}
    for label, items in texts.items():
        for t in items:
            owners.setdefault(t, set()).add(label)
    need = per_class["dev"] + per_class["train"]
    out: dict[str, list[tuple[str, str]]] = {"train": [], "dev": []}
    for label in sorted(texts):
        distinct = sorted({t for t in texts[label] if len(owners[t]) == 1}, key=_sha)
        if len(distinct) < need:
            raise TaskDataError(f"{where}: only {len(distinct)} distinct texts labelled "
                                f"{label!r}, {need} needed; is the source complete?")
        out["dev"] += [(t, label) for t in distinct[:per_class["dev"]]]
        out["train"] += [(t, label) for t in distinct[per_class["dev"]:need]]
    return out


def _write(out_dir: str, name: str, source_files: list[str],
           splits: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for split, rows in splits.items():
        paths[split] = os.path.join(out_dir, f"{split}.tsv")
        write_text_atomic(paths[split], "sentence\tlabel\n"
                          + "".join(f"{t}\t{label}\n" for t, label in rows))
    files = {path: sha256_file(path) for path in source_files}
    counts = {split: {label: sum(1 for _, lab in rows if lab == label)
                      for label in sorted({lab for _, lab in rows})}
              for split, rows in splits.items()}
    write_text_atomic(os.path.join(out_dir, "source.json"), json.dumps(
        {"task": name, "source_sha256": files, "rows": counts}, indent=1) + "\n")
    return paths


def wordnet_task(out_dir: str, source: str = WORDNET_DIR) -> dict[str, str]:
    """Write the ``wordnet`` task (module docstring) to ``out_dir``; returns the paths."""
    splits = split_balanced(wordnet_texts(source), WORDNET_PER_CLASS,
                            os.path.join(source, "data.noun"))
    return _write(out_dir, "wordnet", [os.path.join(source, "data.noun")], splits)


def fortunes_task(out_dir: str, source: str = FORTUNES_DIR) -> dict[str, str]:
    """Write the ``fortunes`` task (module docstring) to ``out_dir``; returns the paths."""
    splits = split_balanced(fortunes_texts(source), FORTUNES_PER_CLASS, source)
    return _write(out_dir, "fortunes", [os.path.join(source, c) for c in FORTUNES_CLASSES],
                  splits)


REAL_TASKS = {"wordnet": (wordnet_task, WORDNET_DIR), "fortunes": (fortunes_task, FORTUNES_DIR)}
