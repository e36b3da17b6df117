"""Readers for the shard sets the pipeline writes (no Beam needed on a training node).

    from trainer.shards import CorpusShards
    corpus = CorpusShards("shards/tiny/corpus")      # refuses a set without its manifest
    corpus.verify(checksums=True)                    # row counts + sha256 of every file
    for r in corpus.rows():                          # r.seq_id, r.doc_id, r.input_ids
        ...

    from trainer.shards import RTDShards
    rtd = RTDShards("shards/tiny/rtd")               # refuses a set without its manifest
    rtd.num_epochs, rtd.rows_per_epoch, rtd.epoch_files(0)   # parts with position ranges
    for r in rtd.rows(epoch=0):                      # position order: r.position, r.seq_id,
        ...                                          # r.input_ids, r.labels, r.temperature
    batch = rtd.read_range(epoch=0, start=s, end=t)  # reads only the files and row groups

Paths may be local or any URI that ``pyarrow.fs`` understands (gs://, s3://, hdfs://).
The layouts, columns, encodings and measured sizes are documented in shards/README.md.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainer.config.sections import RunConfig
from trainer.errors import UserError
from trainer.tokenizer import SPECIAL_IDS

# Each kind of shard set has its own format version: a new sampler changes the RTD bytes but
# not the corpus, which must not need re-preparing for it. RTD v2 = keyed inverse-CDF sampling
# with 64-bit keys and closed-form model-free samplers (trainer.corruption.SAMPLER).
SCHEMA_VERSIONS = {"corpus": 1, "rtd": 2}
SCHEMA_VERSION = SCHEMA_VERSIONS["corpus"]
RTD_SCHEMA_VERSION = SCHEMA_VERSIONS["rtd"]
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.model"
UNIGRAM_FILE = "unigram_counts.npy"
CONFIG_FILE = "config.toml"

CORPUS_SCHEMA = pa.schema([
    pa.field("seq_id", pa.int64(), nullable=False),
    pa.field("doc_id", pa.int64(), nullable=False),
    pa.field("input_ids", pa.list_(pa.field("item", pa.int32(), nullable=False)),
             nullable=False),
])


class ShardError(UserError):
    """A shard set is missing, incomplete or inconsistent; the message names the file."""


def resolve_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI such as gs://bucket/dir."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def sha256_file(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_fingerprint(manifest: dict) -> str:
    """sha256 of a shard set's manifest (canonical JSON): what runs and checkpoints record
    to recognise the data they were made from."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def check_sha256(fs: pafs.FileSystem, path: str, root: str, name: str, expected: str,
                 job: str) -> None:
    got = sha256_file(fs, f"{path}/{name}")
    if got != expected:
        raise ShardError(f"{root}/{name}: sha256 {got} differs from the manifest's {expected}: "
                         f"the file changed or is corrupt; re-run {job} --overwrite")


def unreadable(root: str, name: str, job: str, e: Exception) -> ShardError:
    """The ShardError for a listed file pyarrow cannot parse (truncated or corrupt on disk):
    pyarrow's own message ("Parquet magic bytes not found in footer") names neither the shard
    set nor the fix."""
    why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return ShardError(f"{root}/{name} is not a readable Parquet file ({why}): it is truncated "
                      f"or corrupt; re-run {job} --overwrite (--verify-checksums checks every "
                      "file of the set against its manifest sha256)")


def open_listed(fs: pafs.FileSystem, path: str, root: str, entry: dict,
                job: str) -> pq.ParquetFile:
    """Open the Parquet file of a manifest ``entry`` (name, rows), checking that it exists,
    that its footer parses and that its row count is the manifest's; ``job`` is what re-creates
    the set."""
    try:
        pf = pq.ParquetFile(fs.open_input_file(f"{path}/{entry['name']}"))
    except FileNotFoundError:
        raise ShardError(f"{root}/{entry['name']} is listed in the manifest but missing; "
                         f"re-run {job} --overwrite") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise unreadable(root, entry["name"], job, e) from None
    rows = pf.metadata.num_rows
    if rows != entry["rows"]:
        raise ShardError(f"{root}/{entry['name']} has {rows} rows, the manifest says "
                         f"{entry['rows']}; re-run {job} --overwrite")
    return pf


