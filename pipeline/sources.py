"""Raw inputs -> documents: glob expansion and one reader per format, as plain functions.

Readers take one file and yield ``Document``s in file order, so a document's place in the
corpus (file index, document index) is fixed by the input alone, never by a runner. They never
crash on bad content: undecodable bytes become U+FFFD and bad records are skipped, and both are
counted in the ``FileReport`` that the pipeline stores in the corpus manifest.

    from pipeline.sources import expand_inputs, read_file
    for path in expand_inputs(["data/*.jsonl.zst"]):
        report = FileReport(path)
        for doc in read_file(path, "auto", report): ...
"""

from __future__ import annotations

import ast
import json
import math
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from trainer.errors import UserError

STDLIB = "@stdlib"
"""Input alias for the Python standard library's own sources (the embedded default corpus)."""

# Test suites and vendored trees are code samples and fixtures, not prose.
_STDLIB_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "lib2to3", "__pycache__"}
_MAX_EXAMPLES = 5
_READ_CHUNK_BYTES = 4 << 20


class InputError(UserError):
    """The inputs cannot be read as asked; the message names the file and the fix."""


@dataclass(frozen=True)
class Document:
    doc_index: int
    """Place of the document in its file (0, 1, ...)."""
    offset: int
    """Text bytes of the file before this document: decides which output part it lands in."""
    text: str


@dataclass
class FileReport:
    """What reading one file found; stored per input file in the corpus manifest."""

    path: str
    documents: int = 0
    undecodable_bytes: int = 0
    decoded_bytes: int = 0
    """Bytes decoded as UTF-8 (text, jsonl, pydoc): what undecodable_bytes is a share of."""
    bad_records: int = 0
    examples: list[str] = field(default_factory=list)
    """The first few problems, each naming the line or row."""

    def problem(self, where: str, what: str) -> None:
        self.bad_records += 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(f"{where}: {what}")

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def stdlib_sources() -> list[str]:
    """The standard library's .py files, sorted, without test suites: real English docstrings
    on every machine that has Python (fixed for a given Python version)."""
    root = sysconfig.get_paths()["stdlib"]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP_DIRS)
        found += [os.path.join(dirpath, f) for f in filenames if f.endswith(".py")]
    return sorted(found)


def expand_inputs(globs: list[str]) -> list[tuple[str, int]]:
    """Every input file as (path, size in bytes), in a fixed order: the globs in the order
    given, each glob's matches sorted. A glob that matches nothing is an error."""
    if not globs:
        raise InputError("data.input is empty: give one or more globs of raw text, e.g. "
                         "--set 'data.input=[\"corpus/*.txt\"]', or \"@stdlib\" for the "
                         "embedded default corpus")
    out: list[tuple[str, int]] = []
    seen: set[str] = set()
    for pattern in globs:
        if pattern == STDLIB:
            matched = [(p, os.path.getsize(p)) for p in stdlib_sources()]
        else:
            try:
                result = FileSystems.match([pattern])[0]
            except Exception as e:  # Beam raises BeamIOError with the cause attached
                raise InputError(f"cannot list data.input glob {pattern!r}: {e}") from None
            matched = sorted((m.path, m.size_in_bytes) for m in result.metadata_list)
        if not matched:
            raise InputError(f"data.input glob {pattern!r} matches no file; check the path "
                             f"(relative paths are from {os.getcwd()})")
        for path, size in matched:
            if path not in seen:
                seen.add(path)
                out.append((path, size))
    return out


def resolve_format(path: str, fmt: str) -> str:
    """The reader for ``path``: ``fmt`` itself, or by extension when it is ``auto``."""
    if fmt != "auto":
        return fmt
    name = path.lower()
    for ext in (".gz", ".zst", ".zstd", ".bz2", ".deflate"):
        name = name.removesuffix(ext)
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".py"):
        return "pydoc"
    return "text"


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------

def decode_utf8(raw: bytes) -> tuple[str, int]:
    """Decode UTF-8, replacing each undecodable run by U+FFFD; also return how many bytes
    were undecodable (so the loss is counted, not silent)."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        pass
    parts, bad, pos = [], 0, 0
    while pos < len(raw):
        try:
            parts.append(raw[pos:].decode("utf-8"))
            break
        except UnicodeDecodeError as e:
            parts.append(raw[pos:pos + e.start].decode("utf-8"))
            parts.append("\ufffd")
            bad += e.end - e.start
            pos += e.end
    return "".join(parts), bad


def iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line without its newline) of a possibly compressed file, streaming.
    Offsets count decompressed bytes; compression is chosen from the extension."""
    offset, tail = 0, b""
    with FileSystems.open(path) as f:
        while chunk := f.read(_READ_CHUNK_BYTES):
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            for line in lines:
                yield offset, line.rstrip(b"\r")
                offset += len(line) + 1
    if tail:
        yield offset, tail.rstrip(b"\r")


def normalize(text: str) -> str:
    """Document-level clean-up; Unicode normalisation (NFKC) is the tokenizer's job."""
    return text.replace("\x00", "").strip()


