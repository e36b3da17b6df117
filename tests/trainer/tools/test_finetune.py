"""Fine-tuning: task files in every format, errors that name file:row, metrics against hand
computations, layer-wise learning rates, and real runs from a real discriminator checkpoint
(saved with trainer.checkpoint.save on the `prepared` corpus, with its real tokenizer)."""

from __future__ import annotations

import json
import os
import random
import re

import numpy as np
import pytest
import torch

from tests.helpers import REPO, SMALL, TINY, write_task_file
from trainer import checkpoint
from trainer.config.load import load_config, to_dict
from trainer.config.sections import ConfigError
from trainer.data.manifest import TOKENIZER_FILE
from trainer.errors import UserError
from trainer.model.encoder import Encoder
from trainer.model.encoder_config import EncoderConfig
from trainer.model.heads import Discriminator
from trainer.tokenizer import CLS_ID, SEP_ID, load_tokenizer
from trainer.tools.finetune.config import FinetuneConfig, load_finetune_config
from trainer.tools.finetune.data import encode, read_rows, truncate_pair
from trainer.tools.finetune.inputs import open_pretrained
from trainer.tools.finetune.metrics import average_ranks, f1, mcc, pearson, spearman
from trainer.tools.finetune.model import FinetuneModel, param_groups
from trainer.tools.finetune.run import main, run

pytestmark = pytest.mark.usefixtures("one_thread")

KEYWORD = "the"


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def test_metrics_against_hand_computed_values():
    gold = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    pred = np.array([1, 1, 0, 0, 0, 1, 0, 1])  # tp 3, fn 1, fp 1, tn 3
    assert f1(pred, gold, 2) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert mcc(pred, gold, 2) == pytest.approx((3 * 3 - 1 * 1) / np.sqrt(4 * 4 * 4 * 4))
    assert mcc(np.zeros(4, int), np.array([0, 1, 0, 1]), 2) == 0.0  # constant prediction
    # 3 classes, confusion (gold rows) [[1,1,0],[1,1,0],[0,1,1]]: per-class F1 = 2/4, 2/5,
    # 2/3 (macro = their mean). MCC by Gorodkin's formula with c = 3 correct of s = 6,
    # predicted counts p = (2, 3, 1), true counts t = (2, 2, 2).
    g3, p3 = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 0, 1, 2])
    assert f1(p3, g3, 3) == pytest.approx((2 / 4 + 2 / 5 + 2 / 3) / 3)
    assert mcc(p3, g3, 3) == pytest.approx((3 * 6 - (2 * 2 + 3 * 2 + 1 * 2))
                                           / np.sqrt((36 - (4 + 9 + 1)) * (36 - 12)))

    assert average_ranks(np.array([10.0, 20, 20, 5, 20])).tolist() == [2, 4, 4, 1, 4]
    x, y = np.array([1.0, 2, 2, 3]), np.array([1.0, 3, 2, 4])
    # ranks x = 1, 2.5, 2.5, 4; y = 1, 3, 2, 4 -> Pearson of the ranks by hand: 0.9486833
    assert spearman(x, y) == pytest.approx(3 / np.sqrt(10), rel=1e-9)
    assert pearson(np.array([1.0, 2, 3]), np.array([2.0, 4, 7])) == pytest.approx(
        np.corrcoef([1, 2, 3], [2, 4, 7])[0, 1])


# ---------------------------------------------------------------------------------------------
# Optimiser
# ---------------------------------------------------------------------------------------------

def test_layer_wise_lr_decay_follows_electra():
    cfg = EncoderConfig(vocab_size=600, num_layers=2, hidden_size=32, num_heads=2, ffn_size=64,
                        max_seq_len=64)
    model = FinetuneModel(Encoder(cfg), 2, FinetuneConfig(lr=1.0, layer_decay=0.5))
    lr = {name: g["lr"] for g in param_groups(model, FinetuneConfig(lr=1.0, layer_decay=0.5))
          for name in g["names"]}
    assert lr["head.out_proj.weight"] == lr["head.dense.bias"] == 1.0
    assert lr["encoder.blocks.1.attn.qkv.weight"] == 0.5 ** 2
    assert lr["encoder.blocks.0.ffn.up.weight"] == 0.5 ** 3
    assert lr["encoder.word_emb.weight"] == lr["encoder.emb_ln.weight"] == 0.5 ** 4
    assert lr["encoder.rel_bias"] == 0.5 ** 4
    assert len(lr) == len(list(model.parameters()))
    groups = param_groups(model, FinetuneConfig(lr=1.0, layer_decay=0.5, weight_decay=0.1))
    decays = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert decays["encoder.blocks.0.ffn.up.weight"] == 0.1
    assert decays["encoder.blocks.0.ffn.up.bias"] == decays["encoder.rel_bias"] == 0.0


