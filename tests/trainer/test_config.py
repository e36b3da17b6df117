"""Configs: every shipped file loads, every key is documented, bad input names the key."""

from __future__ import annotations

import dataclasses
import glob
import os
import subprocess
import sys

import pytest

from pipeline.prepare import main as prepare_main
from tests.helpers import REPO, TINY
from trainer.config.load import build_config, field_docs, load_config, to_toml
from trainer.config.run import SECTIONS, RunConfig
from trainer.config.sections import ConfigError
from trainer.corruption.augmentations import validate_corruption
from trainer.tools.finetune import config as finetune_config

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.toml"), recursive=True))
FINETUNE = os.path.join(REPO, "configs", "finetune")  # task files: trainer.tools.finetune.config


# Which ablations are fixed distributions and which are curricula (paper Table 6): the plain
# model-free baselines must not inherit the exponential temperature schedule (a tempered
# smoothed one-hot is uniform->smoothed_onehot, a tempered unigram a curriculum).
ABLATION_SCHEDULES = {
    "replacement_uniform": "fixed",
    "replacement_unigram": "fixed",
    "replacement_smoothed_onehot": "fixed",
    "replacement_uniform_to_smoothed_onehot": "exponential",
    "replacement_unigram_to_smoothed_onehot": "exponential",
    "augmentation_dropout": "exponential",
    "augmentation_drop_attention": "exponential",
    "augmentation_drop_token": "exponential",
    "augmentation_log_interp_unigram": "exponential",
    "schedule_constant": "constant",
    "schedule_fixed": "fixed",
    "schedule_polynomial": "polynomial",
    "schedule_stepwise": "stepwise",
}


def test_ablations_are_fixed_distributions_or_curricula_as_the_paper():
    found = {os.path.basename(p)[:-5]: load_config(p).corruption.schedule
             for p in CONFIGS if os.sep + "ablations" + os.sep in p}
    assert found == ABLATION_SCHEDULES


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    if path.startswith(FINETUNE + os.sep):
        spec = finetune_config.load_finetune_config(path)
        finetune_config.grid_points(spec)  # every grid point is a valid config too
        out = tmp_path / "resolved.toml"
        out.write_text(to_toml(spec))
        assert finetune_config.load_finetune_config(out) == spec
        return
    cfg = load_config(path)
    validate_corruption(cfg.corruption)  # the combination, not only each key, must be valid
    out = tmp_path / "resolved.toml"
    out.write_text(to_toml(cfg))
    assert load_config(out) == cfg


def test_paper_sizes_in_base_and_large():
    base = load_config(os.path.join(REPO, "configs", "base.toml"))
    large = load_config(os.path.join(REPO, "configs", "large.toml"))
    for cfg, (layers, hidden, ffn, heads, buckets, dist, aux) in (
            (base, (12, 768, 3072, 12, 32, 128, 4)), (large, (24, 1024, 4096, 16, 128, 256, 6))):
        m = cfg.model
        assert (m.num_layers, m.hidden_size, m.ffn_size, m.num_heads, m.rel_num_buckets,
                m.rel_max_distance, cfg.aux.num_layers) == (layers, hidden, ffn, heads, buckets,
                                                           dist, aux)
        assert cfg.tokenizer.vocab_size == 128_000 and cfg.data.max_seq_len == 512
        assert cfg.train.global_batch_size == 2048
        assert (cfg.train.max_steps, cfg.train.warmup_steps) == (125_000, 10_000)
        assert (cfg.corruption.t0, cfg.corruption.tau) == (2.0, 0.1)


def test_every_field_is_documented():
    for name, cls in SECTIONS.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(field_docs(cls)) == fields, f"[{name}] has undocumented fields"


def test_overrides_are_typed():
    cfg = load_config(TINY, ["train.lr=3e-4", "data.max_seq_len=256", "model.dropout=0",
                             "data.input=a.txt", 'data.input=["x", "y"]', "train.mode=mlm",
                             "tokenizer.model=/m/t.model"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.model.dropout, float)
    assert cfg.data.max_seq_len == 256 and cfg.data.input == ["x", "y"]
    assert cfg.train.mode == "mlm" and cfg.tokenizer.model == "/m/t.model"


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown key train.lrr; valid keys of [train]: checkpoint_every"),
    ("trainer.lr=1", "unknown section 'trainer'; valid sections"),
    ("train.lr=fast", "train.lr: got 'fast' (str), expected float"),
    ("data.max_seq_len=1.5", "data.max_seq_len: got 1.5 (float), expected int"),
    ("data.max_seq_len=true", "expected int"),
    ("data.format=xml", "data.format: got 'xml', expected one of 'auto', 'text'"),
    ("model.num_heads=5", "model.num_heads: must divide model.hidden_size (128), got 5"),
    ("train.global_batch_size=33", "train.global_batch_size: 33 is not a multiple of"),
    ("corruption.mask_prob=1.5", "corruption.mask_prob: must be in (0, 1)"),
    ("lr=1", "expected section.key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(TINY, [override])
    assert message in str(e.value)


def test_bad_files(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[data]\nmax_seq_len = 64\nshuffle = true\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['data.shuffle'\]; valid keys"):
        load_config(p)
    p.write_text("[data\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="must be a table"):
        build_config({"data": 3})
    assert build_config({}) == RunConfig()


def test_help_config_lists_keys_with_docs(capsys):
    with pytest.raises(SystemExit) as done:  # --help-config prints, then exits
        prepare_main(["--config", TINY, "--help-config"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "data.max_seq_len = 128" in out
    assert "Tokens per sequence including [CLS] and [SEP]" in out
    assert "train.micro_batch_size_per_rank" in out


def test_cli_reports_config_error_without_traceback():
    """Its own process: what the interpreter prints for ``python -m``, a traceback included,
    is the point."""
    out = subprocess.run([sys.executable, "-m", "pipeline.prepare", "--config", TINY,
                          "--set", "data.nope=1"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: --set 'data.nope=1': unknown key data.nope")
    assert "Traceback" not in out.stderr


def test_extends_merges_key_by_key_and_refuses_cycles(tmp_path):
    metro = load_config(os.path.join(REPO, "configs", "joint", "metro_base.toml"))
    base = load_config(os.path.join(REPO, "configs", "base.toml"))
    assert (metro.train.mode, metro.joint.rtd_weight, metro.train.lr) == ("electra", 70.0, 5e-4)
    assert metro.model == base.model and metro.train.max_steps == base.train.max_steps
    gdes = load_config(os.path.join(REPO, "configs", "joint", "gdes_base.toml"))  # 2 levels
    assert (gdes.joint.embedding_sharing, gdes.joint.rtd_weight) == ("gdes", 50.0)
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(ConfigError, match="'extends' makes a cycle"):
        load_config(tmp_path / "a.toml")
    (tmp_path / "c.toml").write_text('extends = "missing.toml"\n')
    with pytest.raises(ConfigError, match="missing.toml does not exist"):
        load_config(tmp_path / "c.toml")
