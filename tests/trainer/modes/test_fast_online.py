"""``fast-online``: the frozen aux in the loop produces exactly the offline shards' rows, and a
fast-online run trains exactly like an ``rtd`` run on shards generated with the same config.
Its corpus tokens come memory-mapped from the per-machine cache (``data.cache_dir``, here the
default: under $XDG_CACHE_HOME, pointed at a temporary folder)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.helpers import SMALL, TINY, run_train, train_argv
from tests.helpers import timeless_metrics as metrics
from trainer.config.load import load_config
from trainer.distributed import Dist
from trainer.errors import UserError
from trainer.modes.fast_online import FastOnlineTask
from trainer.modes.rtd import RTDTask

pytestmark = pytest.mark.usefixtures("one_thread", "xdg_cache")
CPU = Dist(0, 1, 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def xdg_cache(tmp_path_factory):
    """The default data.cache_dir resolves under $XDG_CACHE_HOME: keep the tests' caches (in
    this process and the trainer processes it starts) out of the user's home."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg"))
    yield os.environ["XDG_CACHE_HOME"]
    if old is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = old


def plan(corpus_dir, aux, rtd_dir, *overrides: str) -> list[str]:
    # generate.* as the aux_rtd fixture made its shard set: 2 epochs, seed 7.
    return [f"data.corpus_dir={corpus_dir}", f"generate.aux_checkpoint={aux}",
            "generate.epochs=2", "generate.seed=7", f"train.rtd_dir={rtd_dir}", *overrides]


def test_online_rows_equal_the_offline_shards(prepared, aux_checkpoint, aux_rtd,
                                              xdg_cache):
    corpus_dir, _, _ = prepared
    rtd_dir, _ = aux_rtd
    cfg = load_config(TINY, [*SMALL, *plan(corpus_dir, aux_checkpoint, rtd_dir,
                                           "train.max_steps=10", "train.warmup_steps=0",
                                           "train.global_batch_size=8",
                                           "train.micro_batch_size_per_rank=8")])
    online, offline = FastOnlineTask(cfg, CPU), RTDTask(cfg, CPU)
    assert isinstance(online.tokens.values, np.memmap)
    assert online.tokens.cache.startswith(os.path.join(xdg_cache, "fast-electra", "corpus-"))
    n = online.samples_per_epoch
    assert n == offline.samples_per_epoch
    for start in (0, 37, n - 5):  # the last one straddles the end of epoch 0
        want = offline.rows(start, 11)
        got = online.ready(online.rows(start, 11))
        for key in ("input_ids", "attention_mask", "labels", "temperature"):
            assert torch.equal(got[key], want[key]), (start, key)
        assert got["labels"].sum() > 0


def test_online_rows_ignore_the_trainers_autocast(prepared, aux_checkpoint, aux_rtd):
    """train.precision = bf16 wraps the step (and so ``ready``) in bf16 autocast; the aux must
    still run in generate's precision (``aux_autocast``: fp32 on CPU), or fast-online trains on
    other rows than the shards hold (fp32 rows = shard rows: the test above). The aux is made
    confident (tied embeddings x 30: the LM head's logits x 30, the encoder unchanged) so that
    bf16's rounding moves draws; control: corrupt_batch with the aux under bf16 does change
    rows, so the equality is not vacuous."""
    from trainer.corruption.batch import KeyedBatch
    from trainer.corruption.corrupt import corrupt_batch

    corpus_dir, _, _ = prepared
    rtd_dir, _ = aux_rtd
    cfg = load_config(TINY, [*SMALL, *plan(corpus_dir, aux_checkpoint, rtd_dir,
                                           "train.precision=bf16", "train.max_steps=10")])
    online = FastOnlineTask(cfg, CPU)
    with torch.no_grad():
        online.aux.head.weight.mul_(30.0)
    clean = online.rows(0, 128)
    fp32 = online.ready(clean)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = online.ready(clean)
        batch = KeyedBatch(clean["input_ids"], clean["seq_ids"], cfg.generate.seed, 0,
                           attention_mask=clean["attention_mask"])
        bf16 = corrupt_batch(batch, clean["u"], cfg.corruption, aux=online.aux,
                             vocab_size=cfg.tokenizer.vocab_size)
    for key in ("input_ids", "labels"):
        assert torch.equal(got[key], fp32[key]), key
    assert not torch.equal(bf16.input_ids, fp32["input_ids"])


@pytest.mark.slow
def test_fast_online_trains_exactly_like_rtd_on_its_shards(prepared, aux_checkpoint,
                                                          aux_rtd, tmp_path):
    corpus_dir, _, _ = prepared
    rtd_dir, _ = aux_rtd
    common = plan(corpus_dir, aux_checkpoint, rtd_dir, "train.max_steps=6",
                  "train.global_batch_size=16", "train.micro_batch_size_per_rank=8",
                  "train.log_every=2", "train.checkpoint_every=6")
    online = run_train(train_argv(corpus_dir, tmp_path / "online", *common,
                                  "train.mode=fast-online"))
    assert online.returncode == 0, online.stderr[-3000:]
    offline = run_train(train_argv(corpus_dir, tmp_path / "offline", *common, "train.mode=rtd"))
    assert offline.returncode == 0, offline.stderr[-3000:]
    a, b = metrics(tmp_path / "online"), metrics(tmp_path / "offline")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["temperature"] for r in a] == [r["temperature"] for r in b]
    assert "rtd_f1" in a[-1]


def test_missing_aux_checkpoint_is_named(prepared):
    corpus_dir, _, _ = prepared
    cfg = load_config(TINY, [*SMALL, f"data.corpus_dir={corpus_dir}", "train.mode=fast-online",
                             "generate.aux_checkpoint="])
    with pytest.raises(UserError, match="needs generate.aux_checkpoint"):
        FastOnlineTask(cfg, CPU)
