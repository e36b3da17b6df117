"""trainer.corruption.sampling: keyed inverse-CDF draws (exact at a large vocabulary, equal to a
plain float64 CDF, following softmax(logp / T)), the closed-form model-free samplers against
the dense distributions, and row chunking. Tolerances and power checks: tests/trainer/
corruption/helpers.py.
"""

import math

import pytest
import torch

from tests.trainer.corruption.helpers import V
from trainer.corruption import sampling as S
from trainer.corruption.distributions import (
    Replacement,
    aux_logprobs,
    replacement_logprobs,
    unigram_logprobs,
)
from trainer.corruption.sampling import keyed_sample_uniform, sample_model_free, sample_tokens
from trainer.tokenizer import NUM_SPECIAL


def test_sample_uniforms_are_uniform_and_keyed():
    u = keyed_sample_uniform(0, 0, torch.arange(20_000), torch.arange(20_000) % 97)
    assert u.dtype == torch.float64 and bool(((u > 0) & (u < 1)).all())
    assert abs(float(u.mean()) - 0.5) < 6 * math.sqrt(1 / 12 / u.numel())
    assert abs(float(u.var()) - 1 / 12) < 0.003
    assert len(torch.unique(u)) == u.numel()  # 53 bits: no collisions at this size
    # The position is part of the key: the same sequence at another position draws anew.
    other = keyed_sample_uniform(0, 0, torch.arange(20_000), torch.arange(20_000) % 97 + 1)
    assert float((u == other).double().mean()) == 0.0


@pytest.mark.slow
def test_sampling_at_a_large_vocabulary_is_exact():
    """128K entries (the paper's vocabulary), most of the mass on a few tokens, the rest
    spread thinly: the CDF's float64 accumulation keeps the frequencies exact, -inf entries are
    never drawn, and the tail is drawn at its total rate."""
    V_big = 128_000
    logits = torch.full((V_big,), -4.0)
    logits[:NUM_SPECIAL] = -math.inf
    logits[NUM_SPECIAL:NUM_SPECIAL + 4] = torch.tensor([8.0, 7.0, 6.0, 5.0])
    n = 20_000
    s = sample_tokens(logits[None].expand(n, -1), 3, 0, torch.arange(n),
                        torch.zeros(n, dtype=torch.long))
    p = logits.softmax(-1).double()
    assert int((s < NUM_SPECIAL).sum()) == 0
    binned = torch.where(s >= NUM_SPECIAL + 4, NUM_SPECIAL + 4, s)
    top = torch.zeros(NUM_SPECIAL + 5, dtype=torch.float64)
    top[:NUM_SPECIAL + 4] = p[:NUM_SPECIAL + 4]
    top[NUM_SPECIAL + 4] = p[NUM_SPECIAL + 4:].sum()
    assert _chi2(binned, top) < 30  # 4 dof: P(chi2 > 30) ~ 5e-6
    wrong = (logits / 1.1).softmax(-1).double()
    top_wrong = torch.cat([wrong[:NUM_SPECIAL + 4], wrong[NUM_SPECIAL + 4:].sum()[None]])
    assert _chi2(binned, top_wrong) > 100  # power: a 10% wrong temperature is detected


@pytest.mark.parametrize("vocab", [1009, 8000])  # a prime (padded last block) and 32 x 250
def test_two_level_cdf_equals_a_plain_float64_cdf(vocab):
    """The blocked CDF draws the token a plain float64 cumulative sum over the whole row
    draws at the same uniform (but at boundary near-ties, none in 3000 rows), never a zero-
    probability entry, even at the extreme uniforms."""
    g = torch.Generator().manual_seed(vocab)
    n = 3000
    logits = torch.randn(n, vocab, generator=g) * 2
    logits[:, :NUM_SPECIAL] = -math.inf
    logits[:, -1] = -math.inf  # the last real entry is impossible: the padding's neighbour
    seq, pos = torch.arange(n), torch.zeros(n, dtype=torch.long)
    t = 1.0 + torch.arange(n) % 3 / 2
    got = sample_tokens(logits, 4, 0, seq, pos, t)
    u = keyed_sample_uniform(4, 0, seq, pos)
    cdf = (logits / t[:, None]).double().softmax(-1).cumsum(-1)
    plain = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1)
    assert torch.equal(got, plain)
    for extreme in (2.0**-54, 1 - 2.0**-54):
        u_row = torch.full((8,), extreme, dtype=torch.float64)
        s = S._inverse_cdf_chunk(logits[:8], u_row, torch.ones(8))
        assert bool(((s >= NUM_SPECIAL) & (s < vocab - 1)).all()), (extreme, s)


# --- Gumbel-max sampling ---------------------------------------------------------------------

