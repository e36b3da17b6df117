"""pipeline.generate's samples follow the distribution they claim: the tempered aux's (a
confident aux, so the test has power) and each model-free replacement's, by the moments of
the sampled tokens over every masked position.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from pipeline.generate import run
from tests.helpers import GENERATE_SMALL as SMALL
from tests.helpers import TINY, gen_argv
from trainer.config.load import load_config
from trainer.corruption.batch import KeyedBatch
from trainer.corruption.distributions import Replacement, aux_logprobs, replacement_logprobs
from trainer.corruption.masking import mask_positions
from trainer.corruption.schedules import schedule_value
from trainer.data.corpus_shards import CorpusShards
from trainer.data.order import progress
from trainer.data.rtd_shards import RTDShards
from trainer.pretrained import load_generator

pytestmark = pytest.mark.usefixtures("one_thread")


def replacement_moments(rtd_dir, corpus_dir, cfg, logprobs_of, temperature_of=None):
    """Over every masked position of epoch 0 of a shard set: (observed, expected, std) of
    two statistics of the sampled token under the claimed distribution p_T = softmax(logp/T):
    the number of samples equal to the original, and the sum of p_T(sample). A sampler
    that does not draw from p_T (wrong T, wrong distribution) moves them many std away.
    ``temperature_of(row)`` gives the claimed T of a row (default: its shard column)."""
    temperature_of = temperature_of or (lambda r: r.temperature)
    rtd, corpus = RTDShards(str(rtd_dir)), CorpusShards(str(corpus_dir))
    original = {r.seq_id: r.input_ids for r in corpus.rows()}
    rows = list(rtd.rows(epoch=0))
    stats = np.zeros((2, 3))  # [kept, p(sample)] x [observed, expected, variance]
    for i in range(0, len(rows), 64):
        chunk = rows[i:i + 64]
        seq_ids = torch.tensor([r.seq_id for r in chunk])
        width = max(len(r.input_ids) for r in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        for j, r in enumerate(chunk):
            ids[j, :len(r.input_ids)] = torch.from_numpy(original[r.seq_id].astype(np.int64))
        attn = ids != 0
        masked, selected = mask_positions(KeyedBatch(ids, seq_ids, 7, 0, attention_mask=attn),
                                          cfg.corruption)
        b, t = selected.nonzero(as_tuple=True)
        temps = torch.tensor([temperature_of(r) for r in chunk])[b]  # (N,)
        p = (logprobs_of(masked, attn, selected, ids[b, t]) / temps[:, None]).softmax(-1)
        sampled = torch.tensor([int(chunk[j].input_ids[k]) for j, k in zip(b, t)])
        p_orig = p.gather(1, ids[b, t][:, None])[:, 0]
        p_sample = p.gather(1, sampled[:, None])[:, 0]
        p2 = (p * p).sum(-1)
        stats[0] += [(sampled == ids[b, t]).sum(), p_orig.sum(), (p_orig * (1 - p_orig)).sum()]
        stats[1] += [p_sample.sum(), p2.sum(), ((p * p * p).sum(-1) - p2 * p2).sum()]
    return [(obs, exp, var ** 0.5) for obs, exp, var in stats]


@pytest.fixture(scope="module")
def confident_aux_rtd(prepared, aux_checkpoint, tmp_path_factory):
    """A shard set from a confident aux: the 4-step aux's (tied) word embeddings x 30. The
    encoder is unchanged (its embedding LayerNorm removes the scale) and the LM head's logits
    are 30x larger, so p and its tempered versions differ a lot: a test of the temperature
    or of the sampler has power on them, where the 4-step aux's logits are nearly flat."""
    corpus_dir, _, _ = prepared
    root = tmp_path_factory.mktemp("confident")
    ckpt = root / "aux"
    shutil.copytree(aux_checkpoint, ckpt)
    state = torch.load(ckpt / "state.pt", weights_only=True)
    for key in ("encoder.word_emb.weight", "head.weight"):  # tied: the same values, x30 once
        state["model"][key] = state["model"][key] * 30.0
    torch.save(state, ckpt / "state.pt")
    rtd_dir = root / "rtd"
    run(gen_argv(corpus_dir, rtd_dir, f"generate.aux_checkpoint={ckpt}", "generate.epochs=2",
                 "generate.seed=7", "generate.device=cpu"))
    return ckpt, rtd_dir


def test_aux_samples_follow_the_tempered_aux_distribution(prepared, confident_aux_rtd):
    """The samples of a confident aux follow softmax(logp / T) at the schedule's T, computed
    here from each row's position (not read from the shards, which are also checked against
    it). Negative controls, which must fail on the same samples: T = 1 where the schedule
    said up to 2, and the uniform distribution."""
    corpus_dir, _, _ = prepared
    ckpt, rtd_dir = confident_aux_rtd
    cfg = load_config(TINY, SMALL)
    c = cfg.corruption
    aux = load_generator(str(ckpt))
    rtd = RTDShards(str(rtd_dir))
    n = rtd.rows_per_epoch
    rows = rtd.read_range(0, 0, n)
    u = progress(0, rows.positions, n, 2, c.granularity)
    schedule_t = schedule_value(c.schedule, torch.from_numpy(u), c.t0, c.tau).float().numpy()
    assert np.array_equal(rows.temperature, schedule_t)  # the shards' column is the schedule's
    assert schedule_t.max() > 1.9  # early samples are strongly tempered

    def aux_logprobs_of(masked, attn, selected, _original):
        with torch.inference_mode():
            return aux_logprobs(aux(masked, attn, positions_mask=selected))

    def uniform_of(masked, attn, selected, original):
        return replacement_logprobs(Replacement("uniform", 600), original)

    by_position = dict(zip(rows.positions.tolist(), schedule_t.tolist(), strict=True))
    right = replacement_moments(rtd_dir, corpus_dir, cfg, aux_logprobs_of,
                                lambda r: by_position[r.position])
    for obs, exp, std in right:
        assert abs(obs - exp) < 5 * std, (obs, exp, std)
    for wrong in (replacement_moments(rtd_dir, corpus_dir, cfg, aux_logprobs_of, lambda r: 1.0),
                  replacement_moments(rtd_dir, corpus_dir, cfg, uniform_of)):
        assert any(abs(obs - exp) > 5 * std for obs, exp, std in wrong), wrong


@pytest.mark.parametrize("replacement", ["uniform", "unigram", "smoothed_onehot"])
def test_model_free_samples_follow_their_distribution(prepared, tmp_path, replacement):
    corpus_dir, _, _ = prepared
    rtd_dir = tmp_path / "rtd"
    run(gen_argv(corpus_dir, rtd_dir, f"corruption.replacement={replacement}",
                 "generate.epochs=1", "generate.seed=7"))
    cfg = load_config(TINY, SMALL)
    counts = CorpusShards(str(corpus_dir)).unigram_counts()

    def model_free(kind):
        rep = Replacement(kind, 600, cfg.corruption.smoothed_onehot_alpha, counts)
        return lambda masked, attn, selected, original: replacement_logprobs(
            rep, original, weight=torch.zeros(len(original)))

    for obs, exp, std in replacement_moments(rtd_dir, corpus_dir, cfg, model_free(replacement)):
        assert abs(obs - exp) < 5 * std, (obs, exp, std)
    # The test has power: the same samples judged against another distribution fail it.
    wrong = "unigram" if replacement == "uniform" else "uniform"
    assert any(abs(obs - exp) > 5 * std for obs, exp, std in
               replacement_moments(rtd_dir, corpus_dir, cfg, model_free(wrong)))
