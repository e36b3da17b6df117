"""rtd training on a shard set that is still being generated (trainer.data.sealed): real
``trainer.train`` processes started with only epoch 0 sealed while real ``pipeline.generate``
processes write epochs 1..3, compared with the same run on the set written at once (metrics
and final weights bit-identical), also across a kill -9 of the producer mid-epoch and its
re-run; and the negative controls: no waiting (train.wait_for_epochs_s = 0) stops with the
message instead of reading, and an unsealed epoch's planted part is never read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from pipeline.generate import run as generate
from pipeline.output_lock import OutputLock
from tests.helpers import (
    REPO,
    gen_argv,
    run_train,
    timeless_metrics,
    train_argv,
    train_proc,
)
from trainer.checkpoint import find_latest, load_state

# slow: runs that follow a live generate producer, one killed with kill -9.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

FOUR = ["corruption.replacement=uniform", "generate.epochs=4"]
BATCH = 64


def plan_steps(corpus_dir) -> int:
    """Steps that reach into epoch 2 (epochs 0..2 trained, epoch 3 held out)."""
    n = json.loads((corpus_dir / "manifest.json").read_text())["num_sequences"]
    return (2 * n + n // 2) // BATCH


def rtd_run(corpus_dir, rtd_dir, out_dir, *extra) -> list[str]:
    steps = plan_steps(corpus_dir)
    return train_argv(corpus_dir, out_dir, "train.mode=rtd", f"train.rtd_dir={rtd_dir}",
                      f"train.max_steps={steps}", f"train.global_batch_size={BATCH}",
                      "train.micro_batch_size_per_rank=32", "train.log_every=4",
                      f"train.eval_every={steps}", f"train.checkpoint_every={steps}",
                      "train.eval_sequences=64", *extra)


def weights(out_dir) -> dict[str, torch.Tensor]:
    path = os.path.join(find_latest(str(out_dir)), "state.pt")
    return load_state(path, path)["model"]


def same_run(a, b) -> None:
    assert timeless_metrics(a) == timeless_metrics(b)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory):
    """The run on the set written at once: (corpus, its rtd folder, the run folder)."""
    corpus_dir = prepared[0]
    base = tmp_path_factory.mktemp("reference")
    generate(gen_argv(corpus_dir, base / "rtd", *FOUR))
    p = run_train(rtd_run(corpus_dir, base / "rtd", base / "run"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert any("eval_rtd_loss" in r for r in timeless_metrics(base / "run"))  # epoch 3 read
    return corpus_dir, base / "rtd", base / "run"


def start_generate(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.generate", *argv], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


class Lines:
    """A process's stdout, collected line by line by a thread, so a test can wait for one."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(proc.stdout),
                                       daemon=True)
        self.thread.start()

    def wait_for(self, text: str, proc: subprocess.Popen, timeout: float = 120) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = [line for line in list(self.lines) if text in line]
            if found:
                return found[0]
            assert proc.poll() is None, f"exited {proc.returncode}: {proc.stderr.read()[-3000:]}"
            time.sleep(0.05)
        raise AssertionError(f"no line with {text!r}: {self.lines[-20:]}")


