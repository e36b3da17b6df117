"""trainer.model: shapes, masking, tying, dropout control, Table-2 sizes, and that it learns."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from trainer.config.load import build_config
from trainer.config.sections import ConfigError
from trainer.model.dropout import DropoutPlan
from trainer.model.encoder import Encoder
from trainer.model.encoder_config import EncoderConfig
from trainer.model.heads import Discriminator, MLMModel
from trainer.model.params import count_parameters, weight_decay_groups
from trainer.model.positions import relative_bias_prior, relative_position_bucket
from trainer.tokenizer import MASK_ID, NUM_SPECIAL, PAD_ID

TINY = EncoderConfig(vocab_size=60, num_layers=2, hidden_size=32, num_heads=4, ffn_size=64,
                     rel_num_buckets=8, rel_max_distance=16, max_seq_len=32)
VARIANTS = {
    "post-relative": TINY,
    "pre-relative": dataclasses.replace(TINY, layer_norm="pre"),
    "post-absolute": dataclasses.replace(TINY, position="absolute"),
    "pre-absolute": dataclasses.replace(TINY, position="absolute", layer_norm="pre"),
}


def random_ids(B, T, vocab=TINY.vocab_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(NUM_SPECIAL, vocab, (B, T), generator=g)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


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


# --- sizes (Fast-ELECTRA, arXiv 2310.07347, Table 2) --------------------------------------------

TABLE2 = {  # vocab 128K SentencePiece, 512 tokens
    "base": dict(model=dict(num_layers=12, hidden_size=768, ffn_size=3072, num_heads=12,
                            rel_num_buckets=32, rel_max_distance=128),
                 aux_layers=4, main=184e6, aux=127e6, embeddings=98e6),
    "large": dict(model=dict(num_layers=24, hidden_size=1024, ffn_size=4096, num_heads=16,
                             rel_num_buckets=128, rel_max_distance=256),
                  aux_layers=6, main=434e6, aux=208e6, embeddings=131e6),
}


def _table2_configs(size):
    spec = TABLE2[size]
    run = build_config({"tokenizer": {"vocab_size": 128_000}, "data": {"max_seq_len": 512},
                        "model": spec["model"], "aux": {"num_layers": spec["aux_layers"]}})
    return EncoderConfig.main(run), EncoderConfig.aux(run)


@pytest.mark.parametrize("name", VARIANTS)
def test_analytic_count_equals_real_model(name):
    cfg = VARIANTS[name]
    for model, head in ((Discriminator(cfg), "rtd"), (MLMModel(cfg), "mlm")):
        n = count_parameters(cfg, head)
        assert model.num_parameters() == sum(p.numel() for p in model.parameters()) == n["total"]
        assert model.num_parameters(exclude_embeddings=True) == n["total"] - n["embeddings"]
        assert sum(p.numel() for p in model.encoder.parameters()) == n["encoder"]


@pytest.mark.parametrize("size", TABLE2)
def test_table2_parameter_counts(size):
    spec = TABLE2[size]
    main_cfg, aux_cfg = _table2_configs(size)
    main, aux = count_parameters(main_cfg, "rtd"), count_parameters(aux_cfg, "mlm")
    assert main["total"] == pytest.approx(spec["main"], rel=0.02)
    assert aux["total"] == pytest.approx(spec["aux"], rel=0.02)
    assert main["embeddings"] == aux["embeddings"] == pytest.approx(spec["embeddings"], rel=0.02)
    # The real modules, built on the meta device (no memory, no init), have the same counts.
    with torch.device("meta"):
        disc, gen = Discriminator(main_cfg), MLMModel(aux_cfg)
    assert disc.num_parameters() == main["total"]
    assert gen.num_parameters() == aux["total"]
    assert disc.num_parameters() - disc.num_parameters(True) == main["embeddings"]


# --- learning --------------------------------------------------------------------------------

def _fit(model, inputs, mask, positions, targets, steps=50, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(inputs, mask, positions), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", VARIANTS)
def test_tiny_mlm_overfits_one_batch(name):
    """Each sequence repeats one token, padded to a random length: a masked token can only be
    recovered by attending to the sequence's other real tokens."""
    cfg = dataclasses.replace(VARIANTS[name], dropout=0.0, attention_dropout=0.0)
    g = torch.Generator().manual_seed(2)
    token = torch.randint(NUM_SPECIAL, cfg.vocab_size, (8, 1), generator=g)
    mask = torch.arange(24) < torch.randint(8, 25, (8, 1), generator=g)  # (B, T)
    ids = torch.where(mask, token, PAD_ID)
    positions = (torch.rand(8, 24, generator=g) < 0.25) & mask
    losses = _fit(MLMModel(cfg).train(), ids.masked_fill(positions, MASK_ID), mask, positions,
                  ids[positions])
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def _fit_positions(cfg):
    """ids[t] = start + t: the masked token is a neighbour's plus or minus one, so it needs
    positions. Returns the training losses."""
    cfg = dataclasses.replace(cfg, dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    span = cfg.vocab_size - NUM_SPECIAL
    ids = NUM_SPECIAL + (torch.randint(0, span, (8, 1), generator=g) + torch.arange(24)) % span
    positions = torch.rand(8, 24, generator=g) < 0.25
    return _fit(MLMModel(cfg).train(), ids.masked_fill(positions, MASK_ID), None, positions,
                ids[positions])


@pytest.mark.parametrize("name", VARIANTS)
def test_tiny_mlm_learns_positions(name):
    """Absolute positions, and relative ones with the scaled table (model.rel_bias_scale):
    both learn word order within 50 steps. Negative control: the plain T5 table (scale 1)
    stays far behind at the same budget (measured ~1.8 nats vs ~0.3 here)."""
    cfg = VARIANTS[name]
    if cfg.position == "relative":
        cfg = dataclasses.replace(cfg, rel_bias_scale=32.0)
    losses = _fit_positions(cfg)
    assert losses[-1] < 0.2 * losses[0], losses[::10]
    if cfg.position == "relative":
        plain = _fit_positions(dataclasses.replace(cfg, rel_bias_scale=1.0))
        assert plain[-1] > 0.3 * plain[0], plain[::10]


def test_relative_bias_scale_is_a_reparametrisation():
    """The same effective table gives the same outputs whatever the scale; only the stored
    parameter (and so Adam's effective step) changes."""
    a = Encoder(dataclasses.replace(TINY, dropout=0.0, attention_dropout=0.0)).eval()
    b = Encoder(dataclasses.replace(a.cfg, rel_bias_scale=16.0)).eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.rel_bias.div_(16.0)
    ids = random_ids(2, 12)
    torch.testing.assert_close(a(ids), b(ids))
    # A fresh encoder's effective table is the locality prior plus N(0, 0.02) noise.
    fresh = Encoder(dataclasses.replace(TINY, rel_bias_scale=16.0))
    prior = relative_bias_prior(TINY.rel_num_buckets, TINY.rel_max_distance, TINY.num_heads)
    assert (fresh.rel_bias * 16.0 - prior).abs().max() < 0.1


def test_relative_bias_prior_prefers_near_keys():
    prior = relative_bias_prior(32, 128, 4)  # (buckets, heads)
    assert prior.shape == (32, 4)
    assert torch.equal(prior[:, 0], torch.zeros(32))  # head 0: global
    d = torch.arange(0, 200)
    last = prior[relative_position_bucket(d, 32, 128), -1]  # by distance, to the right
    assert last[0] == 0 and (last[1:] <= last[:-1]).all() and last[1] < -1.0
    left = prior[relative_position_bucket(-d, 32, 128), -1]
    torch.testing.assert_close(left, last)  # symmetric


def _bce_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


@pytest.mark.parametrize("name", VARIANTS)
def test_fresh_discriminator_starts_at_the_constant_guess(name):
    """With the RTD bias at the prior log-odds, a fresh discriminator's loss on a batch
    replaced at that rate is the best constant guess's. Negative control: the zero bias
    (as before) starts ~0.28 nats above it, the gap the collapse closes."""
    p = 0.142
    g = torch.Generator().manual_seed(0)
    ids = random_ids(16, 32)
    labels = (torch.rand(16, 32, generator=g) < p).float()
    target = _bce_entropy(labels.mean().item())
    model = Discriminator(VARIANTS[name]).eval()
    zero_bias = F.binary_cross_entropy_with_logits(model(ids), labels).item()
    model.head.init_prior_(p)
    loss = F.binary_cross_entropy_with_logits(model(ids), labels).item()
    assert loss == pytest.approx(target, abs=1e-2)
    assert zero_bias > target + 0.2
    with pytest.raises(ValueError, match="replaced_fraction"):
        model.head.init_prior_(0.0)


def test_fresh_mlm_starts_at_the_unigram_baseline():
    """MLMHead.init_unigram_: a fresh model's cross-entropy on tokens drawn from the unigram
    is the unigram entropy (the baseline an aux must beat), not log V."""
    from trainer.corruption.distributions import unigram_logprobs

    cfg = dataclasses.replace(TINY, dropout=0.0, attention_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(cfg.vocab_size, dtype=torch.long)
    counts[NUM_SPECIAL:] = (1000 * torch.rand(cfg.vocab_size - NUM_SPECIAL, generator=g) ** 8
                            ).long()
    logp = unigram_logprobs(counts)[0]
    targets = torch.multinomial(logp.exp(), 4096, replacement=True, generator=g)
    entropy = -logp[targets].mean().item()
    model = MLMModel(cfg).eval()
    ids = torch.full((128, 32), MASK_ID)
    sel = torch.zeros(128, 32, dtype=torch.bool)
    sel.view(-1)[:4096] = True
    before = F.cross_entropy(model(ids, None, sel), targets).item()
    model.head.init_unigram_(logp)
    after = F.cross_entropy(model(ids, None, sel), targets).item()
    assert after == pytest.approx(entropy, abs=0.05)
    assert before > entropy + 0.5  # the uniform start
    assert torch.isfinite(model.head.bias).all()  # specials: finite, never predicted
