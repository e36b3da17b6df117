"""``fast-electra hf export``: every encoder variant out to transformers' Auto classes
(HF ELECTRA or the project's remote code), compared logit by logit; the remote-code model's
HF features (heads, save_pretrained, gradient checkpointing, masks); every shipped config."""

from __future__ import annotations

import glob
import json
import os

import pytest
import torch

from tests.helpers import ABSOLUTE, MODEL_SMALL, REPO, SMALL, TINY, padded_batch
from trainer import checkpoint
from trainer.config.load import load_config, to_dict
from trainer.model.encoder_config import EncoderConfig
from trainer.model.heads import Discriminator, MLMModel
from trainer.modes.joint import JointModel
from trainer.tools.hf.cli import main

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402 (after the skip)

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = [("relative", "post"), ("relative", "pre"), ("absolute", "pre"),
            ("absolute", "post")]
RELATIVE = [s for s in SMALL if not s.startswith("train.mode")]


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight moved off its init; Admin omegas in +-[0.3, 3] (signs mixed)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "omega" in name:
                p.copy_(torch.empty(p.shape).uniform_(0.3, 3, generator=g) * noise.sign())
            else:
                p.add_(0.1 * noise)
    return model.eval()


def save_checkpoint(out_dir, model, cfg, kind: str) -> str:
    meta = {"step": 7, "mode": cfg.train.mode, "config": to_dict(cfg), "model_kind": kind}
    return checkpoint.save(str(out_dir), 7, {"model": model.state_dict()}, meta,
                           checkpoint.SaveContext.single_process())


def variant_config(corpus_dir, position: str, layer_norm: str, mode: str = "rtd", *extra):
    base = ABSOLUTE if position == "absolute" else RELATIVE
    return load_config(TINY, [*base, f"model.layer_norm={layer_norm}", f"train.mode={mode}",
                              f"data.corpus_dir={corpus_dir}", "model.rel_bias_scale=4",
                              *extra])


def auto_load(folder, cls_name: str, **kwargs):
    cls = getattr(transformers, cls_name)
    return cls.from_pretrained(str(folder), trust_remote_code=True, **kwargs).eval()


def auto_tokenizer(folder):
    """AutoTokenizer reads config.json first; a remote-code folder's needs the opt-in too (or
    transformers asks on stdin)."""
    return transformers.AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)


def logits(model, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask.long()).logits[mask]


