"""T5 relative positions: the bidirectional bucket of each (query, key) distance, and the
locality prior the shared bias table starts from.
"""

from __future__ import annotations

import math

import torch


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """T5 bidirectional buckets of ``key_pos - query_pos``: one bucket per distance up to
    num_buckets // 4 in each direction, then logarithmically wider buckets up to max_distance,
    beyond which all distances share the last bucket."""
    half = num_buckets // 2
    bucket = (relative_position > 0).long() * half  # keys to the right use the upper half
    distance = relative_position.abs()
    max_exact = half // 2
    # clamp(min=1) only keeps log() finite where the exact branch is taken anyway
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(
        max_distance / max_exact)
    large = (max_exact + (log_ratio * (half - max_exact)).long()).clamp(max=half - 1)
    return bucket + torch.where(distance < max_exact, distance, large)


def relative_bias_prior(num_buckets: int, max_distance: int, num_heads: int) -> torch.Tensor:
    """Initial (buckets, heads) relative bias in nats: head h prefers nearby keys by
    -slope_h * log(1 + d), d the smallest distance in the bucket, slopes evenly spaced from 0
    (head 0: no preference, global) to 2 (last head: a neighbour gets ~2.2 nats more than a
    key 2 tokens further). Symmetric: which side matters is left to training. A locality
    prior (as in ALiBi) gives a small model word order from step 0 instead of after the
    table has drifted there. Computed on the CPU (also under a meta-device context)."""
    cpu = torch.device("cpu")
    d = torch.arange(-2 * max_distance, 2 * max_distance + 1, device=cpu)
    buckets = relative_position_bucket(d, num_buckets, max_distance)
    nearest = torch.full((num_buckets,), float(2 * max_distance), device=cpu)
    nearest = nearest.scatter_reduce(0, buckets, d.abs().float(), reduce="amin")
    slopes = torch.linspace(0.0, 2.0, num_heads, device=cpu)
    return -nearest.log1p()[:, None] * slopes[None, :]  # (buckets, heads)
