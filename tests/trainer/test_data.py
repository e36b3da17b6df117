"""Training order: world-size invariant, resumable by step, every sequence once per epoch."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data import CorpusTokens, TrainOrder
from trainer.shards import CorpusShards
from trainer.tokenizer import PAD_ID


def test_rank_slices_make_the_global_batch():
    order = TrainOrder(np.arange(100, 137), global_batch_size=12, seed=3)
    for step in range(10):
        expected, _ = order.samples(step * 12, 12)
        for world, micro in ((1, 12), (2, 6), (3, 2), (4, 3)):
            accum = 12 // (world * micro)
            got = [order.micro_batch(step, m, r, world, micro)[0]
                   for m in range(accum) for r in range(world)]
            assert np.concatenate(got).tolist() == expected.tolist()


def test_each_epoch_is_a_permutation_and_epochs_differ():
    ids = np.arange(50)
    order = TrainOrder(ids, global_batch_size=7, seed=0)
    seq, epochs = order.samples(0, 150)
    assert epochs.tolist() == [0] * 50 + [1] * 50 + [2] * 50
    for e in range(3):
        assert sorted(seq[epochs == e].tolist()) == ids.tolist()
    assert seq[:50].tolist() != seq[50:100].tolist()
    # A fresh object (a resumed run) gives the same samples from any point.
    again = TrainOrder(ids, global_batch_size=7, seed=0)
    assert again.samples(97, 20)[0].tolist() == seq[97:117].tolist()
    assert TrainOrder(ids, 7, seed=1).samples(0, 50)[0].tolist() != seq[:50].tolist()
    with pytest.raises(ValueError):
        TrainOrder(np.arange(0), 7, 0)


def test_corpus_tokens_batches_and_holdout(prepared):
    corpus_dir, manifest, _ = prepared
    shards = CorpusShards(str(corpus_dir))
    tokens = CorpusTokens(shards)
    assert len(tokens) == manifest["num_sequences"]
    rows = {r.seq_id: r for r in shards.rows()}
    ids, mask = tokens.batch(np.array([5, 0, 17]))
    for row, s in enumerate([5, 0, 17]):
        n = len(rows[s].input_ids)
        assert ids[row, :n].tolist() == rows[s].input_ids.tolist()
        assert mask[row].sum() == n and (ids[row, n:] == PAD_ID).all()
    train, held = tokens.split(0.1)
    assert len(train) + len(held) == len(tokens) and 0 < len(held) < len(tokens) // 4
    held_docs = set(tokens.doc_ids[held].tolist())
    assert not held_docs & set(tokens.doc_ids[train].tolist())  # whole documents
    assert np.array_equal(tokens.split(0.1)[1], held)


def test_prefetcher_keeps_order_and_raises_the_workers_error():
    import torch

    from trainer.data import Prefetcher

    made = lambda step, micro: {"x": torch.tensor([step, micro])}  # noqa: E731
    p = Prefetcher(made, 3, 6, accum=2, depth=2)
    got = [p.get()["x"].tolist() for _ in range(6)]
    assert got == [[3, 0], [3, 1], [4, 0], [4, 1], [5, 0], [5, 1]]
    p.close()

    def broken(step, micro):
        if step == 1:
            raise ValueError("bad shard")
        return {"x": torch.tensor([step])}

    p = Prefetcher(broken, 0, 5, accum=1)
    assert p.get()["x"].tolist() == [0]
    with pytest.raises(ValueError, match="bad shard"):
        p.get()
    p.close()
    # close() stops a producer that is blocked on a full queue.
    p = Prefetcher(made, 0, 1000, accum=1, depth=1)
    p.close()
    assert not p._thread.is_alive()