def test_a_run_follows_the_producer_and_never_reads_an_unsealed_epoch(reference, tmp_path):
    """Epoch 0 sealed; epoch 1's folder holds a planted garbage part and its lock is held
    here (a live producer). The trainer starts, trains epoch 0 and waits for epoch 1, saying
    so (parts present, the holder's pid), without reading the planted part (reading it would
    stop the run: it is no Parquet). Then a real generate takes the lock over and writes
    epochs 1..3 while the trainer waits for each. The run equals the run on the finished set,
    held-out evaluation included. Catches: a trainer that opens unsealed epochs, one that
    stops instead of waiting, a producer that cannot take over, any drift in order or
    weights."""
    corpus_dir, _, ref_run = reference
    rtd = tmp_path / "rtd"
    generate([*gen_argv(corpus_dir, rtd, *FOUR), "--epochs", "0:1"])
    (rtd / "epoch=0001").mkdir()
    (rtd / "epoch=0001" / "part-00000.parquet").write_bytes(b"half a part")
    lock = OutputLock(str(rtd / "epoch=0001"), "generate").__enter__()
    trainer = train_proc(rtd_run(corpus_dir, rtd, tmp_path / "run"))
    out = Lines(trainer)
    try:
        line = out.wait_for("waiting for epoch 1 of", trainer)
        assert "1/" in line and f"pid {os.getpid()}" in line, line
        time.sleep(1.0)
        assert trainer.poll() is None  # still waiting, not failed on the planted part
    finally:
        lock.release()
    producer = start_generate([*gen_argv(corpus_dir, rtd, *FOUR), "--epochs", "1:4"])
    _, err = producer.communicate(timeout=300)
    assert producer.returncode == 0, err[-3000:]
    _, err = trainer.communicate(timeout=300)
    out.thread.join(timeout=10)
    assert trainer.returncode == 0, err[-3000:]
    assert any("epoch 1 of" in line and "is sealed after" in line for line in out.lines)
    assert (rtd / "manifest.json").exists()
    same_run(tmp_path / "run", ref_run)


def test_a_producer_killed_mid_epoch_and_rerun_gives_the_same_run(reference, tmp_path):
    """kill -9 of the generate writing epochs 1..3 once a part of epoch 2 exists (epoch 2
    not sealed), then the same range again: the trainer waits through the gap and finishes
    as on the finished set."""
    corpus_dir, _, ref_run = reference
    rtd = tmp_path / "rtd"
    generate([*gen_argv(corpus_dir, rtd, *FOUR), "--epochs", "0:1"])
    argv = [*gen_argv(corpus_dir, rtd, *FOUR), "--epochs", "1:4"]
    producer = start_generate(argv)
    deadline = time.time() + 120
    while not (rtd / "epoch=0001" / ".output-lock").exists() and time.time() < deadline:
        time.sleep(0.01)
    trainer = train_proc(rtd_run(corpus_dir, rtd, tmp_path / "run"))
    while not list(rtd.glob("epoch=0002/part-*")) and time.time() < deadline:
        time.sleep(0.01)
    assert producer.poll() is None and not (rtd / "epoch=0002" / "_SEALED.json").exists()
    os.killpg(producer.pid, signal.SIGKILL)
    producer.wait()
    time.sleep(1.0)
    assert trainer.poll() is None  # waits through the gap
    rerun = start_generate(argv)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    out, err = trainer.communicate(timeout=300)
    assert trainer.returncode == 0, err[-3000:]
    same_run(tmp_path / "run", ref_run)


def test_a_run_that_does_not_wait_stops_with_the_fix(reference, tmp_path):
    """train.wait_for_epochs_s = 0 on a set with epoch 1 unsealed (a planted part in it): exit
    2 naming the epoch and the generate command, no traceback, and no update of epoch 1
    data; the same with a short wait and no producer."""
    corpus_dir, _, _ = reference
    rtd = tmp_path / "rtd"
    generate([*gen_argv(corpus_dir, rtd, *FOUR), "--epochs", "0:1"])
    (rtd / "epoch=0001").mkdir()
    (rtd / "epoch=0001" / "part-00000.parquet").write_bytes(b"half a part")
    for wait, why in (("0", "does not wait"), ("2", "no live generate run holds it")):
        p = run_train(rtd_run(corpus_dir, rtd, tmp_path / f"run{wait}",
                              f"train.wait_for_epochs_s={wait}"))
        assert p.returncode == 2, p.stderr[-3000:]
        err = p.stderr
        assert "Traceback" not in err and "error: epoch 1 of the rtd shard set" in err, err
        assert why in err and "1/" in err
        assert f"fast-electra generate --config {rtd}/config.toml --epochs 1:2" in err
        assert "not a readable Parquet" not in err
