"""pipeline.generate checks its data plan (generate.epochs x the corpus's sequences) against
the rtd run of its config before any work: too few samples -> exit 2 with the numbers and the
fix, nothing written; every epoch trained on -> one warning line on stderr."""

from __future__ import annotations

import pytest

from pipeline.generate import check_plan, main
from tests.helpers import TINY, gen_argv
from trainer.config.load import load_config
from trainer.data.corpus_shards import CorpusShards

UNIFORM = "corruption.replacement=uniform"
# 16 sequences per step across ranks, 8 per micro-batch: grad_accum 2 on one process, so a
# check that counted the per-rank micro-batch instead of the global batch would see half.
BATCH = ["train.global_batch_size=16", "train.micro_batch_size_per_rank=8"]


def steps_over(samples: int) -> int:
    """The fewest steps of 16 that need more than ``samples``, and fit in it at 8 a step."""
    return samples // 16 + 1


def test_too_few_sequences_are_refused_before_anything_is_written(prepared, tmp_path, capsys):
    corpus_dir, manifest, _ = prepared
    n = manifest["num_sequences"]
    steps = steps_over(2 * n)
    assert steps * 8 <= 2 * n < steps * 16  # the negative control's premise
    rtd_dir = tmp_path / "rtd"
    rc = main(gen_argv(corpus_dir, rtd_dir, UNIFORM, "generate.epochs=2",
                       f"train.max_steps={steps}", *BATCH))
    err = capsys.readouterr().err
    assert rc == 2
    assert not rtd_dir.exists()  # no lock, no config.toml, no part
    trained = -(-steps * 16 // n)
    assert f"train.max_steps = {steps:,} x train.global_batch_size = 16 needs " \
           f"{steps * 16:,} samples; the corpus {corpus_dir} (data.corpus_dir) with " \
           f"generate.epochs gives 2 epoch(s) x {n:,} = {2 * n:,} samples " \
           f"({2 * n // 16:,} steps); raise generate.epochs or lower train.max_steps: " \
           f"generate.epochs = {trained + 1} ({trained} to train on + 1 held out), or " \
           f"train.max_steps = {2 * n // 16:,} ({n // 16:,} to keep epoch 1 held out)" in err
    assert "Traceback" not in err


def config(prepared, *sets: str):
    argv = gen_argv(prepared[0], "unused", *sets)
    return load_config(TINY, [a for a in argv[2:] if a != "--set" and "=" in a
                              and not a.startswith("--")])


@pytest.mark.parametrize(("epochs", "warned"), [(2, True), (3, False)])
def test_the_heldout_warning_appears_only_when_every_epoch_is_trained_on(
        prepared, capsys, epochs, warned):
    corpus_dir, manifest, _ = prepared
    n = manifest["num_sequences"]
    steps = steps_over(n)  # reaches into epoch 1: two epochs trained
    cfg = config(prepared, f"generate.epochs={epochs}", f"train.max_steps={steps}",
                 "train.eval_every=10", *BATCH)
    check_plan(cfg, CorpusShards(str(corpus_dir)))
    err = capsys.readouterr().err
    assert ("generate: warning: no held-out epoch" in err) is warned
    if warned:
        assert err.count("\n") == 1
        assert "to hold one out, set generate.epochs = 3 (2 trained + 1 held out)" in err


def test_a_run_that_does_not_evaluate_is_not_warned(prepared, capsys):
    cfg = config(prepared, "generate.epochs=1", "train.eval_every=0")
    check_plan(cfg, CorpusShards(str(prepared[0])))
    assert capsys.readouterr().err == ""


def test_a_feasible_plan_generates(prepared, tmp_path, capsys):
    corpus_dir, manifest, _ = prepared
    n = manifest["num_sequences"]
    steps = 2 * n // 16  # exactly what 2 epochs hold
    rtd_dir = tmp_path / "rtd"
    rc = main(gen_argv(corpus_dir, rtd_dir, UNIFORM, "generate.epochs=2",
                       f"train.max_steps={steps}", "train.eval_every=10", *BATCH))
    assert rc == 0
    assert (rtd_dir / "manifest.json").exists()
    assert "generate: warning: no held-out epoch" in capsys.readouterr().err
