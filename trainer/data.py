"""Corpus sequences for the modes that mask on the fly (``mlm`` and the joint baselines).

The training order is a pure function of (seed, step): sample g of the run is sequence
``order_e[g % N]`` of epoch ``e = g // N``, where ``order_e`` is a seeded permutation of the
training sequences; the global batch of step s is samples [s*G, (s+1)*G). Rank r of W takes
micro-batch m as the slice [(m*W + r)*B, (m*W + r + 1)*B) of it. So any world size trains on
the same samples per step, and a resume at step s needs no replay.

The token ids are held in memory (4 bytes per token: ~4 GB for 1B tokens), which is fine for
pre-training an auxiliary model on a corpus of that size; the offline ``rtd`` mode streams its
shards instead.

    corpus = CorpusTokens(CorpusShards("shards/tiny/corpus"))
    train_ids, heldout_ids = corpus.split(holdout_fraction=0.01)
    order = TrainOrder(train_ids, global_batch_size=32, seed=0)
    seq_ids, epochs = order.micro_batch(step, micro, rank, world, micro_batch_size)
    input_ids, attention_mask = corpus.batch(seq_ids)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import numpy as np
import torch

from trainer.shards import CorpusShards
from trainer.tokenizer import PAD_ID

# The held-out documents must not move when train.seed changes, so that runs of a sweep are
# evaluated on the same text.
_HOLDOUT_SEED = 20231011


class CorpusTokens:
    """Every sequence of a corpus shard set, as flat int32 values + offsets."""

    def __init__(self, corpus: CorpusShards):
        self.manifest = corpus.manifest
        lengths, values, doc_ids = [], [], []
        for i in range(len(corpus.files)):
            table = corpus.read_table(i)
            ids = table.column("input_ids").combine_chunks()
            offsets = ids.offsets.to_numpy()
            lengths.append(np.diff(offsets))
            values.append(ids.values.to_numpy()[offsets[0]:offsets[-1]])
            doc_ids.append(table.column("doc_id").to_numpy())
        self.lengths = np.concatenate(lengths).astype(np.int64)  # (N,)
        self.offsets = np.zeros(len(self.lengths) + 1, np.int64)
        np.cumsum(self.lengths, out=self.offsets[1:])
        self.values = np.concatenate(values)  # (total tokens,) int32
        self.doc_ids = np.concatenate(doc_ids)  # (N,)

    def __len__(self) -> int:
        return len(self.lengths)

    def split(self, holdout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """(train seq_ids, held-out seq_ids): whole documents are held out, by a fixed hash."""
        num_docs = int(self.doc_ids.max()) + 1
        held_doc = np.random.default_rng(_HOLDOUT_SEED).random(num_docs) < holdout_fraction
        held = held_doc[self.doc_ids]
        return np.flatnonzero(~held), np.flatnonzero(held)

    def batch(self, seq_ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids (B, T) long padded with [PAD], attention_mask (B, T) bool), T = the
        longest sequence of the batch."""
        lengths = self.lengths[seq_ids]
        ids = np.full((len(seq_ids), int(lengths.max())), PAD_ID, np.int64)
        for row, (s, n) in enumerate(zip(seq_ids, lengths, strict=True)):
            ids[row, :n] = self.values[self.offsets[s]:self.offsets[s] + n]
        input_ids = torch.from_numpy(ids)
        return input_ids, input_ids != PAD_ID


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
        start = step * self.global_batch_size + (micro * world + rank) * micro_batch_size
        return self.samples(start, micro_batch_size)


class Prefetcher:
    """Builds the micro-batches of steps [start, stop) in a background thread, up to
    ``depth`` ahead and in order, so that reading and decoding shards (pyarrow and numpy
    release the GIL) overlaps the forward/backward. On GPU the tensors are pinned so the
    copy to the device can be asynchronous. An error in the thread is raised by ``get``.

        prefetch = Prefetcher(lambda step, micro: task.micro_batch(step, micro, d), 0, 100, 2)
        batch = prefetch.get()          # step 0 micro 0, then step 0 micro 1, ...
        prefetch.close()
    """

    def __init__(self, make: Callable[[int, int], dict], start: int, stop: int, accum: int,
                 depth: int = 4, pin: bool = False):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(make, start, stop, accum, pin),
                                        daemon=True, name="prefetch")
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, make, start, stop, accum, pin) -> None:
        try:
            for step in range(start, stop):
                for micro in range(accum):
                    batch = make(step, micro)
                    if pin:
                        batch = {k: v.pin_memory() for k, v in batch.items()}
                    if not self._put(batch):
                        return
        except BaseException as e:  # handed to the consumer, who raises it
            self._put(e)

    def get(self) -> dict[str, torch.Tensor]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
