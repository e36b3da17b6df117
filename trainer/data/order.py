"""The offline data plan, shared by ``pipeline.generate`` and the online trainer modes: which
sequence sits at which position of each epoch, and each sample's training progress u.

    pos = permute(seq_ids, n, seed, epoch)        # seq_id -> position in epoch `epoch`
    ids = unpermute(positions, n, seed, epoch)    # position -> seq_id (the inverse)
    u = progress(epoch, positions, n, epochs, "sample")

Training order. Epoch e's order is ``position = permute(seq_id, N, seed, e)``: a balanced
Feistel network over [0, 2**(2h)) (the smallest even bit width covering N, at least 2 bits),
4 rounds whose round function is the 32-bit integer hash of (seed, epoch, round, half), made a
bijection of [0, N) by cycle-walking (re-apply while the value is >= N; the walk ends because
the network is a permutation of a set containing [0, N), and takes < 4 steps on average since
2**(2h) < 4N). Every seq_id's position is computed on its own: no global sort, no shuffle. The
inverse runs the rounds backwards with the same cycle-walking, so a trainer that needs the
sequence at a position (``fast-online``) computes it just as cheaply.

Progress. The sample at position p of epoch e is trained at global index g = e*N + p, so
u = g / (E*N) (granularity ``sample``); with granularity ``epoch`` every sample of epoch e uses
u = e / E (the epoch's start).
"""

from __future__ import annotations

import numpy as np

_M32 = np.uint64(0xFFFFFFFF)
FEISTEL_ROUNDS = 4



def _mix32(x: np.ndarray) -> np.ndarray:
    """lowbias32 (as trainer.corruption) on uint64 arrays holding 32-bit values."""
    x = x & _M32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x21F0AAAD)) & _M32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x735A2D97)) & _M32
    return x ^ (x >> np.uint64(15))


def _round_keys(seed: int, epoch: int) -> list[int]:
    keys, h = [], 0x6A09E667
    for v in (seed & (2**64 - 1), epoch & (2**64 - 1)):
        for half in (v & 0xFFFFFFFF, v >> 32):
            h = int(_mix32(np.array([h ^ half], np.uint64))[0])
    for r in range(FEISTEL_ROUNDS):
        keys.append(int(_mix32(np.array([h ^ (0x9E3779B9 * (r + 1) & 0xFFFFFFFF)],
                                        np.uint64))[0]))
    return keys


def _feistel(x: np.ndarray, half_bits: int, keys: list[int]) -> np.ndarray:
    mask = np.uint64((1 << half_bits) - 1)
    hb = np.uint64(half_bits)
    left, right = x >> hb, x & mask
    for k in keys:
        left, right = right, left ^ (_mix32(right ^ np.uint64(k)) & mask)
    return (left << hb) | right

def _feistel_inverse(x: np.ndarray, half_bits: int, keys: list[int]) -> np.ndarray:
    mask = np.uint64((1 << half_bits) - 1)
    hb = np.uint64(half_bits)
    left, right = x >> hb, x & mask
    for k in reversed(keys):
        left, right = right ^ (_mix32(left ^ np.uint64(k)) & mask), left
    return (left << hb) | right


def _walk(x: np.ndarray, n: int, seed: int, epoch: int, rounds) -> np.ndarray:
    x = np.asarray(x, np.int64)
    if n < 1 or (x.size and (x.min() < 0 or x.max() >= n)):
        raise ValueError(f"permute: values must lie in [0, {n})")
    if n > 1 << 62:
        raise ValueError(f"permute: n = {n} is too large")
    bits = max(2, int(n - 1).bit_length())
    bits += bits % 2
    keys = _round_keys(seed, epoch)
    x = x.astype(np.uint64)
    walking = np.ones(x.shape, bool)
    while walking.any():
        x[walking] = rounds(x[walking], bits // 2, keys)
        walking = x >= np.uint64(n)
    return x.astype(np.int64)


def permute(seq_ids: np.ndarray, n: int, seed: int, epoch: int) -> np.ndarray:
    """Positions (int64) of ``seq_ids`` in epoch ``epoch``'s order: a bijection of [0, n)
    keyed by (seed, epoch); each element is computed independently of the others."""
    return _walk(seq_ids, n, seed, epoch, _feistel)


def unpermute(positions: np.ndarray, n: int, seed: int, epoch: int) -> np.ndarray:
    """The seq_ids (int64) at ``positions`` of epoch ``epoch``: the inverse of ``permute``."""
    return _walk(positions, n, seed, epoch, _feistel_inverse)


def progress(epoch: int, positions: np.ndarray, n: int, epochs: int, granularity: str
             ) -> np.ndarray:
    """u in [0, 1) per sample (float64); see the module docstring."""
    positions = np.asarray(positions, np.float64)
    if granularity == "epoch":
        return np.full(positions.shape, epoch / epochs)
    return (epoch * n + positions) / (epochs * n)


def micro_batch_start(step: int, micro: int, rank: int, world: int, global_batch_size: int,
                      micro_batch_size: int) -> int:
    """The global index of the first sample of rank ``rank``'s micro-batch ``micro`` at
    ``step``: the global batch of step s is samples [s*G, (s+1)*G), and rank r of W takes
    micro-batch m as its slice [(m*W + r)*B, (m*W + r + 1)*B). Every world size thus trains
    on the same samples per step, and a resume at any step needs no replay."""
    return step * global_batch_size + (micro * world + rank) * micro_batch_size
