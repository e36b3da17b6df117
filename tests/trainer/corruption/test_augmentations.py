"""trainer.corruption.augmentations: the nonsense combinations refused, and the schedule value
mapped to each augmentation's parameters.
"""

import pytest
import torch

from tests.trainer.corruption.helpers import cfg
from trainer.config.sections import ConfigError
from trainer.corruption.augmentations import plan_augmentation, validate_corruption

# --- augmentations ---------------------------------------------------------------------------

def test_validation_rejects_nonsense_combinations():
    bad = [(dict(replacement="uniform", augmentation="dropout"), "corruption.augmentation"),
           (dict(replacement="smoothed_onehot", augmentation="log_interp_unigram"),
            "corruption.augmentation"),
           (dict(replacement="unigram", augmentation="drop_token"), "corruption.augmentation"),
           (dict(augmentation="dropout", t0=2.0), "corruption.t0"),
           (dict(augmentation="drop_token", t0=0.5), "corruption.t0"),
           (dict(augmentation="log_interp_unigram", t0=2.5), "corruption.t0"),
           (dict(replacement="uniform->smoothed_onehot", t0=3.0), "corruption.t0"),
           (dict(schedule="stepwise", tau=0.1), "corruption.tau")]
    for kw, key in bad:
        with pytest.raises(ConfigError, match=key):
            validate_corruption(cfg(**kw))
    for kw in (dict(replacement="uniform"), dict(replacement="unigram->smoothed_onehot"),
               dict(augmentation="log_interp_unigram"), dict(augmentation="dropout", t0=1.3),
               dict(augmentation="drop_token", schedule="fixed"), dict(t0=5.0),
               dict(schedule="stepwise", tau=4.0)):
        validate_corruption(cfg(**kw))


def test_plan_maps_schedule_value_to_each_augmentation():
    T = torch.tensor([1.5, 1.3], dtype=torch.float64)
    p = plan_augmentation(cfg(), T)
    assert p.temperature.tolist() == [1.5, 1.3] and p.weight.tolist() == [0, 0]
    assert p.used.tolist() == pytest.approx([1.5, 1.3])
    p = plan_augmentation(cfg(augmentation="log_interp_unigram"), T)
    assert p.weight.tolist() == pytest.approx([0.5, 0.3]) and p.temperature.tolist() == [1, 1]
    p = plan_augmentation(cfg(replacement="uniform->smoothed_onehot"), T)
    assert p.weight.tolist() == pytest.approx([0.5, 0.3]) and p.temperature.tolist() == [1, 1]
    p = plan_augmentation(cfg(augmentation="drop_token"), T)
    assert p.drop_token.tolist() == pytest.approx([0.5, 0.3])
    p = plan_augmentation(cfg(augmentation="dropout"), T)
    assert (p.hidden_dropout, p.attention_dropout) == (pytest.approx(0.4), 0.0)
    assert p.used.tolist() == pytest.approx([1.4, 1.4])
    p = plan_augmentation(cfg(augmentation="drop_attention"), T)
    assert (p.hidden_dropout, p.attention_dropout) == (0.0, pytest.approx(0.4))