def test_config_errors_name_the_key(tmp_path):
    task = tmp_path / "t.toml"
    task.write_text('[task]\ntext_a = "s"\n[grid]\nlr = [1e-4, -1.0]\n')
    with pytest.raises(ConfigError, match="finetune.lr"):
        from trainer.tools.finetune.config import grid_points
        grid_points(load_finetune_config(task))
    with pytest.raises(ConfigError, match="unknown key.*finetune.lrate"):
        load_finetune_config(task, ["finetune.lrate=1"])
    with pytest.raises(ConfigError, match="task.metric.*accuracy, f1, mcc"):
        load_finetune_config(task, ["task.metric=spearman"])
    with pytest.raises(ConfigError, match="grid.warmup"):
        load_finetune_config(task, ["grid.warmup=[0.1]"])


# ---------------------------------------------------------------------------------------------
# Real runs
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def disc_checkpoint(prepared, tmp_path_factory):
    """A real discriminator checkpoint (random weights) on the prepared corpus."""
    corpus_dir, _, _ = prepared
    cfg = load_config(TINY, [*SMALL, "train.mode=rtd", f"data.corpus_dir={corpus_dir}"])
    torch.manual_seed(0)
    model = Discriminator(EncoderConfig.main(cfg))
    out = str(tmp_path_factory.mktemp("disc"))
    meta = {"step": 1, "mode": "rtd", "config": to_dict(cfg), "model_kind": "discriminator"}
    checkpoint.save(out, 1, {"model": model.state_dict()}, meta,
                    checkpoint.SaveContext.single_process())
    return out, str(corpus_dir)


def keyword_task(prose: list[str], n: int, seed: int) -> list[dict]:
    """Real prose snippets; label "yes" where the word KEYWORD was inserted (snippets that
    already hold it are skipped), "no" otherwise: learnable, balanced."""
    rng = random.Random(seed)
    words = [w for doc in prose for w in doc.split()]
    out = []
    while len(out) < n:
        i = rng.randrange(len(words) - 10)
        snippet = words[i:i + rng.randint(5, 10)]
        if any(re.sub(r"\W", "", w).lower() == KEYWORD for w in snippet):
            continue
        positive = len(out) % 2 == 0
        if positive:
            snippet.insert(rng.randrange(len(snippet) + 1), KEYWORD)
        out.append({"sentence": " ".join(snippet).replace("\t", " "),
                    "label": "yes" if positive else "no"})
    return out


