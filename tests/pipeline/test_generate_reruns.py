"""pipeline.generate re-runs and errors: a re-run is a no-op, a different set is refused unless
--overwrite (which cleans), the fingerprint records what changes the bytes, user errors are
clear, a bad corpus is refused, and a killed run leaves no manifest and is completed by the
next one.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.generate import main, run
from pipeline.inspect import main as inspect_main
from tests.helpers import gen_argv, kill_9_when, part_started, shard_files
from trainer.data.manifest import ShardError
from trainer.data.rtd_shards import RTDShards

pytestmark = pytest.mark.usefixtures("one_thread")

# ---------------------------------------------------------------------------------------------
# Re-runs and errors
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_rerun_is_noop_different_refused_overwrite_cleans(prepared, tmp_path, capsys):
    corpus_dir, _, _ = prepared
    rtd_dir = tmp_path / "rtd"
    base = ["corruption.replacement=uniform", "generate.epochs=2"]
    run(gen_argv(corpus_dir, rtd_dir, *base))
    mtime = os.path.getmtime(rtd_dir / "manifest.json")
    capsys.readouterr()
    assert main(gen_argv(corpus_dir, rtd_dir, *base)) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert os.path.getmtime(rtd_dir / "manifest.json") == mtime

    assert main(gen_argv(corpus_dir, rtd_dir, *base, "generate.seed=1")) == 2
    err = capsys.readouterr().err
    assert "different rtd shard set" in err and "seed" in err and "--overwrite" in err

    # An interrupted run: no manifest, a temp file and a part of an epoch no longer wanted.
    os.remove(rtd_dir / "manifest.json")
    (rtd_dir / "epoch=0000" / ".tmp-part-00000.parquet-x").write_bytes(b"partial")
    (rtd_dir / "epoch=0009").mkdir()
    (rtd_dir / "epoch=0009" / "part-00000.parquet").write_bytes(b"stale")
    # Its plan.json and seals remain: a set in progress, which another plan (here another
    # generate.epochs) may replace only with --overwrite.
    one = gen_argv(corpus_dir, rtd_dir, "corruption.replacement=uniform", "generate.epochs=1")
    assert main(one) == 2
    err = capsys.readouterr().err
    assert "plan.json" in err and "epochs" in err and "--overwrite" in err
    m = run([*one, "--overwrite"])
    left = sorted(os.path.relpath(os.path.join(d, f), rtd_dir)
                  for d, _, fs in os.walk(rtd_dir) for f in fs)
    assert left == sorted(["manifest.json", "plan.json", "config.toml", "epoch=0000/_SEALED.json",
                           *(f["name"] for f in m["files"])])
    with open(rtd_dir / "manifest.json") as f:
        assert json.load(f)["epochs"] == 1


@pytest.mark.slow
def test_rerun_writes_identical_bytes(prepared, tmp_path):
    corpus_dir, _, _ = prepared
    argv = gen_argv(corpus_dir, tmp_path / "rtd", "corruption.replacement=uniform",
                    "generate.epochs=1")

    def files() -> dict[str, bytes]:
        return {str(p.relative_to(tmp_path)): p.read_bytes()
                for p in sorted((tmp_path / "rtd").glob("epoch=*/*.parquet"))}

    run(argv)
    first = files()
    run([*argv, "--overwrite"])
    assert files() == first and len(first) == 5


def test_fingerprint_records_what_changes_bytes(prepared, tmp_path, capsys):
    """batch_rows (from generate.batch_tokens) changes the dropout augmentations' bytes: a
    re-run with another is refused; generate.model_copies changes nothing: still a no-op."""
    corpus_dir, _, _ = prepared
    rtd_dir = tmp_path / "rtd"
    base = ["corruption.replacement=uniform", "generate.epochs=1"]
    m = run(gen_argv(corpus_dir, rtd_dir, *base))
    fp = m["fingerprint"]
    assert fp["batch_rows"] == 16 and fp["token_dtype"] == "<u2" and fp["rows_per_part"] == 200
    assert {"schema_version", "sampler", "row_group_rows"} <= set(fp)
    capsys.readouterr()
    assert main(gen_argv(corpus_dir, rtd_dir, *base, "generate.model_copies=2")) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(gen_argv(corpus_dir, rtd_dir, *base, "generate.batch_tokens=512")) == 2
    err = capsys.readouterr().err
    assert "different rtd shard set" in err and "batch_rows" in err and "--overwrite" in err
    # Another batch_tokens with the same batch_rows (1024 // 64 == 1050 // 64) is the same set.
    assert main(gen_argv(corpus_dir, rtd_dir, *base, "generate.batch_tokens=1050")) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_errors_are_clear(prepared, aux_checkpoint, tmp_path, capsys):
    corpus_dir, _, _ = prepared

    def fails(*sets, corpus=corpus_dir) -> str:
        assert main(gen_argv(corpus, tmp_path / "rtd", *sets)) == 2
        return capsys.readouterr().err

    # replacement = aux and no checkpoint
    assert "needs generate.aux_checkpoint" in fails("generate.aux_checkpoint=")
    assert "manifest.json" in fails("corruption.replacement=uniform",
                                    corpus=tmp_path / "nowhere")
    # A checkpoint whose meta says it holds no generator.
    fake = tmp_path / "disc"
    fake.mkdir()
    with open(os.path.join(aux_checkpoint, "meta.json")) as f:
        meta = json.load(f)
    (fake / "meta.json").write_text(json.dumps(dict(meta, model_kind="rtd", mode="rtd")))
    err = fails(f"generate.aux_checkpoint={fake}")
    assert "has no generator" in err and str(fake) in err
    # Vocabulary mismatch: the aux model's config says 700 tokens, the corpus has 600.
    meta["config"]["tokenizer"]["vocab_size"] = 700
    (fake / "meta.json").write_text(json.dumps(meta))
    err = fails(f"generate.aux_checkpoint={fake}")
    assert "700" in err and "600" in err
    assert "meta.json" in fails(f"generate.aux_checkpoint={tmp_path / 'none'}")
    err = fails("corruption.replacement=uniform", "tokenizer.vocab_size=8000")
    assert "8000" in err and "600" in err
    if not torch.cuda.is_available():
        err = fails("corruption.replacement=uniform", "generate.device=cuda")
        assert "CUDA" in err
    assert not os.path.exists(tmp_path / "rtd" / "manifest.json")


def test_bad_corpus_is_refused(prepared, tmp_path, capsys):
    """A corpus part whose bytes differ from its manifest, and a manifest with other special
    ids: clear errors, and no manifest is written."""
    corpus_dir, _, _ = prepared
    bad = tmp_path / "corpus"
    shutil.copytree(corpus_dir, bad)
    table = pq.read_table(bad / "part-00001.parquet")
    doc_ids = pa.array(np.asarray(table.column("doc_id")) + 1)
    pq.write_table(table.set_column(1, "doc_id", doc_ids), bad / "part-00001.parquet")
    argv = gen_argv(bad, tmp_path / "rtd", "corruption.replacement=uniform")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "part-00001.parquet" in err and "sha256" in err
    assert not os.path.exists(tmp_path / "rtd" / "manifest.json")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["tokenizer"]["special_ids"]["mask"] = 9
    (bad / "manifest.json").write_text(json.dumps(manifest))
    assert main(argv) == 2
    assert "special token ids" in capsys.readouterr().err
    assert main(gen_argv(corpus_dir, tmp_path / "rtd", "generate.epochs=0")) == 2
    assert "generate.epochs" in capsys.readouterr().err


def test_inspect_prints_summary(aux_rtd, prepared, capsys):
    rtd_dir, manifest = aux_rtd
    assert inspect_main([str(rtd_dir), "--verify"]) == 0
    out = capsys.readouterr().out
    assert manifest["aux"]["state_sha256"][:16] in out and "verified" in out
    epoch_lines = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(epoch_lines) == 2 and "2.0000 ->" in epoch_lines[0]
    assert inspect_main([str(prepared[0])]) == 0
    assert "corpus shard set" in capsys.readouterr().out


@pytest.mark.slow
def test_killed_run_leaves_no_manifest_and_rerun_completes(prepared, aux_checkpoint, tmp_path):
    """kill -9 in the middle of the Beam job: the folder reads as incomplete; the next run
    removes the leftovers and writes a complete set."""
    corpus_dir, _, _ = prepared
    rtd_dir = tmp_path / "rtd"
    sets = [f"generate.aux_checkpoint={aux_checkpoint}", "generate.epochs=3"]
    argv = gen_argv(corpus_dir, rtd_dir, *sets, beam=("--direct_num_workers=2",))
    # Killed once the Beam job has written a part or a part's temporary: the leftovers must
    # exist (fails if the kill landed before anything was written, or after the run finished)
    # and the re-run must clear the ones it does not rewrite.
    kill_9_when("pipeline.generate", argv, lambda: part_started(rtd_dir))
    leftovers = shard_files(rtd_dir)
    assert leftovers and not (rtd_dir / "manifest.json").exists()
    partial = RTDShards(str(rtd_dir))  # a set in progress: its plan, no manifest
    assert not partial.complete and partial.sealed_epochs() != [0, 1, 2]
    missing = next(e for e in range(3) if e not in partial.sealed_epochs())
    with pytest.raises(ShardError, match=f"epoch {missing} of .* is not sealed"):
        partial.read_range(missing, 0, 1)
    manifest = run(gen_argv(corpus_dir, rtd_dir, *sets))
    rtd = RTDShards(str(rtd_dir))
    rtd.verify(checksums=True)
    assert rtd.num_epochs == 3 and len(manifest["files"]) == 3 * len(rtd.epoch_files(0))
    assert shard_files(rtd_dir) == sorted(f["name"] for f in manifest["files"])  # no temps
    assert [r.position for r in rtd.rows(epoch=2)] == list(range(rtd.rows_per_epoch))