def verify_files(fs: pafs.FileSystem, path: str, root: str, entries: list[dict], job: str,
                 checksums: bool) -> None:
    """Every Parquet file of ``entries`` (name, rows, sha256) is present with its row count
    and, with ``checksums``, its sha256 (a full read). ``job`` is what re-creates the set."""
    for entry in entries:
        open_listed(fs, path, root, entry, job).close()
        if checksums:
            check_sha256(fs, path, root, entry["name"], entry["sha256"], job)


JOBS = {"corpus": "pipeline.prepare", "rtd": "pipeline.generate"}


class ManifestWatch:
    """Notices that the shard set a reader opened was replaced under it (``--overwrite`` of
    the folder while a trainer reads it): a file opened or a row group read after that would
    come from another set, or be missing, or (on an object store) mix two sets' bytes.

    Cheap enough to run at every file open and row-group read: one stat of the manifest,
    compared with the (size, mtime) seen when the set was opened. Only when that differs is
    the manifest read again; the same content (a re-run that wrote the very same set) is not
    a replacement. Every job deletes the manifest before it deletes or rewrites a file and
    writes it last, so a read whose data could come from another set is always followed by a
    check that sees the manifest gone or changed."""

    def __init__(self, fs: pafs.FileSystem, path: str, root: str, kind: str):
        self.fs, self.path, self.root, self.kind = fs, path, root, kind
        self._stat = self._stat_now()  # before the read: a change in between is seen later
        self.manifest = read_manifest(root, kind)
        self._fingerprint = manifest_fingerprint(self.manifest)

    def _stat_now(self) -> tuple[int, int] | None:
        info = self.fs.get_file_info(f"{self.path}/{MANIFEST}")
        if info.type == pafs.FileType.NotFound:
            return None
        return info.size, info.mtime_ns

    def check(self, name: str) -> None:
        """Raise a ShardError naming ``name`` if the set is no longer the one opened."""
        now = self._stat_now()
        if now == self._stat:
            return
        if now is not None:
            try:
                with self.fs.open_input_stream(f"{self.path}/{MANIFEST}") as f:
                    same = manifest_fingerprint(json.loads(f.read())) == self._fingerprint
            except (FileNotFoundError, json.JSONDecodeError):
                same = False
            if same:
                self._stat = now
                return
        raise ShardError(
            f"{self.root}/{name}: the {self.kind} shard set in {self.root} was replaced while "
            f"this process was reading it ({MANIFEST} {'is gone' if now is None else 'changed'}"
            f": e.g. {JOBS[self.kind]} --overwrite into the folder), so its files are no "
            "longer the ones this run started on. Stop writing into a folder a trainer reads: "
            "write the new set to another folder. To go on training on the new set, start a "
            "new run on it; to resume this run, recreate the old set (same config and inputs) "
            "and resume from the last checkpoint")

    def open(self, entry: dict) -> pq.ParquetFile:
        """``open_listed`` for this set: a missing or different file of a replaced set is
        reported as the replacement."""
        try:
            pf = open_listed(self.fs, self.path, self.root, entry, JOBS[self.kind])
        except ShardError:
            self.check(entry["name"])
            raise
        try:
            self.check(entry["name"])
        except ShardError:
            pf.close()
            raise
        return pf


def read_manifest(root: str, kind: str) -> dict:
    """The manifest of a complete shard set of ``kind`` ("corpus" or "rtd")."""
    fs, path = resolve_fs(root)
    try:
        with fs.open_input_stream(f"{path}/{MANIFEST}") as f:
            manifest = json.loads(f.read())
    except FileNotFoundError:
        raise ShardError(
            f"{root} has no {MANIFEST}: the {kind} shard set is incomplete (an interrupted or "
            f"failed run) or was never made. Run the pipeline step that writes it "
            f"({'pipeline.prepare' if kind == 'corpus' else 'pipeline.generate'}) again"
        ) from None
    except json.JSONDecodeError as e:
        raise ShardError(f"{root}/{MANIFEST} is not valid JSON ({e}); re-run the pipeline "
                         "with --overwrite") from None
    if manifest.get("kind") != kind:
        raise ShardError(f"{root} holds a {manifest.get('kind')!r} shard set, not {kind!r}")
    want = SCHEMA_VERSIONS[kind]
    if manifest.get("schema_version") != want:
        job = "pipeline.prepare" if kind == "corpus" else "pipeline.generate"
        why = (" (an older sampler: its bytes are not what this version generates, and a "
               "fast-online run would not see the same rows)" if kind == "rtd" else "")
        raise ShardError(f"{root}: {kind} schema_version {manifest.get('schema_version')} is "
                         f"not the supported {want}{why}; regenerate it with this version: "
                         f"{job} --overwrite")
    return manifest


