"""GLUE-style task data: TSV / JSONL / Parquet rows -> labelled token sequences -> batches.

    rows = read_rows("data/dev.tsv", task)                  # [Row(where, text_a, text_b, label)]
    label_names = label_names_from(train_rows, task)        # classification; [] for regression
    data = encode(rows, task, label_names, sp, max_seq_len)  # EncodedData
    for input_ids, attention_mask, labels in data.batches(order, 32): ...   # (B, T) each

TSV files have a header row naming the columns and no quoting (GLUE's files contain stray
quote characters, so csv quoting is off, as in GLUE's reference loaders). A pair is encoded
``[CLS] a [SEP] b [SEP]`` (the encoder has no segment embeddings, so the [SEP] alone marks the
boundary), single sentences ``[CLS] a [SEP]``; too-long inputs are cut longest-first (BERT's
rule: drop the last token of the longer text, of b on ties). Batches are padded to their own
longest sequence. Every problem a user can fix names ``file:line`` (TSV, JSONL) or
``file: row i`` (Parquet, 0-based) and the field.

Demo tasks built from a prepared corpus (``make demo``; see continuation_task, order_task):

    python -m trainer.finetune_data shards/tiny/corpus data/continuation [--train 2000 --dev 500]
    python -m trainer.finetune_data shards/tiny/corpus data/order --task order
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import sentencepiece as spm
import torch

from trainer.errors import UserError
from trainer.tokenizer import CLS_ID, PAD_ID, SEP_ID
from trainer.tools.finetune.config import TaskConfig

EXTENSIONS = {".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}


class TaskDataError(UserError):
    """A task file is missing, malformed, or a row lacks a field or has a bad label."""


@dataclass(frozen=True)
class Row:
    where: str
    """``file:line`` or ``file: row i``: where the row came from, for error messages."""
    text_a: str
    text_b: str | None
    label: object
    """The raw label value (None when the file has no label field: a test file)."""


def file_format(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise TaskDataError(f"{path}: cannot tell the format from the extension {ext!r}; name it "
                            f"{' / '.join(EXTENSIONS)} or set task.format")
    return EXTENSIONS[ext]


def _records(path: str, fmt: str, fields: list[str]) -> Iterator[tuple[str, dict]]:
    """(where, {field: value}) for every row; fields absent from a row are left out."""
    if fmt == "parquet":
        try:
            schema = pq.read_schema(path)
        except OSError as e:
            raise TaskDataError(f"{path}: not a readable Parquet file ({e})") from None
        present = [f for f in fields if f in schema.names]
        table = pq.read_table(path, columns=present)
        columns = {f: table.column(f).to_pylist() for f in present}
        for i in range(table.num_rows):
            yield f"{path}: row {i}", {f: columns[f][i] for f in present}
        return
    with open(path, encoding="utf-8", newline="") as f:
        try:
            if fmt == "jsonl":
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise TaskDataError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
                    if not isinstance(record, dict):
                        raise TaskDataError(f"{path}:{line_no}: expected a JSON object, got "
                                            f"{type(record).__name__}")
                    yield f"{path}:{line_no}", record
                return
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if not header:
                raise TaskDataError(f"{path}:1: empty file; a TSV task file starts with a "
                                    "header row naming its columns")
            for row in reader:
                if not row:  # a blank line
                    continue
                yield (f"{path}:{reader.line_num}",
                       {name: value for name, value in zip(header, row, strict=False)})
        except UnicodeDecodeError as e:
            raise TaskDataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _header(path: str, fmt: str) -> list[str] | None:
    """The column names a file declares (TSV header, Parquet schema); None for JSONL."""
    if fmt == "parquet":
        try:
            return pq.read_schema(path).names
        except OSError as e:
            raise TaskDataError(f"{path}: not a readable Parquet file ({e})") from None
    if fmt == "tsv":
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            return next(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), None) or []
    return None


def read_rows(path: str, task: TaskConfig, require_label: bool = True) -> list[Row]:
    """Every row of one task file. A test file (``require_label=False``) may lack the label
    field altogether; a file that has it must have it in every row."""
    if not os.path.isfile(path):
        raise TaskDataError(f"{path} does not exist")
    fmt = file_format(path, task.format)
    fields = [task.text_a, *([task.text_b] if task.text_b else []), task.label]
    header = _header(path, fmt)
    has_label = True
    if header is not None:
        has_label = task.label in header
        needed = [f for f in fields if f != task.label or require_label]
        missing = [f for f in needed if f not in header]
        if missing:
            where = f"{path}:1" if fmt == "tsv" else path
            raise TaskDataError(f"{where}: no column {missing[0]!r} (columns: {header}); set "
                                f"task.text_a / task.text_b / task.label to the right names")
    rows = []
    for where, record in _records(path, fmt, fields):
        if len(rows) == 0 and header is None:
            has_label = require_label or task.label in record
        values = []
        for name in fields:
            value = record.get(name)
            if value is None and (name != task.label or has_label):
                problem = "is missing" if name not in record else "is empty (null)"
                raise TaskDataError(f"{where}: field {name!r} {problem}; every row needs "
                                    f"{', '.join(repr(f) for f in fields)}")
            values.append(value)
        text_a, text_b = str(values[0]), (str(values[1]) if task.text_b else None)
        rows.append(Row(where, text_a, text_b, values[-1] if has_label else None))
    if not rows:
        raise TaskDataError(f"{path} has no rows")
    return rows


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------

def label_key(value: object) -> str:
    """A classification label as the string that names its class: ints and integral floats
    (Parquet may store 0/1 as 0.0/1.0) as their integer, strings stripped."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def label_names_from(rows: list[Row], task: TaskConfig) -> list[str]:
    """The classes in index order: task.labels, or the train rows' labels sorted."""
    if task.type == "regression":
        return []
    if task.labels:
        return list(task.labels)
    seen = sorted({label_key(r.label) for r in rows})
    if all(s.lstrip("-").isdigit() for s in seen):
        seen.sort(key=int)
    if len(seen) < 2:
        raise TaskDataError(f"{rows[0].where.rsplit(':', 1)[0]}: only one label value "
                            f"({seen}) in the training data; a classifier needs at least two")
    return seen


