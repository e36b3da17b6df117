"""Counter-based randomness for corruption: every random decision is a pure function of integer
counters, so it is the same on any batch, worker, retry or device.

    bits = keyed_bits(seed, epoch, seq_ids, STREAM_SELECT, (T,))       # (B, T) int64 in [0, 2**32)
    u = keyed_uniform(seed, epoch, seq_ids, STREAM_SELECT, (T,))       # (B, T) float in [0, 1)

The counters (seed, epoch, seq_id, stream[, position]) are absorbed by two independent chains
of a 32-bit integer hash (``_mix32``, Wellons' "lowbias32" finaliser) into a 64-bit row key
(k1, k2); each draw mixes its counter with k1, then k2. One chain alone would be a 32-bit key:
among 2**20 seq_ids some 63K pairs would share it at paired positions (p, p ^ d) and draw
identical noise (the "twins" of sequences at 256M scale); with two chains a pair shares a key
with probability 2**-64 (tests/trainer/corruption/test_keyed_rng.py looks for twins). There
is no generator state, so a sequence's corruption does not depend on the batch it is in, its
row, the padded length, the worker, a Beam retry, or the device. The hash uses only int64 xor,
shifts, masks, additions and multiplications whose exact products stay below 2**63 (32-bit x
16-bit limbs), on values kept in [0, 2**32): no signed overflow, no arithmetic-shift surprise,
no uint64, so CPU and CUDA (eager or compiled) compute identical bits. Selection,
[MASK]/keep/random decisions, random token ids and token dropping use only these integers
(thresholds are integers too): they are bit-exact everywhere. A replacement sample inverts
the CDF of softmax(logp / T) at one keyed uniform; ``exp`` may differ in the last ulp across
libm/SLEEF/CUDA, and so do auxiliary-model logits across devices and matmul shapes, so a
*sample* can differ only where the uniform falls within rounding of a CDF boundary (rare;
never systematic). Exception: the dropout augmentations' masks come from a
torch generator made for the call (the model offers no keyed dropout), seeded from the batch's
keys: reproducible for the same batch only.
"""

from __future__ import annotations

import math

import torch

# Independent random streams: one per kind of decision, so e.g. changing mask_token_prob does
# not move which positions are selected.
STREAM_SELECT = 1  # which positions are selected
STREAM_MASK_KIND = 2  # selected -> [MASK] / random token / keep
STREAM_RANDOM_TOKEN = 3  # the id of a random replacement token (80/10/10 recipe)
STREAM_SAMPLE = 4  # the inverse-CDF uniform of a replacement, counters (position, word)
STREAM_DROP_TOKEN = 5  # aux input tokens replaced by [UNK] (drop_token augmentation)
STREAM_DROPOUT = 6  # seed of the aux model's dropout masks (dropout augmentations)

_M32 = 0xFFFFFFFF
# Starts of the two key chains (fraction bits of sqrt(2) and sqrt(3)): any two distinct
# values give two independent 32-bit hashes of the same counters.
_IV = (0x6A09E667, 0xBB67AE85)



def _mul32(x, c: int):
    """(x * c) mod 2**32 for x in [0, 2**32) (int64 tensor or Python int) and a constant c.
    c is split into 16-bit halves so every partial product stays below 2**48: int64 never
    overflows, on any device."""
    lo = x * (c & 0xFFFF)  # < 2**48
    hi = (x * (c >> 16)) & 0xFFFF  # only its low 16 bits survive the shift below
    return (lo + (hi << 16)) & _M32


def _mix32(x):
    """lowbias32 (C. Wellons, hash-prospector): a bijection of [0, 2**32) with near-ideal
    avalanche. Python ints, or int64 tensors (values are non-negative, so >> is a logical
    shift)."""
    if isinstance(x, torch.Tensor):
        return _mix32_(x.clone())
    x = x ^ (x >> 16)
    x = _mul32(x, 0x21F0AAAD)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x735A2D97)
    return x ^ (x >> 15)


def _mul32_(x: torch.Tensor, c: int) -> torch.Tensor:
    hi = x * (c >> 16)
    hi.bitwise_and_(0xFFFF).bitwise_left_shift_(16)
    return x.mul_(c & 0xFFFF).add_(hi).bitwise_and_(_M32)


