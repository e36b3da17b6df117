"""Multi-rank start-up: the shard check runs before the process group, split over the ranks,
and train.dist_timeout_s bounds the waits. Real torchrun (gloo, 2 ranks); verification is made
slow on purpose (FAST_ELECTRA_TEST_VERIFY_DELAY_S sleeps per file checked) so that reading the
whole set on one rank takes twice the collective timeout, as at the paper's scale."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pytest

from tests.helpers import REPO, env, metrics, train_argv
from trainer import distributed
from trainer.config.load import build_config
from trainer.config.sections import ConfigError
from trainer.data.rtd_shards import TEST_VERIFY_DELAY_ENV

TIMEOUT_S = 5  # the collective timeout of both launches
WHOLE_SET_S = 10  # the slowed check of every file on one rank: twice the timeout


def _torchrun(module_argv: list[str], delay_s: float) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", *module_argv]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(env(), **{TEST_VERIFY_DELAY_ENV: str(delay_s)}))


def _delay(rtd_dir) -> tuple[int, float]:
    files = json.loads((rtd_dir / "manifest.json").read_text())["files"]
    assert len(files) >= 4  # enough files that a half-and-half split is nearly even
    return len(files), WHOLE_SET_S / len(files)


@pytest.mark.slow
def test_slow_shard_check_does_not_time_out_the_ranks(prepared, rtd_dir, tmp_path):
    """Each rank checks half the files (~5 s) before init_process_group, so they meet within
    the 5 s timeout, and the run trains to the end on 2 ranks."""
    corpus_dir, _, _ = prepared
    _, delay = _delay(rtd_dir)
    out = tmp_path / "run"
    argv = train_argv(corpus_dir, out, "train.mode=rtd", f"train.rtd_dir={rtd_dir}",
                      "train.max_steps=4", "train.global_batch_size=8",
                      "train.micro_batch_size_per_rank=4", "train.checkpoint_every=4",
                      "train.device=cpu", f"train.dist_timeout_s={TIMEOUT_S}")
    p = _torchrun(["trainer.train", *argv, "--verify-checksums"], delay)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "each 1/2" in p.stdout
    assert [r["step"] for r in metrics(out)][-1] == 4


@pytest.mark.slow
def test_old_order_times_out(rtd_dir):
    """Negative control: the same slowed check on rank 0 alone after the group started (the
    order the trainer had) leaves rank 1 in a collective past the 5 s timeout: the launch
    fails with gloo's timeout. Control of the control: without the delay the same driver
    passes, so the failure is the wait, not the driver."""
    _, delay = _delay(rtd_dir)
    argv = ["tests.trainer.dist_old_order", str(rtd_dir), str(TIMEOUT_S)]
    fast = _torchrun(argv, 0)
    assert fast.returncode == 0 and "all ranks passed" in fast.stdout, fast.stderr[-3000:]
    slow = _torchrun(argv, delay)
    assert slow.returncode != 0
    assert f"Timed out waiting {TIMEOUT_S * 1000}ms" in slow.stderr, \
        slow.stderr[-3000:]


def test_dist_timeout_reaches_init_process_group(monkeypatch):
    """train.dist_timeout_s becomes init_process_group's timeout (and None keeps torch's)."""
    seen = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda **kw: seen.append(kw["timeout"]))
    monkeypatch.setenv("WORLD_SIZE", "2")
    distributed.setup("cpu", 5.0)
    distributed.setup("cpu")
    assert seen == [timedelta(seconds=5), None]


@pytest.mark.parametrize("value", [0, -1, float("nan")])
def test_dist_timeout_must_be_positive(value):
    with pytest.raises(ConfigError, match="train.dist_timeout_s"):
        build_config({"train": {"dist_timeout_s": value}})
    assert build_config({"train": {"dist_timeout_s": 30}}).train.dist_timeout_s == 30
    assert build_config({}).train.dist_timeout_s == 1800


def test_sliced_verification_covers_every_file_once(rtd_dir, monkeypatch):
    """The ranks' slices partition the files: every file checked by exactly one rank; a set
    verified and marked in this process is not read again."""
    from trainer.data import rtd_shards

    checked = []
    real = rtd_shards.verify_files
    monkeypatch.setattr(rtd_shards, "verify_files",
                        lambda fs, path, root, entries, job, cs: (checked.extend(
                            e["name"] for e in entries), real(fs, path, root, entries, job, cs)))
    monkeypatch.setattr(rtd_shards, "_VERIFIED", {})
    shards = rtd_shards.RTDShards(str(rtd_dir))
    for rank in range(3):
        shards.verify(False, rank, 3)
    assert sorted(checked) == sorted(f["name"] for f in shards.files)
    checked.clear()
    shards.verify(False)  # not marked yet: read again
    assert len(checked) == len(shards.files)
    checked.clear()
    shards.verify(False)  # world = 1 marked it
    rtd_shards.RTDShards(str(rtd_dir)).verify(False)
    assert checked == []
    rtd_shards.RTDShards(str(rtd_dir)).verify(True)  # checksums were not checked yet
    assert len(checked) == len(shards.files)
