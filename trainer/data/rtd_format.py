"""The RTD shard row encoding, shared by the writer (pipeline.generate) and the reader: the
Parquet schema, part names, tokens and labels packed as bytes (``encode_rtd_rows``), and their
decoding into padded (B, T) batches (``decode_rtd_table`` -> RTDBatch). shards/README.md
documents it byte by byte.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

RTD_SCHEMA = pa.schema([
    pa.field("position", pa.int64(), nullable=False),
    pa.field("seq_id", pa.int64(), nullable=False),
    pa.field("input_ids", pa.binary(), nullable=False),
    pa.field("labels", pa.binary(), nullable=False),
    pa.field("temperature", pa.float32(), nullable=False),
])


def token_dtype(vocab_size: int) -> str:
    """The numpy dtype string of RTD ``input_ids`` bytes for a vocabulary of this size."""
    return "<u2" if vocab_size <= 1 << 16 else "<i4"


def epoch_dir(epoch: int) -> str:
    return f"epoch={epoch:04d}"


def rtd_part_name(epoch: int, part: int) -> str:
    return f"{epoch_dir(epoch)}/part-{part:05d}.parquet"


def encode_rtd_rows(positions: np.ndarray, seq_ids: np.ndarray, input_ids: list[np.ndarray],
                    labels: list[np.ndarray], temperature: np.ndarray, dtype: str
                    ) -> pa.Table:
    """Rows (already sorted by position) as an Arrow table of RTD_SCHEMA."""
    return pa.Table.from_arrays([
        pa.array(np.asarray(positions, np.int64), pa.int64()),
        pa.array(np.asarray(seq_ids, np.int64), pa.int64()),
        pa.array([np.asarray(t, dtype).tobytes() for t in input_ids], pa.binary()),
        pa.array([np.packbits(np.asarray(lab, np.uint8), bitorder="little").tobytes()
                  for lab in labels], pa.binary()),
        pa.array(np.asarray(temperature, np.float32), pa.float32()),
    ], schema=RTD_SCHEMA)


@dataclass(frozen=True)
class RTDRow:
    position: int
    seq_id: int
    input_ids: np.ndarray
    """(T,) int32: the corrupted sequence ([CLS] ... [SEP])."""
    labels: np.ndarray
    """(T,) uint8: 1 where input_ids differs from the corpus sequence."""
    temperature: float


class RTDBatch:
    """Decoded rows of one position range, column-wise (what a trainer wants).

        batch.positions, batch.seq_ids, batch.temperature   # (B,) int64, int64, float32
        batch.input_ids[i], batch.labels[i]                 # (T_i,) int32 / uint8 views
        batch.tokens, batch.flat_labels, batch.offsets      # the same rows, flat
        batch[a:b]                                          # rows a..b-1, sharing the arrays

    The rows' tokens and labels live in two flat arrays cut by ``offsets`` (row i is
    ``tokens[offsets[i]:offsets[i + 1]]``; ``offsets[0]`` need not be 0, as a slice shares its
    parent's arrays), so a batch is sliced and padded without a Python loop over its rows.
    The constructor takes per-row arrays; ``from_flat`` takes the flat form.
    """

    def __init__(self, positions: np.ndarray, seq_ids: np.ndarray,
                 input_ids: list[np.ndarray], labels: list[np.ndarray],
                 temperature: np.ndarray):
        offsets = np.zeros(len(input_ids) + 1, np.int64)
        np.cumsum([len(x) for x in input_ids], out=offsets[1:])
        self._set(np.asarray(positions, np.int64), np.asarray(seq_ids, np.int64),
                  _flat(input_ids, np.int32), _flat(labels, np.uint8), offsets,
                  np.asarray(temperature, np.float32))

    @classmethod
    def from_flat(cls, positions: np.ndarray, seq_ids: np.ndarray, tokens: np.ndarray,
                  flat_labels: np.ndarray, offsets: np.ndarray,
                  temperature: np.ndarray) -> RTDBatch:
        batch = cls.__new__(cls)
        batch._set(positions, seq_ids, tokens, flat_labels, offsets, temperature)
        return batch

    def _set(self, positions, seq_ids, tokens, flat_labels, offsets, temperature) -> None:
        self.positions = positions  # (B,) int64
        self.seq_ids = seq_ids  # (B,) int64
        self.tokens = tokens  # (sum T_i,) int32: the corrupted sequences, back to back
        self.flat_labels = flat_labels  # (sum T_i,) uint8: their labels, aligned with tokens
        self.offsets = offsets  # (B + 1,) int64 into tokens and flat_labels
        self.temperature = temperature  # (B,) float32

    @classmethod
    def concat(cls, parts: list[RTDBatch]) -> RTDBatch:
        """The rows of ``parts`` (at least one), in order, as one batch."""
        if len(parts) == 1:
            return parts[0]
        offsets = np.zeros(sum(len(p) for p in parts) + 1, np.int64)
        np.cumsum(np.concatenate([p.lengths for p in parts]), out=offsets[1:])
        return cls.from_flat(np.concatenate([p.positions for p in parts]),
                             np.concatenate([p.seq_ids for p in parts]),
                             np.concatenate([p.tokens[p.offsets[0]:p.offsets[-1]]
                                             for p in parts]),
                             np.concatenate([p.flat_labels[p.offsets[0]:p.offsets[-1]]
                                             for p in parts]),
                             offsets, np.concatenate([p.temperature for p in parts]))

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, rows: slice) -> RTDBatch:
        r = range(len(self))[rows]
        if r.step != 1:
            raise ValueError("an RTDBatch is sliced by a contiguous range of rows")
        return RTDBatch.from_flat(self.positions[r.start:r.stop], self.seq_ids[r.start:r.stop],
                                  self.tokens, self.flat_labels,
                                  self.offsets[r.start:r.stop + 1],
                                  self.temperature[r.start:r.stop])

    @property
    def lengths(self) -> np.ndarray:
        """(B,) int64: the rows' lengths T_i."""
        return self.offsets[1:] - self.offsets[:-1]  # np.diff costs ~4 us more per call

    @functools.cached_property
    def input_ids(self) -> list[np.ndarray]:
        """B x (T_i,) int32: the corrupted sequences ([CLS] ... [SEP]), views of ``tokens``."""
        return self._views(self.tokens)

    @functools.cached_property
    def labels(self) -> list[np.ndarray]:
        """B x (T_i,) uint8: 1 where a token was replaced, views of ``flat_labels``."""
        return self._views(self.flat_labels)

    def _views(self, flat: np.ndarray) -> list[np.ndarray]:
        o = self.offsets.tolist()
        return [flat[o[i]:o[i + 1]] for i in range(len(self))]

    def rows(self) -> Iterator[RTDRow]:
        ids, labels = self.input_ids, self.labels
        for i in range(len(self)):
            yield RTDRow(int(self.positions[i]), int(self.seq_ids[i]), ids[i], labels[i],
                         float(self.temperature[i]))