@dataclass(frozen=True)
class CorpusRow:
    seq_id: int
    doc_id: int
    input_ids: np.ndarray
    """(T,) int32: [CLS] tokens... [SEP], T <= max_seq_len."""


class CorpusShards:
    """A complete corpus shard set written by ``pipeline.prepare``."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.fs, self.path = resolve_fs(self.root)
        self.watch = ManifestWatch(self.fs, self.path, self.root, "corpus")
        self.manifest = self.watch.manifest

    @property
    def num_sequences(self) -> int:
        return self.manifest["num_sequences"]

    @property
    def num_documents(self) -> int:
        return self.manifest["num_documents"]

    @property
    def vocab_size(self) -> int:
        return self.manifest["tokenizer"]["vocab_size"]

    @property
    def max_seq_len(self) -> int:
        return self.manifest["max_seq_len"]

    @property
    def files(self) -> list[dict]:
        return self.manifest["files"]

    @property
    def tokenizer_path(self) -> str:
        return f"{self.root}/{self.manifest['tokenizer']['file']}"

    def verify(self, checksums: bool = False) -> None:
        """Check every file the manifest lists: present, row count, and with ``checksums``
        its sha256 (a full read). Raises ShardError naming the first bad file."""
        try:
            verify_files(self.fs, self.path, self.root, self.files, "pipeline.prepare",
                         checksums)
            if checksums:
                for entry in (self.manifest["tokenizer"], self.manifest["unigram"]):
                    check_sha256(self.fs, self.path, self.root, entry["file"], entry["sha256"],
                                 "pipeline.prepare")
        except ShardError:
            self.watch.check(MANIFEST)  # a replaced set is the better explanation
            raise

    def read_table(self, index: int) -> pa.Table:
        """Part file ``index`` as one Arrow table (columns of CORPUS_SCHEMA)."""
        entry = self.files[index]
        pf = self.watch.open(entry)
        try:
            table = pf.read()
        except (pa.ArrowInvalid, OSError) as e:  # a footer intact over corrupt pages
            self.watch.check(entry["name"])
            raise unreadable(self.root, entry["name"], "pipeline.prepare", e) from None
        finally:
            pf.close()
        self.watch.check(entry["name"])
        return table

    def rows(self) -> Iterator[CorpusRow]:
        """Every sequence in seq_id order."""
        for entry in self.files:
            pf = self.watch.open(entry)
            with pf:
                yield from self._file_rows(pf, entry)

    def _file_rows(self, pf: pq.ParquetFile, entry: dict) -> Iterator[CorpusRow]:
        batches = pf.iter_batches(batch_size=4096)
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowInvalid, OSError) as e:  # a footer intact over corrupt pages
                self.watch.check(entry["name"])
                raise unreadable(self.root, entry["name"], "pipeline.prepare", e) from None
            if batch is None:
                return
            self.watch.check(entry["name"])
            seq_ids = batch.column("seq_id").to_numpy()
            doc_ids = batch.column("doc_id").to_numpy()
            ids = batch.column("input_ids")
            offsets = ids.offsets.to_numpy()
            values = ids.values.to_numpy()
            for i in range(len(batch)):
                yield CorpusRow(int(seq_ids[i]), int(doc_ids[i]),
                                values[offsets[i]:offsets[i + 1]])

    def unigram_counts(self) -> np.ndarray:
        """(V,) int64 occurrences of every token id in the corpus sequences ([CLS]/[SEP]
        included; callers building a replacement distribution drop the specials)."""
        with self.fs.open_input_file(f"{self.path}/{self.manifest['unigram']['file']}") as f:
            counts = np.load(f)
        self.watch.check(self.manifest["unigram"]["file"])
        return counts


# ---------------------------------------------------------------------------------------------
# RTD shards (pipeline.generate); the encoding is described in the module docstring
# ---------------------------------------------------------------------------------------------

RTD_SCHEMA = pa.schema([
    pa.field("position", pa.int64(), nullable=False),
    pa.field("seq_id", pa.int64(), nullable=False),
    pa.field("input_ids", pa.binary(), nullable=False),
    pa.field("labels", pa.binary(), nullable=False),
    pa.field("temperature", pa.float32(), nullable=False),
])


def token_dtype(vocab_size: int) -> str:
    """The numpy dtype string of RTD ``input_ids`` bytes for a vocabulary of this size."""
    return "<u2" if vocab_size <= 1 << 16 else "<i4"


def epoch_dir(epoch: int) -> str:
    return f"epoch={epoch:04d}"


def rtd_part_name(epoch: int, part: int) -> str:
    return f"{epoch_dir(epoch)}/part-{part:05d}.parquet"


def encode_rtd_rows(positions: np.ndarray, seq_ids: np.ndarray, input_ids: list[np.ndarray],
                    labels: list[np.ndarray], temperature: np.ndarray, dtype: str
                    ) -> pa.Table:
    """Rows (already sorted by position) as an Arrow table of RTD_SCHEMA."""
    return pa.Table.from_arrays([
        pa.array(np.asarray(positions, np.int64), pa.int64()),
        pa.array(np.asarray(seq_ids, np.int64), pa.int64()),
        pa.array([np.asarray(t, dtype).tobytes() for t in input_ids], pa.binary()),
        pa.array([np.packbits(np.asarray(lab, np.uint8), bitorder="little").tobytes()
                  for lab in labels], pa.binary()),
        pa.array(np.asarray(temperature, np.float32), pa.float32()),
    ], schema=RTD_SCHEMA)


@dataclass(frozen=True)
class RTDRow:
    position: int
    seq_id: int
    input_ids: np.ndarray
    """(T,) int32: the corrupted sequence ([CLS] ... [SEP])."""
    labels: np.ndarray
    """(T,) uint8: 1 where input_ids differs from the corpus sequence."""
    temperature: float


class RTDBatch:
    """Decoded rows of one position range, column-wise (what a trainer wants).

        batch.positions, batch.seq_ids, batch.temperature   # (B,) int64, int64, float32
        batch.input_ids[i], batch.labels[i]                 # (T_i,) int32 / uint8 views
        batch.tokens, batch.flat_labels, batch.offsets      # the same rows, flat
        batch[a:b]                                          # rows a..b-1, sharing the arrays

    The rows' tokens and labels live in two flat arrays cut by ``offsets`` (row i is
    ``tokens[offsets[i]:offsets[i + 1]]``; ``offsets[0]`` need not be 0, as a slice shares its
    parent's arrays), so a batch is sliced and padded without a Python loop over its rows.
    The constructor takes per-row arrays; ``from_flat`` takes the flat form.
    """

    def __init__(self, positions: np.ndarray, seq_ids: np.ndarray,
                 input_ids: list[np.ndarray], labels: list[np.ndarray],
                 temperature: np.ndarray):
        offsets = np.zeros(len(input_ids) + 1, np.int64)
        np.cumsum([len(x) for x in input_ids], out=offsets[1:])
        self._set(np.asarray(positions, np.int64), np.asarray(seq_ids, np.int64),
                  _flat(input_ids, np.int32), _flat(labels, np.uint8), offsets,
                  np.asarray(temperature, np.float32))

    @classmethod
    def from_flat(cls, positions: np.ndarray, seq_ids: np.ndarray, tokens: np.ndarray,
                  flat_labels: np.ndarray, offsets: np.ndarray,
                  temperature: np.ndarray) -> RTDBatch:
        batch = cls.__new__(cls)
        batch._set(positions, seq_ids, tokens, flat_labels, offsets, temperature)
        return batch

    def _set(self, positions, seq_ids, tokens, flat_labels, offsets, temperature) -> None:
        self.positions = positions  # (B,) int64
        self.seq_ids = seq_ids  # (B,) int64
        self.tokens = tokens  # (sum T_i,) int32: the corrupted sequences, back to back
        self.flat_labels = flat_labels  # (sum T_i,) uint8: their labels, aligned with tokens
        self.offsets = offsets  # (B + 1,) int64 into tokens and flat_labels
        self.temperature = temperature  # (B,) float32

    @classmethod
    def concat(cls, parts: list[RTDBatch]) -> RTDBatch:
        """The rows of ``parts`` (at least one), in order, as one batch."""
        if len(parts) == 1:
            return parts[0]
        offsets = np.zeros(sum(len(p) for p in parts) + 1, np.int64)
        np.cumsum(np.concatenate([p.lengths for p in parts]), out=offsets[1:])
        return cls.from_flat(np.concatenate([p.positions for p in parts]),
                             np.concatenate([p.seq_ids for p in parts]),
                             np.concatenate([p.tokens[p.offsets[0]:p.offsets[-1]]
                                             for p in parts]),
                             np.concatenate([p.flat_labels[p.offsets[0]:p.offsets[-1]]
                                             for p in parts]),
                             offsets, np.concatenate([p.temperature for p in parts]))

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, rows: slice) -> RTDBatch:
        r = range(len(self))[rows]
        if r.step != 1:
            raise ValueError("an RTDBatch is sliced by a contiguous range of rows")
        return RTDBatch.from_flat(self.positions[r.start:r.stop], self.seq_ids[r.start:r.stop],
                                  self.tokens, self.flat_labels,
                                  self.offsets[r.start:r.stop + 1],
                                  self.temperature[r.start:r.stop])

    @property
    def lengths(self) -> np.ndarray:
        """(B,) int64: the rows' lengths T_i."""
        return self.offsets[1:] - self.offsets[:-1]  # np.diff costs ~4 us more per call

    @functools.cached_property
    def input_ids(self) -> list[np.ndarray]:
        """B x (T_i,) int32: the corrupted sequences ([CLS] ... [SEP]), views of ``tokens``."""
        return self._views(self.tokens)

    @functools.cached_property
    def labels(self) -> list[np.ndarray]:
        """B x (T_i,) uint8: 1 where a token was replaced, views of ``flat_labels``."""
        return self._views(self.flat_labels)

    def _views(self, flat: np.ndarray) -> list[np.ndarray]:
        o = self.offsets.tolist()
        return [flat[o[i]:o[i + 1]] for i in range(len(self))]

    def rows(self) -> Iterator[RTDRow]:
        ids, labels = self.input_ids, self.labels
        for i in range(len(self)):
            yield RTDRow(int(self.positions[i]), int(self.seq_ids[i]), ids[i], labels[i],
                         float(self.temperature[i]))


