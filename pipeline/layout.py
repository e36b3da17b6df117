"""The layout of an epoch's positions into generate's output parts and inference batches.
Positions are cut into output parts of ``rows_per_part`` positions, and each part into
inference batches of ``batch_rows`` consecutive positions, so the content of every batch and
part is fixed by (epoch, position) alone, never by Beam's bundling. The training order and each
sample's progress u are ``trainer.data.order`` (the online trainer modes use the same plan).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """Output part k holds positions [k * rows_per_part, (k + 1) * rows_per_part); inference
    batches are runs of ``batch_rows`` positions from the start of a part (the last one of a
    part may be shorter)."""

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
