"""generate's CorruptAndWrite step: RunInference with ``CorruptionHandler``, whose "model" is a
``Corrupter`` (the device, the frozen aux MLM or none, the unigram counts) loaded once per SDK
process or per shared copy; each call corrupts one whole output part with
``trainer.corruption.corrupt.corrupt_batch``, batch by batch, and streams it to Parquet
(``write_part``) -> the part's manifest entry.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
from apache_beam.ml.inference.base import ModelHandler

from pipeline.corpus_parts import ZSTD_LEVEL
from pipeline.filesystems import join, open_atomic, read_bytes
from pipeline.gpu_slots import claim_device_slot, worker_device
from pipeline.head_precision import with_head_precision
from pipeline.layout import Layout
from pipeline.packed_rows import PartRows
from trainer.config.run import RunConfig
from trainer.data.corpus_shards import CorpusShards
from trainer.data.order import progress
from trainer.data.rtd_format import (
    RTD_SCHEMA,
    encode_rtd_rows,
    pad_rows,
    rtd_part_name,
)
from trainer.pretrained import load_generator
from trainer.tokenizer import PAD_ID


class Corrupter:
    """What a worker loads once, RunInference's "model": the device, the frozen aux MLM (None
    for model-free replacements) and the unigram counts (when the corruption needs them).
    ``corrupt`` takes and returns numpy arrays only, so it works unchanged behind the proxy
    RunInference puts in front of a model shared across processes (``generate.model_copies``
    >= 1: the model lives in one process of the machine, the calls are pickled to it)."""

    def __init__(self, device: str, aux, unigram: np.ndarray | None, cfg: RunConfig,
                 num_sequences: int, vocab_size: int):
        self.device, self.aux, self.unigram = device, aux, unigram
        self.corruption, self.seed = cfg.corruption, cfg.generate.seed
        self.epochs, self.num_sequences, self.vocab_size = (cfg.generate.epochs, num_sequences,
                                                            vocab_size)

    def corrupt(self, epoch: int, positions: np.ndarray, seq_ids: np.ndarray,
                lengths: np.ndarray, tokens: np.ndarray) -> tuple:
        """One inference batch (rows in position order, their tokens concatenated) through
        ``corrupt_batch``, padded on the right to the batch's longest sequence, bf16
        autocast on CUDA -> (corrupted tokens int32, labels uint8, both concatenated;
        temperature (B,) float32; the device)."""
        import torch

        from trainer.corruption.batch import KeyedBatch
        from trainer.corruption.corrupt import aux_autocast, corrupt_batch

        ids, valid = pad_rows(tokens, lengths, PAD_ID, np.int64)  # (B, T) each
        u = progress(epoch, positions, self.num_sequences, self.epochs,
                     self.corruption.granularity)
        with aux_autocast(self.device):
            batch = KeyedBatch(torch.from_numpy(ids).to(self.device),
                               torch.from_numpy(np.asarray(seq_ids, np.int64)), self.seed,
                               epoch, attention_mask=torch.from_numpy(valid).to(self.device))
            out = corrupt_batch(batch, torch.from_numpy(u), self.corruption, aux=self.aux,
                                unigram_counts=self.unigram, vocab_size=self.vocab_size)
        return (out.input_ids.cpu().numpy()[valid].astype(np.int32),
                out.labels.cpu().numpy()[valid].astype(np.uint8),
                out.temperature.cpu().numpy().astype(np.float32), self.device)


class CorruptionHandler(ModelHandler):
    """RunInference handler of the corrupt-and-write step. Each element is one whole output
    part (``PartRows``, grouped by GroupByPart), so Beam's own batching is pinned to one
    element per call (results must not depend on it); ``run_inference`` corrupts the part in
    batches of ``layout.batch_rows`` positions and streams it to Parquet (``write_part``),
    returning its manifest entry. ``load_model`` runs once per SDK process, or, with
    ``generate.model_copies`` >= 1 and an aux model, once per copy per machine
    (RunInference's ``large_model`` / ``model_copies``)."""

    def __init__(self, cfg: RunConfig, layout: Layout, vocab_size: int, corpus_dir: str,
                 dtype: str):
        shared = cfg.corruption.replacement == "aux" and cfg.generate.model_copies > 0
        super().__init__(min_batch_size=1, max_batch_size=1, large_model=shared,
                         model_copies=cfg.generate.model_copies if shared else None)
        self.cfg, self.layout, self.vocab_size = cfg, layout, vocab_size
        self.corpus_dir, self.dtype = corpus_dir, dtype

    def load_model(self) -> Corrupter:
        import torch

        requested = self.cfg.generate.device
        count = 0 if requested == "cpu" else torch.cuda.device_count()
        device = worker_device(requested, count, claim_device_slot() if count else 0)
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        corruption = self.cfg.corruption
        aux = unigram = None
        if corruption.replacement == "aux":
            aux = load_generator(self.cfg.generate.aux_checkpoint, device, read_bytes)
        if "unigram" in corruption.replacement or corruption.augmentation == "log_interp_unigram":
            unigram = CorpusShards(self.corpus_dir).unigram_counts()
        corrupter = Corrupter(device, aux, unigram, self.cfg, self.layout.num_sequences,
                              self.vocab_size)
        return with_head_precision(corrupter, self.cfg.generate.head_precision)

    def run_inference(self, batch, model: Corrupter, inference_args=None):
        return [write_part(rows, model, self.cfg.generate.rtd_dir, self.layout.batch_rows,
                           self.cfg.data.row_group_rows, self.dtype) for rows in batch]

    def get_num_bytes(self, batch) -> int:
        return sum(rows.nbytes for rows in batch)

    def get_metrics_namespace(self) -> str:
        return "generate"


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


def write_part(rows: PartRows, corrupter: Corrupter, rtd_dir: str, batch_rows: int,
               row_group_rows: int, dtype: str) -> dict:
    """Corrupt one part batch by batch and stream it, row group by row group, to
    ``epoch=EEEE/part-PPPPP.parquet`` (temp name, then rename; sha256 and size computed on the
    way) -> its manifest entry. Idempotent: a retry writes the same bytes to the same name."""
    name = rtd_part_name(rows.epoch, rows.part)
    pending = RowGroupBuffer()
    tokens = replaced = 0
    t_min, t_max, devices = np.inf, -np.inf, set()
    with (open_atomic(join(rtd_dir, name)) as sink,
          pq.ParquetWriter(sink, RTD_SCHEMA, compression="zstd",
                           compression_level=ZSTD_LEVEL) as writer):
        for positions, seq_ids, lengths, ids in rows.batches(batch_rows):
            out_ids, labels, temps, device = corrupter.corrupt(rows.epoch, positions, seq_ids,
                                                               lengths, ids)
            pending.add(positions, seq_ids, lengths, out_ids, labels, temps)
            tokens, replaced = tokens + len(out_ids), replaced + int(labels.sum())
            t_min, t_max = min(t_min, float(temps.min())), max(t_max, float(temps.max()))
            devices.add(device)
            while len(pending) >= row_group_rows:
                writer.write_table(encode_rtd_rows(*pending.take(row_group_rows), dtype),
                                   row_group_size=row_group_rows)
        if len(pending):
            writer.write_table(encode_rtd_rows(*pending.take(len(pending)), dtype),
                               row_group_size=row_group_rows)
    lo = rows.start
    return {
        "name": name, "epoch": rows.epoch, "part": rows.part, "rows": len(rows),
        "position_start": lo, "position_end": lo + len(rows), "bytes": sink.bytes,
        "sha256": sink.sha256(), "tokens": tokens, "replaced": replaced,
        "temperature_min": t_min, "temperature_max": t_max, "devices": sorted(devices),
    }
