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
``file: row i`` (Parquet, 0-based) and the field. Demo task files from a prepared corpus:
trainer.tools.finetune.demo_tasks.
"""

from __future__ import annotations

import csv
import json
import os
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

