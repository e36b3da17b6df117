"""trainer.corruption: keyed randomness, masking, replacement distributions, schedules,
augmentations, keyed inverse-CDF and closed-form sampling, and the corrupt_batch entry point.

Statistical checks use fixed seeds (deterministic, so they cannot flake) and tolerances of
about 5 standard deviations or more (so a change of hash or seed would not break them either).
Each goodness-of-fit test has a power check: the same samples fail against the distribution at
a slightly wrong temperature (or weight), so the test can tell the two apart.
"""

import math
from decimal import Decimal

import pytest
import torch
import torch.nn.functional as F

from trainer.config.sections import ConfigError, CorruptionConfig
from trainer.corruption import corrupt as C
from trainer.corruption import keyed_rng as R
from trainer.corruption import sampling as S
from trainer.corruption.augmentations import plan_augmentation, validate_corruption
from trainer.corruption.corrupt import corrupt_batch
from trainer.corruption.distributions import (
    aux_logprobs,
    log_interp,
    replacement_logprobs,
    smoothed_onehot_logprobs,
    uniform_logprobs,
    unigram_logprobs,
)
from trainer.corruption.masking import drop_tokens, mask_positions
from trainer.corruption.sampling import keyed_sample_uniform, sample_model_free, sample_tokens
from trainer.corruption.schedules import SCHEDULES, schedule_strength, schedule_value
from trainer.model.encoder_config import EncoderConfig
from trainer.model.heads import MLMModel
from trainer.tokenizer import CLS_ID, MASK_ID, NUM_SPECIAL, PAD_ID, SEP_ID, UNK_ID

V = 300
AUX_CFG = EncoderConfig(vocab_size=V, num_layers=2, hidden_size=32, num_heads=4, ffn_size=64,
                        rel_num_buckets=8, rel_max_distance=16, max_seq_len=64)
M32 = 0xFFFFFFFF


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def aux() -> MLMModel:
    """A tiny aux MLM with confident, context-dependent predictions: an untrained model's
    logits are almost flat (N(0, 0.02) weights), which would make every sampling test blind
    to the logits."""
    torch.manual_seed(0)
    model = MLMModel(AUX_CFG)
    with torch.no_grad():
        model.encoder.word_emb.weight.mul_(50)  # tied: also scales the output projection
    return model.eval()


