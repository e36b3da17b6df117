"""Offline discriminator training from RTD shards: world-size invariance, exact resume,
consistency checks with the shard set."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.helpers import SMALL, TINY, bare_rtd_rows, run_train, train_argv
from tests.helpers import timeless_metrics as metrics
from trainer import checkpoint
from trainer.config.load import load_config
from trainer.data.manifest import ShardError
from trainer.distributed import Dist
from trainer.errors import UserError
from trainer.modes.rtd import RTDTask
from trainer.tokenizer import PAD_ID

pytestmark = pytest.mark.usefixtures("one_thread")


def rtd_argv(corpus_dir, rtd_dir, out_dir, *overrides):
    return train_argv(corpus_dir, out_dir, "train.mode=rtd", f"train.rtd_dir={rtd_dir}",
                      *overrides)


def test_rank_slices_make_the_global_batch(prepared, rtd_dir):
    corpus_dir, _, _ = prepared
    cfg = load_config(TINY, [*SMALL, f"data.corpus_dir={corpus_dir}", "train.mode=rtd",
                             f"train.rtd_dir={rtd_dir}", "train.max_steps=20",
                             "train.global_batch_size=24", "train.micro_batch_size_per_rank=6"])
    one = Dist(0, 1, 0, torch.device("cpu"))
    task = RTDTask(cfg, one)
    n = task.samples_per_epoch
    step = n // 24  # this global batch straddles the end of epoch 0
    whole = torch.cat([task.micro_batch(step, m, one)["sample_ids"] for m in range(4)])
    assert whole.tolist() == list(range(step * 24, step * 24 + 24))
    ranks = [Dist(r, 2, r, torch.device("cpu")) for r in range(2)]
    split = torch.cat([task.micro_batch(step, m, d)["sample_ids"] for m in range(2)
                       for d in ranks])
    assert split.tolist() == whole.tolist()
    # Each row is the shard row of its (epoch, position).
    b = task.micro_batch(step, 3, one)
    rows = {(e, r.position): r for e in range(2) for r in task.rtd.rows(epoch=e)}
    for i, g in enumerate(b["sample_ids"].tolist()):
        r = rows[divmod(g, n)]
        assert b["input_ids"][i, :len(r.input_ids)].tolist() == r.input_ids.tolist()
        assert np.array_equal(b["labels"][i, :len(r.labels)].numpy(), r.labels)


def test_micro_batches_are_the_files_rows_across_every_boundary(prepared, rtd_dir):
    """Consecutive micro-batches of 32 (row groups of 32, parts of 300 rows: after the first
    part every batch straddles two row groups) equal a bare read of the files, padded, also
    where a batch straddles a file and the end of an epoch."""
    corpus_dir, _, _ = prepared
    cfg = load_config(TINY, [*SMALL, f"data.corpus_dir={corpus_dir}", "train.mode=rtd",
                             f"train.rtd_dir={rtd_dir}", "train.max_steps=20",
                             "train.global_batch_size=32", "train.micro_batch_size_per_rank=32"])
    one = Dist(0, 1, 0, torch.device("cpu"))
    task = RTDTask(cfg, one)
    n = task.samples_per_epoch
    want = [row[2:] for e in (0, 1) for row in bare_rtd_rows(rtd_dir, e)]
    for step in range(2 * n // 32):
        b = task.micro_batch(step, 0, one)
        for i, g in enumerate(b["sample_ids"].tolist()):
            ids, labels, temperature = want[g]
            t = len(ids)
            assert b["input_ids"][i, :t].tolist() == ids.tolist()
            assert (b["input_ids"][i, t:] == PAD_ID).all()
            assert b["attention_mask"][i].sum() == t and b["attention_mask"][i, :t].all()
            assert np.array_equal(b["labels"][i, :t].numpy(), labels)
            assert not b["labels"][i, t:].any()
            assert b["temperature"][i] == temperature
    task.rows(2 * n // 32 * 32, 2 * n % 32)  # the tail: now every row was read once
    # Each row group (32 rows, a part's last one shorter) was decoded once.
    parts = [f["rows"] for f in task.rtd.files]
    assert task.rtd.decoded_row_groups == sum(-(-r // 32) for r in parts)


def test_a_rank_that_did_not_verify_checks_each_file_at_first_read(prepared, rtd_dir,
                                                                   tmp_path):
    """Only rank 0 reads every footer up front; another rank finds a file whose row count
    differs from the manifest when it first opens it, and names it."""
    corpus_dir, _, _ = prepared
    copy = tmp_path / "rtd"
    shutil.copytree(rtd_dir, copy)
    bad = sorted(copy.glob("epoch=0001/*.parquet"))[0]
    table = pq.read_table(bad)
    pq.write_table(table.slice(1), bad, row_group_size=32)
    cfg = load_config(TINY, [*SMALL, f"data.corpus_dir={corpus_dir}", "train.mode=rtd",
                             f"train.rtd_dir={copy}", "train.max_steps=20",
                             "train.global_batch_size=16", "train.micro_batch_size_per_rank=8"])
    message = f"{bad.parent.name}/{bad.name} has {table.num_rows - 1} rows, the manifest says"
    with pytest.raises(ShardError, match=message):
        RTDTask(cfg, Dist(0, 2, 0, torch.device("cpu")))
    rank1 = Dist(1, 2, 1, torch.device("cpu"))
    task = RTDTask(cfg, rank1)  # reads epoch 0 only (its first global batch)
    task.micro_batch(0, 0, rank1)
    n = task.samples_per_epoch
    with pytest.raises(ShardError, match=message):
        task.micro_batch(n // 16 + 1, 0, rank1)  # into epoch 1


def test_rtd_bias_starts_at_the_first_global_batch_prior(prepared, rtd_dir):
    """RTDTask sets the RTD bias to logit(replaced share of real tokens in the first global
    batch): the loss of that batch then equals the constant guess's (no collapse to pay)."""
    corpus_dir, _, _ = prepared
    cfg = load_config(TINY, [*SMALL, f"data.corpus_dir={corpus_dir}", "train.mode=rtd",
                             f"train.rtd_dir={rtd_dir}", "train.max_steps=20",
                             "train.global_batch_size=24", "train.micro_batch_size_per_rank=24"])
    task = RTDTask(cfg, Dist(0, 1, 0, torch.device("cpu")))
    b = task.rows(0, 24)
    p = float(b["labels"][b["attention_mask"]].mean())
    assert 0.05 < p < 0.3
    bias = float(task.model.head.out.bias.detach())
    assert bias == pytest.approx(np.log(p / (1 - p)), abs=1e-5)
    task.model.eval()
    with torch.no_grad():
        logits = task.model(b["input_ids"], b["attention_mask"])[b["attention_mask"]]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, b["labels"][b["attention_mask"]]).item()
    assert loss == pytest.approx(-(p * np.log(p) + (1 - p) * np.log(1 - p)), abs=1e-2)


