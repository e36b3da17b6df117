"""trainer.corruption.distributions: every replacement distribution is normalised with zero mass
on specials, and the smoothed one-hot, uniform, unigram and log-interpolation forms.
"""

import pytest
import torch

from tests.trainer.corruption.helpers import V
from trainer.corruption.distributions import (
    Replacement,
    log_interp,
    replacement_logprobs,
    smoothed_onehot_logprobs,
    uniform_logprobs,
    unigram_logprobs,
)
from trainer.tokenizer import MASK_ID, NUM_SPECIAL

# --- replacement distributions ---------------------------------------------------------------

def _check_distribution(lp: torch.Tensor) -> torch.Tensor:
    p = lp.double().exp()
    assert torch.allclose(p.sum(-1), torch.ones(p.shape[0], dtype=torch.float64), atol=1e-5)
    assert bool((p[:, :NUM_SPECIAL] == 0).all())
    return p


def test_distributions_normalised_zero_on_specials():
    g = torch.Generator().manual_seed(0)
    orig = torch.randint(NUM_SPECIAL, V, (7,), generator=g)
    logits = torch.randn(7, V, generator=g)
    logits[:, MASK_ID] = 50.0  # the aux model's favourite is a special: never kept
    counts = torch.randint(0, 1000, (V,), generator=g)
    for kind in ("aux", "uniform", "unigram", "smoothed_onehot", "uniform->smoothed_onehot",
                 "unigram->smoothed_onehot"):
        lp = replacement_logprobs(Replacement(kind, V, unigram_counts=counts), orig,
                                  weight=torch.full((7,), 0.3), aux_logits=logits)
        assert lp.shape == (7, V)
        p = _check_distribution(lp)
        assert bool((p[:, NUM_SPECIAL:] > 0).all())


def test_smoothed_onehot_and_uniform():
    orig = torch.tensor([5, 100, V - 1])
    p = smoothed_onehot_logprobs(orig, V, 0.35).double().exp()
    assert p[torch.arange(3), orig].tolist() == pytest.approx([0.35] * 3)
    rest = p.clone()
    rest[torch.arange(3), orig] = 0
    rest = rest[:, NUM_SPECIAL:]
    assert torch.allclose(rest[rest > 0], torch.tensor(0.65 / (V - NUM_SPECIAL - 1),
                                                       dtype=torch.float64))
    assert int((rest > 0).sum()) == 3 * (V - NUM_SPECIAL - 1)
    pu = _check_distribution(uniform_logprobs(2, V))
    assert torch.allclose(pu[:, NUM_SPECIAL:], torch.tensor(1 / (V - NUM_SPECIAL),
                                                            dtype=torch.float64))


def test_unigram_follows_counts_with_add_one():
    counts = torch.zeros(V, dtype=torch.long)
    counts[:NUM_SPECIAL] = 10**6  # [CLS]/[SEP] occur in every sequence: must not count
    counts[10], counts[11] = 3000, 1000
    p = _check_distribution(unigram_logprobs(counts))[0]
    total = 4000 + (V - NUM_SPECIAL)
    assert float(p[10]) == pytest.approx(3001 / total)
    assert float(p[11]) == pytest.approx(1001 / total)
    assert float(p[12]) == pytest.approx(1 / total)  # unseen: small, not zero
    with pytest.raises(ValueError, match="non-negative"):
        unigram_logprobs(-counts)


def test_log_interp_endpoints_and_midpoint():
    orig = torch.tensor([7, 8])
    counts = torch.arange(V)
    lp1 = unigram_logprobs(counts, 2)
    lp2 = smoothed_onehot_logprobs(orig, V, 0.35)
    assert torch.allclose(log_interp(lp1, lp2, 1.0), lp1, atol=1e-5)
    assert torch.allclose(log_interp(lp1, lp2, 0.0), lp2, atol=1e-5)
    mid = log_interp(lp1, lp2, torch.tensor([0.25, 1.0]))
    expect = (0.25 * lp1[0] + 0.75 * lp2[0]).log_softmax(-1)
    assert torch.allclose(mid[0], expect, atol=1e-5)
    assert torch.allclose(mid[1], lp1[1], atol=1e-5)
    # The named replacements are the same interpolation; alpha = 1 (a zero outside the
    # original) does not produce NaN at the p1 endpoint.
    rep = replacement_logprobs(Replacement("unigram->smoothed_onehot", V, unigram_counts=counts),
                               orig, weight=0.25)
    assert torch.allclose(rep[0], expect, atol=1e-5)
    delta = smoothed_onehot_logprobs(orig, V, 1.0)
    assert torch.allclose(log_interp(lp1, delta, 1.0), lp1, atol=1e-5)
    assert torch.allclose(log_interp(lp1, delta, 0.5).exp()[0, 7], torch.tensor(1.0))
