"""Readers: every format, compression, document splitting, and bad input that is counted."""

from __future__ import annotations

import bz2
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.sources import (
    STDLIB,
    FileReport,
    InputError,
    decode_utf8,
    expand_inputs,
    read_file,
    resolve_format,
    stdlib_sources,
)

TEXT = "First document,\nstill the first.\n\n\nSecond document.\r\n\r\nThird one.\n"


def docs_of(path, fmt="auto", **kw):
    report = FileReport(str(path))
    return [d for d in read_file(str(path), fmt, report, **kw)], report


def test_text_blank_line_and_line_splitting(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text(TEXT)
    docs, report = docs_of(p)
    assert [d.text for d in docs] == ["First document,\nstill the first.", "Second document.",
                                      "Third one."]
    assert [d.doc_index for d in docs] == [0, 1, 2]
    raw = p.read_bytes()
    assert [raw[d.offset:].startswith(d.text.split("\n")[0].encode()) for d in docs] == [True] * 3
    assert report.documents == 3 and report.bad_records == 0

    lines, _ = docs_of(p, doc_split="line")
    assert [d.text for d in lines] == ["First document,", "still the first.",
                                       "Second document.", "Third one."]


@pytest.mark.parametrize("suffix, compress", [
    (".gz", lambda b: gzip.compress(b, mtime=0)),
    (".zst", lambda b: zstandard.ZstdCompressor().compress(b)),
    (".bz2", bz2.compress),
])
def test_compressed_text_reads_like_plain(tmp_path, suffix, compress):
    plain = tmp_path / "t.txt"
    plain.write_text(TEXT)
    packed = tmp_path / f"t.txt{suffix}"
    packed.write_bytes(compress(TEXT.encode()))
    assert docs_of(packed)[0] == docs_of(plain)[0]


def test_jsonl_field_bad_lines_and_compression(tmp_path):
    lines = [json.dumps({"body": "alpha beta"}), "{not json", json.dumps({"other": "x"}),
             json.dumps(["a list"]), "", json.dumps({"body": "gamma"})]
    raw = ("\n".join(lines) + "\n").encode()
    p = tmp_path / "x.jsonl.zst"
    p.write_bytes(zstandard.ZstdCompressor().compress(raw))
    docs, report = docs_of(p, text_field="body")
    assert [d.text for d in docs] == ["alpha beta", "gamma"]
    assert report.bad_records == 3
    assert report.examples[0].endswith(":2: not valid JSON (Expecting property name enclosed "
                                       "in double quotes)")
    assert ":3: no string field 'body'" in report.examples[1]


def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"caf\xe9 ok\n\n\xff\xfe two bad\n")
    docs, report = docs_of(p)
    assert [d.text for d in docs] == ["caf\ufffd ok", "\ufffd\ufffd two bad"]
    assert report.undecodable_bytes == 3
    assert decode_utf8("é".encode()) == ("é", 0)


def test_parquet_column(tmp_path):
    p = tmp_path / "x.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "content": ["one two", None, "  three "]}), p)
    docs, report = docs_of(p, text_field="content")
    assert [d.text for d in docs] == ["one two", "three"]
    assert report.bad_records == 0
    with pytest.raises(InputError, match=r"no column 'text'; columns are \['id', 'content'\]"):
        docs_of(p)


def test_pydoc_extracts_prose_and_reports_unparseable(tmp_path):
    p = tmp_path / "m.py"
    p.write_text('"""Module docstring with enough words to count."""\n'
                 'def f():\n    """Short."""\n'
                 'class C:\n    """A class docstring that is long enough."""\n')
    docs, _ = docs_of(p)
    assert [d.text for d in docs] == ["Module docstring with enough words to count.",
                                      "A class docstring that is long enough."]
    bad = tmp_path / "py2.py"
    bad.write_text("print 'hello'\n")
    docs, report = docs_of(bad)
    assert docs == [] and report.bad_records == 1 and "not parseable" in report.examples[0]


def test_expand_inputs_order_and_errors(tmp_path):
    for name in ("b.txt", "a.txt", "c.jsonl"):
        (tmp_path / name).write_text("x")
    got = expand_inputs([str(tmp_path / "*.txt"), str(tmp_path / "*")])
    assert [p.rsplit("/", 1)[1] for p, _ in got] == ["a.txt", "b.txt", "c.jsonl"]
    assert all(size == 1 for _, size in got)
    with pytest.raises(InputError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.parquet")])
    with pytest.raises(InputError, match="data.input is empty"):
        expand_inputs([])


def test_stdlib_alias_is_deterministic_prose():
    files = stdlib_sources()
    assert files == sorted(files) and len(files) > 300
    assert not any("/test/" in f or "/site-packages/" in f for f in files)
    assert [p for p, _ in expand_inputs([STDLIB])] == files


def test_resolve_format():
    assert resolve_format("a/b.jsonl.zst", "auto") == "jsonl"
    assert resolve_format("b.JSON.gz", "auto") == "jsonl"
    assert resolve_format("b.parquet", "auto") == "parquet"
    assert resolve_format("b.txt.zst", "auto") == "text"
    assert resolve_format("b.py", "auto") == "pydoc"
    assert resolve_format("b.py", "text") == "text"


def binary_file(tmp_path, name="blob.txt"):
    """A real binary file under a text name: zlib-compressed Python sources (a few KiB)."""
    import zlib

    p = tmp_path / name
    sources = b"".join(open(m.__file__, "rb").read() for m in (json, gzip))
    p.write_bytes(zlib.compress(sources))
    return p


@pytest.mark.parametrize("name", ["blob.txt", "blob.jsonl"])
def test_a_mostly_undecodable_file_is_refused_naming_it_and_the_key(tmp_path, name):
    from pipeline.sources import check_undecodable

    p = binary_file(tmp_path, name)
    _, report = docs_of(p)
    r = report.as_dict()
    assert 0.9 * p.stat().st_size < r["decoded_bytes"] <= p.stat().st_size  # line ends aside
    assert r["undecodable_bytes"] > 0.05 * r["decoded_bytes"]
    with pytest.raises(InputError, match=rf"{p}: .* bytes \(.*%\) are not valid UTF-8, more "
                                         r"than data\.max_undecodable_fraction = 0\.05: it "
                                         r"looks binary.*--set data\.max_undecodable_fraction="):
        check_undecodable([r], 0.05)
    check_undecodable([r], 1.0)  # the user's explicit allowance


def test_a_few_undecodable_bytes_in_real_text_pass_the_check(tmp_path):
    from pipeline.sources import check_undecodable

    p = tmp_path / "latin1.txt"
    p.write_bytes((TEXT * 20).encode() + b"caf\xe9 au lait\n")
    _, report = docs_of(p)
    assert report.undecodable_bytes == 1
    check_undecodable([report.as_dict()], 0.05)
    check_undecodable([{"path": "x.parquet", "undecodable_bytes": 0, "decoded_bytes": 0}], 0.0)


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_max_undecodable_fraction_is_validated_naming_the_key(value):
    from tests.helpers import TINY
    from trainer.config.load import load_config
    from trainer.errors import UserError

    assert load_config(TINY, []).data.max_undecodable_fraction == 0.05
    with pytest.raises(UserError, match=r"data\.max_undecodable_fraction.*must be in \[0, 1\]"):
        load_config(TINY, [f"data.max_undecodable_fraction={value}"])
