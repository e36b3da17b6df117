"""Readers for the shard sets the pipeline writes (no Beam needed on a training node).

    from trainer.shards import CorpusShards
    corpus = CorpusShards("shards/tiny/corpus")      # refuses a set without its manifest
    corpus.verify(checksums=True)                    # row counts + sha256 of every file
    for r in corpus.rows():                          # r.seq_id, r.doc_id, r.input_ids
        ...

Paths may be local or any URI that ``pyarrow.fs`` understands (gs://, s3://, hdfs://).
The layout and columns are documented in shards/README.md.
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

from trainer.errors import UserError

SCHEMA_VERSION = 1
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
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ShardError(f"{root}: schema_version {manifest.get('schema_version')} is not the "
                         f"supported {SCHEMA_VERSION}; re-create it with this version")
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
        for entry in self.files:
            path = f"{self.path}/{entry['name']}"
            try:
                rows = pq.ParquetFile(self.fs.open_input_file(path)).metadata.num_rows
            except FileNotFoundError:
                raise ShardError(f"{self.root}/{entry['name']} is listed in the manifest but "
                                 "missing; re-run pipeline.prepare with --overwrite") from None
            if rows != entry["rows"]:
                raise ShardError(f"{self.root}/{entry['name']} has {rows} rows, the manifest "
                                 f"says {entry['rows']}; re-run pipeline.prepare --overwrite")
        if checksums:
            for entry in [*self.files, self.manifest["tokenizer"], self.manifest["unigram"]]:
                name = entry.get("name") or entry["file"]
                got = sha256_file(self.fs, f"{self.path}/{name}")
                if got != entry["sha256"]:
                    raise ShardError(f"{self.root}/{name}: sha256 {got} differs from the "
                                     f"manifest's {entry['sha256']}: the file changed or is "
                                     "corrupt; re-run pipeline.prepare --overwrite")

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