def _chi2(samples: torch.Tensor, p: torch.Tensor) -> float:
    n = samples.numel()
    obs = torch.bincount(samples, minlength=p.numel()).double()
    exp = p.double() * n
    keep = exp > 0
    assert float(obs[~keep].sum()) == 0  # nothing where the probability is zero
    return float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_sample_frequencies_match_softmax(temperature):
    logits = torch.tensor([0.0] * NUM_SPECIAL + [2.0, 1.0, 0.5, 0.0, -1.0, -2.0, 1.5, -0.5])
    logp = aux_logprobs(logits[None]).expand(40_000, -1)
    n = logp.shape[0]
    pos = torch.arange(n) % 37
    s = sample_tokens(logp, 11, 0, torch.arange(n) // 37, pos, temperature)
    p = (aux_logprobs(logits[None])[0] / temperature).softmax(-1)
    # 7 degrees of freedom: P(chi2 > 35) ~ 1e-5.
    assert _chi2(s, p) < 35
    wrong = (aux_logprobs(logits[None])[0] / (temperature * 1.1)).softmax(-1)
    assert _chi2(s, wrong) > 70  # power: 10% off in temperature fails the test twice over
    # Batch independence of the sample itself.
    assert torch.equal(sample_tokens(logp[123:124], 11, 0, torch.tensor([123 // 37]),
                                      pos[123:124], temperature), s[123:124])


def test_unigram_samples_follow_counts():
    counts = torch.zeros(V, dtype=torch.long)
    counts[NUM_SPECIAL:NUM_SPECIAL + 10] = torch.tensor([5, 10, 20, 40, 80, 160, 320, 640,
                                                         1280, 2560]) * 100
    lp = unigram_logprobs(counts, 30_000)
    s = sample_tokens(lp, 0, 0, torch.arange(30_000), torch.zeros(30_000, dtype=torch.long))
    p = lp[0].double().exp()
    top = torch.zeros(V + 1, dtype=torch.float64)  # the 10 counted tokens + "any other"
    top[:V] = p
    top[NUM_SPECIAL + 10:V] = 0
    top[V] = p[NUM_SPECIAL + 10:].sum()
    binned = torch.where(s >= NUM_SPECIAL + 10, V, s)
    assert _chi2(binned, top) < 40  # 10 dof: P(chi2 > 40) ~ 2e-5
    hot = sample_tokens(lp, 0, 0, torch.arange(30_000), torch.zeros(30_000, dtype=torch.long),
                          1.1)  # power: the same draws at a 10% higher temperature
    assert _chi2(torch.where(hot >= NUM_SPECIAL + 10, V, hot), top) > 200


def test_temperature_moves_samples_away_from_the_mode():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 50, generator=g) * 3
    logp = aux_logprobs(logits)
    mode = logp.argmax(-1)
    seq, pos = torch.arange(4000), torch.zeros(4000, dtype=torch.long)
    hits, surprisals = [], []
    for t in (1.0, 2.0, 4.0):
        s = sample_tokens(logp, 0, 0, seq, pos, t)
        hits.append(float((s == mode).double().mean()))
        # Mean -log p(sample) under the T = 1 distribution: at T = 1 it is the entropy.
        surprisals.append(float(-logp[torch.arange(4000), s].mean()))
    assert hits[0] > hits[1] + 0.1 > hits[2] + 0.2
    entropy = float(-(logp.exp() * logp.clamp(min=-1e9)).sum(-1).mean())
    assert surprisals[0] == pytest.approx(entropy, rel=0.05)
    assert surprisals[0] + 0.3 < surprisals[1] < surprisals[2] - 0.3


# --- closed-form model-free samplers ----------------------------------------------------------

MODEL_FREE_CASES = {  # replacement, temperature, weight, and a wrong (temperature, weight)
    "uniform": ("uniform", 1.7, 0.0, None),
    "smoothed_onehot": ("smoothed_onehot", 1.0, 0.0, (1.15, 0.0)),
    "smoothed_onehot-T2": ("smoothed_onehot", 2.0, 0.0, (2.3, 0.0)),
    "uniform->smoothed_onehot": ("uniform->smoothed_onehot", 1.0, 0.3, (1.0, 0.36)),
    "unigram": ("unigram", 1.0, 0.0, (1.1, 0.0)),
    "unigram-T1.5": ("unigram", 1.5, 0.0, (1.65, 0.0)),
    "unigram->smoothed_onehot": ("unigram->smoothed_onehot", 1.0, 0.5, (1.0, 0.56)),
    "unigram->smoothed_onehot-T": ("unigram->smoothed_onehot", 1.3, 0.8, (1.45, 0.8)),
}


def _zipf_counts() -> torch.Tensor:
    counts = torch.zeros(V, dtype=torch.long)
    counts[NUM_SPECIAL:] = (20_000 / torch.arange(1, V - NUM_SPECIAL + 1)).long()
    counts[:NUM_SPECIAL] = 10**6  # [CLS] / [SEP] counts: never a replacement
    return counts


@pytest.mark.parametrize("case", MODEL_FREE_CASES)
def test_model_free_samplers_draw_exactly_the_dense_distribution(case):
    """The closed forms against their dense definition (replacement_logprobs / T), binned
    into the 12 likeliest tokens (the original among them) + the rest, 60K draws."""
    kind, t, w, wrong = MODEL_FREE_CASES[case]
    n, o = 60_000, NUM_SPECIAL + 3  # a frequent original: keeping it must be exact too
    original = torch.full((n,), o)
    seq, pos = torch.arange(n) // 50, torch.arange(n) % 50
    u = keyed_sample_uniform(5, 1, seq, pos)
    rep = Replacement(kind, V, 0.35, _zipf_counts())

    def dense(t, w) -> torch.Tensor:
        lp = replacement_logprobs(rep, original[:1], weight=w)[0]
        return (lp / t).softmax(-1).double()

    s = sample_model_free(rep, u, original, torch.full((n,), t), torch.full((n,), w))
    assert int((s < NUM_SPECIAL).sum()) == 0
    p = dense(t, w)
    top = p.argsort(descending=True)[:12]

    def binned_p(p):
        return torch.cat([p[top], (1 - p[top].sum()).clamp(min=0)[None]])

    binned = torch.full_like(s, len(top))
    for i, tok in enumerate(top.tolist()):
        binned[s == tok] = i
    assert _chi2(binned, binned_p(p)) < 45  # 12 dof: P(chi2 > 45) ~ 1e-5
    if wrong is not None:
        assert _chi2(binned, binned_p(dense(*wrong))) > 120


def test_model_free_samplers_are_per_row():
    """Rows with different temperatures and weights in one call draw what each draws alone
    (the unigram family shares one CDF per distinct exponent); and the O(1) closed forms agree
    with inverse-CDF sampling of the dense distribution at the very same uniform, except
    where rounding puts a uniform on a boundary."""
    counts = _zipf_counts()
    n = 64
    original = NUM_SPECIAL + torch.arange(n) % 20
    seq, pos = torch.arange(n), torch.arange(n) % 7
    u = keyed_sample_uniform(9, 2, seq, pos)
    t = 1.0 + torch.arange(n) % 5 / 4
    w = torch.arange(n) % 3 / 2
    for kind in ("unigram", "unigram->smoothed_onehot", "smoothed_onehot",
                 "uniform->smoothed_onehot", "uniform"):
        rep = Replacement(kind, V, 0.35, counts)
        both = sample_model_free(rep, u, original, t, w)
        alone = torch.cat([sample_model_free(rep, u[i:i + 1], original[i:i + 1], t[i:i + 1],
                                             w[i:i + 1])
                           for i in range(n)])
        assert torch.equal(both, alone), kind
        lp = replacement_logprobs(rep, original, weight=w)
        assert torch.equal(both, sample_tokens(lp, 9, 2, seq, pos, t)), kind


# --- row chunks ------------------------------------------------------------------------------

def test_sample_tokens_in_many_chunks_equals_one_chunk(monkeypatch):
    g = torch.Generator().manual_seed(11)
    logp = torch.randn(97, V, generator=g) * 3
    logp[:, :NUM_SPECIAL] = -math.inf
    seq, pos = torch.arange(97) * 13, torch.arange(97) % 40
    temp = torch.linspace(0.2, 3.0, 97)
    assert S._CHUNK_ELEMENTS // V >= 97  # the default: one chunk
    whole = sample_tokens(logp, 5, 1, seq, pos, temp)
    chunks = []
    monkeypatch.setattr(S, "_row_chunks", lambda n, v, d, f=S._row_chunks: chunks.append(
        list(f(n, v, d))) or iter(chunks[-1]))
    monkeypatch.setattr(S, "_CHUNK_ELEMENTS", 3 * V + 1)  # 3 rows per chunk, the last one 1
    split = sample_tokens(logp, 5, 1, seq, pos, temp)
    assert len(chunks[-1]) == 33
    assert torch.equal(split, whole)
    assert len(set(whole.tolist())) > 20  # not a degenerate draw


def test_row_chunks_are_larger_on_a_gpu_and_cover_every_row_once():
    """At V = 128K a CPU chunk is 8 rows (cache-sized temporaries); a GPU chunk must be far
    larger or ~1,200 tiny chunks per batch make sampling launch-bound."""
    n, vocab = 10_000, 128_000
    for dev, rows in ((torch.device("cpu"), 8), (torch.device("cuda"), 131)):
        chunks = list(S._row_chunks(n, vocab, dev))
        assert chunks[0] == slice(0, rows)
        assert torch.equal(torch.cat([torch.arange(n)[c] for c in chunks]), torch.arange(n))
