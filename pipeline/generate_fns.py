"""Per-element steps of ``generate``, as plain functions: the layout of positions into output
parts and inference batches, the packed rows that travel through the one shuffle, a part's
rows in position order, the row-group buffer of the writer, and the GPU a worker picks. The
training order and each sample's progress u are ``trainer.data.order`` (the online trainer modes use
the same plan).

Layout. Positions are cut into output parts of ``rows_per_part`` positions, and each part into
inference batches of ``batch_rows`` consecutive positions, so the content of every batch and
part is fixed by (epoch, position) alone, never by Beam's bundling.

Packed rows. AssignPositions emits, per (corpus part, epoch), one element per output part it
touches: a tuple of four little-endian byte strings (positions int64, seq_ids int64, lengths
int32, tokens in ``trainer.data.rtd_format.token_dtype``: uint16 up to 65,536 ids), sorted by
position.
Beam encodes a tuple of bytes without pickling, and a few large elements instead of one per
sequence keep its per-element cost out of the way at hundreds of millions of sequences.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from trainer.errors import UserError


class GenerateError(UserError):
    """The RTD shards cannot be generated as asked."""


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Packed rows: AssignPositions -> GroupByPart -> PartRows
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Writer: corrupted batches -> row groups
# ---------------------------------------------------------------------------------------------

class RowGroupBuffer:
    """Corrupted rows waiting for their row group: batches and row groups are cut
    independently (``generate.batch_tokens`` vs ``data.row_group_rows``), so the writer holds
    at most one row group plus one batch."""

    def __init__(self):
        self.cols: tuple[list, ...] = ([], [], [], [], [])

    def __len__(self) -> int:
        return len(self.cols[0])

    def add(self, positions: np.ndarray, seq_ids: np.ndarray, lengths: np.ndarray,
            tokens: np.ndarray, labels: np.ndarray, temperature: np.ndarray) -> None:
        cuts = np.cumsum(lengths)[:-1]
        for col, values in zip(self.cols, (positions.tolist(), seq_ids.tolist(),
                                           np.split(tokens, cuts), np.split(labels, cuts),
                                           temperature.tolist()), strict=True):
            col.extend(values)

    def take(self, n: int) -> tuple[list, ...]:
        """The first n rows (positions, seq_ids, tokens, labels, temperatures), removed."""
        out = tuple(col[:n] for col in self.cols)
        for col in self.cols:
            del col[:n]
        return out


# ---------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------

_HELD_SLOTS: list = []  # lock files held for the life of this process (one per model load)


def claim_device_slot(directory: str | None = None) -> int:
    """The lowest slot number that no live process on this machine holds: a ``flock`` on
    ``fast-electra-device-slot-<k>.lock`` in the temp dir, kept until this process exits
    (the kernel drops it then, so a restarted worker reuses the slot). Each model load claims
    one, so the SDK processes and shared model copies of a machine get slots 0, 1, 2, ..."""
    directory = directory or tempfile.gettempdir()
    for slot in itertools.count():
        f = open(os.path.join(directory, f"fast-electra-device-slot-{slot}.lock"), "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        _HELD_SLOTS.append(f)
        return slot


def worker_device(requested: str, cuda_count: int, slot: int) -> str:
    """The torch device of a model load: ``cpu``, or ``cuda:{slot mod cuda_count}`` when
    ``requested`` is ``cuda``, or ``auto`` with a GPU visible. ``slot`` is the load's
    ``claim_device_slot``, so a machine's loads go round-robin over its GPUs."""
    if requested == "cuda" and cuda_count == 0:
        raise GenerateError(
            f"generate.device = 'cuda' but no CUDA device is visible to this worker process "
            f"(host {os.uname().nodename}); set generate.device=auto or cpu, or give the "
            "workers GPUs (README: generate on Dataflow with GPUs; check the driver and "
            "CUDA_VISIBLE_DEVICES)")
    if requested == "cpu" or cuda_count == 0:
        return "cpu"
    return f"cuda:{slot % cuda_count}"


def explicit_workers(beam_argv: list[str]) -> int | None:
    """The user's ``--direct_num_workers`` among the pass-through Beam options, if any."""
    for i, a in enumerate(beam_argv):
        if a.startswith("--direct_num_workers="):
            return int(a.split("=", 1)[1])
        if a == "--direct_num_workers" and i + 1 < len(beam_argv):
            return int(beam_argv[i + 1])
    return None


def local_workers(cuda_count: int, model_copies: int, cpu_count: int,
                  explicit: int | None) -> int | None:
    """Worker processes of the local runner for a GPU generate: the user's explicit setting,
    else None (Beam's one per core) without a GPU, else GPUs x max(1, model_copies), at most
    one per core. With model_copies = 0 each process loads its own aux on GPU (slot mod
    GPUs), so one process per GPU; with M >= 1 shared copies every process sends its calls
    to all M copies in turn, and M processes per GPU keep the copies fed while the others
    encode and write Parquet. One per core would load the aux once per core, all on
    cuda:0 and cuda:1 ... round-robin, and exhaust GPU memory."""
    if explicit is not None:
        return explicit
    if cuda_count == 0:
        return None
    return max(1, min(cpu_count, cuda_count * max(1, model_copies)))


# One process-wide lock: torch's float32 matmul precision is global, so two threads of a
# worker must not set and restore it around each other's head (the draws would depend on
# their interleaving).
_TF32_LOCK = threading.Lock()


def with_head_precision(corrupter, precision: str):
    """``corrupter`` (a loaded ``Corrupter``) with its aux's LM head run in ``precision``
    (``generate.head_precision``); unchanged for fp32 or without an aux. The head's output is
    cast back to float32 for the log-softmax and the sampling."""
    if precision == "fp32" or corrupter.aux is None:
        return corrupter
    if not str(corrupter.device).startswith("cuda"):
        raise GenerateError(
            f"generate.head_precision = {precision!r} needs a GPU, but this worker runs the "
            f"aux on {corrupter.device} (host {os.uname().nodename}): a CPU computes the head "
            "in fp32 only; set generate.head_precision = 'fp32' or give the workers GPUs")
    import torch

    class PrecisionHead(torch.nn.Module):
        def __init__(self, head: torch.nn.Module):
            super().__init__()
            self.head = head

        def forward(self, hidden, *args, **kwargs):
            if precision == "bf16":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return self.head(hidden, *args, **kwargs).float()
            with _TF32_LOCK:
                before = torch.get_float32_matmul_precision()
                torch.set_float32_matmul_precision("high")  # TF32 tensor cores
                try:
                    return self.head(hidden, *args, **kwargs)
                finally:
                    torch.set_float32_matmul_precision(before)

    corrupter.aux.head = PrecisionHead(corrupter.aux.head)
    return corrupter
