"""Progress lines of a running Beam job, counted from the part files it has finished.

    with rtd_progress(rtd_dir, epochs, layout, interval_s=30):    # or corpus_progress(...)
        p.run().wait_until_finish()
    # every interval_s while the job runs:
    #   generate: progress: 3/10 parts, 600/2,000 rows, 20.0 rows/s, ETA 1m10s, 30s elapsed
    # when it succeeds:
    #   generate: finished: 10 parts, 2,000 rows in 1m40s, 20.0 rows/s

Why part files and not Beam metrics: the local runner (FnApiRunner) and the project's
DaskRunner return from ``p.run()`` only when the job is over, and the DaskRunner has no
``metrics()`` at all, so a launcher cannot poll metrics during a run on either. Every part,
on every runner, is written to a temporary name and renamed into place when complete
(``filesystems.open_atomic``), and the output folder is one the launcher reads too, so a thread
of the launcher that lists the finished parts through ``FileSystems.match`` (local disk, gs://,
s3://, ...) sees the same progress under the local runner, Dask and Dataflow.

The total is known before the job for generate (epochs x ``Layout.num_parts``). prepare
decides its parts inside the job (non-empty chunks of decompressed text), so its total is an
estimate from the input file sizes, shown as ``~N`` and replaced by ``?`` once more parts than
that are written (compressed inputs hold more text than their size says). prepare writes its
parts in the job's last stage, after reading and tokenising everything: until then its lines
show 0 parts and the elapsed time.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.corpus_parts import group_files
from pipeline.filesystems import join
from pipeline.layout import Layout
from trainer.data.rtd_format import epoch_dir

DEFAULT_INTERVAL_S = 30.0


@dataclass(frozen=True)
class PartWatch:
    """What to count: the finished part files (``patterns`` under the output folder), how many
    are planned (``estimated``: a guess, see the module docstring), the rows of one part from
    its path, and the planned rows when known."""

    patterns: tuple[str, ...]
    total_parts: int
    rows_of: Callable[[str], int]
    total_rows: int | None = None
    estimated: bool = False


def parquet_rows(path: str) -> int:
    """Rows of a finished Parquet file, from its footer (one small read)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return pq.ParquetFile(f).metadata.num_rows


