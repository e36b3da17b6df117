"""train.compile in the real loop (trainer.train.train, one in-process rank on the CPU): the
same losses as eager for rtd, mlm and electra, and a bounded number of compiled graphs,
because batches are padded to length buckets (train.compile_pad_multiple)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import SMALL, TINY, metrics, run_train
from trainer.config.load import load_config
from trainer.data.padding import num_buckets
from trainer.distributed import Dist
from trainer.modes.registry import build_task
from trainer.train import grad_accum_steps, train

# slow: torch.compile in the real loop (its first graphs take seconds), and two torchrun ranks.
pytestmark = pytest.mark.slow

CPU = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
MULTIPLE, MAX_LEN = 32, 64  # SMALL's data.max_seq_len: two buckets, lengths 32 and 64
# 10 steps of 2 micro-batches of 2 sequences: short batches, so their longest sequences vary
# (the negative control needs more distinct lengths than there are buckets). No dropout:
# inductor draws its own dropout masks, so only a dropout-free run can match eager.
COMMON = ["train.max_steps=10", "train.global_batch_size=4", "train.micro_batch_size_per_rank=2",
          "train.checkpoint_every=10", "train.eval_every=10", "train.eval_sequences=8",
          "model.dropout=0", "model.attention_dropout=0",
          f"train.compile_pad_multiple={MULTIPLE}"]


def config(mode_sets: list[str], out, *extra: str):
    return load_config(TINY, [*SMALL, *COMMON, *mode_sets, f"train.out_dir={out}", *extra])


def run(cfg) -> list[dict]:
    torch._dynamo.reset()  # a fresh cache: this run's graphs are all counted
    train(cfg, CPU)
    return metrics(cfg.train.out_dir)


def batch_widths(cfg) -> set[int]:
    """The widths (longest sequence) of every training micro-batch the run reads."""
    task = build_task(cfg, CPU)
    accum = grad_accum_steps(cfg, 1)
    return {task.micro_batch(s, m, CPU)["attention_mask"].shape[1]
            for s in range(cfg.train.max_steps) for m in range(accum)}


@pytest.fixture
def modes(prepared, rtd_dir):
    corpus = f"data.corpus_dir={prepared[0]}"
    return {"rtd": ["train.mode=rtd", f"train.rtd_dir={rtd_dir}", corpus],
            "mlm": ["train.mode=mlm", corpus],
            "electra": ["train.mode=electra", corpus]}


@pytest.mark.parametrize("mode", ["rtd", "mlm", "electra"])
def test_compiled_run_matches_eager_with_bounded_graphs(mode, modes, tmp_path, one_thread):
    eager = run(config(modes[mode], tmp_path / "eager"))
    compiled = run(config(modes[mode], tmp_path / "compiled", "train.compile=true"))
    assert [r["step"] for r in compiled] == list(range(1, 11))
    np.testing.assert_allclose([r["loss"] for r in compiled], [r["loss"] for r in eager],
                               rtol=0, atol=1e-4)
    # Evaluation ran (step 10) and matches too: it runs the blocks eager, compiling nothing.
    eval_keys = [k for k in eager[-1] if k.startswith("eval_")]
    assert eval_keys
    for k in eval_keys:
        assert compiled[-1][k] == pytest.approx(eager[-1][k], abs=1e-4), k
    graphs = compiled[-1]["compiled_graphs"]
    # Each encoder of its own width compiles per bucket: electra has a generator and a
    # discriminator, the other modes one encoder. 0 graphs would mean nothing was compiled.
    encoders = 2 if mode == "electra" else 1
    assert 1 <= graphs <= encoders * num_buckets(MULTIPLE, MAX_LEN)
    assert "compiled_graphs" not in eager[-1]


def test_without_buckets_every_length_compiles_a_graph(modes, tmp_path, one_thread):
    """The negative control: batches padded to their longest sequence only compile one graph
    per distinct length, more than the buckets would allow."""
    cfg = config(modes["mlm"], tmp_path / "nobucket", "train.compile=true",
                 "train.compile_pad_multiple=0")
    widths = batch_widths(cfg)
    assert len(widths) > num_buckets(MULTIPLE, MAX_LEN), widths  # else this proves nothing
    assert run(cfg)[-1]["compiled_graphs"] == len(widths)


def test_two_ranks_compiled_match_one_rank(modes, tmp_path, one_thread):
    """2 gloo ranks under torchrun, compiled: the loss curve of one eager process."""
    argv = ["--config", TINY]
    # One sequence per micro-batch on either side: the same micro-batches, the same means.
    for s in [*SMALL, *COMMON, *modes["rtd"], "train.eval_every=0",
              "train.micro_batch_size_per_rank=1"]:
        argv += ["--set", s]
    one = run_train([*argv, "--set", f"train.out_dir={tmp_path / 'one'}"])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_train([*argv, "--set", f"train.out_dir={tmp_path / 'two'}",
                     "--set", "train.compile=true"],
                    nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    np.testing.assert_allclose([r["loss"] for r in metrics(tmp_path / "two")],
                               [r["loss"] for r in metrics(tmp_path / "one")], rtol=0, atol=1e-4)
