"""A vocabulary above 65,536 end to end: generate writes "<i4" token bytes and the RTD trainer
reads them back. SentencePiece cannot train 70K pieces on the test corpus, so the prepared
corpus is copied with half of its normal ids moved above 65,535 and a manifest that says
vocabulary 70,000 (part and unigram sha256s recomputed, as prepare would write them)."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.generate import run as generate
from tests.helpers import GENERATE_SMALL as SMALL
from tests.helpers import TINY, gen_argv
from trainer.config.load import load_config
from trainer.data.corpus_shards import CorpusShards
from trainer.distributed import Dist
from trainer.modes.rtd import RTDTask
from trainer.tokenizer import NUM_SPECIAL, PAD_ID

BIG_V = 70_000
SHIFT = 69_000  # ids 300..599 -> 69,300..69,599; 0..299 (specials included) stay

pytestmark = pytest.mark.usefixtures("one_thread")


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def remap(ids: np.ndarray) -> np.ndarray:
    return np.where(ids >= 300, ids + SHIFT, ids).astype(np.int32)


@pytest.fixture(scope="module")
def big_corpus(prepared, tmp_path_factory):
    src, manifest, _ = prepared
    dst = tmp_path_factory.mktemp("big_vocab") / "corpus"
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    for f in manifest["files"]:
        path = dst / f["name"]
        t = pq.read_table(path)
        ids = t["input_ids"].combine_chunks()
        new = pa.ListArray.from_arrays(ids.offsets, pa.array(remap(ids.values.to_numpy())),
                                       type=t.schema.field("input_ids").type)
        t = t.set_column(t.schema.get_field_index("input_ids"), t.schema.field("input_ids"),
                         new)
        pq.write_table(t, path, compression="zstd", row_group_size=64)
        f["sha256"], f["bytes"] = sha256(path), path.stat().st_size
    counts = np.load(dst / manifest["unigram"]["file"])
    big = np.zeros(BIG_V, np.int64)
    big[remap(np.arange(len(counts)))] = counts
    np.save(dst / manifest["unigram"]["file"], big)
    manifest["unigram"]["sha256"] = sha256(dst / manifest["unigram"]["file"])
    manifest["tokenizer"]["vocab_size"] = BIG_V
    manifest["config"]["tokenizer"]["vocab_size"] = BIG_V
    manifest["fingerprint"]["tokenizer"]["vocab_size"] = BIG_V
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    corpus = CorpusShards(str(dst))
    corpus.verify(checksums=True)
    assert corpus.vocab_size == BIG_V and len(corpus.unigram_counts()) == BIG_V
    assert max(int(r.input_ids.max()) for r in corpus.rows()) > 65_535
    return dst


def test_a_vocabulary_above_65536_is_written_as_int32_and_trained_on(big_corpus, tmp_path):
    rtd_dir = tmp_path / "rtd"
    manifest = generate(gen_argv(big_corpus, rtd_dir, f"tokenizer.vocab_size={BIG_V}",
                                 "corruption.replacement=uniform", "generate.epochs=1"))
    assert manifest["token_dtype"] == "<i4" and manifest["vocab_size"] == BIG_V
    corpus = {r.seq_id: r.input_ids for r in CorpusShards(str(big_corpus)).rows()}
    raw = {}  # position -> ids, by plain pyarrow + numpy as shards/README.md documents
    sampled = []
    for f in manifest["files"]:
        t = pq.read_table(rtd_dir / f["name"])
        for p, s, b, lb in zip(t["position"].to_pylist(), t["seq_id"].to_pylist(),
                               t["input_ids"].to_pylist(), t["labels"].to_pylist(), strict=True):
            assert len(b) % 4 == 0
            ids = np.frombuffer(b, "<i4")
            labels = np.unpackbits(np.frombuffer(lb, np.uint8), bitorder="little")[:len(ids)]
            assert len(ids) == len(corpus[s])
            assert np.array_equal(labels.astype(bool), ids != corpus[s])
            sampled += ids[labels == 1].tolist()
            raw[p] = ids
    assert len(raw) == len(corpus)
    sampled = np.asarray(sampled)
    assert sampled.min() >= NUM_SPECIAL and sampled.max() < BIG_V
    # Uniform over 5..69,999: ~6% of the draws land above 65,535 (thousands of draws here).
    assert (sampled > 65_535).sum() > 50

    cfg = load_config(TINY, [*SMALL, f"tokenizer.vocab_size={BIG_V}",
                             f"data.corpus_dir={big_corpus}", "train.mode=rtd",
                             f"train.rtd_dir={rtd_dir}", "train.max_steps=2",
                             "train.warmup_steps=1", "train.global_batch_size=64",
                             "train.micro_batch_size_per_rank=64"])
    one = Dist(0, 1, 0, torch.device("cpu"))
    task = RTDTask(cfg, one)
    big_rows = 0
    for step in range(2):
        b = task.micro_batch(step, 0, one)
        for i, g in enumerate(b["sample_ids"].tolist()):
            ids = raw[g]
            assert b["input_ids"][i, :len(ids)].tolist() == ids.tolist()
            assert (b["input_ids"][i, len(ids):] == PAD_ID).all()
            big_rows += int((ids > 65_535).any())
    assert big_rows > 0
