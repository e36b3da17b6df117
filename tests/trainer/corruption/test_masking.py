"""trainer.corruption.masking: the selected share, the 80/10/10 and 85/15 splits, keyed and
batch / padding independent draws, and drop_token.
"""

import math
from decimal import Decimal

import pytest
import torch

from tests.trainer.corruption.helpers import V, cfg, make_batch, pad_to
from trainer.config.run import MLMConfig
from trainer.corruption.batch import KeyedBatch
from trainer.corruption.masking import drop_tokens, mask_positions
from trainer.tokenizer import CLS_ID, MASK_ID, NUM_SPECIAL, PAD_ID, SEP_ID, UNK_ID

ELECTRA = cfg(mask_prob=0.15, mask_token_prob=0.85)
BERT = MLMConfig(mask_prob=0.15, mask_token_prob=0.8, random_token_prob=0.1)

# --- masking ---------------------------------------------------------------------------------

def test_masking_selects_exact_share_of_normal_tokens_never_specials():
    ids, attn = make_batch(300, 64, seed=1)
    ids[0, 3] = UNK_ID
    ids[1, 2] = MASK_ID
    ids[2, :3] = torch.tensor([CLS_ID, SEP_ID, PAD_ID])  # no normal token at all
    ids[2, 3:] = PAD_ID
    masked, sel = mask_positions(KeyedBatch(ids, torch.arange(300), 0, 0), ELECTRA)
    assert not bool(sel[ids < NUM_SPECIAL].any())
    normal = (ids >= NUM_SPECIAL).sum(1)
    expect = [max(1, int(Decimal(n) * Decimal("0.15") + Decimal("0.5"))) if n else 0
              for n in normal.tolist()]
    assert sel.sum(1).tolist() == expect
    assert 50 in normal.tolist()  # 7.5 selections: a half, rounded up
    assert int(sel[2].sum()) == 0 and bool((sel.sum(1)[normal > 0] >= 1).all())
    rate = float(sel.sum() / normal.sum())
    assert 0.145 < rate < 0.16
    # Positions outside the selection are untouched.
    assert torch.equal(masked[~sel], ids[~sel])
    # An attention mask removes positions from the candidates.
    attn = attn.clone()
    attn[:, 10:] = False
    _, sel2 = mask_positions(KeyedBatch(ids, torch.arange(300), 0, 0, attention_mask=attn),
                             ELECTRA)
    assert not bool(sel2[:, 10:].any())


def test_masking_85_15_split():
    ids, _ = make_batch(400, 64, seed=2)
    masked, sel = mask_positions(KeyedBatch(ids, torch.arange(400), 3, 0), ELECTRA)
    n = int(sel.sum())
    is_mask = masked[sel] == MASK_ID
    kept = masked[sel] == ids[sel]
    assert bool((is_mask | kept).all())
    assert abs(float(is_mask.double().mean()) - 0.85) < 5 * math.sqrt(0.85 * 0.15 / n)


def test_masking_80_10_10_split():
    ids, _ = make_batch(600, 64, seed=3)
    masked, sel = mask_positions(KeyedBatch(ids, torch.arange(600), 3, 0), BERT, vocab_size=V)
    n = int(sel.sum())
    got, orig = masked[sel], ids[sel]
    is_mask = got == MASK_ID
    changed = ~is_mask & (got != orig)  # random tokens (1/295 of them equal the original)
    assert abs(float(is_mask.double().mean()) - 0.8) < 5 * math.sqrt(0.8 * 0.2 / n)
    p_changed = 0.1 * (1 - 1 / (V - NUM_SPECIAL))
    assert abs(float(changed.double().mean()) - p_changed) < 5 * math.sqrt(0.1 * 0.9 / n)
    assert bool((got[~is_mask] >= NUM_SPECIAL).all()) and bool((got < V).all())
    assert len(set(got[changed].tolist())) > 0.4 * int(changed.sum())  # spread, not one id
    rand = got[changed].double()  # uniform over [NUM_SPECIAL, V): mean 152, sd 85
    assert abs(float(rand.mean()) - (NUM_SPECIAL + V - 1) / 2) < 5 * 85 / math.sqrt(rand.numel())
    assert int(rand.max()) > V - 20
    with pytest.raises(ValueError, match="vocab_size"):
        mask_positions(KeyedBatch(ids, torch.arange(600), 3, 0), BERT)


def test_masking_is_batch_and_padding_independent_and_keyed():
    ids, _ = make_batch(6, 40, seed=4)
    seq = torch.tensor([10, 11, 12, 13, 14, 15])
    big_m, big_s = mask_positions(KeyedBatch(pad_to(ids, 64), seq, 5, 2), ELECTRA)
    for b in range(6):
        m, s = mask_positions(KeyedBatch(ids[b:b + 1], seq[b:b + 1], 5, 2), ELECTRA)
        assert torch.equal(m[0], big_m[b, :40]) and torch.equal(s[0], big_s[b, :40])
    assert not bool(big_s[:, 40:].any())
    again = mask_positions(KeyedBatch(pad_to(ids, 64), seq, 5, 2), ELECTRA)
    assert torch.equal(again[0], big_m) and torch.equal(again[1], big_s)
    for seed, epoch in ((6, 2), (5, 3)):
        _, other = mask_positions(KeyedBatch(pad_to(ids, 64), seq, seed, epoch), ELECTRA)
        assert not torch.equal(other, big_s)
        assert torch.equal(other.sum(1), big_s.sum(1))  # same counts, other positions


def test_drop_tokens():
    ids, _ = make_batch(200, 64, seed=5)
    seq = torch.arange(200)
    _, sel = mask_positions(KeyedBatch(ids, seq, 0, 0), ELECTRA)
    dropped = drop_tokens(ids, sel, seq, 0, 0, 0.4)
    eligible = (ids >= NUM_SPECIAL) & ~sel
    changed = dropped != ids
    assert bool((dropped[changed] == UNK_ID).all()) and not bool(changed[~eligible].any())
    n = int(eligible.sum())
    assert abs(float(changed[eligible].double().mean()) - 0.4) < 5 * math.sqrt(0.24 / n)
    assert torch.equal(drop_tokens(ids, sel, seq, 0, 0, 0.0), ids)
    per_row = drop_tokens(ids, sel, seq, 0, 0, torch.tensor([0.0, 1.0]).repeat(100))
    assert torch.equal(per_row[0::2], ids[0::2])
    assert bool((per_row[1::2][eligible[1::2]] == UNK_ID).all())
    # Keyed: row 7 alone gives the same result.
    alone = drop_tokens(ids[7:8], sel[7:8], seq[7:8], 0, 0, 0.4)
    assert torch.equal(alone[0], dropped[7])
