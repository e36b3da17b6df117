"""The reader of the RTD shard sets ``pipeline.generate`` writes (no Beam needed on a training
node): per epoch, parts of rows in training-position order, read by position range.

    from trainer.data import RTDShards              # defined here
    rtd = RTDShards("shards/tiny/rtd")               # refuses a folder without manifest/plan
    rtd.num_epochs, rtd.rows_per_epoch, rtd.epoch_files(0)   # parts with position ranges
    for r in rtd.rows(epoch=0):                      # position order: r.position, r.seq_id,
        ...                                          # r.input_ids, r.labels, r.temperature
    batch = rtd.read_range(epoch=0, start=s, end=t)  # reads only the files and row groups

A set still being generated (plan.json, no manifest.json yet; trainer.data.sealed) is opened
too: ``rtd.complete`` is False, its sealed epochs are served, and a read of another epoch is
refused naming it, or, after ``rtd.follow(EpochWait(...))`` (the trainer), waits for its seal.

The row encoding is trainer.data.rtd_format; manifests and checksums trainer.data.manifest.
Paths may be local or any URI that ``pyarrow.fs`` understands (gs://, s3://, hdfs://).
The layouts, columns, encodings and measured sizes are documented in shards/README.md.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow.fs import FileType

from trainer.data.manifest import (
    MANIFEST,
    ManifestWatch,
    ShardError,
    manifest_fingerprint,
    resolve_fs,
    unreadable,
    verify_files,
)
from trainer.data.rtd_format import RTD_SCHEMA, RTDBatch, RTDRow, decode_rtd_table
from trainer.data.sealed import PLAN, SET_TOTALS, EpochWait, plan_fingerprint, read_seal

# Sets this process has verified, (root, manifest fingerprint) -> with checksums: a trainer
# checks its data before its process group starts, and the task it builds later does not
# read every footer again.
_VERIFIED: dict[tuple[str, str], bool] = {}
# Test-only: seconds slept per file checked, so a test can make verification slow enough to
# exercise the ranks' start-up timeout (tests/trainer/test_dist_startup.py). Unset otherwise.
TEST_VERIFY_DELAY_ENV = "FAST_ELECTRA_TEST_VERIFY_DELAY_S"


@dataclass
class _OpenPart:
    """A part file opened for reading: its reader and where its row groups start."""

    file: pq.ParquetFile
    group_starts: list[int]
    """Epoch position of each row group's first row, then the file's position_end."""


class RTDShards:
    """A complete RTD shard set written by ``pipeline.generate``.

        rtd = RTDShards("shards/tiny/rtd")
        rtd.num_epochs, rtd.rows_per_epoch
        for r in rtd.rows(epoch=0):                 # position order
            r.position, r.seq_id, r.input_ids, r.labels, r.temperature
        batch = rtd.read_range(epoch=1, start=4096, end=4160)   # reads only the row groups

    Built for a trainer that reads consecutive small ranges (one rank's micro-batches): each
    file is opened once, at its first read, and its footer's row count checked against the
    manifest then (``verify`` checks every file up front); the file holding a position is
    found by bisection; a row group is decoded once into flat arrays and kept while it is
    among the ``cached_row_groups`` most recently used, and ranges are slices of those. One
    lock guards the caches: the trainer's prefetch thread and the main thread (evaluation)
    may read at the same time.
    """

    # Open files kept (an LRU): a reader moves through the files in order, so a few suffice,
    # and a bound keeps a long run over thousands of parts within the file-descriptor limit.
    OPEN_FILES = 16

    def __init__(self, root: str, cached_row_groups: int = 4):
        self.root = root.rstrip("/")
        self.fs, self.path = resolve_fs(self.root)
        plan_there = self._exists(PLAN)
        self.complete = self._exists(MANIFEST) or not plan_there
        """Whether every epoch is sealed (manifest.json written); a set in progress (its
        plan.json only) serves its sealed epochs and waits for, or refuses, the others."""
        if self.complete:
            self.watch = ManifestWatch(self.fs, self.path, self.root, "rtd")
            self.manifest = self.watch.manifest
            plan = {k: v for k, v in self.manifest.items() if k not in SET_TOTALS}
        else:
            # plan.json, deleted by an --overwrite before any part, is what a replaced set
            # shows first while it grows.
            self.watch = ManifestWatch(self.fs, self.path, self.root, "rtd", PLAN)
            plan = self.watch.manifest
            self.manifest = dict(plan, files=[])
        self.fingerprint = (plan_fingerprint(plan) if plan_there
                            else manifest_fingerprint(self.manifest))
        """The data's identity for checkpoints: the plan's fingerprint, the same while the
        set grows and once complete (a set without a plan: its manifest's)."""
        self.dtype = self.manifest["token_dtype"]
        self.wait = EpochWait()
        """What a read of an unsealed epoch does (``follow``): by default it is refused."""
        # 4 decoded row groups: the one a rank is reading, the next when a micro-batch
        # straddles them, and the held-out one evaluation reads in between.
        self.cached_row_groups = cached_row_groups
        self.decoded_row_groups = 0
        """Row groups decoded so far (each once while it stays cached)."""
        self._by_epoch: dict[int, tuple[list[int], list[dict]]] = {}
        self._lock = threading.Lock()
        self._index(self.files)
        if not self.complete:
            for epoch in range(self.num_epochs):
                self._try_seal(epoch)
        self._open: OrderedDict[str, _OpenPart] = OrderedDict()
        self._decoded: OrderedDict[tuple[str, int], RTDBatch] = OrderedDict()

    def _exists(self, name: str) -> bool:
        return self.fs.get_file_info(f"{self.path}/{name}").type != FileType.NotFound

    def _index(self, files: list[dict]) -> None:
        for entry in sorted(files, key=lambda f: (f["epoch"], f["position_start"])):
            starts, entries = self._by_epoch.setdefault(entry["epoch"], ([], []))
            starts.append(entry["position_start"])
            entries.append(entry)

    def _try_seal(self, epoch: int) -> bool:
        """Whether ``epoch`` is sealed, indexing its parts the first time it is."""
        with self._lock:
            if epoch in self._by_epoch:
                return True
            self.watch.check(PLAN)  # a replaced set's seals are not this plan's
            seal = read_seal(self.fs, self.path, self.root, epoch, self.fingerprint)
            if seal is None:
                return False
            self.manifest["files"] = [*self.files, *seal["files"]]
            self._index(seal["files"])
            return True

    def follow(self, wait: EpochWait) -> None:
        """Wait for unsealed epochs as ``wait`` says instead of refusing them."""
        self.wait = wait

    def sealed_epochs(self) -> list[int]:
        return sorted(self._by_epoch)

    def require(self, epoch: int) -> None:
        """Return once ``epoch`` is sealed (at once for a complete set); per ``self.wait``
        wait for its seal or raise the ShardError naming it and the command that makes it."""
        if not 0 <= epoch < self.num_epochs:
            raise ShardError(f"{self.root} holds epochs 0..{self.num_epochs - 1}, not {epoch}")
        if epoch in self._by_epoch or self.complete or self._try_seal(epoch):
            return
        self.wait.until_sealed(lambda: self._try_seal(epoch), self.fs, self.path, self.root,
                               epoch, self.manifest["layout"]["parts_per_epoch"])

    @property
    def num_epochs(self) -> int:
        return self.manifest["epochs"]

    @property
    def rows_per_epoch(self) -> int:
        return self.manifest["num_sequences"]

    @property
    def vocab_size(self) -> int:
        return self.manifest["vocab_size"]

    @property
    def files(self) -> list[dict]:
        """Every part: name, epoch, part, rows, position_start, position_end (exclusive),
        row_group_rows, bytes, sha256."""
        return self.manifest["files"]

    def epoch_files(self, epoch: int) -> list[dict]:
        """The parts of ``epoch`` (once it is sealed: see ``require``)."""
        self.require(epoch)
        return [f for f in self.files if f["epoch"] == epoch]

    def verify(self, checksums: bool = False, rank: int = 0, world: int = 1) -> None:
        """Every listed file present with its row count (and with ``checksums`` its sha256).
        Reads every footer; ``rank``/``world`` check only every world-th file from the
        rank-th, so that the ranks of a trainer share the work (``mark_verified`` once all
        slices passed). A set this process already verified is not read again. A set in
        progress: the epochs sealed so far (a later one's files are checked at first read)."""
        key = self._verified_key()
        if key in _VERIFIED and (_VERIFIED[key] or not checksums):
            self.watch.check(self.watch.name)  # still the set that was verified
            return
        delay = float(os.environ.get(TEST_VERIFY_DELAY_ENV, 0) or 0)
        try:
            for entry in self.files[rank::world]:
                time.sleep(delay)
                verify_files(self.fs, self.path, self.root, [entry], "fast-electra generate",
                             checksums)
        except ShardError:
            self.watch.check(self.watch.name)  # a replaced set is the better explanation
            raise
        if world == 1:
            self.mark_verified(checksums)

    def mark_verified(self, checksums: bool) -> None:
        """Record that every file passed ``verify(checksums)`` (all ranks' slices)."""
        key = self._verified_key()
        _VERIFIED[key] = _VERIFIED.get(key, False) or checksums

    def _verified_key(self) -> tuple:
        return (self.root, self.fingerprint, tuple(self.sealed_epochs()))

    def _check_range(self, epoch: int, start: int, end: int) -> None:
        n = self.rows_per_epoch
        if not 0 <= start <= end <= n:
            raise ShardError(f"{self.root}: position range [{start}, {end}) is outside "
                             f"[0, {n}] of epoch {epoch}")
        if epoch not in self._by_epoch:
            self.require(epoch)  # waits for its seal, or raises naming the epoch

    def _entry_at(self, epoch: int, position: int) -> dict:
        """The manifest entry of the file holding ``position`` of ``epoch``."""
        starts, entries = self._by_epoch.get(epoch, ([], []))
        i = bisect.bisect_right(starts, position) - 1
        if i < 0 or not position < entries[i]["position_end"]:
            raise ShardError(f"{self.root}/{MANIFEST} lists no file holding position "
                             f"{position} of epoch {epoch}: the shard set is inconsistent; "
                             "re-run fast-electra generate --overwrite")
        return entries[i]

    def _part(self, entry: dict) -> _OpenPart:
        """``entry``'s file, opened (and its row count checked) on first use. Holds the lock."""
        part = self._open.get(entry["name"])
        if part is None:
            pf = self.watch.open(entry)
            starts = [entry["position_start"]]
            for g in range(pf.metadata.num_row_groups):
                starts.append(starts[-1] + pf.metadata.row_group(g).num_rows)
            part = self._open[entry["name"]] = _OpenPart(pf, starts)
            if len(self._open) > self.OPEN_FILES:
                self._open.popitem(last=False)[1].file.close()
        self._open.move_to_end(entry["name"])
        return part

    def _groups(self, epoch: int, start: int, end: int):
        """(entry, open part, row group, first row, end row) of each row group holding
        positions [start, end) of ``epoch``, rows relative to the group. Holds the lock."""
        pos = start
        while pos < end:
            entry = self._entry_at(epoch, pos)
            part = self._part(entry)
            g = bisect.bisect_right(part.group_starts, pos) - 1
            first, last = part.group_starts[g], min(end, part.group_starts[g + 1])
            yield entry, part, g, pos - first, last - first
            pos = last

    def _read_group(self, entry: dict, part: _OpenPart, g: int, **kw) -> pa.Table:
        """Row group ``g`` of ``entry``'s file as read from disk; a footer that parsed over
        corrupt pages is a ShardError naming the file, and so is a read after the set was
        replaced (checked after the read: what it returned may be the new set's bytes)."""
        try:
            table = part.file.read_row_group(g, **kw)
        except (pa.ArrowInvalid, OSError) as e:
            self.watch.check(entry["name"])
            raise unreadable(self.root, entry["name"], "fast-electra generate", e) from None
        self.watch.check(entry["name"])
        return table

    def _decode(self, entry: dict, part: _OpenPart, g: int) -> RTDBatch:
        """Row group ``g`` of ``entry``'s file, decoded (once while it stays cached). Holds
        the lock."""
        key = (entry["name"], g)
        batch = self._decoded.get(key)
        if batch is None:
            # One thread: a row group is small, the trainer reads in a background thread, and
            # its parallelism is one process per rank (a pool per rank would oversubscribe).
            table = self._read_group(entry, part, g, use_threads=False)
            batch = decode_rtd_table(table, self.dtype)
            self.decoded_row_groups += 1
            # Shared by every range read from it: read-only, so no caller can alter the cache.
            for a in (batch.positions, batch.seq_ids, batch.tokens, batch.flat_labels,
                      batch.offsets, batch.temperature):
                a.flags.writeable = False
            if self.cached_row_groups:
                self._decoded[key] = batch
                if len(self._decoded) > self.cached_row_groups:
                    self._decoded.popitem(last=False)
        else:
            self._decoded.move_to_end(key)
        return batch

    def read_range_table(self, epoch: int, start: int, end: int) -> pa.Table:
        """Encoded rows of positions [start, end) of ``epoch`` (RTD_SCHEMA), reading only
        the row groups that hold them."""
        self._check_range(epoch, start, end)
        tables = []
        with self._lock:
            for entry, part, g, lo, hi in self._groups(epoch, start, end):
                tables.append(self._read_group(entry, part, g).slice(lo, hi - lo))
        return pa.concat_tables(tables) if tables else RTD_SCHEMA.empty_table()

    def read_range(self, epoch: int, start: int, end: int) -> RTDBatch:
        """Decoded rows of positions [start, end) of ``epoch``: slices of the cached decoded
        row groups (read-only arrays; a range across row groups is a copy)."""
        self._check_range(epoch, start, end)
        with self._lock:
            parts = [self._decode(entry, part, g)[lo:hi]
                     for entry, part, g, lo, hi in self._groups(epoch, start, end)]
        if not parts:
            return decode_rtd_table(RTD_SCHEMA.empty_table(), self.dtype)
        return RTDBatch.concat(parts)

    def rows(self, epoch: int, start: int = 0, end: int | None = None,
             chunk: int = 4096) -> Iterator[RTDRow]:
        """The rows of ``epoch`` with positions in [start, end), in position order."""
        end = self.rows_per_epoch if end is None else end
        for lo in range(start, end, chunk):
            yield from self.read_range(epoch, lo, min(lo + chunk, end)).rows()
