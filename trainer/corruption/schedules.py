"""Curriculum schedules: T(u), the schedule value at training progress u (T = 1: no
augmentation), and g(u) = T(u) - 1, the augmentation strength. What T means for each
augmentation: trainer.corruption.corrupt's docstring.
"""

from __future__ import annotations

import torch

SCHEDULES = ("exponential", "constant", "polynomial", "stepwise", "fixed")


def schedule_value(kind: str, u, t0: float, tau: float):
    """T(u), the schedule value at training progress u in [0, 1] (float, or a tensor of any
    shape, e.g. (B,) per sample); T = 1 + g where g is the augmentation strength:

    exponential  T = 1 + (t0 - 1) exp(-u / tau)               Eq. 2; paper t0 = 2, tau = 0.1
    constant     T = t0
    polynomial   T = 1 + (t0 - 1) (1 - u)**tau                tau = the power (1 = linear)
    stepwise     T = 1 + (t0 - 1) (1 - floor(u tau) / tau)    tau = the number of steps
    fixed        T = 1                                        no curriculum (ablation)

    u is clamped to [0, 1]. A tensor is computed in its own dtype (pass float64 for values
    that do not depend on the device's float32 exp).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; valid: {', '.join(SCHEDULES)}")
    scalar = not isinstance(u, torch.Tensor)
    uu = torch.tensor(float(u), dtype=torch.float64) if scalar else u
    uu = uu.clamp(0.0, 1.0)
    g_max = t0 - 1.0
    if kind == "exponential":
        value = 1.0 + g_max * torch.exp(-uu / tau)
    elif kind == "constant":
        value = torch.full_like(uu, t0)
    elif kind == "polynomial":
        value = 1.0 + g_max * (1.0 - uu) ** tau
    elif kind == "stepwise":
        value = 1.0 + g_max * (1.0 - torch.floor(uu * tau) / tau)
    else:
        value = torch.ones_like(uu)
    return float(value) if scalar else value


def schedule_strength(kind: str, u, t0: float, tau: float):
    """g(u) = T(u) - 1: the augmentation strength (weight, rate or fraction), g_max = t0 - 1."""
    return schedule_value(kind, u, t0, tau) - 1.0
