"""Joint baselines: ELECTRA's embedding sharing, DecoupledOptim's loss-scale invariance, and
exact resume of a two-optimizer run."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.helpers import SMALL, TINY
from trainer.config.load import load_config
from trainer.distributed import Dist
from trainer.modes.joint import GDESEmbedding, JointTask
from trainer.optim import build_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = Dist(0, 1, 0, torch.device("cpu"))


def task_for(corpus_dir, mode: str, *overrides: str) -> JointTask:
    cfg = load_config(TINY, [*SMALL, f"data.corpus_dir={corpus_dir}", f"train.mode={mode}",
                             "train.global_batch_size=8", "train.micro_batch_size_per_rank=8",
                             *overrides])
    torch.manual_seed(0)
    return JointTask(cfg, CPU)


def updated_params(task: JointTask, rtd_weight: float, steps: int = 3,
                   eps: float | None = None) -> dict:
    model = copy.deepcopy(task.model)
    task.rtd_weight = rtd_weight
    torch.manual_seed(1)  # the same dropout masks in every call
    opts = [build_optimizer(m, task.cfg.train, lr) for _, m, lr in task.optimized(model)]
    for group in (g for opt in opts for g in opt.param_groups if eps is not None):
        group["eps"] = eps
    for step in range(steps):
        loss, _ = task.loss(model, task.micro_batch(step, 0, CPU))
        loss.backward()
        for opt in opts:
            opt.step()
            opt.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def grads(task: JointTask, rtd_weight: float) -> dict:
    model = copy.deepcopy(task.model)
    task.rtd_weight = rtd_weight
    torch.manual_seed(1)  # the same dropout masks in every call
    loss, _ = task.loss(model, task.micro_batch(0, 0, CPU))
    loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_decoupled_each_optimizer_sees_only_its_own_loss(prepared):
    corpus_dir, _, _ = prepared
    task = task_for(corpus_dir, "decoupled")
    g1, g7 = grads(task, 1.0), grads(task, 7.0)
    assert set(g1) == set(g7)
    for k in g1:
        if k.startswith("generator."):  # MLM only: the loss weight does not reach it
            assert torch.equal(g1[k], g7[k]), k
        else:  # RTD only: scaled exactly by the weight
            torch.testing.assert_close(g7[k], 7.0 * g1[k], rtol=1e-5, atol=1e-7, msg=k)
    # So Adam's updates do not depend on the weight. Two terms of Adam are not scale-invariant
    # and are excluded: eps (made negligible here; it matters where |grad| ~ eps), and the
    # attention key bias, whose true gradient is exactly 0 (softmax ignores a shift of all
    # logits): Adam turns its float noise into full-size steps of random sign.
    a, b = updated_params(task, 1.0, eps=1e-14), updated_params(task, 10.0, eps=1e-14)
    for k in a:
        if k.startswith("generator."):
            assert torch.equal(a[k], b[k]), k
        elif not k.endswith("attn.qkv.bias"):
            # The same holds, more weakly, for key weights along input directions that hardly
            # vary over the keys: a few such elements (< 0.5%) may differ. atol 1e-5 is 1% of
            # one Adam step (lr 1e-3): elements whose gradient is near 0 carry float noise of
            # that order; a loss-scale dependence would move whole steps.
            wrong = int((~torch.isclose(a[k], b[k], rtol=1e-4, atol=1e-5)).sum())
            assert wrong <= (a[k].numel() // 200 if k.endswith("attn.qkv.weight") else 0), \
                (k, wrong)


def test_electra_shares_the_rtd_gradient_with_the_generator(prepared):
    corpus_dir, _, _ = prepared
    task = task_for(corpus_dir, "electra", "joint.embedding_sharing=shared")
    g1, g7 = grads(task, 1.0), grads(task, 7.0)
    key = "generator.encoder.word_emb.weight"  # shared table: MLM + weight * RTD gradient
    assert not torch.allclose(g1[key], g7[key])
    a, b = updated_params(task, 1.0), updated_params(task, 10.0)
    assert not torch.allclose(a[key], b[key], atol=1e-6)


def embedding_tables(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(D's word-embedding table as its forward uses it, G's), detached copies."""
    return (model.discriminator.encoder.word_emb.weight.detach().clone(),
            model.generator.encoder.word_emb.weight.detach().clone())


@torch.no_grad()
def bump(param: torch.nn.Parameter) -> None:
    param.add_(1.0)  # an optimizer step's worth of change, in place as optimizers do


def test_shared_embeddings_are_one_parameter(prepared):
    model = task_for(prepared[0], "electra", "joint.embedding_sharing=shared").model
    d, g = model.discriminator.encoder.word_emb, model.generator.encoder.word_emb
    assert d.weight is g.weight  # fails if D got a copy, even an equal one
    before, _ = embedding_tables(model)
    bump(g.weight)
    assert torch.equal(embedding_tables(model)[0], before + 1.0)


