"""Corpus sequences for the modes that mask on the fly (``mlm``, the joint baselines and
``fast-online``).

The training order is a pure function of (seed, step): sample g of the run is sequence
``order_e[g % N]`` of epoch ``e = g // N``, where ``order_e`` is a seeded permutation of the
training sequences; the global batch of step s is samples [s*G, (s+1)*G). Rank r of W takes
micro-batch m as the slice [(m*W + r)*B, (m*W + r + 1)*B) of it
(trainer.data.order.micro_batch_start). So any world size trains on the same samples per step,
and a resume at step s needs no replay.

The token ids come through a memory map of a flat token file (uint16 when the vocabulary
fits, else int32) that the first process on a machine builds from the corpus shards into
``data.cache_dir``: every rank of the machine then shares one copy in the page cache instead
of holding ~4 bytes/token each, and a later run starts without decoding the corpus.

    corpus = CorpusTokens(CorpusShards("shards/tiny/corpus"), cfg.data.cache_dir)
    train_ids, heldout_ids = corpus.split(holdout_fraction=0.01)
    order = TrainOrder(train_ids, global_batch_size=32, seed=0)
    seq_ids, epochs = order.micro_batch(step, micro, rank, world, micro_batch_size)
    input_ids, attention_mask = corpus.batch(seq_ids)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os

import numpy as np
import torch

from trainer.atomic import open_atomic, write_text_atomic
from trainer.config.sections import DataConfig
from trainer.data.corpus_shards import CorpusShards
from trainer.data.manifest import ShardError, manifest_fingerprint
from trainer.data.order import micro_batch_start
from trainer.data.rtd_format import token_dtype
from trainer.digest import sha256_file
from trainer.tokenizer import PAD_ID

# The held-out documents must not move when train.seed changes, so that runs of a sweep are
# evaluated on the same text.
_HOLDOUT_SEED = 20231011


# Bumped when the cache files change meaning: an old cache is then rebuilt, never misread.
CACHE_FORMAT = 1
CACHE_META = "meta.json"


def cache_root(cache_dir: str) -> str:
    """``data.cache_dir`` as an absolute path; empty = $XDG_CACHE_HOME/fast-electra, or
    ~/.cache/fast-electra."""
    if not cache_dir:
        cache_dir = os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "fast-electra")
    return os.path.abspath(os.path.expanduser(cache_dir))


@contextlib.contextmanager
def _exclusive(folder: str):
    """Hold an exclusive lock on ``folder`` (a lock file in it) across processes."""
    with open(os.path.join(folder, ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class CorpusTokens:
    """Every sequence of a corpus shard set, as flat token ids + offsets, memory-mapped.

    The cache folder ``<data.cache_dir>/corpus-<manifest sha256 prefix>/`` holds
    ``tokens.bin`` (every sequence's ids back to back, raw little-endian of the corpus's
    token dtype), ``offsets.npy`` ((N + 1,) int64: sequence s is tokens[offsets[s]:
    offsets[s + 1]]), ``doc_ids.npy`` ((N,) int64) and ``meta.json`` (which corpus, sizes and
    sha256 of the three files; written last, so a folder without it is unfinished). Each
    open checks the sizes and sha256 (a sequential read, far cheaper than decoding the
    corpus): a truncated or altered file is found and the cache rebuilt. A build writes
    temporary files and renames them into place, under a lock file, so ranks that start
    together build it once and the others wait and reuse it.
    """

    def __init__(self, corpus: CorpusShards, cache_dir: str = DataConfig.cache_dir):
        self.manifest = corpus.manifest
        key = manifest_fingerprint(corpus.manifest)
        self.cache = os.path.join(cache_root(cache_dir), f"corpus-{key[:16]}")
        self.dtype = np.dtype(token_dtype(corpus.vocab_size))
        self.built = False
        """Whether this object built the cache (False: it reused one)."""
        if self._open(key) is None:
            return
        try:
            os.makedirs(self.cache, exist_ok=True)
        except OSError as e:
            raise ShardError(f"cannot create the token cache {self.cache} ({e}): set "
                             "data.cache_dir to a writable local folder") from None
        with _exclusive(self.cache):
            problem = self._open(key)  # another process may have built it meanwhile
            if problem is None:
                return
            if problem != "absent":
                print(f"corpus cache: {self.cache}: {problem}; rebuilding it", flush=True)
            self._build(corpus, key)
            self.built = True
            problem = self._open(key)
        if problem is not None:
            raise ShardError(f"the token cache {self.cache} cannot be read back right after "
                             f"it was built ({problem}): check the disk, or set "
                             "data.cache_dir to another local folder")

    def _open(self, key: str) -> str | None:
        """Map the cache if it is complete and intact; else what is wrong with it."""
        try:
            with open(os.path.join(self.cache, CACHE_META)) as f:
                meta = json.load(f)
        except FileNotFoundError:
            return "absent"
        except (OSError, ValueError) as e:
            return f"unreadable {CACHE_META} ({e})"
        if (meta.get("format"), meta.get("corpus"), meta.get("dtype")) != \
                (CACHE_FORMAT, key, self.dtype.str):
            return f"{CACHE_META} describes another corpus or cache format"
        for name, want in meta["files"].items():
            path = os.path.join(self.cache, name)
            if not os.path.exists(path):
                return f"{name} is missing"
            if os.path.getsize(path) != want["bytes"]:
                return (f"{name} has {os.path.getsize(path)} bytes, not {want['bytes']} "
                        "(truncated or altered)")
            if sha256_file(path) != want["sha256"]:
                return f"{name} is corrupt (its sha256 differs from {CACHE_META}'s)"
        self.values = np.memmap(os.path.join(self.cache, "tokens.bin"), self.dtype, "r",
                                shape=(meta["num_tokens"],))  # (total tokens,)
        self.offsets = np.load(os.path.join(self.cache, "offsets.npy"), mmap_mode="r")  # (N+1,)
        self.doc_ids = np.load(os.path.join(self.cache, "doc_ids.npy"), mmap_mode="r")  # (N,)
        return None

    def _build(self, corpus: CorpusShards, key: str) -> None:
        """Write the cache files from the corpus shards, one part in memory at a time, each
        atomically and ``meta.json`` last: until then the folder reads as unfinished."""
        lengths, doc_ids = [], []
        with open_atomic(os.path.join(self.cache, "tokens.bin")) as f:
            for i in range(len(corpus.files)):
                table = corpus.read_table(i)
                ids = table.column("input_ids").combine_chunks()
                offsets = ids.offsets.to_numpy()
                f.write(ids.values.to_numpy()[offsets[0]:offsets[-1]].astype(
                    self.dtype).tobytes())
                lengths.append(np.diff(offsets))
                doc_ids.append(table.column("doc_id").to_numpy())
        offsets = np.zeros(sum(map(len, lengths)) + 1, np.int64)
        np.cumsum(np.concatenate(lengths), out=offsets[1:])
        for name, array in (("offsets.npy", offsets),
                            ("doc_ids.npy", np.concatenate(doc_ids).astype(np.int64))):
            with open_atomic(os.path.join(self.cache, name)) as f:  # np.save adds no suffix
                np.save(f, array)
        files = {name: {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}
                 for name in ("tokens.bin", "offsets.npy", "doc_ids.npy")
                 for path in [os.path.join(self.cache, name)]}
        write_text_atomic(os.path.join(self.cache, CACHE_META), json.dumps(
            {"format": CACHE_FORMAT, "corpus": key, "corpus_root": corpus.root,
             "dtype": self.dtype.str, "num_sequences": len(offsets) - 1,
             "num_tokens": int(offsets[-1]), "files": files}, indent=1))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def split(self, holdout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """(train seq_ids, held-out seq_ids): whole documents are held out, by a fixed hash."""
        num_docs = int(self.doc_ids.max()) + 1
        held_doc = np.random.default_rng(_HOLDOUT_SEED).random(num_docs) < holdout_fraction
        held = held_doc[self.doc_ids]
        return np.flatnonzero(~held), np.flatnonzero(held)

    def batch(self, seq_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids (B, T) long padded with [PAD], attention_mask (B, T) bool), T = the
        longest sequence of the batch."""
        starts = self.offsets[seq_ids]
        lengths = self.offsets[np.asarray(seq_ids) + 1] - starts
        real = np.arange(lengths.max()) < lengths[:, None]  # (B, T)
        ids = np.full(real.shape, PAD_ID, np.int64)
        ids[real] = self.values[(starts[:, None] + np.arange(real.shape[1]))[real]]
        return torch.from_numpy(ids), torch.from_numpy(real)


def epoch_order(seq_ids: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Epoch ``epoch``'s permutation of ``seq_ids``."""
    return seq_ids[np.random.default_rng([seed, epoch]).permutation(len(seq_ids))]


class TrainOrder:
    """Which sequences each rank trains on at each step (see the module docstring)."""

    def __init__(self, seq_ids: np.ndarray, global_batch_size: int, seed: int):
        if len(seq_ids) == 0:
            raise ValueError("no training sequences")
        self.seq_ids, self.global_batch_size, self.seed = seq_ids, global_batch_size, seed
        self._cache: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            self._cache = {epoch: epoch_order(self.seq_ids, self.seed, epoch),
                           **{e: o for e, o in self._cache.items() if e == epoch - 1}}
        return self._cache[epoch]

    def samples(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(seq_ids, epochs) of global samples [start, start + count)."""
        g = np.arange(start, start + count)
        n = len(self.seq_ids)
        epochs = g // n
        out = np.empty(count, np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._order(int(e))[g[sel] % n]
        return out, epochs

    def micro_batch(self, step: int, micro: int, rank: int, world: int,
                    micro_batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        start = micro_batch_start(step, micro, rank, world, self.global_batch_size,
                                  micro_batch_size)
        return self.samples(start, micro_batch_size)
