"""trainer.step: one optimizer step (micro-batches, accumulation, clip, guard, update), the
step every loop shares (trainer.train, fast-electra finetune, bench/peer_hf.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from trainer.config.run import TrainConfig
from trainer.modes.base import CorpusTask, Task
from trainer.modes.early_exit import EarlyExitTask
from trainer.modes.mlm import MLMTask
from trainer.optim import build_optimized, optimizer_step
from trainer.step import StepSetup, dropout_seed, train_step

CPU = torch.device("cpu")
TRAIN = TrainConfig(lr=1e-2, warmup_steps=1, max_steps=10, weight_decay=0.01)


def mse(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
    out = model(batch["x"])  # (B, 1)
    loss = ((out[:, 0] - batch["y"]) ** 2).mean()
    return loss, {"examples": torch.tensor(float(len(batch["y"])))}


def batches(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"x": torch.randn(4, 3, generator=g), "y": torch.randn(4, generator=g)}
            for _ in range(n)]


def setup_of(model: torch.nn.Module, accum: int, clip: float | None) -> StepSetup:
    parts = build_optimized([("model", model, TRAIN.lr)], TRAIN)
    return StepSetup(model, parts, accum, clip, "fp32", CPU)


def test_a_step_is_the_hand_written_loop():
    """Two micro-batches, loss / accum, clip, AdamW + schedule: the same weights to the bit
    as the loop written out, and the sums per micro-batch and per step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    twin = copy.deepcopy(model)
    data = batches(2)
    out = train_step(setup_of(model, 2, 0.1), mse, data)

    ref = setup_of(twin, 2, 0.1)
    for b in data:
        (mse(twin, b)[0] / 2).backward()
    norm = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.1)
    optimizer_step(ref.parts)

    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
    assert torch.equal(out.grad_norms[0], norm)
    assert [s["micro_batches"] for s in out.micro_sums] == [1.0, 1.0]
    sums = out.sums()
    assert sums["examples"].item() == 8.0 and sums["micro_batches"] == 2.0
    assert torch.equal(sums["loss_sum"], out.micro_sums[0]["loss_sum"]
                       + out.micro_sums[1]["loss_sum"])


def test_a_guard_that_raises_leaves_the_model_unchanged():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    before = copy.deepcopy(model.state_dict())
    setup = setup_of(model, 1, 1.0)
    seen = []

    def guard(out):
        seen.append(out.grad_norms[0].item())
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        train_step(setup, mse, batches(1), guard=guard)
    assert seen and seen[0] > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert setup.parts[0].scheduler.last_epoch == 0  # the schedule did not advance


def test_without_a_clip_there_are_no_norms():
    torch.manual_seed(0)
    out = train_step(setup_of(torch.nn.Linear(3, 1), 1, None), mse, batches(1))
    assert out.grad_norms == []


def test_dropout_seed_is_the_trainers():
    """bench/peer_hf.py starts its dropout streams where rank 0 of trainer.train does."""
    assert dropout_seed(5, 0) == 5 * 1_000_003 + 1
    assert dropout_seed(5, 1) == dropout_seed(5, 0) + 1


def test_after_step_is_part_of_the_task_protocol():
    """A mode without its own after_step inherits Task's (nothing); early-exit overrides it."""
    assert Task in CorpusTask.__mro__
    assert MLMTask.after_step is Task.after_step
    assert EarlyExitTask.after_step is not Task.after_step
    assert Task.after_step(object(), 1, {}, None) is None