@functools.lru_cache(maxsize=16)
def _prefix_mask_table(size: int) -> np.ndarray:
    return np.arange(size) < np.arange(size + 1)[:, None]


def prefix_masks(width: int) -> np.ndarray:
    """An (S + 1, S) bool table, S the power of two >= ``width``, whose row t is True on its
    first t columns: the padding mask of a batch of lengths L is ``prefix_masks(max L)[L,
    :max L]``, a gather of rows ~4x cheaper than comparing each length with a column range
    (it runs for every micro-batch)."""
    return _prefix_mask_table(1 << max(width - 1, 1).bit_length())


def pad_rows(flat: np.ndarray, lengths: np.ndarray, fill, dtype) -> tuple[np.ndarray,
                                                                        np.ndarray]:
    """Rows stored back to back in ``flat`` (row i has lengths[i] values) -> (padded (B, T) of
    ``dtype`` with ``fill`` after each row's end, real (B, T) bool), T = the longest row. A
    boolean-mask assignment fills row by row, in the order the flat array holds the rows."""
    width = int(lengths.max())
    real = prefix_masks(width)[lengths, :width]  # (B, T)
    padded = np.full(real.shape, fill, dtype)
    padded[real] = flat
    return padded, real


def _flat(rows: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(rows).astype(dtype, copy=False) if len(rows) else np.zeros(0, dtype)


def _binary_parts(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (n + 1,) int64, values uint8) of a binary column, without Python objects."""
    arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset:arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    values = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return offsets.astype(np.int64), values


def decode_rtd_table(table: pa.Table, dtype: str) -> RTDBatch:
    """An Arrow table of RTD_SCHEMA -> an RTDBatch: the tokens widened to int32 and the labels
    unpacked to uint8, each as one flat array, with numpy calls only (no per-row loop)."""
    if table.num_rows == 0:
        return RTDBatch(np.zeros(0, np.int64), np.zeros(0, np.int64), [], [],
                        np.zeros(0, np.float32))
    width = np.dtype(dtype).itemsize
    t_off, t_val = _binary_parts(table.column("input_ids"))
    l_off, l_val = _binary_parts(table.column("labels"))
    tokens = t_val[t_off[0]:t_off[-1]].view(dtype).astype(np.int32)
    offsets = (t_off - t_off[0]) // width
    lengths = np.diff(offsets)
    bits = np.unpackbits(l_val[l_off[0]:l_off[-1]], bitorder="little")
    # Each row's labels are padded to whole bytes: token j of row i has its bit at
    # 8 * (l_off[i] - l_off[0]) + j, i.e. at its flat index plus a per-row shift.
    where = np.repeat(8 * (l_off[:-1] - l_off[0]) - offsets[:-1], lengths)
    where += np.arange(len(tokens))
    return RTDBatch.from_flat(table.column("position").to_numpy(),
                              table.column("seq_id").to_numpy(), tokens, bits[where], offsets,
                              table.column("temperature").to_numpy())
