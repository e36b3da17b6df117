"""trainer.model: shapes, masking, tying, dropout control, Table-2 sizes, and that it learns."""

import dataclasses

import pytest
import torch

from tests.trainer.model.helpers import TINY, VARIANTS, random_ids
from trainer.config.load import build_config
from trainer.config.sections import ConfigError
from trainer.model.dropout import DropoutPlan
from trainer.model.encoder import Encoder
from trainer.model.encoder_config import EncoderConfig
from trainer.model.heads import Discriminator, MLMModel
from trainer.model.params import weight_decay_groups
from trainer.model.positions import relative_position_bucket
from trainer.tokenizer import PAD_ID

pytestmark = pytest.mark.usefixtures("one_thread")


# --- config ----------------------------------------------------------------------------------

def test_config_from_run_config_and_aux_defaults():
    run = build_config({"tokenizer": {"vocab_size": 1000}, "data": {"max_seq_len": 128},
                        "model": {"num_layers": 6, "hidden_size": 256, "num_heads": 4,
                                  "ffn_size": 1024, "layer_norm": "pre"},
                        "aux": {"num_layers": 2, "ffn_size": 512}})
    main, aux = EncoderConfig.main(run), EncoderConfig.aux(run)
    assert (main.vocab_size, main.max_seq_len, main.num_layers, main.layer_norm) == (
        1000, 128, 6, "pre")
    assert (aux.num_layers, aux.hidden_size, aux.num_heads, aux.ffn_size) == (2, 256, 4, 512)
    assert aux.layer_norm == "pre" and aux.vocab_size == 1000


@pytest.mark.parametrize("change, match", [
    ({"num_heads": 5}, "num_heads"),
    ({"position": "rotary"}, "position"),
    ({"rel_num_buckets": 2}, "rel_num_buckets"),
    ({"dropout": 1.0}, "dropout"),
    ({"vocab_size": 5}, "vocab_size"),
])
def test_config_validation(change, match):
    with pytest.raises(ConfigError, match=match):
        dataclasses.replace(TINY, **change)


# --- encoder ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
def test_shapes_all_variants(name):
    cfg = VARIANTS[name]
    ids = random_ids(3, 20)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 15:] = False
    enc = Encoder(cfg)
    assert enc(ids, mask).shape == (3, 20, cfg.hidden_size)
    assert Discriminator(cfg)(ids, mask).shape == (3, 20)
    mlm = MLMModel(cfg)
    assert mlm(ids, mask).shape == (3, 20, cfg.vocab_size)
    assert mlm(ids, mask, ids % 3 == 0).shape == ((ids % 3 == 0).sum().item(), cfg.vocab_size)
    assert torch.isfinite(mlm(ids, mask)).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_padding_invariance(name):
    """A sequence's outputs do not depend on masked [PAD] positions after it, nor on the other
    sequences of its batch."""
    enc = Encoder(VARIANTS[name]).eval()
    ids = random_ids(1, 10)
    alone = enc(ids, torch.ones(1, 10, dtype=torch.long))  # int mask works too
    padded_ids = torch.full((2, 24), PAD_ID)
    padded_ids[0, :10] = ids[0]
    padded_ids[1] = random_ids(1, 24, seed=1)[0]
    mask = padded_ids != PAD_ID
    padded = enc(padded_ids, mask)
    torch.testing.assert_close(padded[0, :10], alone[0], atol=1e-5, rtol=0)


def test_all_padding_row_is_finite():
    enc = Encoder(TINY).train()
    ids = random_ids(2, 8)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1] = False
    out = enc(ids, mask)
    out.sum().backward()
    assert torch.isfinite(out).all()
    # Every parameter takes part, so every one must have a finite gradient (skipping the ones
    # without a gradient would pass a backward that reached none of them).
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())


def test_relative_bias_is_one_shared_table():
    enc = Encoder(TINY)
    shape = (TINY.rel_num_buckets, TINY.num_heads)
    tables = [n for n, p in enc.named_parameters() if tuple(p.shape) == shape]
    assert tables == ["rel_bias"]
    assert not any("rel" in n for n, _ in enc.blocks.named_parameters())
    # Every layer sees it: its gradient collects contributions through the whole stack.
    enc(random_ids(2, 12)).pow(2).sum().backward()
    assert enc.rel_bias.grad is not None and enc.rel_bias.grad.abs().sum() > 0
    assert Encoder(VARIANTS["post-absolute"]).rel_bias is None