@pytest.mark.slow
def test_rtd_learns_and_is_scored_on_the_epoch_it_never_trains_on(prepared, rtd_dir, tmp_path):
    """(1 process vs 2 ranks, for every mode: tests/trainer/modes/test_modes_distributed.py.)"""
    corpus_dir, _, _ = prepared
    common = ["train.max_steps=40", "train.global_batch_size=16",
              "train.micro_batch_size_per_rank=8", "model.dropout=0",
              "model.attention_dropout=0", "train.checkpoint_every=40", "train.log_every=5",
              "train.eval_every=40", "train.eval_sequences=200", "train.lr=1e-2"]
    one = run_train(rtd_argv(corpus_dir, rtd_dir, tmp_path / "one", *common))
    assert one.returncode == 0, one.stderr[-3000:]
    assert "temperature schedule is truncated" in one.stdout
    m1 = metrics(tmp_path / "one")
    # Uniformly random replacements are easy to spot: the discriminator finds them. The
    # bars are above what no learning gives: the RTD bias starts at the prior, so the first
    # interval's F1 is ~0, and flagging every token would score F1 = 2p / (1 + p) ~ 0.26 with
    # precision p ~ 0.15.
    assert m1[0]["rtd_f1"] < 0.1
    assert m1[-1]["loss"] < m1[0]["loss"] - 0.05 and m1[-1]["rtd_f1"] > 0.3
    # Epoch 1 is never reached, so it is the held-out evaluation set.
    assert "epoch 1 is never trained on" in one.stdout
    p = m1[-1]["eval_replaced_fraction"]
    assert m1[-1]["eval_rtd_f1"] > 0.3 and m1[-1]["eval_rtd_precision"] > 2 * p
    constant = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    assert m1[-1]["eval_rtd_loss"] < constant - 0.05


