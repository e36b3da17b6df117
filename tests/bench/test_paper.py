"""``python -m bench.paper --smoke``: every row end to end on a small prepared corpus
(real processes: the bench is one, its sub-runs call the real entry points' main(argv)), the
report and the Markdown, and resume.

What each check catches:
- every row present and none failed: a row dropped from the bench, or one that crashes
  (a failed row is reported as "not run" with its error and makes the bench exit 2);
- each Markdown row carries the paper's figure beside a measured value: a
  report that lost the paper column, or prints "not run" for a row that ran;
- resume: with one row's file and its training run deleted, the second invocation starts
  exactly that run (the negative control: the evidence can show a re-run), skips every other
  row, and rewrites no other metrics.jsonl, results.json or row file (mtimes): a resume that
  retrains finished work, or one that skips what is missing.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

# slow: the paper bench end to end in its own process.
pytestmark = pytest.mark.slow


def bench(out, corpus) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "bench.paper", "--smoke", "--in-process",
                           "--corpus", str(corpus), "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def mtimes(out) -> dict[str, int]:
    files = [*glob.glob(f"{out}/**/metrics.jsonl", recursive=True),
             *glob.glob(f"{out}/**/results.json", recursive=True),
             *glob.glob(f"{out}/rows/*.json")]
    return {p: os.stat(p).st_mtime_ns for p in files}


def test_paper_bench_rows_report_and_resume(prepared, tmp_path, one_thread):
    pytest.importorskip("matplotlib")
    from bench.paper_report import PAPER, ROWS, TITLES

    corpus, out = prepared[0], tmp_path / "paper"
    first = bench(out, corpus)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    report = json.loads((out / "paper_report.json").read_text())
    assert set(report["rows"]) == set(ROWS)
    assert not [r for r, v in report["rows"].items() if "error" in v]
    assert report["mode"] == "smoke" and report["sub_runs_started"]
    md = (out / "paper_report.md").read_text()
    for row in ROWS:
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {TITLES[row]} |"))
        cells = line.split(" | ")
        assert cells[2] == PAPER[row] and cells[1] != "not run", line
    assert "0.71-0.81" in md and "89.1" in md  # Table 7 and Table 6 figures, verbatim
    assert (out / "plots" / "cost.png").stat().st_size > 0

    # Second invocation, with one row's file and its training run deleted (the negative
    # control: the evidence below must be able to show a re-run): exactly that run is
    # started again, every other row is skipped, and no other file is rewritten.
    (out / "rows" / "early_exit.json").unlink()
    subprocess.run(["rm", "-rf", str(out / "runs" / "early-exit")], check=True)
    before = mtimes(out)
    assert len([p for p in before if p.endswith("metrics.jsonl")]) >= 20
    second = bench(out, corpus)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    again = json.loads((out / "paper_report.json").read_text())
    assert again["sub_runs_started"] == ["train/early-exit"]
    assert again["skipped_rows"] == [r for r in ROWS if r != "early_exit"]
    after = mtimes(out)
    assert {p: t for p, t in after.items() if p in before} == before
    assert sorted(set(after) - set(before)) == [str(out / "rows" / "early_exit.json"),
                                                 str(out / "runs" / "early-exit" /
                                                     "metrics.jsonl")]