# ---------------------------------------------------------------------------------------------
# Readers: each yields the documents of one file in file order and fills ``report``
# ---------------------------------------------------------------------------------------------

def _text_blocks(path: str, report: FileReport, doc_split: str) -> Iterator[tuple[int, str]]:
    """(offset, text) of each line, or of each run of non-blank lines."""
    block: list[str] = []
    start = 0
    for offset, raw in iter_lines(path):
        line, bad = decode_utf8(raw)
        report.undecodable_bytes += bad
        report.decoded_bytes += len(raw)
        if doc_split == "line":
            yield offset, line
        elif line.strip():
            if not block:
                start = offset
            block.append(line)
        elif block:
            yield start, "\n".join(block)
            block = []
    if block:
        yield start, "\n".join(block)


def read_text(path: str, report: FileReport, doc_split: str = "blank_line") -> Iterator[Document]:
    index = 0
    for offset, text in _text_blocks(path, report, doc_split):
        text = normalize(text)
        if text:
            yield Document(index, offset, text)
            index += 1


def read_jsonl(path: str, report: FileReport, text_field: str = "text") -> Iterator[Document]:
    index = 0
    for line_no, (offset, raw) in enumerate(iter_lines(path), start=1):
        if not raw.strip():
            continue
        line, bad = decode_utf8(raw)
        report.undecodable_bytes += bad
        report.decoded_bytes += len(raw)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            report.problem(f"{path}:{line_no}", f"not valid JSON ({e.msg})")
            continue
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            report.problem(f"{path}:{line_no}", f"no string field {text_field!r} (set "
                           "data.text_field to the field that holds the text)")
            continue
        text = normalize(text)
        if text:
            yield Document(index, offset, text)
            index += 1


def read_parquet(path: str, report: FileReport, text_field: str = "text") -> Iterator[Document]:
    with FileSystems.open(path) as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        if text_field not in names:
            raise InputError(f"{path}: no column {text_field!r}; columns are {names}. Set "
                             "data.text_field to the column that holds the text")
        index, offset, row = 0, 0, 0
        for batch in pf.iter_batches(columns=[text_field], batch_size=8192):
            for value in batch.column(0).to_pylist():
                row += 1
                if not isinstance(value, str):
                    if value is not None:
                        report.problem(f"{path}: row {row - 1}", f"{text_field} is not a string")
                    continue
                text = normalize(value)
                if text:
                    yield Document(index, offset, text)
                    index += 1
                offset += len(value.encode("utf-8"))


def read_pydoc(path: str, report: FileReport, min_words: int = 5) -> Iterator[Document]:
    """Docstrings (module, classes, functions) of a Python source file, in ``ast.walk``
    order; those under ``min_words`` words are mostly code references, not prose."""
    raw = b"".join(line + b"\n" for _, line in iter_lines(path))
    source, bad = decode_utf8(raw)
    report.undecodable_bytes += bad
    report.decoded_bytes += len(raw)
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError) as e:
        report.problem(path, f"not parseable as Python ({e})")
        return
    index, offset = 0, 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                          | ast.AsyncFunctionDef):
            continue
        doc = ast.get_docstring(node, clean=True)
        if doc and len(doc.split()) >= min_words:
            text = normalize(doc)
            yield Document(index, offset, text)
            index += 1
            offset += len(text.encode("utf-8"))


def check_undecodable(reports: list[dict], max_fraction: float) -> None:
    """Refuse the first input (a ``FileReport.as_dict()``) whose undecodable share of its
    decoded bytes exceeds ``max_fraction`` (data.max_undecodable_fraction): a binary file, or
    text in another encoding, read as UTF-8 is mostly U+FFFD, and tokenising it would put
    noise in the corpus with only a warning to show for it."""
    for r in reports:
        total, bad = r.get("decoded_bytes", 0), r["undecodable_bytes"]
        if total and bad > max_fraction * total:
            accept = min(1.0, math.ceil(100 * bad / total) / 100)
            raise InputError(
                f"{r['path']}: {bad:,} of its {total:,} bytes ({bad / total:.1%}) are not valid "
                f"UTF-8, more than data.max_undecodable_fraction = {max_fraction}: it looks "
                "binary or in another encoding. Remove it from data.input, convert it to "
                f"UTF-8, or set --set data.max_undecodable_fraction={accept} "
                "to accept it (its undecodable runs become U+FFFD)")


def read_file(path: str, fmt: str, report: FileReport, text_field: str = "text",
              doc_split: str = "blank_line") -> Iterator[Document]:
    """The documents of one input file, by format (``auto`` resolves per file)."""
    fmt = resolve_format(path, fmt)
    if fmt == "text":
        docs = read_text(path, report, doc_split)
    elif fmt == "jsonl":
        docs = read_jsonl(path, report, text_field)
    elif fmt == "parquet":
        docs = read_parquet(path, report, text_field)
    elif fmt == "pydoc":
        docs = read_pydoc(path, report)
    else:
        raise InputError(f"unknown data.format {fmt!r}")
    for doc in docs:
        report.documents += 1
        yield doc
