"""model.attention = "flex" against the sdpa path on a real tiny encoder (CPU): outputs and the
gradient of every parameter equal within fp32 rounding, with wrong score_mod / mask variants
as negative controls; the config rules of the key; the dropout fallback; the CPU refusal."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.attention.flex_attention as flex

from tests.helpers import TINY as TINY_TOML
from tests.trainer.model.helpers import TINY, VARIANTS, random_ids
from trainer.config.load import load_config
from trainer.config.sections import ConfigError, ModelConfig
from trainer.model import attention
from trainer.model.dropout import DropoutPlan
from trainer.model.encoder import Encoder
from trainer.model.encoder_config import EncoderConfig

# slow: flex_attention runs unfused and uncompiled on the CPU: each comparison takes seconds.
pytestmark = pytest.mark.slow

TOL = 1e-5  # relative L2 error, fp32
LENGTHS = (32, 19, 1)  # B = 3: one full row, one padded across a block, one lone token


@pytest.fixture
def cpu_backward(monkeypatch):
    """torch's public flex_attention refuses inputs that require grad on a CPU; the autograd
    op under it has a dense backward (the reference the fused CUDA kernel is tested against),
    which this lets the comparison reach."""
    monkeypatch.setattr(flex, "_validate_device", lambda *args: None)


def twins(cfg: EncoderConfig) -> tuple[Encoder, Encoder]:
    """An sdpa encoder and a flex one with the same weights (dropout off). The relative table
    gets random entries of a nat or so, as after training: at init it is the prior, symmetric
    in direction, and too small next to q.k for a transposed index to show."""
    cfg = dataclasses.replace(cfg, dropout=0.0, attention_dropout=0.0)
    a = Encoder(dataclasses.replace(cfg, attention="sdpa"))
    if a.rel_bias is not None:
        with torch.no_grad():
            a.rel_bias.normal_(generator=torch.Generator().manual_seed(2))
    b = Encoder(dataclasses.replace(cfg, attention="flex"))
    b.load_state_dict(a.state_dict())
    return a.train(), b.train()


def batch(T: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    ids = random_ids(len(LENGTHS), T)
    mask = torch.arange(T)[None] < torch.tensor(LENGTHS)[:, None]  # (B, T)
    return ids, mask


def flex_vs_sdpa(a: Encoder, b: Encoder, ids: torch.Tensor, mask: torch.Tensor
                 ) -> dict[str, float]:
    """Relative L2 difference of b (flex) from a (sdpa): the outputs (B, T, H) and, after one
    backward of a loss over the real tokens, every parameter's gradient (the word embeddings'
    gradient is the input gradient). Raises if a reference gradient is zero (nothing to
    compare)."""
    w = torch.randn(*ids.shape, a.cfg.hidden_size, generator=torch.Generator().manual_seed(1))
    outs = {}
    for name, model in (("sdpa", a), ("flex", b)):
        model.zero_grad(set_to_none=True)
        out = model(ids, mask)  # (B, T, H)
        (out * w)[mask].sum().backward()
        outs[name] = out.detach()
    diff = {"output": float((outs["flex"] - outs["sdpa"]).norm() / outs["sdpa"].norm())}
    grads_b = dict(b.named_parameters())
    for name, p in a.named_parameters():
        ref, got = p.grad, grads_b[name].grad
        if ref is None or not bool((ref != 0).any()):
            raise AssertionError(f"{name}: zero reference gradient")
        diff[f"grad {name}"] = float((got - ref).norm() / ref.norm())
    return diff


@pytest.mark.usefixtures("cpu_backward")
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_flex_equals_sdpa(variant):
    """Catches a score_mod reading the wrong bucket, head or scale, a mask that lets padded
    keys in, and a table gradient that does not reach rel_bias (grad rel_bias compared)."""
    a, b = twins(VARIANTS[variant])
    diff = flex_vs_sdpa(a, b, *batch())
    worst = max(diff, key=diff.get)
    assert diff[worst] < TOL, (worst, diff[worst])
    if VARIANTS[variant].position == "relative":
        assert "grad rel_bias" in diff


@pytest.mark.usefixtures("cpu_backward")
def test_comparison_catches_a_transposed_bucket_index(monkeypatch):
    """Negative control: buckets[k, q] instead of [q, k] (left and right swapped)."""
    right = attention.rel_bias_score_mod
    monkeypatch.setattr(attention, "rel_bias_score_mod", lambda t, bk: right(t, bk.T))
    a, b = twins(TINY)
    diff = flex_vs_sdpa(a, b, *batch())
    assert diff["output"] > 100 * TOL and diff["grad rel_bias"] > 100 * TOL


@pytest.mark.usefixtures("cpu_backward")
def test_comparison_catches_a_mask_that_ignores_padding(monkeypatch):
    """Negative control: every key attended, padding included."""
    right = attention.padding_block_mask
    monkeypatch.setattr(attention, "padding_block_mask", lambda m: right(torch.ones_like(m)))
    a, b = twins(TINY)
    assert flex_vs_sdpa(a, b, *batch())["output"] > 100 * TOL


def test_attention_dropout_call_runs_on_the_sdpa_path():
    """flex has no attention dropout: a call asking for it (fine-tuning's set_dropout, the
    drop_attention augmentation's DropoutPlan) must give exactly the sdpa path's result with
    the same generator; another seed must not (the dropout is really applied)."""
    a, b = twins(TINY)
    ids, mask = batch()

    def run(model, seed):
        return model(ids, mask, dropout=DropoutPlan(0.0, 0.3, torch.Generator().manual_seed(seed)))

    with torch.no_grad():
        assert torch.equal(run(a, 3), run(b, 3))
        assert not torch.allclose(run(b, 3), run(b, 4))


def test_cpu_training_is_refused_with_the_key():
    """torch has no flex backward on a CPU: the error names model.attention and the way out."""
    _, b = twins(TINY)
    with pytest.raises(NotImplementedError, match="model.attention = 'flex' on cpu.*'sdpa'"):
        b(*batch())
    with torch.no_grad():  # inference runs
        assert torch.isfinite(b(*batch())).all()


def test_flex_inputs_hold_nothing_of_size_heads_t_t():
    """The flex path's per-batch inputs: a (buckets, nh) table and a (T, T) index in the
    score_mod, no (B, nh, T, T) bias (the sdpa path's, built only for dropout calls)."""
    _, b = twins(TINY)
    ids, mask = batch()
    inputs = b.attention_inputs(mask, torch.float32)
    assert isinstance(inputs, attention.FlexInputs)
    cells = [c.cell_contents for c in inputs.score_mod.__closure__]
    shapes = sorted(tuple(c.shape) for c in cells if isinstance(c, torch.Tensor))
    assert shapes == [(TINY.rel_num_buckets, TINY.num_heads), (32, 32)]
    assert tuple(inputs.sdpa_bias(torch.float32).shape) == (3, TINY.num_heads, 32, 32)


def test_config_key_is_checked():
    """model.attention: a bad value and flex with attention dropout are refused naming the
    key (also in EncoderConfig); flex with attention_dropout 0 passes to both encoders."""
    with pytest.raises(ConfigError, match="model.attention: must be 'sdpa' or 'flex'"):
        ModelConfig(attention="flash")
    with pytest.raises(ConfigError, match="model.attention: 'flex' has no dropout.*"
                                          "model.attention_dropout = 0"):
        ModelConfig(attention="flex", attention_dropout=0.1)
    with pytest.raises(ConfigError, match="EncoderConfig.attention"):
        dataclasses.replace(TINY, attention="flash")
    with pytest.raises(ConfigError, match="EncoderConfig.attention"):
        dataclasses.replace(TINY, attention="flex", attention_dropout=0.1)
    cfg = load_config(TINY_TOML, ["model.attention=flex", "model.attention_dropout=0"])
    assert EncoderConfig.main(cfg).attention == EncoderConfig.aux(cfg).attention == "flex"
    assert load_config(TINY_TOML, []).model.attention == "sdpa"
