"""fast-electra evaluate on real checkpoints (written by the real trainer) and real shard sets: its
numbers equal the held-out evaluations the trainer logs, ROC-AUC equals a brute-force pairwise
count, and data the model cannot read is refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import LOGGED_KEYS, RTD_KEYS, TINY, disc_batches, save_model, train_argv
from tests.reference_metrics import disagreeing, mlm_reference, rtd_reference
from trainer import checkpoint
from trainer.config.load import load_config
from trainer.data.corpus_shards import CorpusShards
from trainer.data.rtd_shards import RTDShards
from trainer.distributed import Dist
from trainer.model.encoder_config import EncoderConfig
from trainer.model.heads import Discriminator
from trainer.modes.joint import JointModel
from trainer.modes.mlm import MLMTask
from trainer.pretrained import load_discriminator, load_generator
from trainer.tools.eval_metrics import AUCCounts, logit_keys, pairwise_auc
from trainer.tools.evaluate import main
from trainer.train import main as train_main

pytestmark = pytest.mark.usefixtures("one_thread")

EVAL_SEQUENCES = 120


def last_metrics(out_dir) -> dict:
    return json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[-1])


def gen_batches(model, cfg) -> list[dict]:
    """The generator's (B, T, V) logits on MLMTask's masked held-out batches (its fixed eval
    seed and split: the data fast-electra evaluate scores), as numpy arrays."""
    d = Dist(0, 1, 0, torch.device("cpu"))
    out = []
    for b in MLMTask(cfg, d).heldout_batches(d):
        with torch.no_grad():
            logits = model(b["input_ids"], b["attention_mask"]).float()
        out.append({"logits": logits.numpy(), "input_ids": b["input_ids"].numpy(),
                    "original_ids": b["original_ids"].numpy(),
                    "selected": b["selected"].numpy()})
    return out


def evaluate(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["--config", TINY, *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def disc_run(prepared, rtd_dir, tmp_path_factory):
    """A discriminator trained for 6 steps by the real trainer (rtd mode), at a learning rate
    high enough that it flags some tokens as replaced; epoch 1 of the set is never reached, so
    the trainer's last record holds its held-out eval_rtd_* on it."""
    corpus_dir, _, _ = prepared
    out = tmp_path_factory.mktemp("disc")
    rc = train_main(train_argv(
        corpus_dir, out, "train.mode=rtd", f"train.rtd_dir={rtd_dir}", "train.max_steps=6",
        "train.global_batch_size=16", "train.micro_batch_size_per_rank=16",
        "train.eval_every=6", f"train.eval_sequences={EVAL_SEQUENCES}",
        "train.checkpoint_every=6", "train.lr=3e-2"))
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def mlm_run(prepared, tmp_path_factory):
    """A generator trained for 4 steps by the real trainer (mlm mode) with a last eval."""
    corpus_dir, _, _ = prepared
    out = tmp_path_factory.mktemp("mlm")
    rc = train_main(train_argv(
        corpus_dir, out, "train.max_steps=4", "train.global_batch_size=8",
        "train.micro_batch_size_per_rank=8", "train.eval_every=4", "train.eval_sequences=20",
        "train.checkpoint_every=4"))
    assert rc == 0
    return out


def test_rtd_metrics_equal_the_trainers_held_out_eval(prepared, rtd_dir, disc_run,
                                                      tmp_path, capsys):
    corpus_dir, _, _ = prepared
    out_json = tmp_path / "eval" / "rtd.json"
    rc, out, err = evaluate(capsys, "--set", f"data.corpus_dir={corpus_dir}",
                            "--set", "train.micro_batch_size_per_rank=7",  # any batching
                            "--set", "train.global_batch_size=63",
                            "--checkpoint", str(disc_run), "--rtd-dir", str(rtd_dir),
                            "--max-sequences", str(EVAL_SEQUENCES), "--json", str(out_json))
    assert rc == 0, err
    result = json.loads(out_json.read_text())["results"][0]
    assert result["model_kind"] == "discriminator" and result["step"] == 6
    e0, e1, both = (result["rtd"]["epochs"]["0"], result["rtd"]["epochs"]["1"],
                    result["rtd"]["all"])
    logged = last_metrics(disc_run)
    # Epoch 0 fed the 6 training steps; epoch 1 did not.
    assert e0["trained_on"] and not e1["trained_on"]
    assert both["tokens"] == e0["tokens"] + e1["tokens"]
    assert both["sequences"] == 2 * EVAL_SEQUENCES
    assert "0*" in out and "RTD on" in out  # the table marks the trained-on epoch

    # Every figure against tests.reference_metrics on the same model's logits for the same
    # tokens (in the same batches of 7, so the logits are bit-identical); the trainer's logged
    # held-out eval (RTDTask.evaluate, batches of 16) against it too. Catches any metric
    # helper bug that fast-electra evaluate and the trainer share (both used rtd_counts).
    model = load_discriminator(result["checkpoint"])
    batches = disc_batches(model, RTDShards(str(rtd_dir)), 1, EVAL_SEQUENCES, 7)
    ref = rtd_reference(batches)
    for key in RTD_KEYS:
        assert e1[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-9), key
        if key in LOGGED_KEYS:
            assert logged[f"eval_{key}"] == pytest.approx(ref[key], rel=1e-5, abs=1e-9), key
    assert e1["rtd_auc_margin"] == 0
    assert 0.5 < ref["rtd_auc"] < 1.0  # the 6-step model already ranks replaced tokens higher
    # ... and flags some (lr 3e-2): P/R/F1 are not all 0, so their checks have power.
    assert 0 < ref["rtd_recall"] < 1 and 0 < ref["rtd_precision"] < 1
    assert ref["rtd_all_auc"] != ref["rtd_auc"]
    # Negative controls: a wrong definition must disagree with what evaluate reported.
    assert disagreeing(e1, rtd_reference(batches, count_specials=True),
                       ("tokens", "rtd_accuracy", "rtd_loss", "rtd_auc")) != []
    assert disagreeing(e1, rtd_reference(batches, count_padding=True),
                       ("all_tokens", "rtd_all_accuracy", "rtd_all_loss")) != []
    assert disagreeing(e1, rtd_reference(batches, threshold=0.5),
                       ("rtd_precision", "rtd_recall", "rtd_f1")) != []
    assert disagreeing(e1, rtd_reference(batches, positive=0),
                       ("rtd_precision", "rtd_recall", "rtd_f1")) != []


