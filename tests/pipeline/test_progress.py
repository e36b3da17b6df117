"""Progress lines of prepare and generate (pipeline/progress.py): real jobs with a short
``--progress-s`` print lines whose numbers hold together and a ``finished`` line that matches
the manifest; without the flag's interval elapsing, none. The arithmetic of a line is checked
with a fake clock."""

from __future__ import annotations

import re
import threading
import time

import pytest

from pipeline.generate import run as generate
from pipeline.layout import Layout
from pipeline.prepare import run as prepare
from pipeline.progress import (
    Pace,
    PartWatch,
    ProgressReporter,
    corpus_watch,
    duration,
    finished_line,
    parquet_rows,
    progress_line,
    rtd_watch,
)
from tests.helpers import IN_MEMORY, gen_argv, prepare_argv

pytestmark = pytest.mark.usefixtures("one_thread")

PROGRESS = re.compile(
    r"^(prepare|generate): progress: (?P<parts>[\d,]+)/(?P<total>~?[\d,]+|\?) parts, "
    r"(?P<rows>[\d,]+)(?:/(?P<total_rows>[\d,]+))? rows, [\d,]+\.\d rows/s, "
    r"ETA (?:\?|~?[\dhms.]+), [\dhms.]+ elapsed$", re.MULTILINE)
FINISHED = re.compile(r"^(prepare|generate): finished: (?P<parts>[\d,]+) parts, "
                      r"(?P<rows>[\d,]+) rows in [\dhms.]+, [\d,]+\.\d rows/s$", re.MULTILINE)
# Many small parts, so that the job's last stage spans several lines.
SMALL_PARTS = ("--set", "data.part_text_bytes=1500")


def num(text: str) -> int:
    return int(text.replace(",", "").lstrip("~"))


def progress_lines(out: str) -> list[re.Match]:
    return list(PROGRESS.finditer(out))


def check_lines(out: str, manifest: dict, total_rows: int | None = None) -> list[re.Match]:
    """The progress lines are consistent and the finished line is the manifest's count."""
    lines = progress_lines(out)
    parts = [num(m["parts"]) for m in lines]
    assert parts == sorted(parts), "finished parts never decrease"
    for m in lines:
        if m["total"] != "?":
            assert num(m["parts"]) <= num(m["total"])
        if m["total_rows"]:
            assert num(m["rows"]) <= num(m["total_rows"]) == total_rows
    [done] = list(FINISHED.finditer(out))
    assert num(done["parts"]) == len(manifest["files"])
    assert num(done["rows"]) == sum(f["rows"] for f in manifest["files"])
    return lines


# ---------------------------------------------------------------------------------------------
# Real jobs
# ---------------------------------------------------------------------------------------------

def test_prepare_prints_progress(corpus_inputs, tmp_path, capsys):
    inputs_dir, _ = corpus_inputs
    manifest = prepare(prepare_argv(inputs_dir, tmp_path / "c", *SMALL_PARTS,
                                    "--progress-s", "0.1", *IN_MEMORY))
    lines = check_lines(capsys.readouterr().out, manifest)
    assert lines, "a job longer than the interval prints progress"
    assert len(manifest["files"]) > 20
    assert all(m["total"].startswith("~") or m["total"] == "?" for m in lines)  # an estimate


@pytest.mark.parametrize("interval", ["0", "600"])
def test_no_progress_lines_when_off_or_longer_than_the_job(corpus_inputs, tmp_path, capsys,
                                                           interval):
    """Negative control: the same job prints no progress line with the reporter off (0) or an
    interval longer than the job, only the finished line."""
    inputs_dir, _ = corpus_inputs
    start = time.monotonic()
    manifest = prepare(prepare_argv(inputs_dir, tmp_path / "c", *SMALL_PARTS,
                                    "--progress-s", interval, *IN_MEMORY))
    assert time.monotonic() - start < 60  # stopping does not wait for the interval
    out = capsys.readouterr().out
    assert progress_lines(out) == [] and "progress:" not in out
    check_lines(out, manifest)


def test_generate_prints_progress(prepared, tmp_path, capsys):
    corpus_dir, corpus, _ = prepared
    manifest = generate(gen_argv(corpus_dir, tmp_path / "rtd", "corruption.replacement=uniform",
                                 "generate.epochs=2",
                                 extra=("--set", "generate.part_rows=25", "--progress-s",
                                        "0.1")))
    total_rows = 2 * corpus["num_sequences"]
    lines = check_lines(capsys.readouterr().out, manifest, total_rows)
    assert lines
    assert {m["total"] for m in lines} == {f"{len(manifest['files']):,}"}  # exact, known


@pytest.mark.slow
def test_generate_progress_on_dask(prepared, tmp_path, capsys):
    pytest.importorskip("distributed")
    corpus_dir, corpus, _ = prepared
    manifest = generate(gen_argv(corpus_dir, tmp_path / "rtd", "corruption.replacement=uniform",
                                 extra=("--set", "generate.part_rows=50", "--progress-s",
                                        "1"),
                                 beam=["--runner", "DaskRunner", "--dask_workers", "2"]))
    out = capsys.readouterr().out
    assert check_lines(out, manifest, manifest["epochs"] * corpus["num_sequences"])


