"""``python -m bench.transfer --smoke``: the transfer bench end to end on the tests' small corpus
and aux (its sub-runs call the real entry points' main(argv)), on the real fortunes task.

What each check catches:
- a row per (encoder, budget) and scratch, each with the seeds' figures: a point dropped from
  the plan; scratch's probe is a random-initialised encoder's, not its anchor checkpoint's;
- the paired difference vs scratch recomputed here from the fine-tuning runs' own
  results.json files: a difference taken between unpaired seeds, or of the wrong runs;
- compute doubles with the budget: a budget that did not reach the pre-training run;
- resume: a second invocation starts nothing; with one fine-tuning result deleted, exactly
  that run starts again (the negative control: the evidence can show a re-run); with the 2x
  shard set deleted too, its finished pre-training run is reused as it is (a resume that
  regenerated the shards of a finished run would start generate/x2 as well);
- an --aux trained on another corpus's tokenizer is refused (exit 2, naming --aux) before any
  sub-run starts, while a copy of the aux's own corpus is accepted: a check on paths alone
  would refuse the copy, no check at all would fine-tune encoders that read the tasks through
  different vocabularies.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import MODEL_SMALL, REPO, need_file
from trainer.tools.finetune.real_tasks import FORTUNES_DIR

# slow: the transfer bench end to end in its own process.
pytestmark = pytest.mark.slow


def bench(out, corpus, aux) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    argv = [sys.executable, "-m", "bench.transfer", "--smoke", "--in-process", "--out",
            str(out), "--corpus", str(corpus), "--aux", aux, "--rtd", "", "--tasks",
            "fortunes", "--seeds", "0,1"]
    for s in MODEL_SMALL:
        argv += ["--set", s]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_transfer_bench_rows_pairing_and_resume(prepared, aux_checkpoint, tmp_path, one_thread):
    pytest.importorskip("matplotlib")
    need_file(os.path.join(FORTUNES_DIR, "computers"), "fortunes")
    out = tmp_path / "transfer"
    first = bench(out, prepared[0], aux_checkpoint)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    report = json.loads((out / "transfer.json").read_text())
    rows = report["tasks"]["fortunes"]
    assert set(rows) == {"rtd-x1", "rtd-x2", "mlm-x1", "mlm-x2", "scratch"}
    random_init = json.loads((out / "probe" / "fortunes" / "random-init.json").read_text())
    assert rows["scratch"]["probe"] == random_init  # not the anchor checkpoint's weights
    assert rows["rtd-x1"]["probe"] != random_init
    for name, row in rows.items():
        assert 0.0 <= row["probe"]["mean"] <= 1.0 and row["probe"]["majority"] == 0.2
        finals = []
        for seed in (0, 1):
            path = out / "finetune" / "fortunes" / name / f"seed{seed}" / "results.json"
            finals.append(json.loads(path.read_text())["final"]["dev_accuracy"])
        assert row["finetune"]["values"] == finals
    scratch = rows["scratch"]["finetune"]["values"]
    for name in ("rtd-x1", "rtd-x2", "mlm-x1", "mlm-x2"):
        want = [a - b for a, b in zip(rows[name]["finetune"]["values"], scratch, strict=True)]
        assert rows[name]["vs_scratch"]["values"] == pytest.approx(want)
    assert rows["rtd-x2"]["gflops"] == pytest.approx(2 * rows["rtd-x1"]["gflops"])
    assert rows["rtd-x2"]["updates"] == 2 * rows["rtd-x1"]["updates"] > 0
    md = (out / "transfer.md").read_text()
    assert md.count("| rtd | ") == 2 and md.count("| scratch | - | - |") == 1
    assert (out / "transfer.png").stat().st_size > 0

    again = bench(out, prepared[0], aux_checkpoint)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "bench.transfer: 0 sub-run(s) started" in again.stdout
    (out / "finetune" / "fortunes" / "mlm-x2" / "seed1" / "results.json").unlink()
    shutil.rmtree(out / "shards" / "x2")
    third = bench(out, prepared[0], aux_checkpoint)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "bench.transfer: 1 sub-run(s) started" in third.stdout
    assert "run finetune/fortunes/mlm-x2/seed1" in third.stdout
    assert not (out / "shards" / "x2").exists()


def test_transfer_bench_refuses_an_encoder_of_another_vocabulary(prepared, aux_checkpoint,
                                                                  tmp_path):
    from bench.transfer import tokenizer_matches

    same = tmp_path / "same"
    shutil.copytree(prepared[0], same)
    assert tokenizer_matches(str(prepared[0]), str(same))
    other = tmp_path / "other"
    shutil.copytree(prepared[0], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["tokenizer"]["sha256"] = "0" * 64  # another corpus's tokenizer
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert not tokenizer_matches(str(prepared[0]), str(other))
    out = tmp_path / "transfer"
    refused = bench(out, other, aux_checkpoint)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "--aux" in refused.stderr and "tokenizer" in refused.stderr
    assert "Traceback" not in refused.stderr and not (out / "runs").exists()
