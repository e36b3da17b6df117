"""AdamW with the paper's settings, the warm-up + linear-decay learning-rate schedule, and the
optimizers of one run as named parts (``Optimized``) that the training step steps together.

    opt = build_optimizer(model, cfg.train)           # betas (0.9, 0.98), eps 1e-6
    sched = build_scheduler(opt, cfg.train)           # 0 -> lr over warmup, then -> 0 at max
    parts = build_optimized(task.optimized(model), cfg.train)   # one AdamW + schedule each
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.config.run import TrainConfig
from trainer.model.params import weight_decay_groups

BETAS = (0.9, 0.98)
EPS = 1e-6


def build_optimizer(model: torch.nn.Module, train: TrainConfig,
                    lr: float | None = None) -> torch.optim.AdamW:
    """AdamW over ``model``; no weight decay on biases, LayerNorm and the like."""
    # fused AdamW is a large win on GPU and unavailable for some CPU builds.
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(weight_decay_groups(model, train.weight_decay),
                             lr=lr if lr is not None else train.lr, betas=BETAS, eps=EPS,
                             fused=fused)


def lr_factor(step: int, warmup_steps: int, max_steps: int) -> float:
    """Multiplier of the peak lr for the update that makes step ``step + 1``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (max_steps - step) / max(1, max_steps - warmup_steps))


def linear_schedule(opt: torch.optim.Optimizer, warmup_steps: int, max_steps: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """``lr_factor`` as a scheduler: stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, warmup_steps, max_steps))


def build_scheduler(opt: torch.optim.Optimizer, train: TrainConfig
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    return linear_schedule(opt, train.warmup_steps, train.max_steps)


@dataclass
class Optimized:
    """One optimizer's share of the model: ``module`` is what it updates and clips (the
    decoupled modes clip the generator and the discriminator apart); ``name`` keys its
    metrics."""
    name: str
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def build_optimized(parts: list[tuple[str, torch.nn.Module, float]], train: TrainConfig
                    ) -> list[Optimized]:
    """A Task's ``optimized`` list -> one AdamW (at its peak lr) and one schedule each."""
    out = []
    for name, module, lr in parts:
        opt = build_optimizer(module, train, lr)
        out.append(Optimized(name, module, opt, build_scheduler(opt, train)))
    return out


def optimizer_step(parts: list[Optimized]) -> None:
    """Apply the accumulated gradients, advance each schedule, clear the gradients."""
    for p in parts:
        p.optimizer.step()
        p.scheduler.step()
        p.optimizer.zero_grad(set_to_none=True)
