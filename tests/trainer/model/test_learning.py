"""trainer.model learns: a tiny MLM overfits a batch and learns positions under every variant,
the relative bias scale is a reparametrisation, its prior prefers near keys, and fresh heads
start at the constant guess / the unigram baseline.
"""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from tests.trainer.model.helpers import TINY, VARIANTS, random_ids
from trainer.model.encoder import Encoder
from trainer.model.heads import Discriminator, MLMModel
from trainer.model.positions import relative_bias_prior, relative_position_bucket
from trainer.tokenizer import MASK_ID, NUM_SPECIAL, PAD_ID

pytestmark = pytest.mark.usefixtures("one_thread")

# --- learning --------------------------------------------------------------------------------

def _fit(model, inputs, mask, positions, targets, steps=50, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(inputs, mask, positions), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", VARIANTS)
def test_tiny_mlm_overfits_one_batch(name):
    """Each sequence repeats one token, padded to a random length: a masked token can only be
    recovered by attending to the sequence's other real tokens."""
    cfg = dataclasses.replace(VARIANTS[name], dropout=0.0, attention_dropout=0.0)
    g = torch.Generator().manual_seed(2)
    token = torch.randint(NUM_SPECIAL, cfg.vocab_size, (8, 1), generator=g)
    mask = torch.arange(24) < torch.randint(8, 25, (8, 1), generator=g)  # (B, T)
    ids = torch.where(mask, token, PAD_ID)
    positions = (torch.rand(8, 24, generator=g) < 0.25) & mask
    losses = _fit(MLMModel(cfg).train(), ids.masked_fill(positions, MASK_ID), mask, positions,
                  ids[positions])
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def _fit_positions(cfg):
    """ids[t] = start + t: the masked token is a neighbour's plus or minus one, so it needs
    positions. Returns the training losses."""
    cfg = dataclasses.replace(cfg, dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    span = cfg.vocab_size - NUM_SPECIAL
    ids = NUM_SPECIAL + (torch.randint(0, span, (8, 1), generator=g) + torch.arange(24)) % span
    positions = torch.rand(8, 24, generator=g) < 0.25
    return _fit(MLMModel(cfg).train(), ids.masked_fill(positions, MASK_ID), None, positions,
                ids[positions])


@pytest.mark.parametrize("name", VARIANTS)
def test_tiny_mlm_learns_positions(name):
    """Absolute positions, and relative ones with the scaled table (model.rel_bias_scale):
    both learn word order within 50 steps. Negative control: the plain T5 table (scale 1)
    stays far behind at the same budget (measured ~1.8 nats vs ~0.3 here)."""
    cfg = VARIANTS[name]
    if cfg.position == "relative":
        cfg = dataclasses.replace(cfg, rel_bias_scale=32.0)
    losses = _fit_positions(cfg)
    assert losses[-1] < 0.2 * losses[0], losses[::10]
    if cfg.position == "relative":
        plain = _fit_positions(dataclasses.replace(cfg, rel_bias_scale=1.0))
        assert plain[-1] > 0.3 * plain[0], plain[::10]


def test_relative_bias_scale_is_a_reparametrisation():
    """The same effective table gives the same outputs whatever the scale; only the stored
    parameter (and so Adam's effective step) changes."""
    a = Encoder(dataclasses.replace(TINY, dropout=0.0, attention_dropout=0.0)).eval()
    b = Encoder(dataclasses.replace(a.cfg, rel_bias_scale=16.0)).eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.rel_bias.div_(16.0)
    ids = random_ids(2, 12)
    torch.testing.assert_close(a(ids), b(ids))
    # A fresh encoder's effective table is the locality prior plus N(0, 0.02) noise.
    fresh = Encoder(dataclasses.replace(TINY, rel_bias_scale=16.0))
    prior = relative_bias_prior(TINY.rel_num_buckets, TINY.rel_max_distance, TINY.num_heads)
    assert (fresh.rel_bias * 16.0 - prior).abs().max() < 0.1


def test_relative_bias_prior_prefers_near_keys():
    prior = relative_bias_prior(32, 128, 4)  # (buckets, heads)
    assert prior.shape == (32, 4)
    assert torch.equal(prior[:, 0], torch.zeros(32))  # head 0: global
    d = torch.arange(0, 200)
    last = prior[relative_position_bucket(d, 32, 128), -1]  # by distance, to the right
    assert last[0] == 0 and (last[1:] <= last[:-1]).all() and last[1] < -1.0
    left = prior[relative_position_bucket(-d, 32, 128), -1]
    torch.testing.assert_close(left, last)  # symmetric


def _bce_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


@pytest.mark.parametrize("name", VARIANTS)
def test_fresh_discriminator_starts_at_the_constant_guess(name):
    """With the RTD bias at the prior log-odds, a fresh discriminator's loss on a batch
    replaced at that rate is the best constant guess's. Negative control: the zero bias
    (as before) starts ~0.28 nats above it, the gap the collapse closes."""
    p = 0.142
    g = torch.Generator().manual_seed(0)
    ids = random_ids(16, 32)
    labels = (torch.rand(16, 32, generator=g) < p).float()
    target = _bce_entropy(labels.mean().item())
    model = Discriminator(VARIANTS[name]).eval()
    zero_bias = F.binary_cross_entropy_with_logits(model(ids), labels).item()
    model.head.init_prior_(p)
    loss = F.binary_cross_entropy_with_logits(model(ids), labels).item()
    assert loss == pytest.approx(target, abs=1e-2)
    assert zero_bias > target + 0.2
    with pytest.raises(ValueError, match="replaced_fraction"):
        model.head.init_prior_(0.0)


def test_fresh_mlm_starts_at_the_unigram_baseline():
    """MLMHead.init_unigram_: a fresh model's cross-entropy on tokens drawn from the unigram
    is the unigram entropy (the baseline an aux must beat), not log V."""
    from trainer.corruption.distributions import unigram_logprobs

    cfg = dataclasses.replace(TINY, dropout=0.0, attention_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(cfg.vocab_size, dtype=torch.long)
    counts[NUM_SPECIAL:] = (1000 * torch.rand(cfg.vocab_size - NUM_SPECIAL, generator=g) ** 8
                            ).long()
    logp = unigram_logprobs(counts)[0]
    targets = torch.multinomial(logp.exp(), 4096, replacement=True, generator=g)
    entropy = -logp[targets].mean().item()
    model = MLMModel(cfg).eval()
    ids = torch.full((128, 32), MASK_ID)
    sel = torch.zeros(128, 32, dtype=torch.bool)
    sel.view(-1)[:4096] = True
    before = F.cross_entropy(model(ids, None, sel), targets).item()
    model.head.init_unigram_(logp)
    after = F.cross_entropy(model(ids, None, sel), targets).item()
    assert after == pytest.approx(entropy, abs=0.05)
    assert before > entropy + 0.5  # the uniform start
    assert torch.isfinite(model.head.bias).all()  # specials: finite, never predicted
