"""The data plan at the trainer's start and in ``python -m trainer.tools.plan``: an rtd run
its shards cannot feed is refused before the first step (exit 2, the numbers, the fix); a run
that trains on every epoch is warned that nothing is held out; the plan command prints the
exact sample counts of a tiny config and exits 2 when the plan cannot feed the run."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.helpers import SMALL, TINY, run_train, train_argv
from trainer.config.load import load_config
from trainer.data.rtd_shards import RTDShards
from trainer.distributed import Dist
from trainer.errors import UserError
from trainer.modes.rtd import DataPlan, RTDTask, check_rtd_plan
from trainer.tools.plan import main as plan_main

# 16 sequences per step across ranks, 8 per micro-batch (grad_accum 2 on one process): a
# check that counted steps x micro_batch_size_per_rank would find room for twice the steps.
BATCH = ["train.global_batch_size=16", "train.micro_batch_size_per_rank=8"]


def rtd_config(corpus_dir, rtd_dir, *sets: str):
    return load_config(TINY, [*SMALL, f"data.corpus_dir={corpus_dir}", "train.mode=rtd",
                              f"train.rtd_dir={rtd_dir}", *BATCH, *sets])


def test_train_refuses_a_run_its_shards_cannot_feed_before_the_first_step(prepared, rtd_dir,
                                                                          tmp_path):
    n = RTDShards(str(rtd_dir)).rows_per_epoch
    steps = 2 * n // 16 + 1  # one step past the 2 epochs; at 8 a step it would fit
    assert steps * 8 <= 2 * n < steps * 16
    out = tmp_path / "run"
    done = run_train(train_argv(prepared[0], out, "train.mode=rtd", f"train.rtd_dir={rtd_dir}",
                                f"train.max_steps={steps}", *BATCH))
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"error: train.max_steps = {steps:,} x train.global_batch_size = 16 needs " \
           f"{steps * 16:,} samples; {rtd_dir} holds 2 epoch(s) x {n:,} = {2 * n:,} samples " \
           f"({2 * n // 16:,} steps); generate more epochs or lower train.max_steps: " \
           f"generate.epochs = 4 (3 to train on + 1 held out), or train.max_steps = " \
           f"{2 * n // 16:,} ({n // 16:,} to keep epoch 1 held out)" in done.stderr
    assert "Traceback" not in done.stderr
    assert "checking the footer" not in done.stdout  # refused before any file is read
    assert not (out / "metrics.jsonl").exists()


def test_the_check_counts_the_global_batch(rtd_dir, prepared):
    shards = RTDShards(str(rtd_dir))
    n = shards.rows_per_epoch
    cfg = rtd_config(prepared[0], rtd_dir, f"train.max_steps={2 * n // 16 + 1}")
    with pytest.raises(UserError, match="needs"):
        check_rtd_plan(cfg, shards)
    # Negative control: the same steps at the per-rank micro-batch would pass.
    assert DataPlan(cfg.train.max_steps, cfg.train.micro_batch_size_per_rank, 2, n).feasible
    ok = rtd_config(prepared[0], rtd_dir, f"train.max_steps={2 * n // 16}")
    assert check_rtd_plan(ok, shards).feasible


@pytest.mark.parametrize(("steps_of", "warned"), [(lambda n: n // 16 + 1, True),
                                                  (lambda n: n // 16, False)])
def test_heldout_warning_only_when_every_epoch_is_trained_on(prepared, rtd_dir, capsys,
                                                              steps_of, warned):
    n = RTDShards(str(rtd_dir)).rows_per_epoch
    steps = steps_of(n)
    RTDTask(rtd_config(prepared[0], rtd_dir, f"train.max_steps={steps}",
                       "train.warmup_steps=0", "train.eval_every=5"),
            Dist(0, 1, 0, torch.device("cpu")))
    out, err = capsys.readouterr()
    assert ("train: warning: no held-out epoch" in err) is warned
    assert ("epoch 1 is never trained on" in out) is not warned
    if warned:
        assert f"{steps * 16:,} samples reach into all 2 epoch(s) of {n:,}" in err
        assert "to hold one out, make generate.epochs = 3 (2 trained + 1 held out)" in err


def plan_argv(corpus_dir, *sets: str) -> list[str]:
    argv = ["--config", TINY, "--json"]
    for s in [f"data.corpus_dir={corpus_dir}", *BATCH, *sets]:
        argv += ["--set", s]
    return argv


def test_plan_prints_the_exact_numbers_of_a_tiny_config(prepared, capsys):
    corpus_dir, manifest, _ = prepared
    n = manifest["num_sequences"]
    steps = n // 16 + 1  # into epoch 1 of 3: epoch 2 held out
    assert plan_main(plan_argv(corpus_dir, "generate.epochs=3", f"train.max_steps={steps}",
                               "train.warmup_steps=0")) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["samples_needed"] == steps * 16 and p["corpus_sequences"] == n
    assert p["samples_available"] == 3 * n and p["steps_possible"] == 3 * n // 16
    assert (p["epochs_needed"], p["epochs_used"], p["heldout_epoch"]) == (2, 2, 2)
    assert p["rtd_tokens"] == 3 * (manifest["num_tokens"] + 2 * n)
    assert p["feasible"] is True and p["total_pflops"] > 0
    # The table says the same.
    argv = [a for a in plan_argv(corpus_dir, "generate.epochs=3", f"train.max_steps={steps}",
                                 "train.warmup_steps=0") if a != "--json"]
    assert plan_main(argv) == 0
    text = capsys.readouterr().out
    assert f"= {steps * 16:,}\n" in text and f"x 3 (generate.epochs) = {3 * n:,}" in text
    assert "held out: epoch 2" in text and "bytes/token" in text


def test_plan_exits_2_with_the_fix_when_infeasible(prepared, capsys):
    corpus_dir, manifest, _ = prepared
    n = manifest["num_sequences"]
    steps = 2 * n // 16 + 1
    assert plan_main(plan_argv(corpus_dir, "generate.epochs=2", f"train.max_steps={steps}",
                               "train.warmup_steps=0")) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["feasible"] is False
    assert f"error: train.max_steps = {steps:,} x train.global_batch_size = 16 needs " \
           f"{steps * 16:,} samples" in captured.err
    assert "generate.epochs = 4 (3 to train on + 1 held out)" in captured.err


def test_plan_of_an_unprepared_corpus_says_so(tmp_path, capsys):
    argv = [a for a in plan_argv(tmp_path / "none", "generate.epochs=2", "train.max_steps=10",
                                 "train.warmup_steps=0") if a != "--json"]
    assert plan_main(argv) == 0
    text = capsys.readouterr().out
    assert "not prepared yet" in text
    assert "at least 80 sequences for generate.epochs = 2, 160 to hold one out" in text
    assert not os.path.exists(tmp_path / "none")
