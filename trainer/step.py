"""One optimizer step, shared by pre-training (trainer.train), fine-tuning (fast-electra finetune)
and the Hugging Face peer bench (bench/peer_hf.py):

    setup = StepSetup(model, build_optimized(task.optimized(model), cfg.train), accum,
                      cfg.train.clip_grad_norm, cfg.train.precision, device)
    out = train_step(setup, task.loss, micro_batches, guard=check)

A step runs ``accum`` micro-batches (forward under autocast, backward of loss / accum; under
DDP the gradients are all-reduced on the last one only), clips each optimizer's gradient, calls
``guard`` and steps every optimizer and schedule. It never reads a device value on the host:
the sums come back as device tensors, so the caller decides when to pay for a sync (the
trainer at its log interval). ``guard`` runs after the clip and before the update: the one
place a caller may read the host to refuse an update (the trainer's finiteness check).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from trainer.optim import Optimized, optimizer_step

Sums = dict[str, torch.Tensor | float]
# (model, micro-batch) -> (0-d loss, sums to add up over micro-batches, ranks and steps)
LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, Sums]]

# Keeps the per-rank dropout streams of a run apart from its weight-init stream (seed).
_DROPOUT_SEED_STRIDE = 1_000_003


def dropout_seed(seed: int, rank: int) -> int:
    """The torch seed a rank's dropout stream starts from after the model is built: different
    per rank (as it would be across devices), the same on every run of that seed."""
    return seed * _DROPOUT_SEED_STRIDE + rank + 1


def autocast_context(device: torch.device, precision: str):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class StepSetup:
    """What every step of a run needs."""
    model: torch.nn.Module      # what the loss calls: the DDP wrapper when distributed
    parts: list[Optimized]      # one optimizer + schedule each, stepped together
    accum: int                  # micro-batches per optimizer step
    clip_grad_norm: float | None  # None: no clip (and no grad norms)
    precision: str              # autocast around the loss: autocast_context's argument
    device: torch.device
    distributed: bool = False   # model is DDP: skip its all-reduce until the last micro-batch


@dataclass
class StepOutput:
    """One step's results, on the device."""
    micro_sums: list[Sums]          # per micro-batch: the loss's sums + loss_sum, micro_batches
    loss: torch.Tensor              # 0-d, the last micro-batch's loss
    grad_norms: list[torch.Tensor]  # 0-d each, per part, before clipping; [] without a clip

    def sums(self) -> Sums:
        """The step's sums over its micro-batches (added in micro-batch order)."""
        total: Sums = {}
        for sums in self.micro_sums:
            for k, v in sums.items():
                total[k] = total.get(k, 0.0) + v
        return total


def forward_backward(setup: StepSetup, loss_fn: LossFn,
                     batches: Iterable[dict[str, torch.Tensor]]) -> tuple[list[Sums], torch.Tensor]:
    """Accumulate the gradients of ``setup.accum`` micro-batches -> (their sums, last loss)."""
    micro_sums: list[Sums] = []
    loss = None
    for micro, batch in enumerate(batches):
        sync = micro == setup.accum - 1 or not setup.distributed
        with (contextlib.nullcontext() if sync else setup.model.no_sync()), \
                autocast_context(setup.device, setup.precision):
            loss, sums = loss_fn(setup.model, batch)
        (loss / setup.accum).backward()
        sums["loss_sum"] = loss.detach().float()
        sums["micro_batches"] = 1.0
        micro_sums.append(sums)
    if loss is None:
        raise ValueError("train_step: no micro-batch")
    return micro_sums, loss


def clip(setup: StepSetup) -> list[torch.Tensor]:
    """Clip each part's gradient to setup.clip_grad_norm; -> the norms before clipping."""
    if setup.clip_grad_norm is None:
        return []
    return [torch.nn.utils.clip_grad_norm_(p.module.parameters(), setup.clip_grad_norm)
            for p in setup.parts]


def train_step(setup: StepSetup, loss_fn: LossFn, batches: Iterable[dict[str, torch.Tensor]],
               guard: Callable[[StepOutput], None] | None = None) -> StepOutput:
    """Micro-batches, clip, ``guard`` (may raise to refuse the update), optimizer step."""
    micro_sums, loss = forward_backward(setup, loss_fn, batches)
    out = StepOutput(micro_sums, loss, clip(setup))
    if guard is not None:
        guard(out)
    optimizer_step(setup.parts)
    return out
