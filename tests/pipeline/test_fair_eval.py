"""pipeline.fair_eval end to end: a real tiny MLM checkpoint (trainer.train) corrupts the test
corpus at T = 1 through the real Beam pipeline, then discriminators are scored on that set."""

from __future__ import annotations

import json
import os

import pytest
import torch

from pipeline.fair_eval import main
from tests.helpers import GENERATE_SMALL as SMALL
from tests.helpers import IN_MEMORY, RTD_KEYS, TINY, disc_batches, save_model
from tests.reference_metrics import disagreeing, rtd_reference
from trainer.config.load import load_config
from trainer.data.manifest import sha256_uri
from trainer.data.rtd_shards import RTDShards
from trainer.model.encoder_config import EncoderConfig
from trainer.model.heads import Discriminator
from trainer.modes.joint import JointModel
from trainer.pretrained import load_discriminator

pytestmark = pytest.mark.usefixtures("one_thread")


def sets(corpus_dir) -> list[str]:
    argv = []
    for s in [*SMALL, f"data.corpus_dir={corpus_dir}", "generate.batch_tokens=1024",
              "generate.part_rows=400", "generate.device=cpu"]:
        argv += ["--set", s]
    return argv


@pytest.fixture(scope="module")
def discriminators(tmp_path_factory) -> list[str]:
    """A standalone discriminator and a joint (electra) checkpoint's one, both real
    checkpoint folders written by trainer.checkpoint.save."""
    root = tmp_path_factory.mktemp("discs")
    cfg = load_config(TINY, [*SMALL, "train.mode=rtd"])
    torch.manual_seed(1)
    disc = save_model(root / "rtd", Discriminator(EncoderConfig.main(cfg)), cfg, "discriminator")
    joint_cfg = load_config(TINY, [*SMALL, "train.mode=electra", "aux.num_layers=1"])
    joint = save_model(root / "electra", JointModel(joint_cfg), joint_cfg, "joint")
    return [disc, joint]


@pytest.mark.slow
def test_fair_eval_scores_every_discriminator_on_one_t1_set(prepared, aux_checkpoint,
                                                            discriminators, tmp_path, capsys):
    corpus_dir, _, _ = prepared
    out_dir = tmp_path / "fair"
    argv = ["--config", TINY, *sets(corpus_dir), "--generator",
            os.path.dirname(os.path.dirname(aux_checkpoint)),  # a run folder: its latest
            "--checkpoint", discriminators[0], "--checkpoint", discriminators[1],
            "--out-dir", str(out_dir), "--max-sequences", "300",
            "--json", str(tmp_path / "fair.json"), *IN_MEMORY]
    assert main(argv) == 0, capsys.readouterr().err
    first = capsys.readouterr().out
    report = json.loads((tmp_path / "fair.json").read_text())

    # One set, named by the generator's content, corrupted by it at T = 1 for one epoch.
    sha = sha256_uri(os.path.join(aux_checkpoint, "state.pt"))
    rtd_dir = out_dir / f"step_00000004-{sha[:12]}-seed1"
    assert report["rtd_dir"] == str(rtd_dir) and os.listdir(out_dir) == [rtd_dir.name]
    rtd = RTDShards(str(rtd_dir))
    m = rtd.manifest
    assert m["epochs"] == 1 and m["schedule"]["schedule"] == "fixed" and m["seed"] == 1
    assert m["aux"]["state_sha256"] == sha and m["corruption"]["replacement"] == "aux"
    assert {r.temperature for r in rtd.rows(epoch=0)} == {1.0}

    rows = report["results"]
    assert [r["checkpoint"] for r in rows] == discriminators
    assert [r["model_kind"] for r in rows] == ["discriminator", "joint"]
    for r in rows:
        assert "mlm" not in r and list(r["rtd"]["epochs"]) == ["0"]
        got = r["rtd"]["all"]
        assert got["sequences"] == 300 and got["temperature"] == 1.0
        assert 0.02 < got["replaced_fraction"] < 0.15
    assert rows[0]["rtd"]["all"]["rtd_loss"] != rows[1]["rtd"]["all"]["rtd_loss"]
    table = first[first.index("RTD on"):]
    assert all(d in table for d in discriminators)

    # Every figure recomputed by tests.reference_metrics from each model's logits on the
    # first 300 positions of the set (in fair_eval's batches, so bit-identical logits): catches
    # a metric bug, the wrong set, epoch or count; a wrong definition must disagree.
    size = load_config(TINY, SMALL).train.micro_batch_size_per_rank
    for path, r in zip(discriminators, rows, strict=True):
        batches = disc_batches(load_discriminator(path), rtd, 0, 300, size)
        ref = rtd_reference(batches)
        for key in RTD_KEYS:
            assert r["rtd"]["all"][key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), key
        assert disagreeing(r["rtd"]["all"], rtd_reference(batches, count_specials=True),
                           ("tokens", "rtd_accuracy", "rtd_loss")) != []

    # A re-run reuses the set: generate is a no-op.
    files = {f["name"]: f["sha256"] for f in m["files"]}
    assert main(argv[:-len(IN_MEMORY) - 2] + IN_MEMORY) == 0
    assert "already holds this shard set" in capsys.readouterr().out
    assert {f["name"]: f["sha256"] for f in RTDShards(str(rtd_dir)).files} == files


def test_fair_eval_refuses_before_any_work(prepared, aux_checkpoint, discriminators,
                                           tmp_path, capsys):
    corpus_dir, _, _ = prepared
    base = ["--config", TINY, *sets(corpus_dir), "--out-dir", str(tmp_path / "fair"),
            *IN_MEMORY]
    cases = [
        (["--generator", aux_checkpoint, "--checkpoint", discriminators[0],
          "--set", "corruption.schedule=exponential"], "the fair-evaluation recipe sets"),
        (["--generator", aux_checkpoint, "--checkpoint", aux_checkpoint],
         "which has no discriminator"),
        (["--generator", discriminators[0], "--checkpoint", discriminators[0]],
         "which has no generator"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "fair").exists()