def _mix32_(x: torch.Tensor) -> torch.Tensor:
    """``_mix32`` in place on a tensor the caller owns: the hash dominates the cost of
    sampling over a whole vocabulary, and in-place ops halve its memory traffic."""
    x.bitwise_xor_(x >> 16)
    _mul32_(x, 0x21F0AAAD)
    x.bitwise_xor_(x >> 15)
    _mul32_(x, 0x735A2D97)
    return x.bitwise_xor_(x >> 15)


def _stream_key(seed: int, epoch: int | torch.Tensor, stream: int, chain: int):
    """The (seed, epoch, stream) part of key chain ``chain`` (0 or 1): 64-bit seeds and epochs
    enter as two 32-bit halves (negative values as their two's complement). ``epoch``: an int,
    or an int64 tensor of per-row epochs, each row's key then bit-identical to the int's, so
    a batch that straddles two epochs is hashed on its device without reading them back."""
    h = _IV[chain]
    for v in (seed, epoch):
        if isinstance(v, torch.Tensor):
            lo, hi = v.long() & _M32, (v.long() >> 32) & _M32  # arithmetic shift, then masked
        else:
            v &= (1 << 64) - 1
            lo, hi = v & _M32, v >> 32
        h = _mix32(h ^ lo)
        h = _mix32(h ^ hi)
    return _mix32(h ^ (stream & _M32))


def row_keys(seed: int, epoch: int | torch.Tensor, seq_ids: torch.Tensor, stream: int,
             sub_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The 64-bit row key as two 32-bit halves, (B,) int64 each, from (seed, epoch, stream,
    seq_id[, sub_id]): one independent hash chain per half, so neither is a function of the
    other. ``epoch``: an int, or (B,) int64 per row (see ``_stream_key``)."""
    s = seq_ids.long()
    keys = []
    for chain in (0, 1):
        h = _mix32(_stream_key(seed, epoch, stream, chain) ^ (s & _M32))
        h = _mix32(h ^ ((s >> 32) & _M32))  # arithmetic shift, then masked: any int64 is fine
        if sub_ids is not None:
            h = _mix32(h ^ (sub_ids.long() & _M32))
        keys.append(h)
    return keys[0], keys[1]


def keyed_bits(seed: int, epoch: int | torch.Tensor, seq_ids: torch.Tensor, stream: int,
               shape_tail: tuple[int, ...] = (), sub_ids: torch.Tensor | None = None
               ) -> torch.Tensor:
    """Uniform 32-bit integers, (B, *shape_tail) int64 in [0, 2**32), on seq_ids' device.

    Element (b, i...) depends only on (seed, epoch, seq_ids[b], stream, sub_ids[b], the
    row-major flat index of i in shape_tail): a row is the same alone or in any batch, and for
    a 1-D shape_tail a longer tail (more padding) only appends values. ``sub_ids`` (B,) adds
    one more counter to the row key (the position, for a replacement's uniform).
    """
    n = math.prod(shape_tail)
    if n > 1 << 32:
        raise ValueError(f"keyed_bits: {n} counters per row exceed 2**32")
    k1, k2 = row_keys(seed, epoch, seq_ids, stream, sub_ids)  # (B,), (B,)
    counter = torch.arange(n, device=seq_ids.device).view(shape_tail)
    return bits_from_keys(k1, k2, counter)  # (B, *shape_tail)


def bits_from_keys(k1: torch.Tensor, k2: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """Row keys k1, k2 (B,) and counters (*tail) -> (B, *tail) 32-bit draws."""
    shape = (-1,) + (1,) * counter.ndim
    # Two rounds: one round of xor-then-mix would make rows share noise values at permuted
    # counters (k1 ^ c == k1' ^ c'); the second key breaks that relation.
    return _mix32_(_mix32_(k1.view(shape) ^ counter).bitwise_xor_(k2.view(shape)))


def keyed_uniform(seed: int, epoch: int, seq_ids: torch.Tensor, stream: int,
                  shape_tail: tuple[int, ...] = (), sub_ids: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """(B, *shape_tail) float32 in the open interval (0, 1); see ``keyed_bits``. The top 23
    bits give u = (2k + 1) / 2**24, exactly representable, so never 0 or 1."""
    k = keyed_bits(seed, epoch, seq_ids, stream, shape_tail, sub_ids) >> 9  # [0, 2**23)
    return (2 * k + 1).float() * 2.0**-24


def threshold(p: float) -> int:
    """The integer t with P(bits < t) = p (to 2**-32) for 32-bit uniform bits."""
    return int(round(min(max(p, 0.0), 1.0) * 2**32))