@pytest.mark.parametrize("position,layer_norm", VARIANTS)
@pytest.mark.parametrize("role", ["discriminator", "generator"])
def test_export_gives_the_same_logits(position, layer_norm, role, prepared, tmp_path):
    corpus_dir, _, _ = prepared
    mode = "rtd" if role == "discriminator" else "mlm"
    cfg = variant_config(corpus_dir, position, layer_norm, mode)
    torch.manual_seed(0)
    ours = perturbed(Discriminator(EncoderConfig.main(cfg)) if role == "discriminator"
                     else MLMModel(EncoderConfig.aux(cfg)))
    path = save_checkpoint(tmp_path / "run", ours, cfg, role if mode == "rtd" else "mlm")
    out = tmp_path / "hf"
    assert main(["export", str(tmp_path / "run"), str(out)]) == 0  # a run folder: its latest
    auto = "AutoModelForPreTraining" if role == "discriminator" else "AutoModelForMaskedLM"
    hf = auto_load(out, auto)
    ids, mask = padded_batch()
    with torch.no_grad():
        want = ours(ids, mask)[mask]  # (N,) or (N, V)
    got = logits(hf, ids, mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert want.std() > 0.05  # logits of substance

    remote = (position, layer_norm) != ("absolute", "post")
    files = {"README.md", "config.json", "model.safetensors", "tokenizer.model",
             "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    if remote:
        files |= {"configuration_fast_electra.py", "modeling_fast_electra.py"}
    assert set(os.listdir(out)) == files
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == ("fast_electra" if remote else "electra")
    assert ("auto_map" in config) == remote
    assert path in (out / "README.md").read_text()

    # Negative control: one mangled tensor in the export is caught by this very comparison.
    weights = load_file(str(out / "model.safetensors"))
    name = next(k for k in sorted(weights) if k.endswith("layer.1.intermediate.weight")
                or k.endswith("layer.1.intermediate.dense.weight"))
    weights[name] = weights[name].clone()
    weights[name][0, 0] += 0.5
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(AssertionError):
        torch.testing.assert_close(logits(auto_load(out, auto), ids, mask), want,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("role", ["generator", "discriminator"])
def test_joint_checkpoint_exports_either_model(role, prepared, tmp_path):
    corpus_dir, _, _ = prepared
    cfg = variant_config(corpus_dir, "relative", "post", "electra",
                         "joint.embedding_sharing=gdes")
    torch.manual_seed(0)
    model = perturbed(JointModel(cfg))
    save_checkpoint(tmp_path / "run", model, cfg, "joint")
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf"), "--role", role]) == 0
    ours = model.generator if role == "generator" else model.discriminator
    auto = "AutoModelForMaskedLM" if role == "generator" else "AutoModelForPreTraining"
    ids, mask = padded_batch()
    with torch.no_grad():
        want = ours(ids, mask)[mask]
    torch.testing.assert_close(logits(auto_load(tmp_path / "hf", auto), ids, mask), want,
                               atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def remote_export(prepared, tmp_path_factory):
    """A relative-position post-LN discriminator (the shipped configs' kind), exported; its
    dropout set to 0 so that train-mode forwards are deterministic."""
    corpus_dir, _, _ = prepared
    cfg = variant_config(corpus_dir, "relative", "post", "rtd", "model.dropout=0",
                         "model.attention_dropout=0")
    torch.manual_seed(0)
    ours = perturbed(Discriminator(EncoderConfig.main(cfg)))
    tmp = tmp_path_factory.mktemp("remote")
    save_checkpoint(tmp / "run", ours, cfg, "discriminator")
    assert main(["export", str(tmp / "run"), str(tmp / "hf")]) == 0
    return ours, tmp / "hf"


def test_remote_model_heads_and_round_trip(remote_export, tmp_path):
    ours, folder = remote_export
    ids, mask = padded_batch()
    with torch.no_grad():
        hidden = ours.encoder(ids, mask)  # (B, T, H)
        base = auto_load(folder, "AutoModel")
        out = base(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
    torch.testing.assert_close(out.last_hidden_state[mask], hidden[mask], atol=1e-5, rtol=1e-5)
    assert len(out.hidden_states) == ours.cfg.num_layers + 1  # embeddings + each layer
    assert type(base).__name__ == "FastElectraModel"

    for auto, shape in (("AutoModelForSequenceClassification", (3, 3)),
                        ("AutoModelForTokenClassification", (3, 20, 3))):
        model = auto_load(folder, auto, num_labels=3)
        with torch.no_grad():
            got = model(input_ids=ids, attention_mask=mask.long())
            torch.testing.assert_close(model.fast_electra(ids, mask.long()).last_hidden_state,
                                       out.last_hidden_state)  # the encoder came through
        assert got.logits.shape == shape
        model.save_pretrained(tmp_path / auto)
        again = auto_load(tmp_path / auto, auto)
        with torch.no_grad():
            torch.testing.assert_close(again(input_ids=ids, attention_mask=mask.long()).logits,
                                       got.logits)
    # Segment ids would be silently ignored by an encoder without them: refused instead.
    with pytest.raises(ValueError, match="no token type"):
        base(input_ids=ids, token_type_ids=torch.ones_like(ids))


def test_remote_gradient_checkpointing_gives_the_same_gradients(remote_export):
    _, folder = remote_export
    ids, mask = padded_batch()
    labels = torch.tensor([0, 1, 2])

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)  # the new classifier head: the same init both times
        model = auto_load(folder, "AutoModelForSequenceClassification", num_labels=3).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        assert model.fast_electra.encoder.layer[0].gradient_checkpointing == checkpointing
        model(input_ids=ids, attention_mask=mask.long(), labels=labels).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys() and len(plain) > 20
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-5)


def test_padding_does_not_change_real_tokens(remote_export):
    """attention_mask as HF passes it: padded keys are ignored, so a sequence's states do not
    depend on how much padding its batch has."""
    _, folder = remote_export
    model = auto_load(folder, "AutoModel")
    ids, mask = padded_batch()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        alone = model(input_ids=ids[2:, :7]).last_hidden_state  # row 2 has 7 real tokens
        unmasked = model(input_ids=ids[2:]).last_hidden_state  # its pads as real tokens
    torch.testing.assert_close(full[2, :7], alone[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmasked[0, :7], alone[0], atol=1e-3)  # the mask matters


def shipped_configs() -> list[str]:
    paths = sorted(glob.glob(os.path.join(REPO, "configs", "*.toml"))
                   + glob.glob(os.path.join(REPO, "configs", "joint", "*.toml")))
    return [os.path.relpath(p, REPO) for p in paths]


@pytest.mark.parametrize("config", shipped_configs())
def test_every_shipped_config_exports(config, prepared, tmp_path):
    """Each shipped run config's encoder (its position, layer norm, buckets; shrunk to test
    size) exports and loads with AutoModelForPreTraining."""
    corpus_dir, _, _ = prepared
    shrink = [s for s in MODEL_SMALL if not s.startswith("model.layer_norm")]
    shrink.append(f"data.corpus_dir={corpus_dir}")
    cfg = load_config(os.path.join(REPO, config), shrink)
    torch.manual_seed(0)
    ours = perturbed(Discriminator(EncoderConfig.main(cfg)))
    save_checkpoint(tmp_path / "run", ours, cfg, "discriminator")
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    ids, mask = padded_batch()
    with torch.no_grad():
        want = ours(ids, mask)[mask]
    hf = auto_load(tmp_path / "hf", "AutoModelForPreTraining")
    torch.testing.assert_close(logits(hf, ids, mask), want, atol=1e-5, rtol=1e-5)
    tok = auto_tokenizer(tmp_path / "hf")
    assert tok.model_max_length == 64 and tok.cls_token_id == 2


def test_export_refusals(prepared, tmp_path, capsys):
    def fails(ckpt, out="hf", *flags) -> str:
        assert main(["export", ckpt, str(tmp_path / out), *flags]) == 2
        return capsys.readouterr().err

    corpus_dir, _, _ = prepared
    cfg = variant_config(corpus_dir, "absolute", "post", "mlm")
    path = save_checkpoint(tmp_path / "mlm", MLMModel(EncoderConfig.aux(cfg)), cfg, "mlm")
    assert "has no discriminator" in fails(path, "hf", "--role", "discriminator")
    model = Discriminator(EncoderConfig.main(cfg))
    with torch.no_grad():
        model.encoder.blocks[1].omega_ffn[3] = 0.0
    path = save_checkpoint(tmp_path / "zero", model, cfg, "discriminator")
    assert "encoder.blocks.1.omega_ffn has zero entries" in fails(path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "--overwrite" in fails(path, "full")
    assert sorted(os.listdir(tmp_path)) == ["full", "mlm", "zero"]  # nothing half-written


def word_task(prose: list[str], tok, n: int) -> list[dict]:
    """Lines of real text labelled by whether they hold the word "the": balanced, ``n`` rows."""
    lines = sorted({ln.strip() for doc in prose for ln in doc.splitlines() if len(ln) > 20})
    rows = {0: [], 1: []}
    for line in lines:
        rows[int("the" in line.lower().split())].append(line)
    picked = [(t, y) for pair in zip(rows[0], rows[1], strict=False) for t, y in
              ((pair[0], 0), (pair[1], 1))][:n]
    assert len(picked) == n
    return [{**tok(t, truncation=True), "labels": y} for t, y in picked]


@pytest.mark.parametrize("lr", [1e-2, 0.0])
def test_transformers_trainer_fine_tunes_the_export(lr, remote_export, prose, tmp_path):
    """transformers.Trainer + AutoTokenizer + AutoModelForSequenceClassification on the export,
    30 steps: the held-out loss falls; at lr 0 (the negative control) it stays put."""
    _, folder = remote_export
    tok = auto_tokenizer(folder)
    rows = word_task(prose, tok, 320)
    torch.manual_seed(0)
    model = auto_load(folder, "AutoModelForSequenceClassification", num_labels=2)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=30, per_device_train_batch_size=16,
        per_device_eval_batch_size=64, learning_rate=lr, warmup_steps=0, use_cpu=True,
        report_to=[], save_strategy="no", logging_steps=10, seed=0, disable_tqdm=True)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=rows[:240], eval_dataset=rows[240:],
        data_collator=transformers.DataCollatorWithPadding(tok))
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    if lr > 0:
        assert after < 0.9 * before, (before, after)
    else:
        assert after == pytest.approx(before, rel=1e-6)
