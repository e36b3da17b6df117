"""The shard formats as documented (shards/README.md), read with raw pyarrow and numpy only and
compared with the project's readers: an encode/decode mistake made symmetrically in
trainer/data/ (both sides agree with each other, not with the spec) fails here. Also the
readers' refusals of a corpus longer than the model's sequence length, and the CI switch that
turns a skip for a missing optional module into a failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import REPO, TINY
from trainer.config.load import load_config
from trainer.data.corpus_shards import open_corpus
from trainer.data.manifest import ShardError
from trainer.data.rtd_shards import RTDShards
from trainer.errors import UserError
from trainer.modes.rtd import open_rtd
from trainer.tokenizer import NUM_SPECIAL

pytestmark = pytest.mark.usefixtures("one_thread")


def raw_corpus(corpus_dir) -> dict[int, np.ndarray]:
    """seq_id -> input_ids of every corpus row, by plain pq.read_table."""
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    out = {}
    for f in manifest["files"]:
        t = pq.read_table(corpus_dir / f["name"])
        ids_type = t.schema.field("input_ids").type
        assert pa.types.is_list(ids_type) and ids_type.value_type == pa.int32()
        for s, ids in zip(t["seq_id"].to_pylist(), t["input_ids"].to_pylist(), strict=True):
            out[s] = np.asarray(ids, np.int64)
    return out


def test_raw_rtd_columns_decode_as_documented_and_equal_the_reader(prepared, rtd_dir):
    corpus_dir, _, _ = prepared
    corpus = raw_corpus(corpus_dir)
    manifest = json.loads((rtd_dir / "manifest.json").read_text())
    dtype = manifest["token_dtype"]
    assert dtype == "<u2"  # vocab 600 <= 65536
    n = len(corpus)
    reader = RTDShards(str(rtd_dir))
    seen = {0: [], 1: []}
    replaced = tokens = 0
    assert len(manifest["files"]) > 4  # several parts per epoch
    for f in manifest["files"]:
        t = pq.read_table(rtd_dir / f["name"])
        assert t.schema.field("position").type == pa.int64()
        assert t.schema.field("seq_id").type == pa.int64()
        assert t.schema.field("input_ids").type == pa.binary()
        assert t.schema.field("labels").type == pa.binary()
        assert t.schema.field("temperature").type == pa.float32()
        positions = t["position"].to_numpy()
        # Rows sorted by position, exactly the manifest entry's dense range.
        assert positions.tolist() == list(range(f["position_start"], f["position_end"]))
        assert t.num_rows == f["rows"] > 0
        seq_ids = t["seq_id"].to_numpy()
        seen[f["epoch"]] += seq_ids.tolist()
        got = reader.read_range(f["epoch"], f["position_start"], f["position_end"])
        assert got.positions.tolist() == positions.tolist()
        assert got.seq_ids.tolist() == seq_ids.tolist()
        rows = zip(seq_ids.tolist(), t["input_ids"].to_pylist(), t["labels"].to_pylist(),
                   t["temperature"].to_pylist(), got.input_ids, got.labels,
                   got.temperature.tolist(), strict=True)
        for seq_id, id_bytes, label_bytes, temp, r_ids, r_labels, r_temp in rows:
            ids = np.frombuffer(id_bytes, dtype)
            bits = np.unpackbits(np.frombuffer(label_bytes, np.uint8), bitorder="little")
            assert len(label_bytes) == -(-len(ids) // 8)
            assert not bits[len(ids):].any()  # np.packbits pads with zeros
            labels = bits[:len(ids)]
            assert np.array_equal(r_ids, ids) and np.array_equal(r_labels, labels)
            assert r_temp == temp
            orig = corpus[seq_id]
            assert len(ids) == len(orig)
            # A label exactly where the token differs from the corpus token...
            assert np.array_equal(labels.astype(bool), ids != orig)
            # ... and never a special id there (nor anywhere the corpus had a normal token).
            assert (ids[labels == 1] >= NUM_SPECIAL).all()
            assert np.array_equal(ids[orig < NUM_SPECIAL], orig[orig < NUM_SPECIAL])
            replaced += int(labels.sum())
            tokens += len(ids)
    for e in (0, 1):  # each epoch holds every seq_id once
        assert sorted(seen[e]) == list(range(n))
    assert seen[0] != seen[1]  # two different orders
    assert 0.05 < replaced / tokens < 0.15


def seq_len_config(prepared, *sets: str):
    corpus_dir, _, _ = prepared
    return load_config(TINY, [f"data.corpus_dir={corpus_dir}", "tokenizer.vocab_size=600",
                              *sets])


def test_open_corpus_refuses_sequences_longer_than_data_max_seq_len(prepared):
    _, manifest, _ = prepared
    assert manifest["max_seq_len"] == 64
    assert open_corpus(seq_len_config(prepared, "data.max_seq_len=64")).max_seq_len == 64
    with pytest.raises(ShardError, match=r"up to 64 tokens.*data\.max_seq_len = 32"):
        open_corpus(seq_len_config(prepared, "data.max_seq_len=32"))


def test_open_rtd_refuses_sequences_longer_than_data_max_seq_len(prepared, rtd_dir):
    ok = open_rtd(seq_len_config(prepared, "data.max_seq_len=64", f"train.rtd_dir={rtd_dir}"))
    assert ok.rows_per_epoch > 0
    with pytest.raises(UserError, match=r"up to 64 tokens.*data\.max_seq_len = 32"):
        open_rtd(seq_len_config(prepared, "data.max_seq_len=32", f"train.rtd_dir={rtd_dir}"))


@pytest.mark.slow
def test_require_extras_turns_a_missing_import_skip_into_a_failure(tmp_path):
    test = tmp_path / "test_needs_extra.py"
    test.write_text("import pytest\n\n\ndef test_x():\n"
                    "    pytest.importorskip('fast_electra_no_such_module')\n")
    env = {k: v for k, v in os.environ.items() if k != "FAST_ELECTRA_REQUIRE_EXTRAS"}
    env["PYTHONPATH"] = REPO
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p",
           "no:cacheprovider", "--rootdir", str(tmp_path), str(test)]
    plain = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and "1 skipped" in plain.stdout, plain.stdout[-2000:]
    env["FAST_ELECTRA_REQUIRE_EXTRAS"] = "1"
    strict = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert strict.returncode == 1 and "1 failed" in strict.stdout, strict.stdout[-2000:]
    assert "FAST_ELECTRA_REQUIRE_EXTRAS=1: could not import" in strict.stdout