def test_relative_position_buckets_t5():
    rel = torch.arange(-300, 301)
    b = relative_position_bucket(rel, num_buckets=32, max_distance=128)
    assert b.min() == 0 and b.max() == 31
    assert b[300] == 0  # distance 0
    # exact buckets for |d| < 8, separate halves for the two directions
    assert b[300 + 1:300 + 8].tolist() == list(range(17, 24))
    assert b[300 - 7:300].tolist() == list(range(7, 0, -1))
    assert (b[300 + 128:] == 31).all() and (b[:300 - 127] == 15).all()  # saturated beyond 128
    assert (b[300:].diff() >= 0).all() and (b[:301].diff() <= 0).all()  # monotone in |d|


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_bias_is_the_relative_table_where_keys_are_real(dtype):
    enc = Encoder(TINY)
    with torch.no_grad():
        enc.rel_bias.normal_(std=3.0)  # biases of several nats, both signs
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    got = enc.attention_bias(mask, dtype)  # (B, nh, T, T)
    pos = torch.arange(5)
    buckets = relative_position_bucket(pos[None, :] - pos[:, None], TINY.rel_num_buckets,
                                       TINY.rel_max_distance)
    rel = (enc.rel_bias * TINY.rel_bias_scale)[buckets].permute(2, 0, 1)[None].to(dtype)
    want = torch.where(mask[:, None, None, :], rel, torch.finfo(dtype).min)
    assert got.dtype == dtype and torch.equal(got, want)
    assert not torch.isinf(got).any()  # never -inf: an all-padding row stays finite


def test_early_exit_num_layers():
    enc = Encoder(TINY).eval()
    ids = random_ids(2, 8)
    one = enc(ids, num_layers=1)
    torch.testing.assert_close(one, enc.blocks[0](enc.embed(ids),
                                                  enc.attention_bias(ids > 0, torch.float32),
                                                  0.0, 0.0))
    torch.testing.assert_close(enc(ids, num_layers=None), enc(ids))
    assert not torch.allclose(one, enc(ids))  # the default runs the whole stack


# --- init ------------------------------------------------------------------------------------

def test_admin_omegas_profiled_for_post_ln_only():
    enc = Encoder(dataclasses.replace(TINY, num_layers=4, hidden_size=64, ffn_size=256))
    # sublayer order: attn 0, ffn 0, attn 1, ...
    omegas = [w[0].item() for b in enc.blocks for w in (b.omega_attn, b.omega_ffn)]
    assert all((w == w[0]).all() for b in enc.blocks for w in (b.omega_attn, b.omega_ffn))
    assert omegas[0] == 1.0 and len(set(omegas)) > 2  # profiled, not left at 1
    # omega^2 accumulates the sublayer variances: after the first sublayer (whose input, the
    # embedding LayerNorm output, is slightly below unit variance) it only grows with depth.
    assert omegas[1] < omegas[2] < omegas[3] < omegas[-1] and omegas[-1] > 0.9
    # Re-profiling on other inputs gives about the same omegas: no data needed at construction.
    again = enc.admin_init_(random_ids(4, 32, seed=3), torch.arange(32).expand(4, 32) < 20)
    assert again == pytest.approx(omegas, rel=0.05)
    assert not hasattr(Encoder(VARIANTS["pre-relative"]).blocks[0], "omega_attn")
    with pytest.raises(ValueError, match="post-LN"):
        Encoder(VARIANTS["pre-relative"]).admin_init_()


def test_weight_decay_groups():
    model = MLMModel(TINY)
    decay, no_decay = weight_decay_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"])
    assert any(p is model.encoder.rel_bias for p in no_decay["params"])
    n = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert n == model.num_parameters()  # tied weight exactly once


# --- heads -----------------------------------------------------------------------------------

def test_mlm_head_is_tied_to_word_embeddings():
    model = MLMModel(TINY)
    assert model.head.weight is model.encoder.word_emb.weight
    with torch.no_grad():
        model.encoder.word_emb.weight[7].zero_()
    assert model.head.weight[7].abs().sum() == 0


def test_mlm_positions_equal_gathered_full_logits():
    model = MLMModel(TINY).eval()
    ids = random_ids(3, 16)
    mask = torch.ones(3, 16, dtype=torch.bool)
    mask[2, 10:] = False
    positions = torch.rand(3, 16) < 0.3
    positions[0, 0] = True
    full = model(ids, mask)  # (B, T, V)
    sel = model(ids, mask, positions_mask=positions)  # (N, V)
    assert sel.shape == (positions.sum().item(), TINY.vocab_size)
    torch.testing.assert_close(sel, full[positions], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="bool mask"):
        model(ids, mask, positions_mask=positions.long())


