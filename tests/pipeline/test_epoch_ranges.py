"""A shard set written epoch by epoch (pipeline/epoch_seal.py): plan.json first, one seal per
epoch as soon as its parts are in place, manifest.json once every epoch is sealed; epoch
ranges written in pieces, by disjoint runs at once, give the bytes of the set written at once;
overlapping live ranges and longer horizons are refused."""

from __future__ import annotations

import json
import os
import socket

import pytest

from pipeline.generate import main, run
from pipeline.inspect import main as inspect_main
from pipeline.output_lock import OutputLock
from tests.helpers import gen_argv
from trainer.data.manifest import ShardError
from trainer.data.rtd_shards import RTDShards
from trainer.data.sealed import PLAN, SEAL, plan_fingerprint

# slow: several multi-epoch generate runs, the module fixture's alone takes seconds.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

FOUR = ["corruption.replacement=uniform", "generate.epochs=4"]


@pytest.fixture(scope="module")
def at_once(prepared, tmp_path_factory):
    """The 4-epoch set written by one run: (folder, manifest)."""
    out = tmp_path_factory.mktemp("at_once") / "rtd"
    return out, run(gen_argv(prepared[0], out, *FOUR))


def files_of(root) -> dict[str, str]:
    return {f["name"]: f["sha256"] for f in RTDShards(str(root)).files}


def test_epochs_are_sealed_one_by_one_before_the_run_ends(at_once):
    """Each epoch's seal appears when its own parts are written, epoch 0's well before the
    manifest (the run's end); plan.json is older than every part. Catches: seals written in
    one step at the end of the run (the GroupByKey barrier of a single job)."""
    root, manifest = at_once
    seal_t = [os.path.getmtime(root / f"epoch={e:04d}" / SEAL) for e in range(4)]
    parts_t = {e: [os.path.getmtime(root / f["name"]) for f in manifest["files"]
                   if f["epoch"] == e] for e in range(4)}
    end = os.path.getmtime(root / "manifest.json")
    assert seal_t == sorted(seal_t)
    for e in range(3):
        assert max(parts_t[e]) <= seal_t[e] < min(parts_t[e + 1])
    assert os.path.getmtime(root / PLAN) <= min(parts_t[0])
    print(f"epoch 0 sealed {end - seal_t[0]:.2f}s before the run's end; seals at "
          f"{[round(t - seal_t[0], 2) for t in seal_t]}s")
    plan = json.loads((root / PLAN).read_text())
    assert {k: v for k, v in manifest.items() if k in plan} == plan  # the manifest's header
    seal = json.loads((root / "epoch=0000" / SEAL).read_text())
    assert seal["plan"] == plan_fingerprint(plan) and seal["epoch"] == 0
    assert [f["name"] for f in seal["files"]] == [f["name"] for f in manifest["files"]
                                                   if f["epoch"] == 0]


def test_a_set_written_in_pieces_is_the_set_written_at_once(prepared, at_once, tmp_path, capsys):
    """--epochs 0:1, then 2:4, then 1:2: same parts (sha256), same plan and manifest as the run
    that wrote all four; the set reads as in progress until the last epoch is sealed, and a
    sealed range is skipped. Catches: a schedule whose time axis is the range (other
    temperatures), a manifest written before every epoch is sealed."""
    root, manifest = at_once
    out = tmp_path / "rtd"
    first = run([*gen_argv(prepared[0], out, *FOUR), "--epochs", "0:1"])
    assert first["complete"] is False and first["sealed_epochs"] == [0]
    assert not (out / "manifest.json").exists()
    run([*gen_argv(prepared[0], out, *FOUR), "--epochs", "2:4"])
    partial = RTDShards(str(out))
    assert not partial.complete and partial.sealed_epochs() == [0, 2, 3]
    with pytest.raises(ShardError, match="epoch 1 of .* is not sealed .*--epochs 1:2"):
        partial.read_range(1, 0, 4)
    assert partial.read_range(3, 0, 4).positions.tolist() == [0, 1, 2, 3]
    capsys.readouterr()
    done = run([*gen_argv(prepared[0], out, *FOUR), "--epochs", "0:2"])
    assert "epoch(s) 0 of" in capsys.readouterr().out  # sealed: skipped
    assert done == manifest
    assert files_of(out) == files_of(root)
    assert (out / PLAN).read_bytes() == (root / PLAN).read_bytes()
    assert RTDShards(str(out)).fingerprint == RTDShards(str(root)).fingerprint


def test_disjoint_ranges_run_together_overlapping_ones_are_refused(prepared, at_once, tmp_path,
                                                                   capsys):
    """A live run holding epoch 2 (its lock, held here) blocks a range that overlaps it (exit
    2, naming the holder, nothing deleted there) but not a disjoint one. Catches: one lock per
    folder (the disjoint run refused), no lock per epoch (the overlap accepted)."""
    out = tmp_path / "rtd"
    (out / "epoch=0002").mkdir(parents=True)
    (out / "epoch=0002" / "part-00000.parquet").write_bytes(b"the live run's part")
    with OutputLock(str(out / "epoch=0002"), "generate"):
        assert main([*gen_argv(prepared[0], out, *FOUR), "--epochs", "1:4"]) == 2
        err = capsys.readouterr().err
        for what in (f"{out}/epoch=0002", f"pid {os.getpid()}", f"host {socket.gethostname()}",
                     "generate run"):
            assert what in err, (what, err)
        assert (out / "epoch=0002" / "part-00000.parquet").read_bytes() == b"the live run's part"
        assert main([*gen_argv(prepared[0], out, *FOUR), "--epochs", "0:2"]) == 0
        assert (out / "epoch=0002" / "part-00000.parquet").exists()  # not cleared: locked
    assert RTDShards(str(out)).sealed_epochs() == [0, 1]
    assert main([*gen_argv(prepared[0], out, *FOUR), "--epochs", "2:4"]) == 0  # the lock is free
    assert files_of(out) == files_of(at_once[0])


def test_a_longer_horizon_is_another_plan(prepared, tmp_path, capsys):
    """generate.epochs is the schedule's time axis: more epochs into a set in progress are
    refused with the fix, and so is a range past the horizon."""
    out = tmp_path / "rtd"
    run([*gen_argv(prepared[0], out, *FOUR), "--epochs", "0:1"])
    assert main([*gen_argv(prepared[0], out, *FOUR, "generate.epochs=6"), "--epochs",
                 "4:6"]) == 2
    err = capsys.readouterr().err
    assert "differs in: epochs" in err and "another folder" in err and "--overwrite" in err
    assert main([*gen_argv(prepared[0], out, *FOUR), "--epochs", "3:6"]) == 2
    err = capsys.readouterr().err
    assert "past the plan's horizon generate.epochs = 4" in err and "generate.epochs = 6" in err
    assert "Traceback" not in err
    assert inspect_main([str(out)]) == 2  # a reader of complete sets refuses it clearly
    err = capsys.readouterr().err
    assert "still being generated: epoch(s) [0] of 4 sealed" in err and "Traceback" not in err
    for bad in ("2:2", "x", "1-3"):
        assert main([*gen_argv(prepared[0], out, *FOUR), "--epochs", bad]) == 2
        assert "--epochs" in capsys.readouterr().err