def corpus_watch(files: list[tuple[str, int]], part_text_bytes: int) -> PartWatch:
    """prepare's parts, estimated as in ``corpus_parts.group_files``: one part per group of
    small files, one per ``part_text_bytes`` of a large file."""
    sizes = [size for _, size in files]
    groups = group_files(sizes, part_text_bytes)
    small = {g for g, big in groups if not big}
    chunks = sum(max(1, -(-size // part_text_bytes))
                 for size, (_, big) in zip(sizes, groups) if big)
    return PartWatch(("part-*.parquet",), len(small) + chunks, parquet_rows, estimated=True)


_RTD_PART = re.compile(r"epoch=\d+/part-(\d+)\.parquet$")


def rtd_watch(epochs: list[int], layout: Layout) -> PartWatch:
    """generate's parts of the epochs it writes (a range run leaves the set's other epochs
    out of its count): ``layout.num_parts`` per epoch, rows from the part number."""
    def rows_of(path: str) -> int:
        lo, hi = layout.part_range(int(_RTD_PART.search(path).group(1)))
        return hi - lo

    return PartWatch(tuple(f"{epoch_dir(e)}/part-*.parquet" for e in epochs),
                     len(epochs) * layout.num_parts, rows_of, len(epochs) * layout.num_sequences)


# ---------------------------------------------------------------------------------------------
# The arithmetic of a line (pure: tested with a fake clock)
# ---------------------------------------------------------------------------------------------

def duration(seconds: float) -> str:
    """0.4s, 12s, 2m05s, 1h02m03s."""
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


class Pace:
    """Rows/s over the whole job, and the ETA from the pace of the parts since they started
    to appear: both jobs write their parts in their last stage, after a shuffle, so the time
    before the first part says nothing about the time per part. ``since`` is the last moment
    no part was seen (the start, if parts were there at the first look)."""

    def __init__(self, start: float):
        self.start = self.since = start

    def observe(self, now: float, parts: int) -> None:
        if parts == 0:
            self.since = now

    def rows_per_s(self, now: float, rows: int) -> float:
        return rows / (now - self.start) if now > self.start else 0.0

    def eta_s(self, now: float, parts: int, total: int | None) -> float | None:
        if total is None or parts > total:
            return None
        if parts == total:
            return 0.0
        if parts == 0 or now <= self.since:
            return None
        return (total - parts) * (now - self.since) / parts


def progress_line(job: str, watch: PartWatch, pace: Pace, now: float, parts: int,
                  rows: int) -> str:
    # An estimate that the parts already outnumber is no total at all.
    total = None if watch.estimated and parts > watch.total_parts else watch.total_parts
    shown = "?" if total is None else ("~" if watch.estimated else "") + f"{total:,}"
    of_rows = f"/{watch.total_rows:,}" if watch.total_rows is not None else ""
    eta = pace.eta_s(now, parts, total)
    return (f"{job}: progress: {parts:,}/{shown} parts, {rows:,}{of_rows} rows, "
            f"{pace.rows_per_s(now, rows):,.1f} rows/s, "
            f"ETA {'?' if eta is None else ('~' if watch.estimated else '') + duration(eta)}, "
            f"{duration(now - pace.start)} elapsed")


def finished_line(job: str, parts: int, rows: int, wall_s: float) -> str:
    rate = rows / wall_s if wall_s > 0 else 0.0
    return (f"{job}: finished: {parts:,} parts, {rows:,} rows in {duration(wall_s)}, "
            f"{rate:,.1f} rows/s")


# ---------------------------------------------------------------------------------------------
# The reporter
# ---------------------------------------------------------------------------------------------

class ProgressReporter:
    """A daemon thread that prints a progress line every ``interval_s`` (none when 0) while
    the job runs, and one ``finished`` line when the job succeeds. Used as a context manager
    around the run: leaving it by an exception (the job failed) stops the thread silently.
    Lines go to stdout, like the jobs' other messages (stderr carries the workers' output).
    It never fails the job: its first error is printed once and ends the reporting."""

    def __init__(self, job: str, out_dir: str, watch: PartWatch, interval_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.job, self.out_dir, self.watch = job, out_dir, watch
        self.interval_s, self.clock = interval_s, clock
        self._rows: dict[str, int] = {}  # finished part path -> rows: each part read once
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._broken = False
        self._thread: threading.Thread | None = None
        self.pace = Pace(clock())

    def count(self) -> tuple[int, int]:
        """(finished parts, their rows): a listing, plus the rows of parts new since the last."""
        matched = FileSystems.match([join(self.out_dir, p) for p in self.watch.patterns])
        paths = [m.path for result in matched for m in result.metadata_list]
        for path in paths:
            if path not in self._rows:
                self._rows[path] = self.watch.rows_of(path)
        return len(paths), sum(self._rows[p] for p in paths)

    def _fail(self, e: Exception) -> None:
        with self._lock:
            if not self._broken:
                self._broken = True
                print(f"{self.job}: progress reporting stopped ({type(e).__name__}: {e})",
                      flush=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                parts, rows = self.count()
                now = self.clock()
                with self._lock:
                    if self._stop.is_set() or self._broken:
                        return
                    self.pace.observe(now, parts)
                    print(progress_line(self.job, self.watch, self.pace, now, parts, rows),
                          flush=True)
            except Exception as e:  # reporting must never fail the job
                self._fail(e)
                return

    def start(self) -> ProgressReporter:
        self.pace = Pace(self.clock())
        if self.interval_s > 0:
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name=f"{self.job}-progress")
            self._thread.start()
        return self

    def stop(self, succeeded: bool) -> None:
        """End the thread; after a success, print the ``finished`` line from a last count."""
        self._stop.set()
        if self._thread is not None:
            # A listing of remote storage may be slow; the thread is a daemon and prints
            # nothing once stopped, so the job need not wait for it.
            self._thread.join(timeout=5)
        if not succeeded or self._broken:
            return
        try:
            parts, rows = self.count()
        except Exception as e:  # reporting must never fail the job
            self._fail(e)
            return
        print(finished_line(self.job, parts, rows, self.clock() - self.pace.start), flush=True)

    def __enter__(self) -> ProgressReporter:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop(succeeded=exc_type is None)


def corpus_progress(corpus_dir: str, files: list[tuple[str, int]], part_text_bytes: int,
                    interval_s: float) -> ProgressReporter:
    return ProgressReporter("prepare", corpus_dir, corpus_watch(files, part_text_bytes),
                            interval_s)


def rtd_progress(rtd_dir: str, epochs: list[int], layout: Layout, interval_s: float
                 ) -> ProgressReporter:
    return ProgressReporter("generate", rtd_dir, rtd_watch(epochs, layout), interval_s)


def add_progress_flag(parser) -> None:
    parser.add_argument(
        "--progress-s", type=float, default=DEFAULT_INTERVAL_S, metavar="SECONDS",
        help="print a progress line (parts and rows written, rows/s, ETA) every SECONDS "
             f"while the Beam job runs (default {DEFAULT_INTERVAL_S:g}; 0: none, only the "
             "final 'finished' line)")
