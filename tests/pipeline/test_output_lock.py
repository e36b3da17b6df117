"""Shard-set folders shared by concurrent processes: the output lock of prepare/generate
(pipeline/output_lock.py) with real `python -m pipeline.generate` processes, its takeover
after kill -9, and the readers' check that the set they read was not replaced under them
(trainer.data.manifest.ManifestWatch)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from pipeline.generate import main as generate_main
from pipeline.output_lock import LOCK_FILE, OutputLock
from pipeline.prepare import main as prepare_main
from pipeline.shard_sets import holds_output_locks, prepare_output
from tests.helpers import REPO, gen_argv, kill_9_when, prepare_argv, train_argv, train_proc
from trainer.data.corpus_shards import CorpusShards
from trainer.data.manifest import ShardError
from trainer.data.rtd_shards import RTDShards

pytestmark = pytest.mark.usefixtures("one_thread")

UNIFORM = ["corruption.replacement=uniform", "generate.epochs=4"]


def snapshot(root) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, fs in os.walk(root) for f in fs}


def part_written(rtd_dir):
    return lambda: any(rtd_dir.glob("epoch=*/part-*.parquet"))


def locks_in(rtd_dir) -> list:
    """Output locks left in a shard-set folder (generate holds one per epoch it writes)."""
    return [*rtd_dir.glob(LOCK_FILE), *rtd_dir.glob(f"epoch=*/{LOCK_FILE}")]


def start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.generate", *argv], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for(ready, proc: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)


@pytest.fixture(scope="module")
def solo(prepared, tmp_path_factory):
    """The set a run of UNIFORM writes alone (in-process): the bytes a run must produce."""
    rtd_dir = tmp_path_factory.mktemp("solo") / "rtd"
    assert generate_main(gen_argv(prepared[0], rtd_dir, *UNIFORM)) == 0
    return rtd_dir, {f["name"]: f["sha256"] for f in RTDShards(str(rtd_dir)).files}


@pytest.mark.slow
def test_a_second_generate_into_a_live_runs_folder_is_refused_and_deletes_nothing(
        prepared, solo, tmp_path, capsys):
    """A second generate (another seed, --overwrite: the most destructive case) started into
    the folder of a live one is refused, naming the live run, and changes no byte there.
    Catches: no lock (the second deletes the live run's parts: the snapshot differs, and the
    first run's set fails its checksums or differs from the solo run), a lock that is taken
    after prepare_output's deletions, a message without host/pid/start time. The first run is
    stopped (SIGSTOP) while the second runs, so the overlap is certain, not a matter of
    timing; the control at the end runs the refused command line again once the first run is
    done: it succeeds, so the refusal was the live run's lock and nothing else."""
    corpus_dir = prepared[0]
    rtd_dir = tmp_path / "rtd"
    first = start(gen_argv(corpus_dir, rtd_dir, *UNIFORM))
    second_argv = [*gen_argv(corpus_dir, rtd_dir, *UNIFORM, "generate.seed=1"), "--overwrite"]
    try:
        wait_for(part_written(rtd_dir), first)
        os.killpg(first.pid, signal.SIGSTOP)
        assert first.poll() is None, "generate finished before it could be stopped"
        before = snapshot(rtd_dir)
        assert any(name.startswith("epoch=") for name in before)  # the live run's files
        assert "manifest.json" not in before  # what made the old protocol delete them

        second = subprocess.run([sys.executable, "-m", "pipeline.generate", *second_argv],
                                cwd=REPO, capture_output=True, text=True, timeout=300,
                                env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1"))
        assert first.poll() is None  # still alive (stopped) when the second was refused
        assert snapshot(rtd_dir) == before, "the second run changed the live run's folder"
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert second.returncode == 2, second.stderr[-2000:]
    holder = json.loads(before[f"epoch=0000/{LOCK_FILE}"])  # a lock per epoch it writes
    assert holder["pid"] == first.pid
    err = second.stderr
    assert "Traceback" not in err and err.startswith("error: ")
    for what in (str(rtd_dir), f"pid {first.pid}", f"host {socket.gethostname()}",
                 f"started {holder['started']}", "generate run", "another folder"):
        assert what in err, (what, err)

    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    rtd = RTDShards(str(rtd_dir))
    rtd.verify(checksums=True)
    assert {f["name"]: f["sha256"] for f in rtd.files} == solo[1]
    assert not locks_in(rtd_dir)  # released at the end of the run

    assert generate_main(second_argv) == 0  # control: the same command, no live run
    assert RTDShards(str(rtd_dir)).manifest["seed"] == 1
    assert "stale lock" not in capsys.readouterr().out  # a released lock is not "taken over"


@pytest.mark.slow
def test_a_killed_runs_lock_is_taken_over(prepared, solo, tmp_path, capsys):
    """kill -9 leaves the lock file of a dead process; the next run says it takes it over,
    removes the leftovers and writes the set the solo run writes. Catches: a stale lock that
    blocks every later run (exit 2), a takeover without its log line, a lock file left
    behind after the run. The asserts before the re-run prove the kill landed mid-write."""
    corpus_dir = prepared[0]
    rtd_dir = tmp_path / "rtd"
    argv = gen_argv(corpus_dir, rtd_dir, *UNIFORM)
    kill_9_when("pipeline.generate", argv, part_written(rtd_dir))
    holder = json.loads((rtd_dir / "epoch=0000" / LOCK_FILE).read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(holder["pid"], 0)  # its holder is dead
    assert not (rtd_dir / "manifest.json").exists() and any(rtd_dir.glob("epoch=*/*"))

    capsys.readouterr()
    assert generate_main(argv) == 0
    out = capsys.readouterr().out
    assert f"taking over the stale lock {rtd_dir / 'epoch=0000' / LOCK_FILE}" in out
    assert f"pid {holder['pid']} on host {holder['host']}" in out
    rtd = RTDShards(str(rtd_dir))
    rtd.verify(checksums=True)
    assert {f["name"]: f["sha256"] for f in rtd.files} == solo[1]
    assert not locks_in(rtd_dir)


def test_prepare_is_refused_while_the_folder_is_locked_and_locks_are_released(
        prepared, corpus_inputs, solo, tmp_path, capsys):
    """prepare takes the same lock (an OutputLock held here, in another open file description,
    conflicts as one in another process does): refused, naming this process, nothing written.
    Then the lock is released however a job ends: after a UserError (a different set refused
    without --overwrite) and after any other exception. Catches: prepare without the lock, a
    lock leaked by a failed job (the next run in this process would be refused)."""
    corpus_dir = tmp_path / "corpus"
    with OutputLock(str(corpus_dir), "generate"):
        assert prepare_main(prepare_argv(corpus_inputs[0], corpus_dir)) == 2
        err = capsys.readouterr().err
        assert f"generate run pid {os.getpid()} on host {socket.gethostname()}" in err
        assert os.listdir(corpus_dir) == [LOCK_FILE]
    assert not corpus_dir.exists() or os.listdir(corpus_dir) == []

    rtd_dir = solo[0]
    assert generate_main(gen_argv(prepared[0], rtd_dir, *UNIFORM, "generate.seed=5")) == 2
    assert "different rtd shard set" in capsys.readouterr().err
    assert not locks_in(rtd_dir)

    @holds_output_locks
    def crashing_job():
        prepare_output(str(tmp_path / "x"), "rtd", {}, False, [], "test")
        assert (tmp_path / "x" / LOCK_FILE).exists()
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        crashing_job()
    assert not (tmp_path / "x" / LOCK_FILE).exists()
    with OutputLock(str(tmp_path / "x"), "test"):  # free again
        pass
    with pytest.raises(RuntimeError, match="holds_output_locks"):
        prepare_output(str(tmp_path / "y"), "rtd", {}, False, [], "test")


def test_a_reader_stops_when_its_set_is_overwritten(prepared, solo, tmp_path):
    """A reader (what the rtd trainer uses) of a set that generate --overwrite replaces with
    another seed stops at its next read with an error naming the file and the fix: in a file
    it already has open (a new row group) and in one it opens next. The new set has the same
    file names and row counts and other bytes (asserted), so the older checks (row counts
    against the manifest) could not see it: without the new check the reader would return
    the new set's rows, or on an object store a mix of both."""
    rtd_dir = tmp_path / "rtd"
    shutil.copytree(solo[0], rtd_dir)
    reader = RTDShards(str(rtd_dir))
    group = reader.manifest["layout"]["row_group_rows"]
    reader.read_range(0, 0, 4)  # opens epoch 0's first part
    old = reader.files

    assert generate_main([*gen_argv(prepared[0], rtd_dir, *UNIFORM, "generate.seed=1"),
                          "--overwrite"]) == 0
    new = RTDShards(str(rtd_dir)).files
    assert [(f["name"], f["rows"]) for f in new] == [(f["name"], f["rows"]) for f in old]
    assert all(a["sha256"] != b["sha256"] for a, b in zip(old, new, strict=True))

    first = old[0]["name"]
    with pytest.raises(ShardError) as e:
        reader.read_range(0, group, group + 4)  # the open part's next row group
    msg = str(e.value)
    assert msg.startswith(f"{rtd_dir}/{first}: the rtd shard set in {rtd_dir} was replaced")
    assert "--overwrite" in msg and "another folder" in msg and "start a new run" in msg
    with pytest.raises(ShardError, match=f"{rtd_dir}/epoch=0001/part-00000.parquet: .* "
                                         "replaced while this process was reading it"):
        reader.read_range(1, 0, 4)


def test_corpus_reader_tells_a_rewrite_of_the_same_set_from_a_replacement(prepared, tmp_path):
    """The check compares the manifest's content once its (size, mtime) changed: a manifest
    rewritten with the same bytes (a re-run that wrote the same set) is no replacement, one
    with other content is, and so is a missing one (a replacement under way). Catches a check
    on mtime alone (false alarm on the rewrite) and one on the fingerprint read at open only
    (no alarm)."""
    corpus_dir = tmp_path / "corpus"
    shutil.copytree(prepared[0], corpus_dir)
    corpus = CorpusShards(str(corpus_dir))
    manifest = corpus_dir / "manifest.json"
    text = manifest.read_text()
    rows = corpus.read_table(0).num_rows

    time.sleep(0.01)  # a new mtime even on a coarse clock: what makes the content read matter
    (corpus_dir / "m.tmp").write_text(text)
    os.replace(corpus_dir / "m.tmp", manifest)
    assert corpus.read_table(0).num_rows == rows
    assert sum(1 for _ in corpus.rows()) == corpus.num_sequences

    manifest.write_text(json.dumps(dict(json.loads(text), num_documents=1)))
    with pytest.raises(ShardError, match="corpus shard set .* was replaced .* changed"):
        corpus.read_table(0)
    manifest.unlink()
    with pytest.raises(ShardError, match=r"manifest.json is gone: e.g. fast-electra prepare "
                                         "--overwrite"):
        next(iter(corpus.rows()))


@pytest.mark.slow
def test_a_training_run_stops_when_its_set_is_overwritten(prepared, solo, tmp_path):
    """The real consumer: `trainer.train` in rtd mode on a set that generate --overwrite
    replaces (another seed) mid-run exits 2 with the replaced-set error, no traceback, before
    its last step. The trainer is stopped (SIGSTOP) while the overwrite runs, after it logged
    a step, so the replacement surely lands mid-run. Catches: a reader that trains on the new
    rows (exit 0) or dies on a raw pyarrow/IO error."""
    rtd_dir = tmp_path / "rtd"
    shutil.copytree(solo[0], rtd_dir)
    rtd = RTDShards(str(rtd_dir))
    steps = rtd.num_epochs * rtd.rows_per_epoch // 8
    out_dir = tmp_path / "run"
    trainer = train_proc(train_argv(prepared[0], out_dir, "train.mode=rtd",
                                    f"train.rtd_dir={rtd_dir}", f"train.max_steps={steps}",
                                    "train.global_batch_size=8",
                                    "train.micro_batch_size_per_rank=8", "train.log_every=10",
                                    f"train.checkpoint_every={steps}"))
    try:
        wait_for(lambda: (out_dir / "metrics.jsonl").exists()
                 and (out_dir / "metrics.jsonl").stat().st_size, trainer)
        os.kill(trainer.pid, signal.SIGSTOP)
        assert trainer.poll() is None, "the trainer finished before it could be stopped"
        assert generate_main([*gen_argv(prepared[0], rtd_dir, *UNIFORM, "generate.seed=1"),
                              "--overwrite"]) == 0
    finally:
        os.kill(trainer.pid, signal.SIGCONT)
    out, err = trainer.communicate(timeout=300)
    assert trainer.returncode == 2, err[-3000:]
    assert "Traceback" not in err
    assert f"the rtd shard set in {rtd_dir} was replaced while this process was reading" in err
    logged = [json.loads(line)["step"] for line in open(out_dir / "metrics.jsonl")]
    assert max(logged) < steps
