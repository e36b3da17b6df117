"""AdamW with the paper's settings and the warm-up + linear-decay learning-rate schedule.

    opt = build_optimizer(model, cfg.train)           # betas (0.9, 0.98), eps 1e-6
    sched = build_scheduler(opt, cfg.train)           # 0 -> lr over warmup, then -> 0 at max
"""

from __future__ import annotations

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


def build_scheduler(opt: torch.optim.Optimizer, train: TrainConfig
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, train.warmup_steps, train.max_steps))
