"""What the schedule value asks of an augmentation, for one batch (AugmentationPlan: a
temperature, an interpolation weight, a drop-token fraction or dropout rates), and the check
of the combinations of replacement, augmentation and schedule that make sense.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.config.sections import ConfigError, CorruptionConfig
from trainer.corruption.distributions import INTERP_REPLACEMENTS

DROPOUT_AUGMENTATIONS = ("dropout", "drop_attention")


def validate_corruption(cfg: CorruptionConfig) -> None:
    """Raise ConfigError for combinations that make no sense (called by corrupt_batch; call it
    at start-up to fail before any work)."""
    rep, aug = cfg.replacement, cfg.augmentation
    if rep != "aux" and aug != "temperature":
        hint = ("the log-interpolated replacements 'unigram->smoothed_onehot' / "
                "'uniform->smoothed_onehot' already mix with the unigram"
                if aug == "log_interp_unigram" else
                f"'{aug}' acts on the auxiliary model, which a model-free replacement never runs")
        raise ConfigError(f"corruption.augmentation: '{aug}' does not apply to the model-free "
                          f"corruption.replacement = '{rep}' ({hint}); use augmentation = "
                          "'temperature' or replacement = 'aux'")
    if cfg.schedule == "stepwise" and cfg.tau < 1:
        raise ConfigError(f"corruption.tau: the stepwise schedule uses tau as its number of "
                          f"steps, which must be >= 1, got {cfg.tau}")
    weight_like = rep in INTERP_REPLACEMENTS or aug == "log_interp_unigram"
    rate_like = aug in (*DROPOUT_AUGMENTATIONS, "drop_token")
    if (weight_like or rate_like) and cfg.schedule != "fixed":
        g_max = cfg.t0 - 1.0
        ok = 0.0 <= g_max < 1.0 if rate_like else 0.0 <= g_max <= 1.0
        what = (f"the initial {aug} rate" if rate_like else "the initial interpolation weight")
        if not ok:
            bound = "[1, 2)" if rate_like else "[1, 2]"
            raise ConfigError(f"corruption.t0: {what} is t0 - 1 = {g_max:g}, which must be a "
                              f"{'rate' if rate_like else 'weight'}; set t0 in {bound}, e.g. "
                              f"t0 = {1.2 if rate_like else 2.0} for "
                              f"{0.2 if rate_like else 1.0}")


@dataclass(frozen=True)
class AugmentationPlan:
    """What the schedule value asks for, for one batch of B samples."""

    temperature: torch.Tensor  # (B,) divide log-probs by this (1 = unchanged)
    weight: torch.Tensor  # (B,) weight of the easy side of a log-interpolation (0 = none)
    drop_token: torch.Tensor  # (B,) fraction of aux input tokens to replace by [UNK]
    hidden_dropout: float  # rates to set on the aux encoder (train mode); both 0 = eval mode
    attention_dropout: float
    used: torch.Tensor  # (B,) float32 schedule value actually used (the shards' column)


def plan_augmentation(cfg: CorruptionConfig, value: torch.Tensor) -> AugmentationPlan:
    """Map the schedule value T (B,) (float64 preferred) to the augmentation's parameters."""
    value = value.double()
    g = value - 1.0  # (B,) strength
    ones, zeros = torch.ones_like(value), torch.zeros_like(value)
    aug, rep = cfg.augmentation, cfg.replacement
    temperature, weight, drop, hidden, attention, used = ones, zeros, zeros, 0.0, 0.0, value
    if rep in INTERP_REPLACEMENTS or aug == "log_interp_unigram":
        weight = g
    elif aug == "temperature":
        temperature = value
    elif aug == "drop_token":
        drop = g
    elif aug in DROPOUT_AUGMENTATIONS:
        # One forward pass has one dropout rate: use the batch's mean strength.
        rate = float(g.mean()) if g.numel() else 0.0
        hidden, attention = (rate, 0.0) if aug == "dropout" else (0.0, rate)
        used = torch.full_like(value, 1.0 + rate)
    return AugmentationPlan(temperature, weight, drop, hidden, attention, used.float())
