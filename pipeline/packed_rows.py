"""The rows of generate's one shuffle: AssignPositions packs a corpus part's sequences per output
part (``split_by_part``), GroupByPart brings a part's packs together, ``PartRows`` indexes them
in position order.

Packed rows. AssignPositions emits, per (corpus part, epoch), one element per output part it
touches: a tuple of four little-endian byte strings (positions int64, seq_ids int64, lengths
int32, tokens in ``trainer.data.rtd_format.token_dtype``: uint16 up to 65,536 ids), sorted by
position.
Beam encodes a tuple of bytes without pickling, and a few large elements instead of one per
sequence keep its per-element cost out of the way at hundreds of millions of sequences.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.errors import GenerateError
from pipeline.layout import Layout

Packed = tuple[bytes, bytes, bytes, bytes]
"""(positions <i8, seq_ids <i8, lengths <i4, tokens) as bytes; see the module docstring."""


def split_by_part(positions: np.ndarray, seq_ids: np.ndarray, offsets: np.ndarray,
                  values: np.ndarray, layout: Layout, dtype: str) -> Iterator[tuple[int, Packed]]:
    """The sequences of one corpus part (``values[offsets[i]:offsets[i + 1]]`` is sequence i,
    at ``positions[i]``) as (output part, packed rows sorted by position), one per output part
    they fall in."""
    order = np.argsort(positions, kind="stable")
    positions, seq_ids = positions[order].astype("<i8"), seq_ids[order].astype("<i8")
    offsets = offsets.astype(np.int64)
    starts = offsets[:-1][order]
    lengths = (offsets[1:] - offsets[:-1])[order]
    ends = np.cumsum(lengths)  # token offsets of the rows in position order
    gather = np.repeat(starts - (ends - lengths), lengths) + np.arange(int(lengths.sum()))
    tokens = values.astype(dtype)[gather]
    parts = positions // layout.rows_per_part
    cuts = [0, *(np.flatnonzero(np.diff(parts)) + 1).tolist(), len(positions)]
    for a, b in itertools.pairwise(cuts):
        if a == b:
            continue
        t0 = int(ends[a - 1]) if a else 0
        yield int(parts[a]), (positions[a:b].tobytes(), seq_ids[a:b].tobytes(),
                              lengths[a:b].astype("<i4").tobytes(),
                              tokens[t0:int(ends[b - 1])].tobytes())


@dataclass
class PartRows:
    """The rows of one output part in position order, as index arrays over the packed chunks
    it was sent in. The chunks' token bytes are used in place (never copied or widened), so a
    part costs its compact token bytes plus 25 bytes per row."""

    epoch: int
    part: int
    start: int  # the part's first position
    seq_ids: np.ndarray  # (n,) int64, in position order
    lengths: np.ndarray  # (n,) int32
    chunk: np.ndarray  # (n,) int32: which chunk holds the row's tokens
    offset: np.ndarray  # (n,) int64: where in that chunk
    tokens: list[np.ndarray]  # per chunk, a read-only view of its token bytes

    @classmethod
    def gather(cls, epoch: int, part: int, chunks: Iterable[Packed], layout: Layout,
               dtype: str) -> PartRows:
        """Index the chunks of (epoch, part); their positions must be exactly the part's.
        Each chunk's rows are scattered to their places, so nothing the size of the part is
        built besides the index itself."""
        lo, hi = layout.part_range(part)
        n = hi - lo
        rows = cls(epoch, part, lo, np.zeros(n, np.int64), np.zeros(n, np.int32),
                   np.zeros(n, np.int32), np.zeros(n, np.int64), [])
        seen = np.zeros(n, bool)
        wrong = GenerateError(f"epoch {epoch} part {part}: positions are not exactly [{lo}, "
                              f"{hi}) (a corrupt or changed corpus?); re-run with --overwrite")
        for i, (pos, seq, lens, toks) in enumerate(chunks):
            at = np.frombuffer(pos, "<i8") - lo  # (m,) places in the part, ascending
            if len(at) and not (0 <= at[0] and at[-1] < n and (np.diff(at) > 0).all()
                                and not seen[at].any()):
                raise wrong
            lengths = np.frombuffer(lens, "<i4")
            seen[at] = True
            rows.seq_ids[at] = np.frombuffer(seq, "<i8")
            rows.lengths[at] = lengths
            rows.chunk[at] = i
            rows.offset[at] = np.cumsum(lengths) - lengths
            rows.tokens.append(np.frombuffer(toks, dtype))
        if not seen.all():
            raise wrong
        return rows

    def __len__(self) -> int:
        return len(self.seq_ids)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tokens)

    def batch(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows a..b-1 of the part: (positions, seq_ids, lengths, tokens concatenated)."""
        pieces = [self.tokens[c][o:o + n] for c, o, n in
                  zip(self.chunk[a:b], self.offset[a:b], self.lengths[a:b], strict=True)]
        return (np.arange(self.start + a, self.start + min(b, len(self)), dtype=np.int64),
                self.seq_ids[a:b], self.lengths[a:b], np.concatenate(pieces))

    def batches(self, batch_rows: int) -> Iterator[tuple[np.ndarray, ...]]:
        """The part's inference batches: ``batch_rows`` consecutive positions each."""
        for a in range(0, len(self), batch_rows):
            yield self.batch(a, a + batch_rows)
