"""The early-exit generator (exits, P update rule, exit draws, hand-off as an aux) and the
Emb-Gen replacement (embedding_topk)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.helpers import SMALL, TINY
from trainer import checkpoint
from trainer.config.load import load_config, to_dict
from trainer.distributed import Dist
from trainer.errors import UserError
from trainer.modes.early_exit import EarlyExitModel, EarlyExitTask, exit_layers
from trainer.modes.joint import JointTask, embedding_topk_logprobs
from trainer.pretrained import load_generator

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = Dist(0, 1, 0, torch.device("cpu"))
EXITS = ["train.mode=early-exit", "aux.num_layers=4", "joint.exit_layers=[1, 2, 3, 4]"]


def cfg_for(corpus_dir=None, *overrides: str):
    extra = [f"data.corpus_dir={corpus_dir}"] if corpus_dir else []
    return load_config(TINY, [*SMALL, *EXITS, *extra, "train.global_batch_size=8",
                              "train.micro_batch_size_per_rank=8", *overrides])


def test_exit_layers_default_and_errors():
    cfg = load_config(TINY, [*SMALL, "aux.num_layers=12", "joint.exit_layers=[]"])
    assert exit_layers(cfg) == [3, 6, 9, 12]
    assert exit_layers(load_config(TINY, [*SMALL, "aux.num_layers=2"])) == [1, 2]
    with pytest.raises(UserError, match="must end at the generator's last layer"):
        exit_layers(load_config(TINY, [*SMALL, "aux.num_layers=4", "joint.exit_layers=[1, 2]"]))


def test_probability_update_follows_the_paper_rule():
    torch.manual_seed(0)
    model = EarlyExitModel(cfg_for())
    assert model.exit_probs.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert model.loss_weights == pytest.approx([0.1, 0.2, 0.3, 0.4])
    model.exit_counts.copy_(torch.tensor([80.0, 100.0]))
    model.update_exit_probs(alpha=2.0)  # first update: only records acc
    assert model.exit_probs.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert model.exit_acc_prev.item() == pytest.approx(0.8)
    model.exit_counts.copy_(torch.tensor([90.0, 100.0]))
    model.update_exit_probs(alpha=2.0)
    logits = np.array([0.1, 0.2, 0.3, 0.4]) + 2.0 * 0.1 * np.arange(4)
    want = np.exp(logits) / np.exp(logits).sum()
    assert model.exit_probs.tolist() == pytest.approx(want.tolist())
    assert model.exit_counts.tolist() == [0.0, 0.0]


def test_exits_are_drawn_from_p_the_same_on_every_rank(prepared):
    corpus_dir, _, _ = prepared
    task = EarlyExitTask(cfg_for(corpus_dir), CPU)
    draws = [task.exit_index({"step": torch.tensor(s)}) for s in range(4000)]
    assert draws == [task.exit_index({"step": torch.tensor(s)}) for s in range(4000)]
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert freq == pytest.approx([0.1, 0.2, 0.3, 0.4], abs=0.03)
    # one forward: losses at every exit, the sample from the drawn one
    b = task.micro_batch(0, 0, CPU)
    loss, sums = task.loss(task.model, b)
    assert torch.isfinite(loss)
    assert {f"gen_correct_exit{k}" for k in (1, 2, 3, 4)} <= set(sums)


def test_early_exit_checkpoint_hands_its_last_exit_on_as_an_aux(tmp_path):
    cfg = cfg_for()
    torch.manual_seed(0)
    model = EarlyExitModel(cfg).eval()
    meta = {"step": 1, "mode": "early-exit", "config": to_dict(cfg), "model_kind": "early-exit"}
    path = checkpoint.save(str(tmp_path), 1, {"model": model.state_dict()}, meta,
                           checkpoint.SaveContext.single_process())
    gen = load_generator(path)
    ids = torch.randint(5, 600, (2, 12))
    mask = torch.ones_like(ids, dtype=torch.bool)
    sel = torch.zeros_like(mask)
    sel[:, 4] = True
    with torch.no_grad():
        torch.testing.assert_close(gen(ids, mask, sel), model.generator(ids, mask, sel)[-1])


def test_embedding_topk_picks_among_the_nearest_tokens():
    table = torch.randn(40, 8)
    original = torch.tensor([7, 20, 7])
    logp = embedding_topk_logprobs(table, original, k=3)
    for row, tok in zip(logp, original.tolist(), strict=True):
        allowed = torch.isfinite(row).nonzero().flatten().tolist()
        dist = ((table - table[tok]) ** 2).sum(-1)
        dist[:5] = math.inf
        dist[tok] = math.inf
        assert sorted(allowed) == sorted(dist.topk(3, largest=False).indices.tolist())
        assert row[allowed].exp().sum().item() == pytest.approx(1.0)


def test_embedding_topk_in_joint_training(prepared):
    corpus_dir, _, _ = prepared
    cfg = load_config(TINY, [*SMALL, f"data.corpus_dir={corpus_dir}", "train.mode=electra",
                             "joint.replacement=embedding_topk", "joint.embedding_topk_k=5",
                             "train.global_batch_size=8", "train.micro_batch_size_per_rank=8"])
    torch.manual_seed(0)
    task = JointTask(cfg, CPU)
    b = task.micro_batch(0, 0, CPU)
    loss, sums = task.loss(task.model, b)
    loss.backward()
    assert sums["embedding_l2"] > 0 and sums["rtd_tp"] + sums["rtd_fn"] > 0
    # the L2 term reaches the discriminator's (here shared) embedding table
    assert task.model.discriminator.encoder.word_emb.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("overrides", [["aux.num_layers=1"],
                                       ["aux.num_layers=4", "joint.exit_layers=[4]"]])
def test_fewer_than_two_exits_is_refused_naming_the_keys(overrides):
    cfg = load_config(TINY, [*SMALL, "train.mode=early-exit", *overrides])
    with pytest.raises(UserError, match=r"needs at least 2 generator exits.*joint\.exit_layers"
                                        r".*aux\.num_layers >= 2"):
        exit_layers(cfg)
    with pytest.raises(UserError, match="needs at least 2 generator exits"):
        EarlyExitModel(cfg)


def test_tiny_toml_as_is_is_refused_for_early_exit():
    """configs/tiny.toml's generator has 1 layer: early-exit on it would equal electra."""
    with pytest.raises(UserError, match=r"joint\.exit_layers = \[1\] \(aux\.num_layers = 1\)"):
        exit_layers(load_config(TINY, ["train.mode=early-exit"]))
