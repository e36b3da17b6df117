"""The shard readers: CorpusShards and RTDShards refuse incomplete or altered shard sets with a
message naming the file; RTDShards returns exactly the rows of its files for any range, decodes
each row group once for a rank's consecutive micro-batches, and is safe to share by threads."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.helpers import (
    RTD_SET_EPOCHS,
    RTD_SET_GROUP_ROWS,
    RTD_SET_PART_ROWS,
    RTD_SET_ROWS,
    bare_rtd_rows,
    write_rtd_set,
)
from trainer.data.corpus_shards import CorpusShards
from trainer.data.manifest import ShardError
from trainer.data.rtd_format import RTDBatch, rtd_part_name
from trainer.data.rtd_shards import RTDShards


@pytest.fixture
def corpus_copy(prepared, tmp_path):
    corpus_dir, manifest, _ = prepared
    copy = tmp_path / "corpus"
    shutil.copytree(corpus_dir, copy)
    return copy, manifest


def test_reader_api(prepared):
    corpus_dir, manifest, _ = prepared
    corpus = CorpusShards(str(corpus_dir))
    assert corpus.num_sequences == manifest["num_sequences"]
    assert corpus.vocab_size == 600 and corpus.max_seq_len == 64
    assert corpus.read_table(0).num_rows == manifest["files"][0]["rows"]
    first = next(corpus.rows())
    assert (first.seq_id, first.doc_id) == (0, 0) and first.input_ids.dtype.name == "int32"


def test_missing_manifest_reads_as_incomplete(corpus_copy):
    copy, _ = corpus_copy
    (copy / "manifest.json").unlink()
    with pytest.raises(ShardError, match="no manifest.json: the corpus shard set is incomplete"):
        CorpusShards(str(copy))


def test_verify_finds_missing_changed_and_truncated_files(corpus_copy):
    copy, manifest = corpus_copy
    name = manifest["files"][1]["name"]
    CorpusShards(str(copy)).verify(checksums=True)

    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / name).write_bytes(bytes(data))
    CorpusShards(str(copy)).verify()  # metadata still fine: only a checksum pass sees it
    with pytest.raises(ShardError, match=f"{name}: sha256 .* differs"):
        CorpusShards(str(copy)).verify(checksums=True)

    (copy / name).unlink()
    with pytest.raises(ShardError, match=f"{name} is listed in the manifest but missing"):
        CorpusShards(str(copy)).verify()

    m = json.loads((copy / "manifest.json").read_text())
    m["files"].pop(1)
    m["files"][0]["rows"] += 1
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShardError, match="rows, the manifest says"):
        CorpusShards(str(copy)).verify()


def test_wrong_kind_or_version(corpus_copy):
    copy, _ = corpus_copy
    m = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(dict(m, schema_version=99)))
    with pytest.raises(ShardError, match="schema_version 99"):
        CorpusShards(str(copy))
    (copy / "manifest.json").write_text(json.dumps(dict(m, kind="rtd")))
    with pytest.raises(ShardError, match="holds a 'rtd' shard set, not 'corpus'"):
        CorpusShards(str(copy))


# ---------------------------------------------------------------------------------------------
# RTDShards: a synthetic shard set, written here with the real encoding, so the reader is tested
# against a bare pyarrow read of its files with row groups and files of awkward sizes.
# ---------------------------------------------------------------------------------------------

# The set tests.helpers.write_rtd_set writes by default.
N, EPOCHS, PART_ROWS, GROUP_ROWS = (RTD_SET_ROWS, RTD_SET_EPOCHS, RTD_SET_PART_ROWS,
                                   RTD_SET_GROUP_ROWS)


@pytest.fixture(scope="module")
def rtd_set(tmp_path_factory):
    return write_rtd_set(tmp_path_factory.mktemp("rtd") / "rtd")


def assert_rows_equal(got, want) -> None:
    assert len(got) == len(want)
    for r, (position, seq_id, ids, labels, temperature) in zip(got, want, strict=True):
        assert (r.position, r.seq_id, r.temperature) == (position, seq_id, temperature)
        assert r.input_ids.dtype == np.int32 and np.array_equal(r.input_ids, ids)
        assert r.labels.dtype == np.uint8 and np.array_equal(r.labels, labels)


def test_rtd_reads_equal_a_bare_read_across_row_groups_and_files(rtd_set):
    rtd = RTDShards(str(rtd_set))
    for e in range(EPOCHS):
        want = bare_rtd_rows(rtd_set, e)
        assert_rows_equal(list(rtd.rows(epoch=e)), want)
        assert_rows_equal(list(rtd.rows(epoch=e, start=17, end=211, chunk=13)), want[17:211])
        # Consecutive 32-row ranges, offset so that they straddle row groups and files.
        for lo in range(7, N, 32):
            hi = min(lo + 32, N)
            assert_rows_equal(list(rtd.read_range(e, lo, hi).rows()), want[lo:hi])
            table = rtd.read_range_table(e, lo, hi)
            assert table.column("position").to_pylist() == list(range(lo, hi))
    assert len(rtd.read_range(0, 5, 5)) == 0 and rtd.read_range_table(1, N, N).num_rows == 0
    with pytest.raises(ShardError, match=rf"position range \[0, {N + 1}\) is outside"):
        rtd.read_range(0, 0, N + 1)
    with pytest.raises(ShardError, match="holds epochs 0..1, not 2"):
        rtd.read_range(2, 0, 1)


def rank_ranges(size: int, rank: int, world: int) -> list[tuple[int, int, int]]:
    """(epoch, start, end) of every micro-batch rank ``rank`` of ``world`` reads, in order:
    its slice of each global batch of ``size * world`` rows (an epoch's last may be short)."""
    return [(e, lo, min(lo + size, N)) for e in range(EPOCHS)
            for lo in range(rank * size, N, size * world)]


def groups_of(e: int, lo: int, hi: int) -> set[tuple[int, int]]:
    """(epoch, first position) of the synthetic set's row groups holding [lo, hi) of ``e``."""
    starts = [p + g for p in range(0, N, PART_ROWS)
              for g in range(0, min(PART_ROWS, N - p), GROUP_ROWS)]
    ends = starts[1:] + [N]
    return {(e, a) for a, b in zip(starts, ends, strict=True) if a < hi and lo < b}


@pytest.mark.parametrize("rank,world", [(0, 1), (1, 2)])
def test_each_row_group_is_decoded_once_over_consecutive_micro_batches(rtd_set, rank, world):
    size = 32 // world
    ranges = rank_ranges(size, rank, world)
    touched = [groups_of(*r) for r in ranges]
    rtd = RTDShards(str(rtd_set))
    batches = [rtd.read_range(*r) for r in ranges]
    assert rtd.decoded_row_groups == len(set().union(*touched))
    # Negative control: with no cache (what decoding per micro-batch does) a row group is
    # decoded again for every micro-batch that touches it.
    uncached = RTDShards(str(rtd_set), cached_row_groups=0)
    again = [uncached.read_range(*r) for r in ranges]
    per_batch = sum(map(len, touched))
    assert uncached.decoded_row_groups == per_batch > 2 * rtd.decoded_row_groups
    for a, b in zip(batches, again, strict=True):
        assert_rows_equal(list(a.rows()), [(r.position, r.seq_id, r.input_ids, r.labels,
                                            r.temperature) for r in b.rows()])


def test_a_file_whose_row_count_differs_is_refused_at_its_first_read(rtd_set, tmp_path):
    copy = tmp_path / "rtd"
    shutil.copytree(rtd_set, copy)
    bad = rtd_part_name(1, 1)
    table = pq.read_table(copy / bad)
    pq.write_table(table.slice(0, table.num_rows - 1), copy / bad, row_group_size=GROUP_ROWS)
    rtd = RTDShards(str(copy))  # a rank that did not verify: no footer read yet
    assert len(rtd.read_range(1, 0, PART_ROWS)) == PART_ROWS  # other files read fine
    with pytest.raises(ShardError, match=f"{bad} has {PART_ROWS - 1} rows, the manifest says "
                                         f"{PART_ROWS}; re-run fast-electra generate --overwrite"):
        rtd.read_range(1, PART_ROWS - 10, PART_ROWS + 10)
    with pytest.raises(ShardError, match=f"{bad} has {PART_ROWS - 1} rows"):
        RTDShards(str(copy)).verify()  # what the verifying rank sees up front
    (copy / bad).unlink()
    with pytest.raises(ShardError, match=f"{bad} is listed in the manifest but missing"):
        RTDShards(str(copy)).read_range(1, PART_ROWS, PART_ROWS + 1)


def test_rtd_schema_version_1_is_refused_with_regenerate(rtd_set, tmp_path):
    copy = tmp_path / "rtd"
    shutil.copytree(rtd_set, copy)
    m = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(dict(m, schema_version=1)))
    with pytest.raises(ShardError, match="rtd schema_version 1 is not the supported 2.*"
                                         "regenerate it.*fast-electra generate --config C "
                                         "--overwrite"):
        RTDShards(str(copy))


