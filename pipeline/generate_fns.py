"""Per-element steps of ``generate``, as plain functions: the training order (a keyed
bijection over [0, N)), the layout of positions into inference batches and output parts, the
progress u of a sample, and loading the frozen auxiliary MLM from its checkpoint.

Training order. Epoch e's order is ``position = permute(seq_id, N, seed, e)``: a balanced
Feistel network over [0, 2**(2h)) (the smallest even bit width covering N, at least 2 bits),
4 rounds whose round function is the 32-bit integer hash of (seed, epoch, round, half), made a
bijection of [0, N) by cycle-walking (re-apply while the value is >= N; the walk ends because
the network is a permutation of a set containing [0, N), and takes < 4 steps on average since
2**(2h) < 4N). Every seq_id's position is computed on its own: no global sort, no shuffle.

Progress. The sample at position p of epoch e is trained at global index g = e*N + p, so
u = g / (E*N) (granularity ``sample``); with granularity ``epoch`` every sample of epoch e uses
u = e / E (the epoch's start).

Layout. Positions are cut into output parts of ``rows_per_part`` positions, and each part into
inference batches of ``batch_rows`` consecutive positions, so the content of every batch and
part is fixed by (epoch, position) alone, never by Beam's bundling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.errors import UserError

_M32 = np.uint64(0xFFFFFFFF)
FEISTEL_ROUNDS = 4


class GenerateError(UserError):
    """The RTD shards cannot be generated as asked."""


# ---------------------------------------------------------------------------------------------
# Training order
# ---------------------------------------------------------------------------------------------

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


def permute(seq_ids: np.ndarray, n: int, seed: int, epoch: int) -> np.ndarray:
    """Positions (int64) of ``seq_ids`` in epoch ``epoch``'s order: a bijection of [0, n)
    keyed by (seed, epoch); each element is computed independently of the others."""
    seq_ids = np.asarray(seq_ids, np.int64)
    if n < 1 or (seq_ids.size and (seq_ids.min() < 0 or seq_ids.max() >= n)):
        raise ValueError(f"permute: seq_ids must lie in [0, {n})")
    if n > 1 << 62:
        raise ValueError(f"permute: n = {n} is too large")
    bits = max(2, int(n - 1).bit_length())
    bits += bits % 2
    keys = _round_keys(seed, epoch)
    x = seq_ids.astype(np.uint64)
    walking = np.ones(x.shape, bool)
    while walking.any():
        x[walking] = _feistel(x[walking], bits // 2, keys)
        walking = x >= np.uint64(n)
    return x.astype(np.int64)


def progress(epoch: int, positions: np.ndarray, n: int, epochs: int, granularity: str
             ) -> np.ndarray:
    """u in [0, 1) per sample (float64); see the module docstring."""
    positions = np.asarray(positions, np.float64)
    if granularity == "epoch":
        return np.full(positions.shape, epoch / epochs)
    return (epoch * n + positions) / (epochs * n)


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Output part k holds positions [k * rows_per_part, (k + 1) * rows_per_part); inference
    batches are runs of ``batch_rows`` positions inside one part. The parts (hence the bytes)
    do not depend on batch_rows."""

    num_sequences: int
    batch_rows: int
    rows_per_part: int

    @classmethod
    def plan(cls, num_sequences: int, max_seq_len: int, batch_tokens: int,
             part_rows: int) -> Layout:
        return cls(num_sequences, max(1, batch_tokens // max_seq_len), part_rows)

    @property
    def num_parts(self) -> int:
        return -(-self.num_sequences // self.rows_per_part)

    def part_range(self, part: int) -> tuple[int, int]:
        return part * self.rows_per_part, min((part + 1) * self.rows_per_part,
                                              self.num_sequences)

    def batch_of(self, position: int) -> tuple[int, int]:
        """(part, batch within the part) of a position."""
        part, offset = divmod(position, self.rows_per_part)
        return part, offset // self.batch_rows
