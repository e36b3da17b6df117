"""Per-element steps of ``generate``, as plain functions: the layout of positions into
inference batches and output parts. The training order and each sample's progress u are
``trainer.order`` (the online trainer modes use the same plan).

Layout. Positions are cut into output parts of ``rows_per_part`` positions, and each part into
inference batches of ``batch_rows`` consecutive positions, so the content of every batch and
part is fixed by (epoch, position) alone, never by Beam's bundling.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.errors import UserError


class GenerateError(UserError):
    """The RTD shards cannot be generated as asked."""


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
