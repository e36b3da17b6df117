"""The data side of training: read the shard sets and plan the order (imports config/, errors.py,
tokenizer.py). The readers are the notebook API too (docs/design.md):

    from trainer.data import CorpusShards, RTDShards

    manifest.py        format versions, manifests, sha256-checked files, ShardError
    corpus_shards.py   the corpus reader (pipeline.prepare's output)
    rtd_format.py      the RTD row encoding, shared by generate (write) and the reader
    rtd_shards.py      the RTD reader (pipeline.generate's output), by position range
    order.py           the offline data plan: keyed epoch order and progress u
    corpus_tokens.py   corpus token cache and step order of the corpus-reading modes
    prefetch.py        background building of the next micro-batches
"""

from trainer.data.corpus_shards import CorpusShards
from trainer.data.rtd_shards import RTDShards

__all__ = ["CorpusShards", "RTDShards"]