@functools.lru_cache(maxsize=16)
def _prefix_mask_table(size: int) -> np.ndarray:
    return np.arange(size) < np.arange(size + 1)[:, None]


def prefix_masks(width: int) -> np.ndarray:
    """An (S + 1, S) bool table, S the power of two >= ``width``, whose row t is True on its
    first t columns: the padding mask of a batch of lengths L is ``prefix_masks(max L)[L,
    :max L]``, a gather of rows ~4x cheaper than comparing each length with a column range
    (it runs for every micro-batch)."""
    return _prefix_mask_table(1 << max(width - 1, 1).bit_length())


def pad_rows(flat: np.ndarray, lengths: np.ndarray, fill, dtype) -> tuple[np.ndarray,
                                                                        np.ndarray]:
    """Rows stored back to back in ``flat`` (row i has lengths[i] values) -> (padded (B, T) of
    ``dtype`` with ``fill`` after each row's end, real (B, T) bool), T = the longest row. A
    boolean-mask assignment fills row by row, in the order the flat array holds the rows."""
    width = int(lengths.max())
    real = prefix_masks(width)[lengths, :width]  # (B, T)
    padded = np.full(real.shape, fill, dtype)
    padded[real] = flat
    return padded, real


def _flat(rows: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(rows).astype(dtype, copy=False) if len(rows) else np.zeros(0, dtype)


def _binary_parts(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (n + 1,) int64, values uint8) of a binary column, without Python objects."""
    arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset:arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    values = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return offsets.astype(np.int64), values


def decode_rtd_table(table: pa.Table, dtype: str) -> RTDBatch:
    """An Arrow table of RTD_SCHEMA -> an RTDBatch: the tokens widened to int32 and the labels
    unpacked to uint8, each as one flat array, with numpy calls only (no per-row loop)."""
    if table.num_rows == 0:
        return RTDBatch(np.zeros(0, np.int64), np.zeros(0, np.int64), [], [],
                        np.zeros(0, np.float32))
    width = np.dtype(dtype).itemsize
    t_off, t_val = _binary_parts(table.column("input_ids"))
    l_off, l_val = _binary_parts(table.column("labels"))
    tokens = t_val[t_off[0]:t_off[-1]].view(dtype).astype(np.int32)
    offsets = (t_off - t_off[0]) // width
    lengths = np.diff(offsets)
    bits = np.unpackbits(l_val[l_off[0]:l_off[-1]], bitorder="little")
    # Each row's labels are padded to whole bytes: token j of row i has its bit at
    # 8 * (l_off[i] - l_off[0]) + j, i.e. at its flat index plus a per-row shift.
    where = np.repeat(8 * (l_off[:-1] - l_off[0]) - offsets[:-1], lengths)
    where += np.arange(len(tokens))
    return RTDBatch.from_flat(table.column("position").to_numpy(),
                              table.column("seq_id").to_numpy(), tokens, bits[where], offsets,
                              table.column("temperature").to_numpy())


def open_corpus(cfg: RunConfig) -> CorpusShards:
    """The corpus of data.corpus_dir, checked (files present, row counts) and matched against
    the config: special ids, vocabulary size, sequence length."""
    corpus = CorpusShards(cfg.data.corpus_dir)
    corpus.verify()
    special = corpus.manifest["tokenizer"].get("special_ids")
    if special != SPECIAL_IDS:
        raise ShardError(f"{cfg.data.corpus_dir}/{MANIFEST}: special token ids {special} differ "
                         f"from this version's {SPECIAL_IDS}; prepare the corpus again")
    if corpus.vocab_size != cfg.tokenizer.vocab_size:
        raise ShardError(f"{cfg.data.corpus_dir} was tokenised with a vocabulary of "
                         f"{corpus.vocab_size}, the config says tokenizer.vocab_size = "
                         f"{cfg.tokenizer.vocab_size}; set --set tokenizer.vocab_size="
                         f"{corpus.vocab_size} or prepare the corpus again")
    if corpus.max_seq_len > cfg.data.max_seq_len:
        raise ShardError(f"{cfg.data.corpus_dir} holds sequences of up to {corpus.max_seq_len} "
                         f"tokens, the config says data.max_seq_len = {cfg.data.max_seq_len}; "
                         f"set --set data.max_seq_len={corpus.max_seq_len}")
    return corpus


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
        self.watch = ManifestWatch(self.fs, self.path, self.root, "rtd")
        self.manifest = self.watch.manifest
        self.dtype = self.manifest["token_dtype"]
        # 4 decoded row groups: the one a rank is reading, the next when a micro-batch
        # straddles them, and the held-out one evaluation reads in between.
        self.cached_row_groups = cached_row_groups
        self.decoded_row_groups = 0
        """Row groups decoded so far (each once while it stays cached)."""
        self._by_epoch: dict[int, tuple[list[int], list[dict]]] = {}
        for entry in sorted(self.files, key=lambda f: (f["epoch"], f["position_start"])):
            starts, entries = self._by_epoch.setdefault(entry["epoch"], ([], []))
            starts.append(entry["position_start"])
            entries.append(entry)
        self._lock = threading.Lock()
        self._open: OrderedDict[str, _OpenPart] = OrderedDict()
        self._decoded: OrderedDict[tuple[str, int], RTDBatch] = OrderedDict()

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
        if not 0 <= epoch < self.num_epochs:
            raise ShardError(f"{self.root} holds epochs 0..{self.num_epochs - 1}, not {epoch}")
        return [f for f in self.files if f["epoch"] == epoch]

    def verify(self, checksums: bool = False) -> None:
        """Every listed file present with its row count (and with ``checksums`` its sha256).
        Reads every footer: a multi-rank trainer has one rank do it (the others check each
        file's row count when they first open it)."""
        try:
            verify_files(self.fs, self.path, self.root, self.files, "pipeline.generate",
                         checksums)
        except ShardError:
            self.watch.check(MANIFEST)  # a replaced set is the better explanation
            raise

    def _check_range(self, epoch: int, start: int, end: int) -> None:
        n = self.rows_per_epoch
        if not 0 <= start <= end <= n:
            raise ShardError(f"{self.root}: position range [{start}, {end}) is outside "
                             f"[0, {n}] of epoch {epoch}")
        if epoch not in self._by_epoch:
            self.epoch_files(epoch)  # raises, naming the epochs the set holds

    def _entry_at(self, epoch: int, position: int) -> dict:
        """The manifest entry of the file holding ``position`` of ``epoch``."""
        starts, entries = self._by_epoch.get(epoch, ([], []))
        i = bisect.bisect_right(starts, position) - 1
        if i < 0 or not position < entries[i]["position_end"]:
            raise ShardError(f"{self.root}/{MANIFEST} lists no file holding position "
                             f"{position} of epoch {epoch}: the shard set is inconsistent; "
                             "re-run pipeline.generate --overwrite")
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
            raise unreadable(self.root, entry["name"], "pipeline.generate", e) from None
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