@pytest.fixture(scope="module")
def keyword_files(prose, tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    train = write_task_file(root / "train.tsv", keyword_task(prose, 640, 0))
    dev = write_task_file(root / "dev.jsonl", keyword_task(prose, 200, 1))
    test = write_task_file(root / "test.parquet",
                           [{"sentence": r["sentence"], "label": -1}  # as GLUE test exports
                            for r in keyword_task(prose, 10, 2)])
    task = root / "keyword.toml"
    task.write_text(f'extends = "{os.path.join(REPO, "configs", "finetune", "base.toml")}"\n'
                    '[task]\nname = "keyword"\ntext_a = "sentence"\n'
                    '[finetune]\nbatch_size = 16\nepochs = 3\nlr = 2e-3\nlayer_decay = 0.9\n'
                    'eval_batch_size = 100\n')
    return str(task), train, dev, test


def finetune_argv(disc_checkpoint, keyword_files, out_dir, *extra: str) -> list[str]:
    ckpt, _ = disc_checkpoint
    task, train, dev, test = keyword_files
    return ["--checkpoint", ckpt, "--task", task, "--train", train, "--dev", dev,
            "--out-dir", str(out_dir), *extra]


@pytest.mark.slow
def test_finetune_learns_a_keyword_task(disc_checkpoint, keyword_files, tmp_path, capsys):
    out = tmp_path / "run"
    test = keyword_files[3]
    results = run(finetune_argv(disc_checkpoint, keyword_files, out, "--test", test))
    assert results["labels"] == ["no", "yes"]
    # Chance is 0.5 (balanced classes); measured: 0.5, 0.99, 0.995 over 3 epochs.
    assert results["final"]["dev_accuracy"] >= 0.85, results["epochs"]
    assert set(results["best"]) >= {"dev_accuracy", "dev_f1", "dev_mcc", "train_loss"}
    assert len(results["epochs"]) == 3 and results["steps"] == 3 * 40
    for name in ("config.toml", "labels.json", "metrics.jsonl", "results.json"):
        assert (out / name).is_file()
    preds = (out / "test_predictions.tsv").read_text().splitlines()
    assert preds[0] == "index\tprediction" and len(preds) == 11
    assert {p.split("\t")[1] for p in preds[1:]} <= {"no", "yes"}
    # Same inputs and settings: a finished run is not repeated.
    again = run(finetune_argv(disc_checkpoint, keyword_files, out, "--test", test))
    assert "is finished; skipping" in capsys.readouterr().out
    assert again == json.loads((out / "results.json").read_text())
    # Different settings in that folder: refused, named.
    code = main(finetune_argv(disc_checkpoint, keyword_files, out, "--test", test,
                              "--set", "finetune.lr=1e-3"))
    assert code == 2
    assert "different config.finetune" in capsys.readouterr().err


def test_pretrained_weights_are_loaded_and_from_scratch_is_not(disc_checkpoint):
    ckpt, _ = disc_checkpoint
    saved = torch.load(os.path.join(checkpoint.find_latest(ckpt), "state.pt"))["model"]
    pre = open_pretrained(ckpt, None, from_scratch=False)
    for name, value in pre.encoder.state_dict().items():
        assert torch.equal(value, saved[f"encoder.{name}"]), name
    assert open_pretrained(ckpt, None, from_scratch=True).encoder is None
    assert pre.sp.get_piece_size() == pre.encoder_cfg.vocab_size == 600


@pytest.mark.slow
def test_grid_runs_each_point_once_and_resumes(disc_checkpoint, keyword_files, tmp_path,
                                               capsys):
    out = tmp_path / "grid"
    argv = finetune_argv(disc_checkpoint, keyword_files, out, "--grid", "--from-scratch",
                         "--set", "grid.lr=[1e-3,2e-3]", "--set", "grid.batch_size=[64]",
                         "--set", "grid.epochs=[1]", "--set", "grid.layer_decay=[1.0]",
                         "--set", "grid.optimizer=[\"adamw\",\"adamax\"]")
    first = run(argv)
    names = [p["point"] for p in first["points"]]
    assert len(names) == 4 and names[0] == ("lr=0.001,batch_size=64,epochs=1,"
                                            "warmup_proportion=0.1,layer_decay=1,optimizer=adamw")
    for name in names:
        assert (out / name / "results.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["point"] in names and summary["from_scratch"] is True
    assert (out / "summary.tsv").read_text().count("\n") == 5
    capsys.readouterr()

    # Lose one point's results (an interrupted run): only that one runs again.
    os.remove(out / names[2] / "results.json")
    second = run(argv)
    log = capsys.readouterr().out
    assert log.count("is finished; skipping") == 3
    assert f"{names[2]} epoch 1/1" in log
    # CPU runs are deterministic: the re-run point scores exactly as before.
    assert second["points"][2]["final"]["dev_accuracy"] == first["points"][2]["final"][
        "dev_accuracy"]


def test_regression_pair_task_and_checkpoint_tokenizer(disc_checkpoint, prose, tmp_path):
    _, corpus_dir = disc_checkpoint
    sp = load_tokenizer(os.path.join(corpus_dir, TOKENIZER_FILE))
    rng = random.Random(0)
    records = []
    for _ in range(60):
        a, b = rng.choice(prose)[:80], rng.choice(prose)[:80]
        records.append({"sentence1": a, "sentence2": b, "label": len(a.split()) / 5})
    train = write_task_file(tmp_path / "train.parquet", records[:40])
    dev = write_task_file(tmp_path / "dev.jsonl", records[40:])
    task = tmp_path / "reg.toml"
    task.write_text('[task]\ntype = "regression"\ntext_a = "sentence1"\ntext_b = "sentence2"\n'
                    '[finetune]\nepochs = 1\nbatch_size = 8\nmax_seq_len = 24\n')
    # bf16 autocast (what a GPU run uses) also runs on CPU: the same code path.
    results = run(["--checkpoint", disc_checkpoint[0], "--task", str(task), "--train", train,
                   "--dev", dev, "--out-dir", str(tmp_path / "reg"),
                   "--set", "finetune.precision=bf16"])
    assert load_finetune_config(tmp_path / "reg" / "config.toml") == load_finetune_config(
        task, ["finetune.precision=bf16"])
    assert set(results["final"]) >= {"dev_pearson", "dev_spearman"}
    assert results["metric"] == "spearman" and results["labels"] == []
    # The pair is encoded with the checkpoint's corpus tokenizer, truncated to max_seq_len.
    rows = read_rows(dev, load_finetune_config(task).task)
    enc = encode(rows, load_finetune_config(task).task, [], sp, 24)
    a, b = sp.encode(rows[0].text_a), sp.encode(rows[0].text_b)
    la, lb = truncate_pair(len(a), len(b), 21)
    assert enc.ids[0].tolist() == [CLS_ID, *a[:la], SEP_ID, *b[:lb], SEP_ID]
    assert max(len(x) for x in enc.ids) <= 24


def test_too_long_max_seq_len_and_missing_args_are_user_errors(disc_checkpoint, keyword_files,
                                                               tmp_path, capsys):
    argv = finetune_argv(disc_checkpoint, keyword_files, tmp_path / "x",
                         "--set", "finetune.max_seq_len=512")
    assert main(argv) == 2
    assert "finetune.max_seq_len = 512 exceeds the checkpoint's data.max_seq_len = 64" in (
        capsys.readouterr().err)
    assert main(["--task", keyword_files[0]]) == 2
    assert "missing --checkpoint, --train, --dev, --out-dir" in capsys.readouterr().err


def test_mean_pooling_ignores_padding():
    from trainer.tools.finetune.model import pool

    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(pool(hidden, mask, "cls"), hidden[:, 0])
    mean = pool(hidden, mask, "mean")
    assert torch.allclose(mean[0], hidden[0, :2].mean(0))  # padding left out
    assert not torch.allclose(mean[0], hidden[0].mean(0))  # the wrong rule: padding counted
    assert torch.allclose(mean[1], hidden[1].mean(0))


@pytest.mark.slow
def test_rescale_applies_to_pretrained_encoders_only(disc_checkpoint, keyword_files, tmp_path):
    """finetune.rescale_to_init: the pre-trained word embeddings start fine-tuning at the
    init's RMS (the run's first-epoch weights are compared through a 0-lr run), scratch is
    untouched; off, the checkpoint's scale is kept."""
    ckpt, _ = disc_checkpoint
    grown = tmp_path / "grown"
    state = torch.load(os.path.join(checkpoint.find_latest(ckpt), "state.pt"))
    state["model"]["encoder.word_emb.weight"] *= 3.0
    meta = json.loads(open(os.path.join(checkpoint.find_latest(ckpt), "meta.json")).read())
    checkpoint.save(str(grown), 1, {"model": state["model"]}, meta,
                    checkpoint.SaveContext.single_process())
    pre = open_pretrained(str(grown), os.path.join(disc_checkpoint[1], TOKENIZER_FILE), False)
    assert pre.encoder.word_emb.weight.pow(2).mean().sqrt().item() == pytest.approx(0.06,
                                                                                    rel=0.05)
    from trainer.tools.finetune import run as run_module

    seen = {}
    original = run_module.FinetuneModel.__init__

    def spy(self, encoder, num_outputs, ft):
        seen[ft.rescale_to_init] = encoder.word_emb.weight.pow(2).mean().sqrt().item()
        original(self, encoder, num_outputs, ft)

    run_module.FinetuneModel.__init__ = spy
    try:
        for flag in ("true", "false"):
            run(["--checkpoint", str(grown), *finetune_argv(disc_checkpoint, keyword_files,
                                                              tmp_path / flag)[2:],
                 "--set", "finetune.epochs=1", "--set", f"finetune.rescale_to_init={flag}"])
    finally:
        run_module.FinetuneModel.__init__ = original
    assert seen[True] == pytest.approx(0.02, rel=1e-3)
    assert seen[False] == pytest.approx(0.06, rel=0.05)


def test_an_mlm_checkpoint_is_fine_tuned_through_its_encoder(aux_checkpoint, keyword_files,
                                                             tmp_path):
    """The aux (an `mlm` run, no discriminator) fine-tunes: its generator's encoder, trainable
    (load_generator freezes it for generate; a frozen encoder would leave only the head)."""
    pre = open_pretrained(aux_checkpoint, None, from_scratch=False)
    assert all(p.requires_grad for p in pre.encoder.parameters())
    before = pre.encoder.blocks[0].attn.qkv.weight.clone()
    task, train, dev, _ = keyword_files
    results = run(["--checkpoint", aux_checkpoint, "--task", task, "--train", train, "--dev",
                   dev, "--out-dir", str(tmp_path / "mlm"), "--set", "finetune.epochs=1"])
    assert results["final"]["train_loss"] > 0
    assert torch.equal(pre.encoder.blocks[0].attn.qkv.weight, before)  # the run used a copy
    with pytest.raises(UserError, match="no discriminator"):
        from trainer.pretrained import DISCRIMINATOR_KINDS, read_meta
        read_meta(checkpoint.find_latest(aux_checkpoint) or aux_checkpoint, "discriminator",
                  DISCRIMINATOR_KINDS)