def test_auc_against_brute_force():
    rng = np.random.default_rng(0)
    labels = (rng.random(3000) < 0.2).astype(np.int64)
    raw = rng.normal(size=3000) * 3 + labels * 1.5  # (N,) separable in part
    fp32 = torch.tensor(raw, dtype=torch.float32)
    bf16 = torch.tensor(raw, dtype=torch.bfloat16).float()  # GPU autocast: many exact ties
    for logits, max_distinct in [(fp32, 1 << 23), (bf16, 1 << 23), (fp32, 500)]:
        counts = AUCCounts(max_distinct)
        for chunk in range(0, 3000, 700):  # several adds and merges, as over batches/epochs
            part = AUCCounts(max_distinct)
            part.add(logits[chunk:chunk + 700], torch.from_numpy(labels[chunk:chunk + 700]))
            counts.merge(part)
        auc, margin = counts.auc()
        brute = pairwise_auc(logits.numpy(), labels)
        if max_distinct > 3000:
            assert auc == pytest.approx(brute, abs=1e-12) and margin == 0.0
            assert len(counts.codes) <= 3000
        else:  # binned to stay under 500 distinct values: approximate, within its bound
            assert counts.shift > 0 and len(counts.codes) <= 500
            assert 0 < abs(auc - brute) <= margin < 0.05
    one_class = AUCCounts()
    one_class.add(torch.randn(10), torch.zeros(10, dtype=torch.long))
    assert one_class.auc() == (None, 0.0)


def test_logit_keys_are_strictly_monotone():
    values = torch.tensor([-float("inf"), -1e30, -3.5, -1.0, -1e-30, -0.0, 0.0, 1e-30, 0.25,
                           7.0, 1e30, float("inf")])
    keys = logit_keys(values)
    assert keys[5] == keys[6]  # -0.0 == +0.0
    assert (keys[1:] > keys[:-1]).sum() == len(values) - 2
    assert (keys[1:] >= keys[:-1]).all()


