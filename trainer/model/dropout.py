"""Dropout given per call (DropoutPlan) instead of read from the module, so that a shared frozen
model (the aux of the corruption step) is never mutated and each call's masks come from its own
generator: how the dropout augmentations of the corruption library degrade the aux.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DropoutPlan:
    """Dropout for one forward pass, given by the caller instead of read from the module:
    these rates apply whatever the module's train/eval mode, with masks drawn from
    ``generator`` (the global RNG when None). A shared frozen model (the aux of the
    corruption step, used by several RunInference threads) is then never mutated, and each
    call's masks depend on its own generator only."""

    hidden: float = 0.0
    attention: float = 0.0
    generator: torch.Generator | None = None

    def __post_init__(self):
        for name, p in (("hidden", self.hidden), ("attention", self.attention)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"DropoutPlan: {name} rate must be in [0, 1), got {p}")


def dropout(x: torch.Tensor, p: float, generator: torch.Generator | None = None
            ) -> torch.Tensor:
    """Inverted dropout at rate p (0 = identity), its mask from ``generator`` if given."""
    if p == 0.0:
        return x
    if generator is None:
        return F.dropout(x, p, True)
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return x * keep / (1.0 - p)