def test_concurrent_readers_of_one_shard_set(rtd_set):
    """The trainer's prefetch thread and the main thread (evaluation) share one reader."""
    rtd = RTDShards(str(rtd_set), cached_row_groups=2)
    want = {e: bare_rtd_rows(rtd_set, e) for e in range(EPOCHS)}
    errors = []

    def read(e: int, step: int) -> None:
        try:
            for _ in range(3):
                for lo in range(0, N, step):
                    got = rtd.read_range(e, lo, min(lo + step, N))
                    assert_rows_equal(list(got.rows()), want[e][lo:lo + step])
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(e, step)) for e, step in ((0, 16), (1, 7))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_rtd_batch_slices_concatenates_and_stays_read_only(rtd_set):
    rtd = RTDShards(str(rtd_set))
    whole = rtd.read_range(0, 0, 60)
    rows = list(whole.rows())
    part = whole[10:30]
    assert part.positions.tolist() == list(range(10, 30)) and part.tokens is whole.tokens
    assert_rows_equal(list(part.rows()), [(r.position, r.seq_id, r.input_ids, r.labels,
                                           r.temperature) for r in rows[10:30]])
    joined = RTDBatch.concat([whole[50:60], whole[0:5]])
    assert joined.positions.tolist() == [*range(50, 60), *range(5)]
    assert joined.offsets[0] == 0 and joined.offsets[-1] == len(joined.tokens)
    # The per-row constructor (what callers that cut batches themselves use) is the same.
    rebuilt = RTDBatch(part.positions, part.seq_ids, part.input_ids, part.labels,
                       part.temperature)
    assert np.array_equal(rebuilt.tokens, part.tokens[part.offsets[0]:part.offsets[-1]])
    assert_rows_equal(list(rebuilt.rows()), [(r.position, r.seq_id, r.input_ids, r.labels,
                                              r.temperature) for r in part.rows()])
    with pytest.raises(ValueError, match="read-only"):
        whole.tokens[0] = 1  # the reader's cached row group: nobody may alter it