def test_mlm_metrics_equal_the_trainers_held_out_eval(prepared, mlm_run, capsys, tmp_path):
    corpus_dir, _, _ = prepared
    out_json = tmp_path / "mlm.json"
    rc, out, err = evaluate(capsys, "--set", f"data.corpus_dir={corpus_dir}",
                            "--set", "tokenizer.vocab_size=600",
                            "--set", "train.holdout_fraction=0.05",
                            "--set", "train.eval_sequences=20", "--checkpoint", str(mlm_run),
                            "--json", str(out_json))
    assert rc == 0, err
    m = json.loads(out_json.read_text())["results"][0]["mlm"]
    logged = last_metrics(mlm_run)
    # fast-electra evaluate and the trainer's logged held-out eval (both MLMTask.evaluate) against
    # tests.reference_metrics on the generator's full (B, T, V) logits for the same masked
    # held-out batches: catches a loss, argmax or unigram-baseline bug they share.
    cfg = load_config(TINY, [f"data.corpus_dir={corpus_dir}", "tokenizer.vocab_size=600",
                             "train.holdout_fraction=0.05", "train.eval_sequences=20"])
    checkpoint_path = json.loads(out_json.read_text())["results"][0]["checkpoint"]
    batches = gen_batches(load_generator(checkpoint_path), cfg)
    counts = CorpusShards(str(corpus_dir)).unigram_counts()
    ref = mlm_reference(batches, counts)
    assert m["masked_tokens"] == ref["masked_tokens"] > 50 and m["sequences"] == 20
    for key in ("mlm_loss", "mlm_accuracy", "unigram_loss"):
        assert m[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-9), key
        assert logged[f"eval_{key}"] == pytest.approx(ref[key], rel=1e-5, abs=1e-9), key
    assert 0 < ref["mlm_accuracy"] < 1 and ref["mlm_loss"] < ref["unigram_loss"] * 1.5
    # Negative controls: a wrong definition must disagree with what evaluate reported.
    assert disagreeing(m, mlm_reference(batches, counts, count_unselected=True),
                       ("mlm_loss", "mlm_accuracy", "unigram_loss")) != []
    assert disagreeing(m, mlm_reference(batches, counts, labels_from_input=True),
                       ("mlm_loss", "mlm_accuracy")) != []
    assert disagreeing(m, mlm_reference(batches, counts, smooth_unigram=False),
                       ("unigram_loss",)) != []
    assert "warning" not in out
    # A different held-out split is evaluated, with a warning that it is not the trained one.
    rc, out, err = evaluate(capsys, "--set", f"data.corpus_dir={corpus_dir}",
                            "--set", "tokenizer.vocab_size=600",
                            "--set", "train.holdout_fraction=0.1", "--checkpoint", str(mlm_run))
    assert rc == 0, err
    assert "warning" in out and "holdout_fraction = 0.05" in out


def test_joint_checkpoint_gives_both_and_several_rows(prepared, rtd_dir, disc_run,
                                                      tmp_path, capsys):
    corpus_dir, _, _ = prepared
    cfg = load_config(TINY, ["model.num_layers=2", "model.hidden_size=32", "model.num_heads=2",
                             "model.ffn_size=64", "aux.num_layers=1", "tokenizer.vocab_size=600",
                             "data.max_seq_len=64", "train.mode=electra"])
    torch.manual_seed(0)
    path = save_model(tmp_path / "joint", JointModel(cfg), cfg, "joint")
    rc, out, err = evaluate(capsys, "--set", f"data.corpus_dir={corpus_dir}",
                            "--set", "tokenizer.vocab_size=600",
                            "--set", "train.holdout_fraction=0.05", "--checkpoint", path,
                            "--checkpoint", str(disc_run), "--rtd-dir", str(rtd_dir),
                            "--epochs", "1", "--max-sequences", "32",
                            "--json", str(tmp_path / "both.json"))
    assert rc == 0, err
    joint, disc = json.loads((tmp_path / "both.json").read_text())["results"]
    assert set(joint) >= {"rtd", "mlm"} and "mlm" not in disc
    assert list(joint["rtd"]["epochs"]) == ["1"] and joint["rtd"]["all"]["sequences"] == 32
    assert "warning" in out  # the joint run held out 0.01 of the documents, not 0.05
    table = out[out.index("RTD on"):]
    assert path in table and checkpoint.find_latest(str(disc_run)) in table
    assert "MLM on the held-out documents" in table
    # The tiny corpus has too few documents for the default 1% hold-out: said, not crashed.
    rc, out, err = evaluate(capsys, "--set", f"data.corpus_dir={corpus_dir}",
                            "--set", "tokenizer.vocab_size=600", "--checkpoint", path,
                            "--only", "mlm")
    assert rc == 2 and "no held-out sequences" in err and "holdout_fraction = 0.01" in err


def test_unreadable_data_is_refused_by_name(prepared, rtd_dir, disc_run, tmp_path,
                                            capsys):
    corpus_dir, _, _ = prepared
    cfg = load_config(TINY, ["model.num_layers=1", "model.hidden_size=32", "model.num_heads=2",
                             "model.ffn_size=64", "tokenizer.vocab_size=700",
                             "train.mode=rtd"])
    path = save_model(tmp_path / "v700", Discriminator(EncoderConfig.main(cfg)), cfg,
                      "discriminator")
    common = ["--set", f"data.corpus_dir={corpus_dir}", "--rtd-dir", str(rtd_dir)]
    rc, _, err = evaluate(capsys, *common, "--checkpoint", path)
    assert rc == 2 and "Traceback" not in err
    assert "has a vocabulary of 600 tokens" in err and "has 700" in err and str(rtd_dir) in err
    rc, _, err = evaluate(capsys, *common, "--checkpoint", str(disc_run), "--epochs", "0,5")
    assert rc == 2 and "holds epochs 0..1, not 5" in err
    rc, _, err = evaluate(capsys, *common, "--checkpoint", str(disc_run), "--only", "mlm")
    assert rc == 2 and "holds only a discriminator" in err
    rc, _, err = evaluate(capsys, *common, "--checkpoint", str(tmp_path / "nowhere"))
    assert rc == 2 and "neither a checkpoint folder" in err
