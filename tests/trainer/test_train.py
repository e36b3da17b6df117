"""The trainer as users run it: real processes, real torchrun (gloo), kill -9 and resume."""

from __future__ import annotations

import math
import os

import pytest

from tests.helpers import (
    TINY,
    env,
    kill_9_when,
    metrics,
    run_train,
    strip_timing,
    train_argv,
)
from trainer import checkpoint
from trainer.config.load import load_config
from trainer.errors import UserError
from trainer.resume import check_resume_config, resolve_resume
from trainer.train import grad_accum_steps


@pytest.mark.slow
def test_mlm_starts_at_the_unigram_baseline(prepared, tmp_path):
    """The MLM bias starts at the corpus unigram: step 1 is already far below the uniform guess
    log(600) = 6.40 (a zero bias starts there), and 12 steps stay near that baseline. (1 process
    vs 2 ranks, for every mode: tests/trainer/modes/test_modes_distributed.py.)"""
    corpus_dir, _, _ = prepared
    common = ["train.max_steps=12", "train.global_batch_size=16",
              "train.micro_batch_size_per_rank=8", "model.dropout=0",
              "model.attention_dropout=0", "train.checkpoint_every=12"]
    one = run_train(train_argv(corpus_dir, tmp_path / "one", *common))
    assert one.returncode == 0, one.stderr[-3000:]
    m1 = metrics(tmp_path / "one")
    assert [r["step"] for r in m1] == list(range(1, 13))
    assert m1[0]["loss"] < math.log(600) - 0.7
    assert m1[-1]["loss"] < m1[0]["loss"] + 0.1
    assert checkpoint.list_steps(str(tmp_path / "one")) == [12]


@pytest.mark.slow
def test_kill_9_then_resume_gives_identical_losses(prepared, tmp_path):
    corpus_dir, _, _ = prepared
    common = ["train.max_steps=300", "train.checkpoint_every=20", "train.keep_checkpoints=2",
              "train.global_batch_size=8", "train.micro_batch_size_per_rank=4",
              "train.eval_every=100"]
    straight = run_train(train_argv(corpus_dir, tmp_path / "straight", *common))
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "killed"
    kill_9_when("trainer.train", train_argv(corpus_dir, out, *common),
                lambda: checkpoint.list_steps(str(out)) != [], env=env())
    # The kill landed mid-run: it left a checkpoint (the ready condition) and fewer logged
    # steps than the run's 300, which the resume must complete. Fails if it landed after the
    # run finished or before it wrote anything, where the equality below would prove nothing.
    killed_at = checkpoint.list_steps(str(out))
    logged = (out / "metrics.jsonl").read_text().count("\n")
    assert killed_at and killed_at[-1] < 300 and killed_at[-1] <= logged < 300

    resumed = run_train(train_argv(corpus_dir, out, *common) + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    assert strip_timing(metrics(out)) == strip_timing(metrics(tmp_path / "straight"))
    assert checkpoint.list_steps(str(out)) == [280, 300]


@pytest.mark.slow
def test_non_finite_loss_stops_cleanly_and_keeps_last_checkpoint(prepared, tmp_path):
    corpus_dir, _, _ = prepared
    out = tmp_path / "nan"
    r = run_train(train_argv(corpus_dir, out, "train.max_steps=20", "train.lr=1e30",
                             "train.warmup_steps=0", "train.checkpoint_every=1",
                             "train.global_batch_size=8", "train.micro_batch_size_per_rank=8"))
    assert r.returncode == 2
    assert "error: non-finite loss or gradient at step" in r.stderr
    assert "Traceback" not in r.stderr
    steps = checkpoint.list_steps(str(out))
    assert steps, "the step before the blow-up must be checkpointed"
    state, meta, _ = checkpoint.load(checkpoint.step_dir(str(out), steps[-1]), 0)
    assert meta["step"] == steps[-1] and "model" in state


def test_fresh_start_refuses_a_folder_with_checkpoints(tmp_path):
    cfg = load_config(TINY, [f"train.out_dir={tmp_path}"])
    assert resolve_resume(cfg) is None
    os.makedirs(checkpoint.step_dir(str(tmp_path), 40))
    (tmp_path / "checkpoints" / "step_00000040" / "meta.json").write_text("{}")
    os.makedirs(tmp_path / "checkpoints" / ".tmp-step_00000050")  # a crash's leftover
    with pytest.raises(UserError, match=r"up to step 40\): pass --resume"):
        resolve_resume(cfg)
    cfg = load_config(TINY, [f"train.out_dir={tmp_path}", "train.resume=auto"])
    assert resolve_resume(cfg) == checkpoint.step_dir(str(tmp_path), 40)


def test_batch_geometry():
    cfg = load_config(TINY, ["train.global_batch_size=32", "train.micro_batch_size_per_rank=8"])
    assert [grad_accum_steps(cfg, w) for w in (1, 2, 4)] == [4, 2, 1]
    with pytest.raises(UserError, match="not divisible by micro_batch_size_per_rank x world"):
        grad_accum_steps(cfg, 3)
    fixed = load_config(TINY, ["train.global_batch_size=32", "train.micro_batch_size_per_rank=8",
                               "train.grad_accum=2"])
    assert grad_accum_steps(fixed, 2) == 2
    with pytest.raises(UserError, match=r"with 1 process\(es\) set train.grad_accum = 4"):
        grad_accum_steps(fixed, 1)


def test_resume_config_check():
    from trainer.config.load import to_dict

    saved = to_dict(load_config(TINY))
    assert check_resume_config(saved, load_config(TINY, ["train.max_steps=100",
                                                         "train.log_every=5"])) \
        == ["train.log_every", "train.max_steps"]
    with pytest.raises(UserError, match=r"model.hidden_size \(128 -> 256\)"):
        check_resume_config(saved, load_config(TINY, ["model.hidden_size=256"]))