def test_shared_word_embeddings_between_models():
    disc = Discriminator(TINY)
    before = disc.encoder.word_emb.weight.detach().clone()
    gen = MLMModel(dataclasses.replace(TINY, num_layers=1), disc.encoder.word_emb)
    assert gen.head.weight is disc.encoder.word_emb.weight
    torch.testing.assert_close(disc.encoder.word_emb.weight.detach(), before)  # not re-initialised
    with pytest.raises(ValueError, match="shape"):
        MLMModel(dataclasses.replace(TINY, hidden_size=16), disc.encoder.word_emb)


# --- dropout ---------------------------------------------------------------------------------

def test_set_dropout_takes_effect_at_run_time():
    model = Discriminator(dataclasses.replace(TINY, dropout=0.0, attention_dropout=0.0))
    ids = random_ids(2, 16)
    model.train()
    torch.testing.assert_close(model(ids), model(ids))  # rate 0 in train mode: deterministic
    model.encoder.set_dropout(0.3, 0.0)
    assert not torch.allclose(model(ids), model(ids))
    model.encoder.set_dropout(0.0, 0.5)  # attention dropout alone changes outputs too
    assert not torch.allclose(model(ids), model(ids))
    model.eval()
    torch.testing.assert_close(model(ids), model(ids))  # eval ignores the rates
    model.encoder.set_dropout(0.0, 0.0)
    reference = model(ids)
    model.train()
    torch.testing.assert_close(model(ids), reference)
    with pytest.raises(ValueError, match="attention"):
        model.encoder.set_dropout(0.1, 1.5)


def test_dropout_plan_is_per_call_and_leaves_the_model_alone():
    model = MLMModel(TINY).eval()
    ids = random_ids(3, 16)
    state = (model.training, model.encoder.dropout, model.encoder.attention_dropout)

    def run(hidden, attention, seed):
        g = torch.Generator().manual_seed(seed)
        return model(ids, dropout=DropoutPlan(hidden, attention, g))

    rng = torch.get_rng_state()
    for rates in ((0.3, 0.0), (0.0, 0.3), (0.2, 0.2)):
        a, b = run(*rates, seed=1), run(*rates, seed=1)
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # same generator seed: same masks
        assert not torch.allclose(a, run(*rates, seed=2))  # the masks come from the generator
        assert not torch.allclose(a, model(ids))  # on although the model is in eval mode
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is never used
    assert (model.training, model.encoder.dropout, model.encoder.attention_dropout) == state
    torch.testing.assert_close(run(0.0, 0.0, seed=3), model(ids))  # rate 0: the plain forward
    # Rate 0 wins over train mode: a plan fixes the rates whatever the module's mode.
    model.train()
    torch.testing.assert_close(model(ids, dropout=DropoutPlan()), model.eval()(ids))
    with pytest.raises(ValueError, match="attention rate"):
        DropoutPlan(0.1, 1.0)


@pytest.mark.parametrize("name", VARIANTS)
def test_rescale_to_init_keeps_the_function_and_restores_the_scale(name):
    """Grown embeddings (as pre-training leaves them) go back to the init's RMS, and the
    encoder computes the same function (LayerNorm eps set negligible to compare exactly)."""
    enc = Encoder(VARIANTS[name]).eval()
    for m in enc.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = 1e-12
    with torch.no_grad():  # rows grown unevenly, as Adam leaves frequent and rare tokens
        enc.word_emb.weight.mul_(torch.linspace(1.5, 4.0, enc.cfg.vocab_size)[:, None])
    ids = random_ids(2, 12)
    before = enc(ids)
    factor = enc.rescale_to_init_()
    assert factor < 0.7
    after = enc(ids)
    assert torch.allclose(before, after, atol=1e-4), (before - after).abs().max()
    rms = enc.word_emb.weight.pow(2).mean(1).sqrt()  # (V,)
    if enc.pos_emb is None:
        assert torch.allclose(rms, torch.full_like(rms, 0.02), rtol=1e-4)
    else:
        assert enc.word_emb.weight.pow(2).mean().sqrt().item() == pytest.approx(0.02, rel=1e-4)
    # Negative control: with absolute positions a per-row rescale of the word table alone
    # (the relative-position rule) would change the function; the check above has power.
    if enc.pos_emb is not None:
        with torch.no_grad():
            enc.word_emb.weight.mul_(torch.linspace(0.5, 2.0, enc.cfg.vocab_size)[:, None])
        assert not torch.allclose(enc(ids), after, atol=1e-3)