def test_shard_set_mismatches_are_refused(prepared, rtd_dir):
    corpus_dir, _, _ = prepared
    base = [*SMALL, f"data.corpus_dir={corpus_dir}", "train.mode=rtd",
            f"train.rtd_dir={rtd_dir}"]
    cpu = Dist(0, 1, 0, torch.device("cpu"))
    with pytest.raises(UserError, match="generate more epochs or lower train.max_steps"):
        RTDTask(load_config(TINY, [*base, "train.max_steps=100000"]), cpu)
    with pytest.raises(UserError, match="tokenizer.vocab_size=600"):
        RTDTask(load_config(TINY, [*base, "tokenizer.vocab_size=700"]), cpu)
    with pytest.raises(UserError, match="incomplete"):
        RTDTask(load_config(TINY, [*base, f"train.rtd_dir={rtd_dir}-missing"]), cpu)


@pytest.mark.slow
def test_verify_checksums_finds_a_changed_file(prepared, rtd_dir, tmp_path):
    corpus_dir, _, _ = prepared
    copy = tmp_path / "rtd"
    shutil.copytree(rtd_dir, copy)
    part = sorted(copy.glob("epoch=0001/*.parquet"))[-1]
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, same row count: only a full read can tell
    part.write_bytes(bytes(data))
    argv = rtd_argv(corpus_dir, copy, tmp_path / "run", "train.max_steps=2")
    r = run_train([*argv, "--verify-checksums"])
    assert r.returncode == 2, r.stderr[-2000:]
    assert part.name in r.stderr and "sha256" in r.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_sweep_runs_every_point_on_one_shard_set_and_resumes(prepared, rtd_dir, tmp_path,
                                                             capsys):
    from trainer.tools.sweep import main as sweep

    corpus_dir, _, _ = prepared
    argv = ["--config", TINY]
    for s in [*SMALL, f"data.corpus_dir={corpus_dir}", "train.mode=rtd",
              f"train.rtd_dir={rtd_dir}", f"train.out_dir={tmp_path}", "train.max_steps=4",
              "train.warmup_steps=1", "train.global_batch_size=8",
              "train.micro_batch_size_per_rank=8", "train.checkpoint_every=4"]:
        argv += ["--set", s]
    grid = ["--grid", "train.lr=1e-3,3e-3", "--grid", "train.seed=0,1"]
    assert sweep([*argv, *grid, "--print"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4 and all("-m trainer.train" in line for line in printed)

    assert sweep([*argv, *grid]) == 0
    out = capsys.readouterr().out
    for point in ("train.lr=1e-3,train.seed=0", "train.lr=3e-3,train.seed=1"):
        assert checkpoint.list_steps(str(tmp_path / "sweep" / point)) == [4]
        assert point in out
    assert "rtd_f1" in out.splitlines()[-5]  # the summary table's header
    assert sweep([*argv, *grid]) == 0  # a re-launch skips the finished points
    assert capsys.readouterr().out.count("is finished; skipping") == 4
    assert sweep([*argv, "--grid", "train.lrr=1"]) == 2
    assert "unknown key train.lrr" in capsys.readouterr().err
