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

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainer.config import RunConfig
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


def verify_files(fs: pafs.FileSystem, path: str, root: str, entries: list[dict], job: str,
                 checksums: bool) -> None:
    """Every Parquet file of ``entries`` (name, rows, sha256) is present with its row count
    and, with ``checksums``, its sha256 (a full read). ``job`` is what re-creates the set."""
    for entry in entries:
        try:
            rows = pq.ParquetFile(fs.open_input_file(f"{path}/{entry['name']}")).metadata.num_rows
        except FileNotFoundError:
            raise ShardError(f"{root}/{entry['name']} is listed in the manifest but missing; "
                             f"re-run {job} --overwrite") from None
        if rows != entry["rows"]:
            raise ShardError(f"{root}/{entry['name']} has {rows} rows, the manifest says "
                             f"{entry['rows']}; re-run {job} --overwrite")
        if checksums:
            check_sha256(fs, path, root, entry["name"], entry["sha256"], job)


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
        self.manifest = read_manifest(self.root, "corpus")

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
        verify_files(self.fs, self.path, self.root, self.files, "pipeline.prepare", checksums)
        if checksums:
            for entry in (self.manifest["tokenizer"], self.manifest["unigram"]):
                check_sha256(self.fs, self.path, self.root, entry["file"], entry["sha256"],
                             "pipeline.prepare")

    def read_table(self, index: int) -> pa.Table:
        """Part file ``index`` as one Arrow table (columns of CORPUS_SCHEMA)."""
        return pq.read_table(f"{self.path}/{self.files[index]['name']}", filesystem=self.fs)

    def rows(self) -> Iterator[CorpusRow]:
        """Every sequence in seq_id order."""
        for entry in self.files:
            pf = pq.ParquetFile(self.fs.open_input_file(f"{self.path}/{entry['name']}"))
            for batch in pf.iter_batches(batch_size=4096):
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
            return np.load(f)


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


@dataclass(frozen=True)
class RTDBatch:
    """Decoded rows of one position range, column-wise (what a trainer wants)."""

    positions: np.ndarray  # (B,) int64
    seq_ids: np.ndarray  # (B,) int64
    input_ids: list[np.ndarray]  # B x (T_i,) int32
    labels: list[np.ndarray]  # B x (T_i,) uint8
    temperature: np.ndarray  # (B,) float32

    def __len__(self) -> int:
        return len(self.positions)

    def rows(self) -> Iterator[RTDRow]:
        for i in range(len(self.positions)):
            yield RTDRow(int(self.positions[i]), int(self.seq_ids[i]), self.input_ids[i],
                         self.labels[i], float(self.temperature[i]))


def _binary_parts(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (n + 1,) int64, values uint8) of a binary column, without Python objects."""
    arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset:arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    values = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return offsets.astype(np.int64), values


def decode_rtd_table(table: pa.Table, dtype: str) -> RTDBatch:
    """An Arrow table of RTD_SCHEMA -> decoded numpy rows (per-row views of two flat
    arrays: the tokens widened to int32, the labels unpacked to uint8)."""
    width = np.dtype(dtype).itemsize
    t_off, t_val = _binary_parts(table.column("input_ids"))
    l_off, l_val = _binary_parts(table.column("labels"))
    first, last = int(t_off[0]), int(t_off[-1])
    tokens = t_val[first:last].view(dtype).astype(np.int32)
    bits = np.unpackbits(l_val[int(l_off[0]):int(l_off[-1])], bitorder="little")
    starts, lengths = (t_off[:-1] - first) // width, (t_off[1:] - t_off[:-1]) // width
    bit_starts = (l_off[:-1] - l_off[0]) * 8
    ids = [tokens[a:a + n] for a, n in zip(starts, lengths, strict=True)]
    labels = [bits[a:a + n] for a, n in zip(bit_starts, lengths, strict=True)]
    return RTDBatch(table.column("position").to_numpy(), table.column("seq_id").to_numpy(),
                    ids, labels, table.column("temperature").to_numpy())


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


class RTDShards:
    """A complete RTD shard set written by ``pipeline.generate``.

        rtd = RTDShards("shards/tiny/rtd")
        rtd.num_epochs, rtd.rows_per_epoch
        for r in rtd.rows(epoch=0):                 # position order
            r.position, r.seq_id, r.input_ids, r.labels, r.temperature
        batch = rtd.read_range(epoch=1, start=4096, end=4160)   # reads only the row groups
    """

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.fs, self.path = resolve_fs(self.root)
        self.manifest = read_manifest(self.root, "rtd")
        self.dtype = self.manifest["token_dtype"]

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
        """Every listed file present with its row count (and with ``checksums`` its sha256)."""
        verify_files(self.fs, self.path, self.root, self.files, "pipeline.generate", checksums)

    def read_range_table(self, epoch: int, start: int, end: int) -> pa.Table:
        """Encoded rows of positions [start, end) of ``epoch`` (RTD_SCHEMA), reading only
        the files and row groups that hold them."""
        n = self.rows_per_epoch
        if not 0 <= start <= end <= n:
            raise ShardError(f"{self.root}: position range [{start}, {end}) is outside "
                             f"[0, {n}] of epoch {epoch}")
        tables = []
        for entry in self.epoch_files(epoch):
            lo, hi = max(start, entry["position_start"]), min(end, entry["position_end"])
            if lo >= hi:
                continue
            pf = pq.ParquetFile(self.fs.open_input_file(f"{self.path}/{entry['name']}"))
            first, groups, offset = None, [], entry["position_start"]
            for g in range(pf.metadata.num_row_groups):
                rows = pf.metadata.row_group(g).num_rows
                if offset < hi and offset + rows > lo:
                    groups.append(g)
                    first = offset if first is None else first
                offset += rows
            table = pf.read_row_groups(groups)
            tables.append(table.slice(lo - first, hi - lo))
        if not tables:
            return RTD_SCHEMA.empty_table()
        return pa.concat_tables(tables)

    def read_range(self, epoch: int, start: int, end: int) -> RTDBatch:
        """Decoded rows of positions [start, end) of ``epoch``."""
        return decode_rtd_table(self.read_range_table(epoch, start, end), self.dtype)

    def rows(self, epoch: int, start: int = 0, end: int | None = None,
             chunk: int = 4096) -> Iterator[RTDRow]:
        """The rows of ``epoch`` with positions in [start, end), in position order."""
        end = self.rows_per_epoch if end is None else end
        for lo in range(start, end, chunk):
            yield from self.read_range(epoch, lo, min(lo + chunk, end)).rows()
