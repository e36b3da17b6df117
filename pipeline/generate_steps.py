"""generate's Beam steps as composite transforms, each usable in a pipeline of one's own:

    parts = (p | beam.Create([(epoch, i) for i in range(len(corpus.files))])
               | ShuffleToParts(corpus.root, corpus.files, layout, seed, dtype))   # PartRows
    entries = parts | CorruptAndWrite(cfg, layout, corpus.vocab_size, corpus.root, dtype)
    seals = entries | SealEpochs(EpochSealing(rtd_dir, layout.num_parts, plan_fp))

ShuffleToParts: (epoch, corpus part index) -> one ``PartRows`` per (epoch, output part), the
part's rows in position order (the job's one shuffle). CorruptAndWrite: each PartRows ->
corrupted, written to ``epoch=EEEE/part-PPPPP.parquet`` -> its manifest entry (with sha256).
SealEpochs: the entries -> one ``epoch=EEEE/_SEALED.json`` per epoch, once all its parts are
written. pipeline.generate chains them, one job per epoch.
"""

from __future__ import annotations

import io

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.ml.inference.base import RunInference

from pipeline.corrupt_write import CorruptionHandler
from pipeline.epoch_seal import EpochSealing, by_epoch, seal_epoch
from pipeline.filesystems import join, read_bytes
from pipeline.layout import Layout
from pipeline.packed_rows import PartRows, split_by_part
from trainer.config.run import RunConfig
from trainer.data.manifest import ShardError
from trainer.data.order import permute
from trainer.digest import sha256_bytes


class AssignPositionsFn(beam.DoFn):
    """(epoch, corpus part index) -> ((epoch, output part), packed rows) for every output part
    the corpus part's sequences fall in (``split_by_part``). The part's bytes are checked
    against the corpus manifest."""

    def __init__(self, corpus_dir: str, files: list[dict], layout: Layout, seed: int,
                 dtype: str):
        self.corpus_dir, self.files, self.layout, self.seed = corpus_dir, files, layout, seed
        self.dtype = dtype

    def process(self, element):
        epoch, index = element
        entry = self.files[index]
        path = join(self.corpus_dir, entry["name"])
        data = read_bytes(path)
        if sha256_bytes(data) != entry["sha256"]:
            raise ShardError(f"{path}: sha256 differs from the corpus manifest's: the file "
                             "changed or is corrupt; re-run pipeline.prepare --overwrite")
        table = pq.read_table(io.BytesIO(data))
        seq_ids = table.column("seq_id").to_numpy()
        ids = table.column("input_ids").combine_chunks()
        positions = permute(seq_ids, self.layout.num_sequences, self.seed, epoch)
        for part, packed in split_by_part(positions, seq_ids, ids.offsets.to_numpy(),
                                          ids.values.to_numpy(), self.layout, self.dtype):
            yield (epoch, part), packed


def index_part(element: tuple, layout: Layout, dtype: str) -> PartRows:
    """GroupByPart's ((epoch, part), packed chunks) -> the part's rows in position order."""
    (epoch, part), chunks = element
    return PartRows.gather(epoch, part, chunks, layout, dtype)


class ShuffleToParts(beam.PTransform):
    """(epoch, corpus part index) -> PartRows of every (epoch, output part) they fill: each
    corpus part of ``files`` (the corpus manifest's entries, under ``corpus_dir``) is read,
    checked, its sequences placed by the epoch's keyed order (``seed``) and sent, packed, to
    the output parts of ``layout``; tokens travel as ``dtype``."""

    def __init__(self, corpus_dir: str, files: list[dict], layout: Layout, seed: int,
                 dtype: str):
        super().__init__()
        self.assign = AssignPositionsFn(corpus_dir, files, layout, seed, dtype)
        self.layout, self.dtype = layout, dtype

    def expand(self, corpus_parts):
        return (
            corpus_parts
            | "ReshuffleParts" >> beam.Reshuffle()
            | "AssignPositions" >> beam.ParDo(self.assign)
            | "GroupByPart" >> beam.GroupByKey()
            | "IndexParts" >> beam.Map(index_part, layout=self.layout, dtype=self.dtype)
        )


class CorruptAndWrite(beam.PTransform):
    """PartRows -> the written part's manifest entry: RunInference with ``CorruptionHandler``
    (one whole part per call; the aux loaded once per worker process or shared copy)."""

    def __init__(self, cfg: RunConfig, layout: Layout, vocab_size: int, corpus_dir: str,
                 dtype: str):
        super().__init__()
        self.handler = CorruptionHandler(cfg, layout, vocab_size, corpus_dir, dtype)

    def expand(self, parts):
        return parts | "RunInference" >> RunInference(self.handler)


class SealEpochs(beam.PTransform):
    """Part entries -> one seal per epoch (``epoch_seal.seal_epoch``), written once the
    epoch's parts are all written: GroupByEpoch is the barrier."""

    def __init__(self, sealing: EpochSealing):
        super().__init__()
        self.sealing = sealing

    def expand(self, entries):
        return (
            entries
            | "KeyByEpoch" >> beam.Map(by_epoch)
            | "GroupByEpoch" >> beam.GroupByKey()
            | "SealEpoch" >> beam.Map(seal_epoch, sealing=self.sealing)
        )