@pytest.mark.parametrize("mode, sharing", [("electra", "none"), ("decoupled", "shared"),
                                           ("decoupled", "gdes")])
def test_separate_embeddings_share_no_storage(prepared, mode, sharing):
    """``none``, and decoupled whatever joint.embedding_sharing says (its two optimizers must
    not both step one table): distinct storage, and an update to either table leaves the
    other as it was. Fails if the tables were shared, views of one tensor, or tied (gdes)."""
    model = task_for(prepared[0], mode, f"joint.embedding_sharing={sharing}").model
    d, g = model.discriminator.encoder.word_emb, model.generator.encoder.word_emb
    assert type(d) is torch.nn.Embedding and d.weight is not g.weight
    assert d.weight.untyped_storage().data_ptr() != g.weight.untyped_storage().data_ptr()
    d_before, g_before = embedding_tables(model)
    bump(g.weight)
    assert torch.equal(embedding_tables(model)[0], d_before)
    bump(d.weight)
    assert torch.equal(embedding_tables(model)[1], g_before + 1.0)
    ids = {id(p) for p in model.discriminator.parameters()}
    assert not ids & {id(p) for p in model.generator.parameters()}


def test_gdes_embedding_is_the_generators_table_plus_its_own_delta(prepared):
    """DeBERTaV3's definition: D's table = stop_grad(G's table) + delta. G's updates reach D,
    D's delta never reaches G, and the RTD loss trains delta and not G's table."""
    task = task_for(prepared[0], "electra", "joint.embedding_sharing=gdes")
    model = task.model
    gdes, g = model.discriminator.encoder.word_emb, model.generator.encoder.word_emb
    assert isinstance(gdes, GDESEmbedding)
    assert gdes.delta is not g.weight and gdes.delta.shape == g.weight.shape
    d_before, g_before = embedding_tables(model)
    assert torch.equal(d_before, g_before + gdes.delta.detach())
    bump(g.weight)  # G's update moves D's table with it
    assert torch.equal(embedding_tables(model)[0], d_before + 1.0)
    bump(gdes.delta)  # D's own part does not move G's
    assert torch.equal(embedding_tables(model)[1], g_before + 1.0)
    # delta is D's parameter, G's table is not (so D's optimizer does not step it twice).
    d_params = {id(p) for p in model.discriminator.parameters()}
    assert id(gdes.delta) in d_params and id(g.weight) not in d_params

    b = task.micro_batch(0, 0, CPU)
    _, rtd_loss, _ = task._run(model, b, 0)
    rtd_loss.backward()  # the RTD loss alone: G's table must get nothing, D's delta must
    assert g.weight.grad is None
    assert gdes.delta.grad is not None and gdes.delta.grad.abs().sum() > 0


def test_labels_mark_exactly_the_changed_tokens(prepared):
    corpus_dir, _, _ = prepared
    task = task_for(corpus_dir, "electra")
    b = task.micro_batch(0, 0, CPU)
    _, _, stats = task._run(task.model, b, 0)
    replaced = stats["rtd_tp"] + stats["rtd_fn"]
    assert 0 < replaced <= b["selected"].sum()
    assert stats["gen_count"] == b["selected"].sum()


def test_joint_models_start_at_their_priors(prepared):
    """The generator's MLM bias is the corpus's log unigram; the discriminator's RTD bias the
    log-odds of what such a generator replaces (trainer.modes.base.expected_replaced_fraction)."""
    import math

    from trainer.corruption.distributions import unigram_logprobs
    from trainer.modes.base import expected_replaced_fraction

    corpus_dir, _, _ = prepared
    task = task_for(corpus_dir, "electra")
    logp = unigram_logprobs(task.unigram_counts)[0]
    bias = task.model.generator.head.bias.detach()
    finite = torch.isfinite(logp)
    torch.testing.assert_close(bias[finite], logp[finite])
    p = expected_replaced_fraction(task.unigram_counts, task.cfg.corruption.mask_prob)
    assert 0.1 < p < task.cfg.corruption.mask_prob  # specials and collisions are excluded
    assert float(task.model.discriminator.head.out.bias.detach()) == pytest.approx(
        math.log(p / (1 - p)), abs=1e-6)


def test_evaluate_reports_every_key_on_a_rank_with_no_heldout_batch(prepared):
    corpus_dir, _, _ = prepared
    task = task_for(corpus_dir, "electra", "train.eval_sequences=1")
    assert len(task.heldout) == 1
    rank1 = Dist(1, 2, 1, torch.device("cpu"))  # rank 1 of 2: the one sequence is rank 0's
    with torch.inference_mode():  # as trainer.train.evaluate runs it
        empty, full = task.evaluate(task.model, rank1), task.evaluate(task.model, CPU)
    assert set(empty) == set(full) and set(empty) >= {"batches", "gen_count", "rtd_all_tp"}
    assert all(v == 0.0 for v in empty.values()) and full["batches"] == 1.0
