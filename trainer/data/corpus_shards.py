"""The reader of the corpus shard sets ``pipeline.prepare`` writes: token sequences with their
seq_id and doc_id, and the corpus unigram counts.

    from trainer.data import CorpusShards            # defined here
    corpus = CorpusShards("shards/tiny/corpus")      # refuses a set without its manifest
    corpus.verify(checksums=True)                    # row counts + sha256 of every file
    for r in corpus.rows():                          # r.seq_id, r.doc_id, r.input_ids
        ...

The layout and columns are documented in shards/README.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.config.run import RunConfig
from trainer.data.manifest import (
    MANIFEST,
    ManifestWatch,
    ShardError,
    check_sha256,
    resolve_fs,
    unreadable,
    verify_files,
)
from trainer.tokenizer import SPECIAL_IDS, HFTokenizer, load_tokenizer_bytes

CORPUS_SCHEMA = pa.schema([
    pa.field("seq_id", pa.int64(), nullable=False),
    pa.field("doc_id", pa.int64(), nullable=False),
    pa.field("input_ids", pa.list_(pa.field("item", pa.int32(), nullable=False)),
             nullable=False),
])


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

    def tokenizer(self):
        """The tokenizer the corpus was made with (encode / decode / get_piece_size in the
        project's ids): SentencePiece, or a renumbered HF tokenizer (tokenizer.kind = "hf")."""
        entry = self.manifest["tokenizer"]
        with self.fs.open_input_file(f"{self.path}/{entry['file']}") as f:
            data = f.read()
        if entry.get("kind") == "hf":
            return HFTokenizer(data.decode("utf-8"), entry["source_special_ids"],
                               self.tokenizer_path)
        return load_tokenizer_bytes(data, self.tokenizer_path)

    def verify(self, checksums: bool = False) -> None:
        """Check every file the manifest lists: present, row count, and with ``checksums``
        its sha256 (a full read). Raises ShardError naming the first bad file."""
        try:
            verify_files(self.fs, self.path, self.root, self.files, "fast-electra prepare",
                         checksums)
            if checksums:
                for entry in (self.manifest["tokenizer"], self.manifest["unigram"]):
                    check_sha256(self.fs, self.path, self.root, entry["file"], entry["sha256"],
                                 "fast-electra prepare")
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
            raise unreadable(self.root, entry["name"], "fast-electra prepare", e) from None
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
                raise unreadable(self.root, entry["name"], "fast-electra prepare", e) from None
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


def open_corpus(cfg: RunConfig) -> CorpusShards:
    """The corpus of data.corpus_dir, checked (files present, row counts) and matched against
    the config: special ids, vocabulary size, sequence length."""
    corpus = CorpusShards(cfg.data.corpus_dir)
    corpus.verify()
    special = corpus.manifest["tokenizer"].get("special_ids")
    if special != SPECIAL_IDS:
        raise ShardError(f"{cfg.data.corpus_dir}/{MANIFEST}: special token ids {special} differ "
                         f"from the {SPECIAL_IDS} fast-electra uses; prepare the corpus again")
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