def _label_value(row: Row, task: TaskConfig, index: dict[str, int]) -> float | int:
    if task.type == "regression":
        try:
            value = float(row.label)
        except (TypeError, ValueError):
            value = float("nan")
        if not np.isfinite(value):
            raise TaskDataError(f"{row.where}: field {task.label!r} = {row.label!r} is not a "
                                "finite number, as a regression task needs")
        return value
    key = label_key(row.label)
    if key not in index:
        raise TaskDataError(f"{row.where}: field {task.label!r} = {key!r} is not a known label "
                            f"{list(index)} (the labels come from task.labels or the training "
                            "file); list every class in task.labels")
    return index[key]


# ---------------------------------------------------------------------------------------------
# Encoding and batching
# ---------------------------------------------------------------------------------------------

def truncate_pair(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Lengths after longest-first truncation to ``budget`` tokens: repeatedly drop a token
    from the longer text (b on ties), as BERT's _truncate_seq_pair."""
    while len_a + len_b > budget:
        if len_a > len_b:
            len_a -= 1
        else:
            len_b -= 1
    return len_a, len_b


def pack(a: list[int], b: list[int] | None, max_seq_len: int) -> np.ndarray:
    """``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]``, truncated to max_seq_len tokens."""
    if b is None:
        return np.array([CLS_ID, *a[:max_seq_len - 2], SEP_ID], dtype=np.int64)
    la, lb = truncate_pair(len(a), len(b), max_seq_len - 3)
    return np.array([CLS_ID, *a[:la], SEP_ID, *b[:lb], SEP_ID], dtype=np.int64)


@dataclass
class EncodedData:
    """One split, tokenized: sequences of different lengths and (unless a test file) labels."""

    ids: list[np.ndarray]
    labels: np.ndarray | None
    """(N,) int64 class indices or float32 targets."""
    truncated: int
    """How many rows were cut to max_seq_len (reported, never silent)."""

    def __len__(self) -> int:
        return len(self.ids)

    def batches(self, order: np.ndarray, batch_size: int
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            input_ids, mask = collate([self.ids[i] for i in idx])
            labels = None if self.labels is None else torch.from_numpy(self.labels[idx])
            yield input_ids, mask, labels


def collate(seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the batch's longest sequence: input_ids (B, T) long and attention_mask (B, T)
    bool, True at real tokens."""
    T = max(len(s) for s in seqs)
    ids = np.full((len(seqs), T), PAD_ID, dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
    input_ids = torch.from_numpy(ids)
    return input_ids, input_ids != PAD_ID


def encode(rows: list[Row], task: TaskConfig, label_names: list[str],
           sp: spm.SentencePieceProcessor, max_seq_len: int, labelled: bool = True
           ) -> EncodedData:
    """Tokenize (one batched SentencePiece call per text field), pack and map the labels.
    ``labelled=False`` (test files) ignores any label field: GLUE test exports put -1 there."""
    a = sp.encode([r.text_a for r in rows])
    b = sp.encode([r.text_b for r in rows]) if task.text_b else [None] * len(rows)
    ids = [pack(x, y, max_seq_len) for x, y in zip(a, b, strict=True)]
    full = [len(x) + (2 if y is None else len(y) + 3) for x, y in zip(a, b, strict=True)]
    truncated = sum(n > max_seq_len for n in full)
    labels = None
    if labelled and rows[0].label is not None:
        index = {name: i for i, name in enumerate(label_names)}
        values = [_label_value(r, task, index) for r in rows]
        dtype = np.float32 if task.type == "regression" else np.int64
        labels = np.array(values, dtype=dtype)
    return EncodedData(ids, labels, truncated)


# ---------------------------------------------------------------------------------------------
# A demo task from a prepared corpus (``make demo``)
# ---------------------------------------------------------------------------------------------

def corpus_texts(corpus_dir: str) -> dict[str, list[tuple[int, list[str], int]]]:
    """The corpus's sequences of >= 16 tokens as (doc_id, decoded halves, tokens in the second
    half) per split: every document goes wholly to train or to dev (doc_id % 5 == 0: dev), so
    dev texts are unseen in fine-tuning. continuation_task pairs the halves; order_task joins
    them."""
    from trainer.data.corpus_shards import CorpusShards
    from trainer.tokenizer import load_tokenizer

    corpus = CorpusShards(corpus_dir)
    sp = load_tokenizer(corpus.tokenizer_path)
    texts: dict[str, list[tuple[int, list[str], int]]] = {"train": [], "dev": []}
    for r in corpus.rows():
        body = r.input_ids[1:-1].tolist()  # without [CLS] / [SEP]
        if len(body) < 16:
            continue
        mid = len(body) // 2
        halves = [" ".join(sp.decode(x).split()) for x in (body[:mid], body[mid:])]
        texts["dev" if r.doc_id % 5 == 0 else "train"].append((r.doc_id, halves,
                                                                len(body) - mid))
    return texts


def _write_tsv(path: str, lines: list[str]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def _pick(corpus_dir: str, pool: list, split: str, n: int, rng: np.random.Generator
          ) -> np.ndarray:
    if len(pool) < n:
        raise TaskDataError(f"{corpus_dir}: only {len(pool)} sequences of >= 16 tokens for "
                            f"the {split} split, {n} needed; ask for fewer examples")
    return rng.permutation(len(pool))[:n]


def continuation_task(corpus_dir: str, out_dir: str, num_train: int = 2000, num_dev: int = 500,
                      seed: int = 0) -> dict[str, str]:
    """Write ``train.tsv`` and ``dev.tsv`` of a sentence-pair task built from a prepared
    corpus: is ``sentence2`` the second half of the sequence whose first half is
    ``sentence1`` (label 1), or the second half of a sequence of another document (label 0)?
    The other half has the same number of tokens as the true one where the corpus has one
    (else the nearest): with any second half, "are the halves about as long?" alone scored
    72% on dev, a shortcut that says nothing about the text. Classes are balanced; train and
    dev come from disjoint documents. Returns {"train": path, "dev": path}."""
    texts = corpus_texts(corpus_dir)
    rng = np.random.default_rng(seed)
    paths = {}
    os.makedirs(out_dir, exist_ok=True)
    for split, n in (("train", num_train), ("dev", num_dev)):
        pool = texts[split]
        picked = _pick(corpus_dir, pool, split, n, rng)
        by_length: dict[int, list[int]] = {}
        for i, (_, _, length) in enumerate(pool):
            by_length.setdefault(length, []).append(i)
        lengths = np.array(sorted(by_length))
        lines = ["sentence1\tsentence2\tlabel"]
        for k in range(n):
            doc, (a, b), length = pool[picked[k]]
            label = int(k % 2 == 0)
            if not label:  # another document's second half, as long as the true one
                for want in lengths[np.argsort(np.abs(lengths - length), kind="stable")]:
                    others = [i for i in by_length[int(want)] if pool[i][0] != doc]
                    if others:
                        b = pool[others[int(rng.integers(len(others)))]][1][1]
                        break
            lines.append(f"{a}\t{b}\t{label}")
        paths[split] = os.path.join(out_dir, f"{split}.tsv")
        _write_tsv(paths[split], lines)
    return paths


ORDER_WINDOW_WORDS = 4


def order_task(corpus_dir: str, out_dir: str, num_train: int = 2000, num_dev: int = 500,
               seed: int = 0) -> dict[str, str]:
    """Write ``train.tsv`` and ``dev.tsv`` of a single-sentence acceptability task (a
    CoLA-like proxy) built from a prepared corpus: is ``sentence`` as written (label 1), or
    were ORDER_WINDOW_WORDS consecutive words of it shuffled (label 0; the shuffle always
    changes the text)? The same words either way, so only word order tells: what a
    replaced-token detector has to model. Classes are balanced; train and dev come from
    disjoint documents. Returns {"train": path, "dev": path}."""
    texts = corpus_texts(corpus_dir)
    rng = np.random.default_rng(seed)
    paths = {}
    os.makedirs(out_dir, exist_ok=True)
    w = ORDER_WINDOW_WORDS
    for split, n in (("train", num_train), ("dev", num_dev)):
        pool = []  # (words, the window starts a shuffle can change)
        for _, halves, _ in texts[split]:
            words = " ".join(halves).split(" ")
            starts = [i for i in range(len(words) - w + 1) if len(set(words[i:i + w])) > 1]
            if starts:
                pool.append((words, starts))
        picked = _pick(corpus_dir, pool, split, n, rng)
        lines = ["sentence\tlabel"]
        for k in range(n):
            words, starts = pool[picked[k]]
            words, label = list(words), int(k % 2 == 0)
            if not label:
                s = starts[int(rng.integers(len(starts)))]
                window = words[s:s + w]
                shuffled = window
                while shuffled == window:
                    shuffled = [window[i] for i in rng.permutation(w)]
                words[s:s + w] = shuffled
            lines.append(f"{' '.join(words)}\t{label}")
        paths[split] = os.path.join(out_dir, f"{split}.tsv")
        _write_tsv(paths[split], lines)
    return paths


TASKS = {"continuation": continuation_task, "order": order_task}


def main(argv: list[str] | None = None) -> int:
    import argparse

    from trainer.cli import main_guard

    p = argparse.ArgumentParser(prog="python -m trainer.finetune_data",
                                description="Demo fine-tuning tasks built from a prepared "
                                "corpus. continuation: " + continuation_task.__doc__ +
                                " order: " + order_task.__doc__)
    p.add_argument("corpus_dir", help="a prepared corpus, e.g. shards/tiny/corpus")
    p.add_argument("out_dir", help="where train.tsv and dev.tsv go")
    p.add_argument("--task", choices=sorted(TASKS), default="continuation")
    p.add_argument("--train", type=int, default=2000, help="training examples")
    p.add_argument("--dev", type=int, default=500, help="dev examples")
    p.add_argument("--seed", type=int, default=0)

    def go(argv):
        args = p.parse_args(argv)
        paths = TASKS[args.task](args.corpus_dir, args.out_dir, args.train, args.dev,
                                 args.seed)
        print(f"{args.task} task: {args.train} train / {args.dev} dev examples -> "
              f"{paths['train']}, {paths['dev']}")

    return main_guard(go, argv)


if __name__ == "__main__":
    sys.exit(main())
