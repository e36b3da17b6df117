"""The per-element steps of pipeline.generate as plain functions (no Beam run): packing rows by
output part, a part's rows in position order, the row-group buffer, the atomic hashing writer,
the worker's device rule, the model-sharing settings and where one local worker runs."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline import gpu_slots
from pipeline.corrupt_write import CorruptionHandler, RowGroupBuffer
from pipeline.errors import GenerateError
from pipeline.filesystems import open_atomic
from pipeline.gpu_slots import claim_device_slot, worker_device
from pipeline.layout import Layout
from pipeline.packed_rows import PartRows, split_by_part
from pipeline.runners import _beam_log_level, one_worker_in_process, runs_locally
from tests.helpers import REPO, TINY
from trainer.config.load import load_config
from trainer.config.sections import ConfigError
from trainer.data.order import permute


def corpus_part(rng, first: int, rows: int, vocab: int):
    """A corpus part as AssignPositions reads it: seq_ids, list offsets, int32 token values."""
    lengths = rng.integers(1, 40, rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = rng.integers(0, vocab, int(offsets[-1])).astype(np.int32)
    return np.arange(first, first + rows), offsets, values


@pytest.mark.parametrize("vocab, dtype", [(600, "<u2"), (70_000, "<i4")])
def test_packed_parts_round_trip_in_position_order(vocab, dtype):
    rng = np.random.default_rng(0)
    n, layout = 500, Layout(num_sequences=500, batch_rows=7, rows_per_part=64)
    sequences, chunks = {}, {}
    for first, rows in [(0, 180), (180, 250), (430, 70)]:  # three corpus parts
        seq_ids, offsets, values = corpus_part(rng, first, rows, vocab)
        for i, s in enumerate(seq_ids):
            sequences[int(s)] = values[offsets[i]:offsets[i + 1]]
        positions = permute(seq_ids, n, 3, 1)
        for part, packed in split_by_part(positions, seq_ids, offsets, values, layout, dtype):
            assert all(isinstance(b, bytes) for b in packed)
            got = np.frombuffer(packed[0], "<i8")
            assert (got // 64 == part).all() and (np.diff(got) > 0).all()
            chunks.setdefault(part, []).append(packed)
    assert sorted(chunks) == list(range(layout.num_parts))
    order = permute(np.arange(n), n, 3, 1).argsort()  # seq_id at each position
    for part, packed in chunks.items():
        rows = PartRows.gather(1, part, packed[::-1], layout, dtype)  # any arrival order
        lo, hi = layout.part_range(part)
        assert len(rows) == hi - lo and rows.nbytes == sum(len(p[3]) for p in packed)
        batches = list(rows.batches(layout.batch_rows))
        assert [len(b[0]) for b in batches] == [7] * ((hi - lo) // 7) + (
            [(hi - lo) % 7] if (hi - lo) % 7 else [])
        positions = np.concatenate([b[0] for b in batches])
        assert positions.tolist() == list(range(lo, hi))
        seq_ids = np.concatenate([b[1] for b in batches])
        assert seq_ids.tolist() == order[lo:hi].tolist()
        for pos, sids, lengths, tokens in batches:
            assert tokens.dtype == np.dtype(dtype)
            cuts = np.cumsum(lengths)[:-1]
            for s, t in zip(sids, np.split(tokens, cuts), strict=True):
                assert np.array_equal(t, sequences[int(s)])


def test_a_part_with_missing_or_extra_positions_is_refused():
    layout = Layout(num_sequences=10, batch_rows=4, rows_per_part=5)

    def packed(positions):
        p = np.asarray(positions, "<i8")
        return (p.tobytes(), p.tobytes(), np.ones(len(p), "<i4").tobytes(),
                np.ones(len(p), "<u2").tobytes())

    PartRows.gather(0, 1, [packed([7, 8, 9]), packed([5, 6])], layout, "<u2")
    for bad in ([packed([5, 6, 7, 8])],  # missing
                [packed([5, 6, 7, 8, 9]), packed([9])],  # twice
                [packed([5, 6]), packed([9, 7, 8])],  # a chunk not sorted by position
                [packed([5, 6, 7, 8, 9, 10])]):  # another part's
        with pytest.raises(GenerateError, match=r"epoch 0 part 1: .*\[5, 10\).*--overwrite"):
            PartRows.gather(0, 1, bad, layout, "<u2")


def test_row_group_buffer_cuts_across_batches():
    buf = RowGroupBuffer()
    for start in (0, 3):  # two batches of 3 rows
        lengths = np.array([1, 2, 3])
        tokens = np.arange(start * 10, start * 10 + 6)
        buf.add(np.arange(start, start + 3), np.arange(start, start + 3) + 100, lengths, tokens,
                tokens % 2, np.full(3, 1.5, np.float32))
    positions, seq_ids, tokens, labels, temps = buf.take(4)
    assert positions == [0, 1, 2, 3] and seq_ids == [100, 101, 102, 103] and temps == [1.5] * 4
    assert [t.tolist() for t in tokens] == [[0], [1, 2], [3, 4, 5], [30]]
    assert [t.tolist() for t in labels] == [[0], [1, 0], [1, 0, 1], [0]]
    assert len(buf) == 2 and buf.take(4)[0] == [4, 5] and len(buf) == 0


def test_open_atomic_renames_on_success_and_removes_the_temp_on_error(tmp_path):
    target = tmp_path / "epoch=0000" / "part-00000.parquet"
    with open_atomic(str(target)) as sink:
        sink.write(b"abc")
        sink.write(b"def")
    assert target.read_bytes() == b"abcdef"
    assert sink.bytes == 6 and sink.sha256() == hashlib.sha256(b"abcdef").hexdigest()
    with pytest.raises(RuntimeError), open_atomic(str(target)) as sink:
        sink.write(b"partial")
        raise RuntimeError("worker died")
    assert target.read_bytes() == b"abcdef"  # the old file, and no temp left behind
    assert os.listdir(target.parent) == ["part-00000.parquet"]


def test_worker_device_rule():
    assert worker_device("cpu", 4, 3) == "cpu"
    assert worker_device("auto", 0, 3) == "cpu"
    assert [worker_device("auto", 2, s) for s in range(4)] == ["cuda:0", "cuda:1"] * 2
    assert worker_device("cuda", 3, 4) == "cuda:1"
    with pytest.raises(GenerateError, match="generate.device = 'cuda' but no CUDA device"):
        worker_device("cuda", 0, 0)


def test_device_slots_are_unique_per_machine_and_freed_on_exit(tmp_path):
    held = len(gpu_slots._HELD_SLOTS)
    try:
        assert [claim_device_slot(str(tmp_path)) for _ in range(2)] == [0, 1]
        child = [sys.executable, "-c", "import sys; from pipeline.gpu_slots import "
                 "claim_device_slot as c; print(c(sys.argv[1]))", str(tmp_path)]
        for _ in range(2):  # the first child's slot is free again once it exited
            out = subprocess.run(child, cwd=REPO, capture_output=True, text=True, check=True,
                                 env=dict(os.environ, PYTHONPATH=REPO))
            assert out.stdout.split()[-1] == "2"
    finally:
        for f in gpu_slots._HELD_SLOTS[held:]:
            f.close()
        del gpu_slots._HELD_SLOTS[held:]


def test_cuda_without_a_gpu_fails_in_the_worker_too(tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is visible")
    cfg = load_config(TINY, ["generate.device=cuda", "corruption.replacement=uniform"])
    handler = CorruptionHandler(cfg, Layout(10, 2, 5), 8000, str(tmp_path), "<u2")
    with pytest.raises(GenerateError, match="no CUDA device is visible to this worker"):
        handler.load_model()


@pytest.mark.parametrize("copies, replacement, shared, n", [
    (0, "aux", False, 1), (1, "aux", True, 1), (3, "aux", True, 3), (2, "uniform", False, 1)])
def test_model_copies_map_to_run_inference(copies, replacement, shared, n):
    cfg = load_config(TINY, [f"generate.model_copies={copies}",
                             f"corruption.replacement={replacement}"])
    handler = CorruptionHandler(cfg, Layout(10, 2, 5), 8000, "unused", "<u2")
    assert handler.share_model_across_processes() == shared and handler.model_copies() == n
    assert handler.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 1}


def test_model_copies_is_validated():
    with pytest.raises(ConfigError, match="generate.model_copies: must be >= 0"):
        load_config(TINY, ["generate.model_copies=-1"])


def test_runs_locally():
    assert runs_locally([]) and runs_locally(["--direct_num_workers=2"])
    assert runs_locally(["--runner", "DirectRunner"])
    assert runs_locally(["--runner=pipeline.runners.LocalRunner"])
    assert not runs_locally(["--runner", "DataflowRunner", "--project", "p"])
    assert not runs_locally(["--runner=FlinkRunner", "--flink_master=host:8081"])


def test_one_local_worker_runs_in_the_launcher(monkeypatch):
    """One local worker runs in the launcher's process (FnApiRunner in_memory), unless a
    running mode or another runner is named; several keep their processes."""
    monkeypatch.setattr("multiprocessing.cpu_count", lambda: 2)
    in_memory = "--direct_running_mode=in_memory"
    assert one_worker_in_process(["--direct_num_workers=1"])[0] == in_memory
    assert one_worker_in_process(["--direct_num_workers", "1", "--x"])[0] == in_memory
    assert one_worker_in_process(["--direct_num_workers=1",
                                  "--runner=pipeline.runners.LocalRunner"])[0] == in_memory
    for kept in (["--direct_num_workers=2"], [],  # [] is one per core: 2 here
                 ["--direct_num_workers=1", "--direct_running_mode=multi_processing"],
                 ["--direct_num_workers=1", "--runner", "DaskRunner"],
                 ["--direct_num_workers=1", "--runner", "DataflowRunner", "--project", "p"]):
        assert one_worker_in_process(kept) == kept
    monkeypatch.setattr("multiprocessing.cpu_count", lambda: 1)
    assert one_worker_in_process([])[0] == in_memory


def test_a_worker_in_the_launcher_logs_at_the_workers_level(caplog):
    """In the launcher's process, Beam's own records below --default_sdk_harness_log_level
    (CRITICAL by default) are dropped for the job, as a worker process would not log them;
    everyone else's records, and Beam's once the job is done, still are."""
    beam_file = os.path.join(os.sep, "x", "apache_beam", "ml", "inference", "base.py")

    def log(path: str, level: int = logging.WARNING) -> None:
        logging.getLogger().handle(logging.makeLogRecord(
            {"name": "root", "levelno": level, "levelname": logging.getLevelName(level),
             "pathname": path, "msg": f"from {path}"}))

    with caplog.at_level(logging.INFO), _beam_log_level("CRITICAL"):
        log(beam_file)
        log(beam_file, logging.CRITICAL)
        log("/x/pipeline/generate.py")
    log(beam_file)
    assert [r.getMessage() for r in caplog.records] == [
        f"from {beam_file}", "from /x/pipeline/generate.py", f"from {beam_file}"]
