"""trainer.corruption.keyed_rng: the counter-based keyed randomness, against a plain-Python
reference, pinned values, and uniformity / independence / no-twin checks.
"""

import math

import pytest
import torch

from trainer.corruption import keyed_rng as R
from trainer.corruption.sampling import keyed_sample_uniform

M32 = 0xFFFFFFFF


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


@pytest.mark.slow
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