# ---------------------------------------------------------------------------------------------
# The reporter itself
# ---------------------------------------------------------------------------------------------

def test_reporter_error_prints_once_and_stops(tmp_path, capsys):
    (tmp_path / "part-00000.parquet").write_bytes(b"not parquet")
    reporter = ProgressReporter("prepare", str(tmp_path), PartWatch("part-*.parquet", 3,
                                                                    parquet_rows), 0.02)
    with reporter:
        time.sleep(0.3)
    out = capsys.readouterr().out
    assert out.count("prepare: progress reporting stopped") == 1, out
    assert "progress:" not in out and "finished:" not in out
    assert not reporter._thread.is_alive()


def test_reporter_stops_silently_when_the_job_fails(tmp_path, capsys):
    reporter = ProgressReporter("generate", str(tmp_path), rtd_watch([0], Layout(10, 5, 5)), 0.02)
    with pytest.raises(RuntimeError), reporter:
        time.sleep(0.2)
        raise RuntimeError("the job failed")
    out = capsys.readouterr().out
    assert "generate: progress: 0/2 parts, 0/10 rows" in out
    assert "finished:" not in out
    assert not reporter._thread.is_alive()
    assert not any(t.name == "generate-progress" for t in threading.enumerate())
    time.sleep(0.1)
    assert capsys.readouterr().out == ""


def test_rtd_watch_counts_rows_of_finished_parts_only(tmp_path):
    layout = Layout(num_sequences=12, batch_rows=2, rows_per_part=5)  # parts of 5, 5, 2
    for name in ["epoch=0000/part-00002.parquet", "epoch=0001/part-00000.parquet",
                 "epoch=0001/.tmp-part-00001.parquet-abc"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    reporter = ProgressReporter("generate", str(tmp_path), rtd_watch([0, 1], layout), 0)
    assert reporter.count() == (2, 2 + 5)
    assert (reporter.watch.total_parts, reporter.watch.total_rows) == (6, 24)
    # A range run counts only its own epochs: epoch 0's part is another run's.
    reporter = ProgressReporter("generate", str(tmp_path), rtd_watch([1], layout), 0)
    assert reporter.count() == (1, 5)
    assert (reporter.watch.total_parts, reporter.watch.total_rows) == (3, 12)


# ---------------------------------------------------------------------------------------------
# Arithmetic, with a fake clock
# ---------------------------------------------------------------------------------------------

def test_duration():
    assert [duration(s) for s in (0.42, 9.94, 12.4, 125, 3723)] == [
        "0.4s", "9.9s", "12s", "2m05s", "1h02m03s"]


def test_eta_from_the_pace_since_parts_appear():
    pace = Pace(start=100.0)
    pace.observe(110.0, 0)  # still shuffling at 110 s
    assert pace.eta_s(110.0, 0, 10) is None
    # 4 parts in the 20 s since the last look without any: 6 more take 30 s.
    pace.observe(130.0, 4)
    assert pace.eta_s(130.0, 4, 10) == pytest.approx(30.0)
    assert pace.rows_per_s(130.0, 600) == pytest.approx(20.0)  # over the whole job
    assert pace.eta_s(140.0, 10, 10) == 0.0
    assert pace.eta_s(140.0, 11, 10) is None and pace.eta_s(140.0, 3, None) is None


def test_line_format():
    watch = PartWatch("epoch=*/part-*.parquet", 10, lambda p: 200, 2000)
    pace = Pace(start=0.0)
    pace.observe(10.0, 0)
    assert progress_line("generate", watch, pace, 30.0, 3, 600) == (
        "generate: progress: 3/10 parts, 600/2,000 rows, 20.0 rows/s, ETA 47s, 30s elapsed")
    estimate = PartWatch("part-*.parquet", 4, lambda p: 1, estimated=True)
    assert progress_line("prepare", estimate, pace, 30.0, 2, 1500) == (
        "prepare: progress: 2/~4 parts, 1,500 rows, 50.0 rows/s, ETA ~20s, 30s elapsed")
    # More parts than the estimate: the total is unknown.
    assert progress_line("prepare", estimate, pace, 30.0, 5, 1500).startswith(
        "prepare: progress: 5/? parts, 1,500 rows, 50.0 rows/s, ETA ?,")
    assert finished_line("generate", 10, 2000, 100.0) == (
        "generate: finished: 10 parts, 2,000 rows in 1m40s, 20.0 rows/s")


def test_corpus_estimate_follows_the_part_layout():
    # Small files share a part up to part_text_bytes; a large file gets one per chunk.
    files = [("a", 400), ("b", 500), ("c", 300), ("d", 2500), ("e", 100)]
    assert corpus_watch(files, 1000).total_parts == 3 + 3  # (a b) (c) (e); d in 3 chunks