def make_batch(B: int, T: int, seed: int = 0, min_len: int = 4) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """Left-aligned [CLS] tokens [SEP] [PAD]...: ids (B, T) and attention mask (B, T)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((B, T), PAD_ID)
    for b in range(B):
        L = int(torch.randint(min_len, T + 1, (), generator=g))
        ids[b, :L] = torch.randint(NUM_SPECIAL, V, (L,), generator=g)
        ids[b, 0], ids[b, L - 1] = CLS_ID, SEP_ID
    return ids, ids != PAD_ID


def cfg(**kw) -> CorruptionConfig:
    return CorruptionConfig(**kw)


def pad_to(ids: torch.Tensor, T: int) -> torch.Tensor:
    return F.pad(ids, (0, T - ids.shape[1]), value=PAD_ID)


# --- keyed randomness ------------------------------------------------------------------------

def _ref_mix32(x: int) -> int:  # plain lowbias32 with true (Python big-int) products
    x ^= x >> 16
    x = (x * 0x21F0AAAD) & M32
    x ^= x >> 15
    x = (x * 0x735A2D97) & M32
    return x ^ (x >> 15)


def _ref_row_key(seed, epoch, seq_id, stream, sub, iv) -> int:
    h = iv
    for v in (seed, epoch):
        v &= (1 << 64) - 1
        h = _ref_mix32(h ^ (v & M32))
        h = _ref_mix32(h ^ (v >> 32))
    h = _ref_mix32(h ^ stream)
    s = seq_id & ((1 << 64) - 1)
    h = _ref_mix32(_ref_mix32(h ^ (s & M32)) ^ (s >> 32))
    return h if sub is None else _ref_mix32(h ^ sub)


def _ref_keyed_bits(seed, epoch, seq_id, stream, n, sub=None) -> list[int]:
    """The documented scheme in pure Python: two independent key chains over 32-bit halves
    (a 64-bit row key), two mixing rounds per counter."""
    k1, k2 = (_ref_row_key(seed, epoch, seq_id, stream, sub, iv) for iv in R._IV)
    return [_ref_mix32(_ref_mix32(k1 ^ c) ^ k2) for c in range(n)]


def test_mix32_equals_true_multiplication():
    g = torch.Generator().manual_seed(0)
    xs = [0, 1, 2, M32, M32 - 1, 1 << 31, (1 << 16) - 1, 1 << 16]
    xs += torch.randint(0, 1 << 32, (5000,), generator=g).tolist()
    expect = [_ref_mix32(x) for x in xs]
    assert R._mix32(torch.tensor(xs)).tolist() == expect
    assert [R._mix32(x) for x in xs] == expect  # the host path used for the stream key


def test_keyed_bits_match_reference_and_pinned_values():
    for seed, epoch, seq_id, stream, sub in [(0, 0, 0, 1, None), (12345, 7, 99, 4, 17),
                                             (-5, 2**40, 2**40 + 3, 2, None),
                                             (2**63 - 1, 1, -1, 5, 63)]:
        sub_t = None if sub is None else torch.tensor([sub])
        got = R.keyed_bits(seed, epoch, torch.tensor([seq_id]), stream, (7,), sub_ids=sub_t)
        assert got[0].tolist() == _ref_keyed_bits(seed, epoch, seq_id, stream, 7, sub)
    # Pinned: a change of the hash changes every shard ever generated; make it deliberate.
    assert R.keyed_bits(0, 0, torch.tensor([0, 1, 2**40, -1]), 1, (3,)).tolist() == [
        [3568880564, 1985031764, 1776111730], [1799040494, 2157640335, 3974111386],
        [1154768600, 3513048056, 2379104369], [2959453322, 3899198115, 380335765]]
    assert R.keyed_bits(12345, 7, torch.tensor([99]), 4, (2,),
                        sub_ids=torch.tensor([17])).tolist() == [[3292682275, 2390502349]]


def _draws_53(k1: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
    """The 53-bit sampling draw of row keys (k1, k2), as keyed_sample_uniform forms it."""
    bits = R.bits_from_keys(k1, k2, torch.arange(2))  # (N, 2)
    return (bits[:, 0] << 21) | (bits[:, 1] >> 11)


def test_no_twin_draws_across_a_million_sequences_at_paired_positions():
    """2**20 seq_ids x positions 0..7 (pairs p, p ^ d for every d < 8): every sampling draw
    is distinct. Negative control: a 32-bit row key (the second half derived from the first,
    as before) gives hundreds of twins, identical draws of different (seq_id, position)."""
    n, positions = 1 << 20, 8
    seq = torch.arange(n).repeat_interleave(positions)
    pos = torch.arange(positions).repeat(n)
    k1, k2 = R.row_keys(0, 0, seq, R.STREAM_SAMPLE, pos)
    draws = _draws_53(k1, k2)
    assert torch.equal(keyed_sample_uniform(0, 0, seq[:4096], pos[:4096]),
                       (draws[:4096].double() + 0.5) * 2.0**-53)
    assert len(torch.unique(draws)) == len(draws)
    weak = _draws_53(k1, R._mix32(k1 ^ 0x9E3779B9))
    assert len(weak) - len(torch.unique(weak)) > 100


def test_keyed_rows_do_not_depend_on_batch_or_length():
    ids = torch.tensor([5, 17, 2**33 + 1, -3, 0])
    subs = torch.tensor([0, 9, 4, 1, 2])
    full = R.keyed_uniform(3, 1, ids, R.STREAM_SELECT, (50,))  # (5, 50)
    full_sub = R.keyed_uniform(3, 1, ids, R.STREAM_SAMPLE, (40,), sub_ids=subs)
    for b in range(len(ids)):
        alone = R.keyed_uniform(3, 1, ids[b:b + 1], R.STREAM_SELECT, (20,))
        assert torch.equal(alone[0], full[b, :20])
        alone = R.keyed_uniform(3, 1, ids[b:b + 1], R.STREAM_SAMPLE, (40,), sub_ids=subs[b:b + 1])
        assert torch.equal(alone[0], full_sub[b])
    # The same seq_id twice in a batch gets the same row; the position key matters.
    twice = R.keyed_bits(3, 1, torch.tensor([7, 7]), R.STREAM_SAMPLE, (8,),
                         sub_ids=torch.tensor([1, 2]))
    assert not torch.equal(twice[0], twice[1])
    assert torch.equal(R.keyed_bits(3, 1, torch.tensor([7, 7]), 1, (8,))[0],
                       R.keyed_bits(3, 1, torch.tensor([7, 7]), 1, (8,))[1])


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def test_keyed_uniform_looks_uniform_and_independent():
    ids = torch.arange(2000)
    u = R.keyed_uniform(0, 0, ids, R.STREAM_SELECT, (64,))  # (2000, 64)
    n = u.numel()
    assert u.dtype == torch.float32 and bool((u > 0).all()) and bool((u < 1).all())
    assert abs(float(u.mean()) - 0.5) < 6 * math.sqrt(1 / 12 / n)
    assert abs(float(u.var()) - 1 / 12) < 0.003
    # Kolmogorov-Smirnov statistic against U(0, 1); 1.95 / sqrt(n) is the 0.1% critical value.
    s = u.flatten().double().sort().values
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert float(torch.maximum(grid - s, s - (grid - 1 / n)).max()) < 1.95 / math.sqrt(n)
    # Every bit is fair.
    bits = R.keyed_bits(0, 0, ids, R.STREAM_SELECT, (64,))
    freq = torch.stack([((bits >> i) & 1).double().mean() for i in range(32)])
    assert float((freq - 0.5).abs().max()) < 6 * 0.5 / math.sqrt(n)
    # No correlation between neighbouring seq_ids, positions, streams, epochs, seeds.
    lim = 6 / math.sqrt(n)
    assert abs(_corr(u[1:], u[:-1])) < lim
    assert abs(_corr(u[:, 1:], u[:, :-1])) < lim
    for other in (R.keyed_uniform(0, 0, ids, R.STREAM_MASK_KIND, (64,)),
                  R.keyed_uniform(0, 1, ids, R.STREAM_SELECT, (64,)),
                  R.keyed_uniform(1, 0, ids, R.STREAM_SELECT, (64,))):
        assert abs(_corr(u, other)) < lim
        assert float((u == other).double().mean()) < 0.001


def test_sample_uniforms_are_uniform_and_keyed():
    u = keyed_sample_uniform(0, 0, torch.arange(20_000), torch.arange(20_000) % 97)
    assert u.dtype == torch.float64 and bool(((u > 0) & (u < 1)).all())
    assert abs(float(u.mean()) - 0.5) < 6 * math.sqrt(1 / 12 / u.numel())
    assert abs(float(u.var()) - 1 / 12) < 0.003
    assert len(torch.unique(u)) == u.numel()  # 53 bits: no collisions at this size
    # The position is part of the key: the same sequence at another position draws anew.
    other = keyed_sample_uniform(0, 0, torch.arange(20_000), torch.arange(20_000) % 97 + 1)
    assert float((u == other).double().mean()) == 0.0


def test_sampling_at_a_large_vocabulary_is_exact():
    """128K entries (the paper's vocabulary), most of the mass on a few tokens, the rest
    spread thinly: the CDF's float64 accumulation keeps the frequencies exact, -inf entries are
    never drawn, and the tail is drawn at its total rate."""
    V_big = 128_000
    logits = torch.full((V_big,), -4.0)
    logits[:NUM_SPECIAL] = -math.inf
    logits[NUM_SPECIAL:NUM_SPECIAL + 4] = torch.tensor([8.0, 7.0, 6.0, 5.0])
    n = 20_000
    s = sample_tokens(logits[None].expand(n, -1), 3, 0, torch.arange(n),
                        torch.zeros(n, dtype=torch.long))
    p = logits.softmax(-1).double()
    assert int((s < NUM_SPECIAL).sum()) == 0
    binned = torch.where(s >= NUM_SPECIAL + 4, NUM_SPECIAL + 4, s)
    top = torch.zeros(NUM_SPECIAL + 5, dtype=torch.float64)
    top[:NUM_SPECIAL + 4] = p[:NUM_SPECIAL + 4]
    top[NUM_SPECIAL + 4] = p[NUM_SPECIAL + 4:].sum()
    assert _chi2(binned, top) < 30  # 4 dof: P(chi2 > 30) ~ 5e-6
    wrong = (logits / 1.1).softmax(-1).double()
    top_wrong = torch.cat([wrong[:NUM_SPECIAL + 4], wrong[NUM_SPECIAL + 4:].sum()[None]])
    assert _chi2(binned, top_wrong) > 100  # power: a 10% wrong temperature is detected


@pytest.mark.parametrize("vocab", [1009, 8000])  # a prime (padded last block) and 32 x 250
def test_two_level_cdf_equals_a_plain_float64_cdf(vocab):
    """The blocked CDF draws the token a plain float64 cumulative sum over the whole row
    draws at the same uniform (but at boundary near-ties, none in 3000 rows), never a zero-
    probability entry, even at the extreme uniforms."""
    g = torch.Generator().manual_seed(vocab)
    n = 3000
    logits = torch.randn(n, vocab, generator=g) * 2
    logits[:, :NUM_SPECIAL] = -math.inf
    logits[:, -1] = -math.inf  # the last real entry is impossible: the padding's neighbour
    seq, pos = torch.arange(n), torch.zeros(n, dtype=torch.long)
    t = 1.0 + torch.arange(n) % 3 / 2
    got = sample_tokens(logits, 4, 0, seq, pos, t)
    u = keyed_sample_uniform(4, 0, seq, pos)
    cdf = (logits / t[:, None]).double().softmax(-1).cumsum(-1)
    plain = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1)
    assert torch.equal(got, plain)
    for extreme in (2.0**-54, 1 - 2.0**-54):
        u_row = torch.full((8,), extreme, dtype=torch.float64)
        s = S._inverse_cdf_chunk(logits[:8], u_row, torch.ones(8))
        assert bool(((s >= NUM_SPECIAL) & (s < vocab - 1)).all()), (extreme, s)


# --- schedules -------------------------------------------------------------------------------

def test_schedules():
    assert schedule_value("exponential", 0.0, 2.0, 0.1) == pytest.approx(2.0)
    assert schedule_value("exponential", 1.0, 2.0, 0.1) == pytest.approx(1 + math.exp(-10))
    assert schedule_value("exponential", 0.1, 3.0, 0.1) == pytest.approx(1 + 2 / math.e)
    assert schedule_value("constant", 0.7, 2.5, 0.1) == 2.5
    assert schedule_value("fixed", 0.0, 2.0, 0.1) == 1.0
    assert schedule_value("polynomial", 0.5, 2.0, 2.0) == pytest.approx(1.25)
    assert schedule_value("polynomial", 1.0, 2.0, 2.0) == pytest.approx(1.0)
    steps = [schedule_value("stepwise", u, 2.0, 4.0) for u in (0, 0.2, 0.3, 0.6, 0.99, 1.0)]
    assert steps == pytest.approx([2.0, 2.0, 1.75, 1.5, 1.25, 1.0])
    assert schedule_strength("exponential", 0.0, 1.3, 0.1) == pytest.approx(0.3)
    # Vectorised per sample: the same values as the scalar path, monotone non-increasing.
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    for kind in SCHEDULES:
        vec = schedule_value(kind, u, 2.0, 4.0 if kind == "stepwise" else 0.1)
        assert vec.shape == (101,)
        assert vec.tolist() == pytest.approx(
            [schedule_value(kind, float(x), 2.0, 4.0 if kind == "stepwise" else 0.1)
             for x in u])
        assert bool((vec[1:] <= vec[:-1] + 1e-12).all())
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule_value("cosine", 0.0, 2.0, 0.1)


# --- masking ---------------------------------------------------------------------------------

def test_masking_selects_exact_share_of_normal_tokens_never_specials():
    ids, attn = make_batch(300, 64, seed=1)
    ids[0, 3] = UNK_ID
    ids[1, 2] = MASK_ID
    ids[2, :3] = torch.tensor([CLS_ID, SEP_ID, PAD_ID])  # no normal token at all
    ids[2, 3:] = PAD_ID
    masked, sel = mask_positions(ids, torch.arange(300), 0, 0, 0.15, 0.85)
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
    _, sel2 = mask_positions(ids, torch.arange(300), 0, 0, 0.15, 0.85, attention_mask=attn)
    assert not bool(sel2[:, 10:].any())


def test_masking_85_15_split():
    ids, _ = make_batch(400, 64, seed=2)
    masked, sel = mask_positions(ids, torch.arange(400), 3, 0, 0.15, 0.85)
    n = int(sel.sum())
    is_mask = masked[sel] == MASK_ID
    kept = masked[sel] == ids[sel]
    assert bool((is_mask | kept).all())
    assert abs(float(is_mask.double().mean()) - 0.85) < 5 * math.sqrt(0.85 * 0.15 / n)


def test_masking_80_10_10_split():
    ids, _ = make_batch(600, 64, seed=3)
    masked, sel = mask_positions(ids, torch.arange(600), 3, 0, 0.15, 0.8,
                                   random_token_prob=0.1, vocab_size=V)
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
        mask_positions(ids, torch.arange(600), 3, 0, 0.15, 0.8, random_token_prob=0.1)


def test_masking_is_batch_and_padding_independent_and_keyed():
    ids, _ = make_batch(6, 40, seed=4)
    seq = torch.tensor([10, 11, 12, 13, 14, 15])
    big_m, big_s = mask_positions(pad_to(ids, 64), seq, 5, 2, 0.15, 0.85)
    for b in range(6):
        m, s = mask_positions(ids[b:b + 1], seq[b:b + 1], 5, 2, 0.15, 0.85)
        assert torch.equal(m[0], big_m[b, :40]) and torch.equal(s[0], big_s[b, :40])
    assert not bool(big_s[:, 40:].any())
    again = mask_positions(pad_to(ids, 64), seq, 5, 2, 0.15, 0.85)
    assert torch.equal(again[0], big_m) and torch.equal(again[1], big_s)
    for seed, epoch in ((6, 2), (5, 3)):
        _, other = mask_positions(pad_to(ids, 64), seq, seed, epoch, 0.15, 0.85)
        assert not torch.equal(other, big_s)
        assert torch.equal(other.sum(1), big_s.sum(1))  # same counts, other positions


def test_drop_tokens():
    ids, _ = make_batch(200, 64, seed=5)
    seq = torch.arange(200)
    _, sel = mask_positions(ids, seq, 0, 0, 0.15, 0.85)
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
        lp = replacement_logprobs(kind, orig, V, weight=torch.full((7,), 0.3),
                                    unigram_counts=counts, aux_logits=logits)
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
    rep = replacement_logprobs("unigram->smoothed_onehot", orig, V, weight=0.25,
                                 unigram_counts=counts)
    assert torch.allclose(rep[0], expect, atol=1e-5)
    delta = smoothed_onehot_logprobs(orig, V, 1.0)
    assert torch.allclose(log_interp(lp1, delta, 1.0), lp1, atol=1e-5)
    assert torch.allclose(log_interp(lp1, delta, 0.5).exp()[0, 7], torch.tensor(1.0))


# --- Gumbel-max sampling ---------------------------------------------------------------------

def _chi2(samples: torch.Tensor, p: torch.Tensor) -> float:
    n = samples.numel()
    obs = torch.bincount(samples, minlength=p.numel()).double()
    exp = p.double() * n
    keep = exp > 0
    assert float(obs[~keep].sum()) == 0  # nothing where the probability is zero
    return float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_sample_frequencies_match_softmax(temperature):
    logits = torch.tensor([0.0] * NUM_SPECIAL + [2.0, 1.0, 0.5, 0.0, -1.0, -2.0, 1.5, -0.5])
    logp = aux_logprobs(logits[None]).expand(40_000, -1)
    n = logp.shape[0]
    pos = torch.arange(n) % 37
    s = sample_tokens(logp, 11, 0, torch.arange(n) // 37, pos, temperature)
    p = (aux_logprobs(logits[None])[0] / temperature).softmax(-1)
    # 7 degrees of freedom: P(chi2 > 35) ~ 1e-5.
    assert _chi2(s, p) < 35
    wrong = (aux_logprobs(logits[None])[0] / (temperature * 1.1)).softmax(-1)
    assert _chi2(s, wrong) > 70  # power: 10% off in temperature fails the test twice over
    # Batch independence of the sample itself.
    assert torch.equal(sample_tokens(logp[123:124], 11, 0, torch.tensor([123 // 37]),
                                      pos[123:124], temperature), s[123:124])


def test_unigram_samples_follow_counts():
    counts = torch.zeros(V, dtype=torch.long)
    counts[NUM_SPECIAL:NUM_SPECIAL + 10] = torch.tensor([5, 10, 20, 40, 80, 160, 320, 640,
                                                         1280, 2560]) * 100
    lp = unigram_logprobs(counts, 30_000)
    s = sample_tokens(lp, 0, 0, torch.arange(30_000), torch.zeros(30_000, dtype=torch.long))
    p = lp[0].double().exp()
    top = torch.zeros(V + 1, dtype=torch.float64)  # the 10 counted tokens + "any other"
    top[:V] = p
    top[NUM_SPECIAL + 10:V] = 0
    top[V] = p[NUM_SPECIAL + 10:].sum()
    binned = torch.where(s >= NUM_SPECIAL + 10, V, s)
    assert _chi2(binned, top) < 40  # 10 dof: P(chi2 > 40) ~ 2e-5
    hot = sample_tokens(lp, 0, 0, torch.arange(30_000), torch.zeros(30_000, dtype=torch.long),
                          1.1)  # power: the same draws at a 10% higher temperature
    assert _chi2(torch.where(hot >= NUM_SPECIAL + 10, V, hot), top) > 200


def test_temperature_moves_samples_away_from_the_mode():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 50, generator=g) * 3
    logp = aux_logprobs(logits)
    mode = logp.argmax(-1)
    seq, pos = torch.arange(4000), torch.zeros(4000, dtype=torch.long)
    hits, surprisals = [], []
    for t in (1.0, 2.0, 4.0):
        s = sample_tokens(logp, 0, 0, seq, pos, t)
        hits.append(float((s == mode).double().mean()))
        # Mean -log p(sample) under the T = 1 distribution: at T = 1 it is the entropy.
        surprisals.append(float(-logp[torch.arange(4000), s].mean()))
    assert hits[0] > hits[1] + 0.1 > hits[2] + 0.2
    entropy = float(-(logp.exp() * logp.clamp(min=-1e9)).sum(-1).mean())
    assert surprisals[0] == pytest.approx(entropy, rel=0.05)
    assert surprisals[0] + 0.3 < surprisals[1] < surprisals[2] - 0.3


# --- closed-form model-free samplers ----------------------------------------------------------

MODEL_FREE_CASES = {  # replacement, temperature, weight, and a wrong (temperature, weight)
    "uniform": ("uniform", 1.7, 0.0, None),
    "smoothed_onehot": ("smoothed_onehot", 1.0, 0.0, (1.15, 0.0)),
    "smoothed_onehot-T2": ("smoothed_onehot", 2.0, 0.0, (2.3, 0.0)),
    "uniform->smoothed_onehot": ("uniform->smoothed_onehot", 1.0, 0.3, (1.0, 0.36)),
    "unigram": ("unigram", 1.0, 0.0, (1.1, 0.0)),
    "unigram-T1.5": ("unigram", 1.5, 0.0, (1.65, 0.0)),
    "unigram->smoothed_onehot": ("unigram->smoothed_onehot", 1.0, 0.5, (1.0, 0.56)),
    "unigram->smoothed_onehot-T": ("unigram->smoothed_onehot", 1.3, 0.8, (1.45, 0.8)),
}


def _zipf_counts() -> torch.Tensor:
    counts = torch.zeros(V, dtype=torch.long)
    counts[NUM_SPECIAL:] = (20_000 / torch.arange(1, V - NUM_SPECIAL + 1)).long()
    counts[:NUM_SPECIAL] = 10**6  # [CLS] / [SEP] counts: never a replacement
    return counts


@pytest.mark.parametrize("case", MODEL_FREE_CASES)
def test_model_free_samplers_draw_exactly_the_dense_distribution(case):
    """The closed forms against their dense definition (replacement_logprobs / T), binned
    into the 12 likeliest tokens (the original among them) + the rest, 60K draws."""
    kind, t, w, wrong = MODEL_FREE_CASES[case]
    n, o = 60_000, NUM_SPECIAL + 3  # a frequent original: keeping it must be exact too
    original = torch.full((n,), o)
    seq, pos = torch.arange(n) // 50, torch.arange(n) % 50
    u = keyed_sample_uniform(5, 1, seq, pos)
    counts = _zipf_counts()

    def dense(t, w) -> torch.Tensor:
        lp = replacement_logprobs(kind, original[:1], V, weight=w, alpha=0.35,
                                    unigram_counts=counts)[0]
        return (lp / t).softmax(-1).double()

    s = sample_model_free(kind, u, original, V, torch.full((n,), t), torch.full((n,), w),
                            0.35, counts)
    assert int((s < NUM_SPECIAL).sum()) == 0
    p = dense(t, w)
    top = p.argsort(descending=True)[:12]

    def binned_p(p):
        return torch.cat([p[top], (1 - p[top].sum()).clamp(min=0)[None]])

    binned = torch.full_like(s, len(top))
    for i, tok in enumerate(top.tolist()):
        binned[s == tok] = i
    assert _chi2(binned, binned_p(p)) < 45  # 12 dof: P(chi2 > 45) ~ 1e-5
    if wrong is not None:
        assert _chi2(binned, binned_p(dense(*wrong))) > 120


def test_model_free_samplers_are_per_row():
    """Rows with different temperatures and weights in one call draw what each draws alone
    (the unigram family shares one CDF per distinct exponent); and the O(1) closed forms agree
    with inverse-CDF sampling of the dense distribution at the very same uniform, except
    where rounding puts a uniform on a boundary."""
    counts = _zipf_counts()
    n = 64
    original = NUM_SPECIAL + torch.arange(n) % 20
    seq, pos = torch.arange(n), torch.arange(n) % 7
    u = keyed_sample_uniform(9, 2, seq, pos)
    t = 1.0 + torch.arange(n) % 5 / 4
    w = torch.arange(n) % 3 / 2
    for kind in ("unigram", "unigram->smoothed_onehot", "smoothed_onehot",
                 "uniform->smoothed_onehot", "uniform"):
        both = sample_model_free(kind, u, original, V, t, w, 0.35, counts)
        alone = torch.cat([sample_model_free(kind, u[i:i + 1], original[i:i + 1], V,
                                               t[i:i + 1], w[i:i + 1], 0.35, counts)
                           for i in range(n)])
        assert torch.equal(both, alone), kind
        lp = replacement_logprobs(kind, original, V, weight=w, alpha=0.35,
                                    unigram_counts=counts)
        assert torch.equal(both, sample_tokens(lp, 9, 2, seq, pos, t)), kind


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


# --- corrupt_batch ---------------------------------------------------------------------------

CASES = {
    "aux-temperature": dict(),
    "aux-drop_token": dict(augmentation="drop_token", t0=1.5),
    "aux-log_interp_unigram": dict(augmentation="log_interp_unigram"),
    "unigram->smoothed_onehot": dict(replacement="unigram->smoothed_onehot"),
    "uniform-temperature": dict(replacement="uniform"),
}


@pytest.mark.parametrize("case", CASES)
def test_corrupt_batch_is_batch_and_padding_independent(aux, case):
    # The aux logits of a row alone and inside a longer, bigger batch differ in the last ulp
    # (other matmul / softmax shapes), so a sample could only flip at a float near-tie of the
    # two best candidates (~1e-6 per position); the masks and the noise are exact (tested
    # above), and with fixed inputs this comparison is deterministic.
    c = cfg(**CASES[case])
    ids, attn = make_batch(5, 40, seed=6, min_len=10)
    seq = torch.tensor([3, 1, 4, 1_000_000, 9])
    u = torch.tensor([0.0, 0.01, 0.05, 0.3, 1.0])
    counts = torch.arange(V) * 7 % 101
    big = corrupt_batch(pad_to(ids, 56), pad_to(attn, 56).bool(), seq, 2, u, c, 42, aux=aux,
                          unigram_counts=counts)
    assert not bool(big.selected[:, 40:].any()) and not bool(big.labels[:, 40:].any())
    for b in range(5):
        one = corrupt_batch(ids[b:b + 1], attn[b:b + 1], seq[b:b + 1], 2, u[b:b + 1], c, 42,
                              aux=aux, unigram_counts=counts)
        assert torch.equal(one.input_ids[0], big.input_ids[b, :40])
        assert torch.equal(one.labels[0], big.labels[b, :40])
        assert torch.equal(one.selected[0], big.selected[b, :40])
        assert torch.equal(one.temperature, big.temperature[b:b + 1])
    assert big.temperature.tolist() == pytest.approx(
        schedule_value(c.schedule, u.double(), c.t0, c.tau).tolist())
    assert int(big.labels.sum()) > 0


def test_corrupt_batch_labels_exactly_where_changed():
    ids, attn = make_batch(200, 64, seed=7)
    out = corrupt_batch(ids, attn, torch.arange(200), 0, 1.0,
                          cfg(replacement="smoothed_onehot", schedule="fixed"), 0,
                          vocab_size=V)
    sel = out.selected
    assert out.labels.dtype == torch.uint8
    assert torch.equal(out.labels.bool(), (out.input_ids != ids) & sel)
    assert torch.equal(out.input_ids[~sel], ids[~sel])
    assert bool((out.input_ids[sel] >= NUM_SPECIAL).all())  # never a special, never [MASK]
    n = int(sel.sum())
    replaced = float(out.labels[sel].double().mean())
    assert abs(replaced - 0.65) < 5 * math.sqrt(0.65 * 0.35 / n)  # alpha kept the original


def test_corrupt_batch_aux_never_samples_specials_and_is_deterministic(aux):
    ids, attn = make_batch(16, 48, seed=8)
    seq = torch.arange(16)
    with torch.no_grad():
        saved = aux.head.bias[MASK_ID].item()
        aux.head.bias[MASK_ID] = 100.0  # the aux model now wants [MASK] everywhere
    try:
        a = corrupt_batch(ids, attn, seq, 0, 0.0, cfg(), 1, aux=aux)
        b = corrupt_batch(ids, attn, seq, 0, 0.0, cfg(), 1, aux=aux)
    finally:
        with torch.no_grad():
            aux.head.bias[MASK_ID] = saved
    assert bool((a.input_ids[a.selected] >= NUM_SPECIAL).all())
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    c = corrupt_batch(ids, attn, seq, 0, 0.0, cfg(), 2, aux=aux)
    d = corrupt_batch(ids, attn, seq, 1, 0.0, cfg(), 1, aux=aux)
    assert not torch.equal(c.selected, a.selected) and not torch.equal(d.selected, a.selected)


def test_corrupt_batch_temperature_flattens_aux_samples(aux):
    ids, attn = make_batch(64, 48, seed=9)
    seq = torch.arange(64)
    hits = []
    for t0 in (1.0, 3.0):  # constant schedule: T = t0 for every sample
        out = corrupt_batch(ids, attn, seq, 0, 0.0, cfg(schedule="constant", t0=t0), 0,
                              aux=aux)
        masked, sel = mask_positions(ids, seq, 0, 0, 0.15, 0.85)
        with torch.no_grad():
            mode = aux_logprobs(aux(masked, attn, positions_mask=sel)).argmax(-1)
        hits.append(float((out.input_ids[sel] == mode).double().mean()))
        assert out.temperature.tolist() == [t0] * 64
    assert hits[0] > hits[1] + 0.15


def test_corrupt_batch_log_interp_unigram_starts_at_unigram(aux):
    ids, attn = make_batch(32, 48, seed=10)
    counts = torch.zeros(V, dtype=torch.long)
    counts[[20, 30, 40]] = 10**7
    out = corrupt_batch(ids, attn, torch.arange(32), 0, 0.0,
                          cfg(augmentation="log_interp_unigram", schedule="constant", t0=2.0),
                          0, aux=aux, unigram_counts=counts.numpy())  # as CorpusShards gives
    got = out.input_ids[out.selected]
    assert float(torch.isin(got, torch.tensor([20, 30, 40])).double().mean()) > 0.99
    late = corrupt_batch(ids, attn, torch.arange(32), 0, 1.0,
                           cfg(augmentation="log_interp_unigram", schedule="polynomial",
                               tau=1.0), 0, aux=aux, unigram_counts=counts)
    assert late.temperature.tolist() == [1.0] * 32  # g = 0: the aux model alone
    assert float(torch.isin(late.input_ids[late.selected],
                            torch.tensor([20, 30, 40])).double().mean()) < 0.1


def test_corrupt_batch_dropout_restores_model_and_rng(aux):
    ids, attn = make_batch(16, 48, seed=11)
    seq = torch.arange(16)
    c = cfg(augmentation="dropout", schedule="constant", t0=1.5)
    rng = torch.get_rng_state()
    a = corrupt_batch(ids, attn, seq, 0, 0.0, c, 0, aux=aux)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG stream is untouched
    assert not aux.training
    assert (aux.encoder.dropout, aux.encoder.attention_dropout) == (AUX_CFG.dropout,
                                                                    AUX_CFG.attention_dropout)
    b = corrupt_batch(ids, attn, seq, 0, 0.0, c, 0, aux=aux)
    assert torch.equal(a.input_ids, b.input_ids)  # same batch: reproducible
    assert a.temperature.tolist() == [1.5] * 16
    plain = corrupt_batch(ids, attn, seq, 0, 0.0, cfg(schedule="fixed"), 0, aux=aux)
    assert torch.equal(plain.selected, a.selected)
    assert not torch.equal(plain.input_ids, a.input_ids)  # dropout changed the aux model


@pytest.mark.parametrize("augmentation", ["dropout", "drop_attention"])
def test_dropout_augmentations_are_thread_safe(aux, augmentation):
    """Two threads corrupting different batches with one shared aux model (as RunInference
    threads do) get exactly the bytes each gets alone: no shared model state, no global RNG."""
    import threading

    c = cfg(augmentation=augmentation, schedule="constant", t0=1.5)
    jobs = [make_batch(16, 48, seed=20 + i) + (torch.arange(16) + 100 * i,) for i in range(2)]
    alone = [corrupt_batch(ids, attn, seq, 0, 0.0, c, 0, aux=aux).input_ids
             for ids, attn, seq in jobs]
    got: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    start = threading.Barrier(2)

    def work(i):
        start.wait()
        for _ in range(5):
            ids, attn, seq = jobs[i]
            got[i].append(corrupt_batch(ids, attn, seq, 0, 0.0, c, 0, aux=aux).input_ids)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for i in range(2):
        assert len(got[i]) == 5 and all(torch.equal(x, alone[i]) for x in got[i])
    assert not torch.equal(alone[0], corrupt_batch(*jobs[0], 0, 0.0, cfg(schedule="fixed"),
                                                     0, aux=aux).input_ids)


def test_corrupt_batch_drop_token_changes_the_aux_input(aux):
    ids, attn = make_batch(16, 48, seed=14)
    seq = torch.arange(16)
    plain = corrupt_batch(ids, attn, seq, 0, 0.0, cfg(schedule="fixed"), 0, aux=aux)
    dropped = corrupt_batch(ids, attn, seq, 0, 0.0,
                              cfg(augmentation="drop_token", schedule="constant", t0=1.9), 0,
                              aux=aux)
    none = corrupt_batch(ids, attn, seq, 0, 0.0,
                           cfg(augmentation="drop_token", schedule="fixed"), 0, aux=aux)
    assert torch.equal(plain.selected, dropped.selected)
    assert torch.equal(plain.input_ids, none.input_ids)  # rate 0: exactly the plain aux
    assert not torch.equal(plain.input_ids, dropped.input_ids)
    assert bool((dropped.input_ids[~dropped.selected] == ids[~dropped.selected]).all())


def test_corrupt_batch_outputs_are_trainable_tensors(aux):
    ids, attn = make_batch(4, 32, seed=12)
    out = corrupt_batch(ids, attn, torch.arange(4), 0, 0.5, cfg(), 0, aux=aux)
    assert not out.input_ids.is_inference() and not out.selected.is_inference()
    emb = torch.nn.Embedding(V, 8)
    emb(out.input_ids).sum().backward()  # an inference tensor would refuse to be saved
    assert emb.weight.grad is not None


def test_corrupt_batch_argument_errors(aux):
    ids, attn = make_batch(2, 16)
    seq = torch.arange(2)
    with pytest.raises(ValueError, match="auxiliary model"):
        corrupt_batch(ids, attn, seq, 0, 0.0, cfg(), 0)
    with pytest.raises(ValueError, match="unigram"):
        corrupt_batch(ids, attn, seq, 0, 0.0, cfg(replacement="unigram"), 0, vocab_size=V)
    with pytest.raises(ValueError, match="vocabulary size"):
        corrupt_batch(ids, attn, seq, 0, 0.0, cfg(replacement="uniform"), 0)
    with pytest.raises(ValueError, match="agree"):
        corrupt_batch(ids, attn, seq, 0, 0.0, cfg(replacement="unigram"), 0,
                        unigram_counts=torch.ones(V + 1, dtype=torch.long), aux=aux)
    with pytest.raises(ConfigError, match="corruption.augmentation"):
        corrupt_batch(ids, attn, seq, 0, 0.0,
                        cfg(replacement="uniform", augmentation="dropout"), 0, vocab_size=V)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree(aux):
    ids, attn = make_batch(32, 64, seed=13)
    seq = torch.arange(32) * 1_000_003
    cuda = torch.device("cuda")
    assert torch.equal(R.keyed_bits(7, 3, seq, 1, (64,)),
                       R.keyed_bits(7, 3, seq.to(cuda), 1, (64,)).cpu())
    for a, b in zip(mask_positions(ids, seq, 7, 3, 0.15, 0.8, 0.1, V),
                    mask_positions(ids.to(cuda), seq.to(cuda), 7, 3, 0.15, 0.8, 0.1, V)):
        assert torch.equal(a, b.cpu())
    c = cfg(replacement="unigram->smoothed_onehot")
    counts = torch.arange(V)
    host = corrupt_batch(ids, attn, seq, 0, 0.2, c, 7, unigram_counts=counts)
    dev = corrupt_batch(ids.to(cuda), attn.to(cuda), seq.to(cuda), 0, 0.2, c, 7,
                          unigram_counts=counts)
    # Samples may differ only at float near-ties of log / log1p between the devices.
    assert float((host.input_ids != dev.input_ids.cpu()).double().mean()) < 1e-3


# --- row chunks ------------------------------------------------------------------------------

def test_sample_tokens_in_many_chunks_equals_one_chunk(monkeypatch):
    g = torch.Generator().manual_seed(11)
    logp = torch.randn(97, V, generator=g) * 3
    logp[:, :NUM_SPECIAL] = -math.inf
    seq, pos = torch.arange(97) * 13, torch.arange(97) % 40
    temp = torch.linspace(0.2, 3.0, 97)
    assert S._CHUNK_ELEMENTS // V >= 97  # the default: one chunk
    whole = sample_tokens(logp, 5, 1, seq, pos, temp)
    chunks = []
    monkeypatch.setattr(S, "_row_chunks", lambda n, v, d, f=S._row_chunks: chunks.append(
        list(f(n, v, d))) or iter(chunks[-1]))
    monkeypatch.setattr(S, "_CHUNK_ELEMENTS", 3 * V + 1)  # 3 rows per chunk, the last one 1
    split = sample_tokens(logp, 5, 1, seq, pos, temp)
    assert len(chunks[-1]) == 33
    assert torch.equal(split, whole)
    assert len(set(whole.tolist())) > 20  # not a degenerate draw


def test_corrupt_batch_with_aux_in_many_chunks_equals_one_chunk(aux, monkeypatch):
    ids, attn = make_batch(12, 48, seed=12)
    seq = torch.arange(12) * 7
    u = torch.linspace(0.0, 1.0, 12)
    for c in (cfg(), cfg(augmentation="log_interp_unigram")):
        counts = torch.arange(V) * 5 % 89 + 1
        whole = corrupt_batch(ids, attn, seq, 1, u, c, 3, aux=aux, unigram_counts=counts)
        n = int(whole.selected.sum())
        assert S._CHUNK_ELEMENTS // V >= n  # the default: one chunk
        with monkeypatch.context() as m:
            calls = []
            m.setattr(C, "_row_chunks", lambda n, v, d, f=C._row_chunks: calls.append(
                list(f(n, v, d))) or iter(calls[-1]))
            m.setattr(S, "_CHUNK_ELEMENTS", 4 * V)  # 4 rows per chunk
            split = corrupt_batch(ids, attn, seq, 1, u, c, 3, aux=aux, unigram_counts=counts)
        assert len(calls[0]) == -(-n // 4) > 5  # the aux head ran in many chunks
        assert torch.equal(split.input_ids, whole.input_ids)
        assert torch.equal(split.labels, whole.labels)
        assert int(whole.labels.sum()) > 0


def test_row_chunks_are_larger_on_a_gpu_and_cover_every_row_once():
    """At V = 128K a CPU chunk is 8 rows (cache-sized temporaries); a GPU chunk must be far
    larger or ~1,200 tiny chunks per batch make sampling launch-bound."""
    n, vocab = 10_000, 128_000
    for dev, rows in ((torch.device("cpu"), 8), (torch.device("cuda"), 131)):
        chunks = list(S._row_chunks(n, vocab, dev))
        assert chunks[0] == slice(0, rows)
        assert torch.equal(torch.cat([torch.arange(n)[c] for c in chunks]), torch.arange(n))
