"""The shard-reading API for notebooks and checks (docs/design.md):

    from trainer.shards import CorpusShards, RTDShards

The readers live in trainer/data/ (corpus_shards.py, rtd_shards.py); code imports them there.
"""

from trainer.data.corpus_shards import CorpusShards
from trainer.data.rtd_shards import RTDShards

__all__ = ["CorpusShards", "RTDShards"]
