"""trainer.model.encoder.Encoder.admin_init_: the Admin omegas of post-LN encoders."""

import dataclasses
import math

import pytest
import torch

from trainer.model.encoder import Encoder
from trainer.model.encoder_config import EncoderConfig
from trainer.tokenizer import NUM_SPECIAL

POST = EncoderConfig(vocab_size=60, num_layers=4, hidden_size=64, num_heads=4, ffn_size=256,
                     rel_num_buckets=8, rel_max_distance=16, max_seq_len=32)


def omegas_of(enc: Encoder) -> list[torch.Tensor]:
    """The omega parameters in residual order: attn 1, ffn 1, attn 2, ..."""
    return [w for b in enc.blocks for w in (b.omega_attn, b.omega_ffn)]


def ids_and_mask(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(NUM_SPECIAL, POST.vocab_size, (3, 24), generator=g)
    return ids, torch.arange(24).expand(3, 24) < torch.tensor([[24], [20], [13]])


def test_bert_init_gets_sqrt_of_residual_index():
    """Under N(0, 0.02) every branch is far below its input's variance, so each counts as one
    unit: omega_i = sqrt(i), set at construction, one value across the channels."""
    enc = Encoder(POST)
    params = omegas_of(enc)
    assert all((w == w[0]).all() for w in params)
    got = [w[0].item() for w in params]
    assert got == pytest.approx([math.sqrt(i) for i in range(1, 2 * POST.num_layers + 1)],
                                abs=1e-6)
    assert all(a < b for a, b in zip(got, got[1:]))  # strictly increasing with depth
    # Re-profiling on other (padded) inputs returns and keeps the same values.
    assert enc.admin_init_(*ids_and_mask(seed=1)) == pytest.approx(got, abs=1e-6)


def test_negative_control_not_a_no_op():
    """The literal profile (min_branch_var=0) is what made Admin a near no-op under BERT init:
    its omegas stay about 1. The default must not: the last residual of 12 layers gets
    sqrt(24) = 4.9."""
    enc = Encoder(dataclasses.replace(POST, num_layers=12))
    assert enc.blocks[-1].omega_ffn[0].item() > 1.5
    assert enc.blocks[-1].omega_ffn[0].item() == pytest.approx(math.sqrt(24), abs=1e-6)
    literal = enc.admin_init_(min_branch_var=0.0)
    assert max(literal) < 1.2 and enc.blocks[-1].omega_ffn[0].item() < 1.2


def test_formula_with_a_branch_above_its_input():
    """omega_{i+1}^2 = omega_i^2 + max(min_branch_var, Var[f_i] / Var[x_i]) on a known case:
    block 0's FFN scaled up so that it is larger than its input and counts at its measured
    size, recomputed here by hand from the same real tokens."""
    enc = Encoder(dataclasses.replace(POST, num_layers=2)).eval()
    with torch.no_grad():
        enc.blocks[0].ffn.down.weight.mul_(200.0)
    ids, mask = ids_and_mask()
    got = enc.admin_init_(ids, mask)

    b0 = enc.blocks[0]
    with torch.no_grad():
        x0 = enc.embed(ids)
        h0 = b0.attn(x0, enc.attention_bias(mask, x0.dtype), 0.0)
        r0 = (h0[mask].var() / x0[mask].var()).item()
        x1 = b0.ln_attn(got[0] * x0 + h0)
        h1 = b0.ffn(x1)
        r1 = (h1[mask].var() / x1[mask].var()).item()
    assert r0 < 1.0 < r1  # the attention branch is floored, the scaled FFN is not
    assert got[:3] == pytest.approx([1.0, math.sqrt(2.0), math.sqrt(2.0 + r1)], rel=1e-5)
    assert got[3] == pytest.approx(math.sqrt(3.0 + r1), rel=1e-5)  # block 1 attn: floored

    # min_branch_var=0 is the literal profile: the small attention branch counts as measured.
    literal = enc.admin_init_(ids, mask, min_branch_var=0.0)
    assert literal[:3] == pytest.approx([1.0, math.sqrt(1.0 + r0),
                                         math.sqrt(1.0 + r0 + r1)], rel=1e-5)


def test_leaves_mode_and_rng_alone_and_checks_arguments():
    enc = Encoder(POST).train()
    state = torch.get_rng_state()
    enc.admin_init_()
    assert enc.training and torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="min_branch_var"):
        enc.admin_init_(min_branch_var=-1.0)
    with pytest.raises(ValueError, match="post-LN"):
        Encoder(dataclasses.replace(POST, layer_norm="pre")).admin_init_()
