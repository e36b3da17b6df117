"""Training order: world-size invariant, resumable by step, every sequence once per epoch. The
corpus tokens: memory-mapped from a per-machine cache that is built once (also by racing
processes), reused, and rebuilt when damaged."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import REPO
from trainer.data.corpus_shards import CorpusShards
from trainer.data.corpus_tokens import CorpusTokens, TrainOrder
from trainer.data.manifest import ShardError
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


def test_corpus_tokens_batches_and_holdout(prepared, tmp_path):
    corpus_dir, manifest, _ = prepared
    shards = CorpusShards(str(corpus_dir))
    tokens = CorpusTokens(shards, str(tmp_path))
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


def assert_equals_the_shards(tokens: CorpusTokens, shards: CorpusShards) -> None:
    """Every sequence, read back through ``batch``, is the corpus row of a plain read."""
    rows = list(shards.rows())
    assert len(tokens) == len(rows)
    ids, mask = tokens.batch(np.arange(len(rows)))
    for r in rows:
        n = len(r.input_ids)
        assert ids[r.seq_id, :n].tolist() == r.input_ids.tolist()
        assert mask[r.seq_id].sum() == n and (ids[r.seq_id, n:] == PAD_ID).all()
        assert tokens.doc_ids[r.seq_id] == r.doc_id


def test_corpus_tokens_are_memory_mapped_from_a_reused_cache(prepared, tmp_path):
    corpus_dir, _, _ = prepared
    shards = CorpusShards(str(corpus_dir))
    first = CorpusTokens(shards, str(tmp_path))
    assert first.built and first.cache.startswith(str(tmp_path))
    assert isinstance(first.values, np.memmap) and first.values.dtype == np.uint16  # vocab 600
    assert_equals_the_shards(first, shards)
    files = {n: os.stat(os.path.join(first.cache, n)).st_ino for n in os.listdir(first.cache)}
    second = CorpusTokens(shards, str(tmp_path))
    assert not second.built  # reused: not one file rewritten
    assert files == {n: os.stat(os.path.join(first.cache, n)).st_ino
                     for n in os.listdir(first.cache)}
    assert_equals_the_shards(second, shards)


def test_a_damaged_cache_is_found_and_rebuilt(prepared, tmp_path, capsys):
    corpus_dir, _, _ = prepared
    shards = CorpusShards(str(corpus_dir))
    cache = CorpusTokens(shards, str(tmp_path)).cache
    capsys.readouterr()
    tokens = os.path.join(cache, "tokens.bin")
    with open(tokens, "r+b") as f:  # a partial copy or a full disk
        f.truncate(os.path.getsize(tokens) // 2)
    again = CorpusTokens(shards, str(tmp_path))
    assert again.built and "tokens.bin has" in capsys.readouterr().out
    assert_equals_the_shards(again, shards)
    offsets = os.path.join(cache, "offsets.npy")
    data = bytearray(open(offsets, "rb").read())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum sees it
    open(offsets, "wb").write(bytes(data))
    again = CorpusTokens(shards, str(tmp_path))
    assert again.built and "offsets.npy is corrupt" in capsys.readouterr().out
    assert_equals_the_shards(again, shards)
    open(os.path.join(cache, "meta.json"), "w").write("{")
    assert CorpusTokens(shards, str(tmp_path)).built
    assert "unreadable meta.json" in capsys.readouterr().out
    assert sorted(os.listdir(cache)) == [".lock", "doc_ids.npy", "meta.json", "offsets.npy",
                                         "tokens.bin"]  # no temporaries left


@pytest.mark.slow
def test_two_processes_building_the_cache_at_once(prepared, tmp_path):
    """Ranks that start together: one builds, the others wait for it and map its files."""
    corpus_dir, _, _ = prepared
    go = tmp_path / "go"
    script = (
        "import os, sys, time, numpy as np\n"
        "from trainer.data.corpus_tokens import CorpusTokens\n"
        "from trainer.data.corpus_shards import CorpusShards\n"
        f"shards = CorpusShards({str(corpus_dir)!r})\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.001)\n"
        f"t = CorpusTokens(shards, {str(tmp_path / 'cache')!r})\n"
        "print(t.built, int(np.asarray(t.values, np.int64).sum()), len(t))\n")
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(os.environ, PYTHONPATH=REPO)) for _ in range(2)]
    time.sleep(2)  # both waiting at the start line (imports done)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    results = [out.split() for out, _ in outs]
    assert sorted(r[0] for r in results) == ["False", "True"]  # built once
    assert results[0][1:] == results[1][1:]
    assert_equals_the_shards(CorpusTokens(CorpusShards(str(corpus_dir)),
                                          str(tmp_path / "cache")), CorpusShards(str(corpus_dir)))


def test_an_unusable_cache_dir_is_named(prepared, tmp_path):
    corpus_dir, _, _ = prepared
    (tmp_path / "file").write_text("")
    with pytest.raises(ShardError, match="cannot create the token cache .*file/corpus-.*: set "
                                         "data.cache_dir to a writable local folder"):
        CorpusTokens(CorpusShards(str(corpus_dir)), str(tmp_path / "file"))


def test_prefetcher_keeps_order_and_raises_the_workers_error():
    import torch

    from trainer.data.prefetch import Prefetcher

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
