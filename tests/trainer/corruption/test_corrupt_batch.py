"""trainer.corruption.corrupt.corrupt_batch, the entry point used offline and online: batch and
padding independence per case, labels exactly where changed, the aux's samples, each
augmentation, thread safety, argument errors, row chunks, and CPU = CUDA where there is one.
"""

import math

import pytest
import torch

from tests.trainer.corruption.helpers import AUX_CFG, V, cfg, make_batch, pad_to
from trainer.config.run import MLMConfig
from trainer.config.sections import ConfigError
from trainer.corruption import corrupt as C
from trainer.corruption import keyed_rng as R
from trainer.corruption import sampling as S
from trainer.corruption.batch import KeyedBatch
from trainer.corruption.corrupt import corrupt_batch
from trainer.corruption.distributions import (
    aux_logprobs,
)
from trainer.corruption.masking import mask_positions
from trainer.corruption.schedules import schedule_value
from trainer.tokenizer import MASK_ID, NUM_SPECIAL

# --- corrupt_batch ---------------------------------------------------------------------------

CASES = {
    "aux-temperature": dict(),
    "aux-drop_token": dict(augmentation="drop_token", t0=1.5),
    "aux-log_interp_unigram": dict(augmentation="log_interp_unigram"),
    "unigram->smoothed_onehot": dict(replacement="unigram->smoothed_onehot"),
    "uniform-temperature": dict(replacement="uniform"),
}


@pytest.mark.parametrize("case", CASES)
def test_corrupt_batch_is_batch_and_padding_independent(aux, case):
    # The aux logits of a row alone and inside a longer, bigger batch differ in the last ulp
    # (other matmul / softmax shapes), so a sample could only flip at a float near-tie of the
    # two best candidates (~1e-6 per position); the masks and the noise are exact (tested
    # above), and with fixed inputs this comparison is deterministic.
    c = cfg(**CASES[case])
    ids, attn = make_batch(5, 40, seed=6, min_len=10)
    seq = torch.tensor([3, 1, 4, 1_000_000, 9])
    u = torch.tensor([0.0, 0.01, 0.05, 0.3, 1.0])
    counts = torch.arange(V) * 7 % 101
    big = corrupt_batch(KeyedBatch(pad_to(ids, 56), seq, 42, 2,
                                   attention_mask=pad_to(attn, 56).bool()),
                        u, c, aux=aux, unigram_counts=counts)
    assert not bool(big.selected[:, 40:].any()) and not bool(big.labels[:, 40:].any())
    for b in range(5):
        one = corrupt_batch(KeyedBatch(ids[b:b + 1], seq[b:b + 1], 42, 2,
                                       attention_mask=attn[b:b + 1]),
                            u[b:b + 1], c, aux=aux, unigram_counts=counts)
        assert torch.equal(one.input_ids[0], big.input_ids[b, :40])
        assert torch.equal(one.labels[0], big.labels[b, :40])
        assert torch.equal(one.selected[0], big.selected[b, :40])
        assert torch.equal(one.temperature, big.temperature[b:b + 1])
    assert big.temperature.tolist() == pytest.approx(
        schedule_value(c.schedule, u.double(), c.t0, c.tau).tolist())
    assert int(big.labels.sum()) > 0


def test_corrupt_batch_labels_exactly_where_changed():
    ids, attn = make_batch(200, 64, seed=7)
    out = corrupt_batch(KeyedBatch(ids, torch.arange(200), 0, 0, attention_mask=attn), 1.0,
                        cfg(replacement="smoothed_onehot", schedule="fixed"), vocab_size=V)
    sel = out.selected
    assert out.labels.dtype == torch.uint8
    assert torch.equal(out.labels.bool(), (out.input_ids != ids) & sel)
    assert torch.equal(out.input_ids[~sel], ids[~sel])
    assert bool((out.input_ids[sel] >= NUM_SPECIAL).all())  # never a special, never [MASK]
    n = int(sel.sum())
    replaced = float(out.labels[sel].double().mean())
    assert abs(replaced - 0.65) < 5 * math.sqrt(0.65 * 0.35 / n)  # alpha kept the original


def test_corrupt_batch_aux_never_samples_specials_and_is_deterministic(aux):
    ids, attn = make_batch(16, 48, seed=8)
    seq = torch.arange(16)
    batch = KeyedBatch(ids, seq, 1, 0, attention_mask=attn)
    with torch.no_grad():
        saved = aux.head.bias[MASK_ID].item()
        aux.head.bias[MASK_ID] = 100.0  # the aux model now wants [MASK] everywhere
    try:
        a = corrupt_batch(batch, 0.0, cfg(), aux=aux)
        b = corrupt_batch(batch, 0.0, cfg(), aux=aux)
    finally:
        with torch.no_grad():
            aux.head.bias[MASK_ID] = saved
    assert bool((a.input_ids[a.selected] >= NUM_SPECIAL).all())
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    c = corrupt_batch(KeyedBatch(ids, seq, 2, 0, attention_mask=attn), 0.0, cfg(), aux=aux)
    d = corrupt_batch(KeyedBatch(ids, seq, 1, 1, attention_mask=attn), 0.0, cfg(), aux=aux)
    assert not torch.equal(c.selected, a.selected) and not torch.equal(d.selected, a.selected)


def test_corrupt_batch_temperature_flattens_aux_samples(aux):
    ids, attn = make_batch(64, 48, seed=9)
    seq = torch.arange(64)
    hits = []
    for t0 in (1.0, 3.0):  # constant schedule: T = t0 for every sample
        c = cfg(schedule="constant", t0=t0)
        out = corrupt_batch(KeyedBatch(ids, seq, 0, 0, attention_mask=attn), 0.0, c, aux=aux)
        masked, sel = mask_positions(KeyedBatch(ids, seq, 0, 0), c)
        with torch.no_grad():
            mode = aux_logprobs(aux(masked, attn, positions_mask=sel)).argmax(-1)
        hits.append(float((out.input_ids[sel] == mode).double().mean()))
        assert out.temperature.tolist() == [t0] * 64
    assert hits[0] > hits[1] + 0.15


def test_corrupt_batch_log_interp_unigram_starts_at_unigram(aux):
    ids, attn = make_batch(32, 48, seed=10)
    counts = torch.zeros(V, dtype=torch.long)
    counts[[20, 30, 40]] = 10**7
    batch = KeyedBatch(ids, torch.arange(32), 0, 0, attention_mask=attn)
    out = corrupt_batch(batch, 0.0,
                        cfg(augmentation="log_interp_unigram", schedule="constant", t0=2.0),
                        aux=aux, unigram_counts=counts.numpy())  # as CorpusShards gives
    got = out.input_ids[out.selected]
    assert float(torch.isin(got, torch.tensor([20, 30, 40])).double().mean()) > 0.99
    late = corrupt_batch(batch, 1.0,
                         cfg(augmentation="log_interp_unigram", schedule="polynomial",
                             tau=1.0), aux=aux, unigram_counts=counts)
    assert late.temperature.tolist() == [1.0] * 32  # g = 0: the aux model alone
    assert float(torch.isin(late.input_ids[late.selected],
                            torch.tensor([20, 30, 40])).double().mean()) < 0.1


def test_corrupt_batch_dropout_restores_model_and_rng(aux):
    ids, attn = make_batch(16, 48, seed=11)
    batch = KeyedBatch(ids, torch.arange(16), 0, 0, attention_mask=attn)
    c = cfg(augmentation="dropout", schedule="constant", t0=1.5)
    rng = torch.get_rng_state()
    a = corrupt_batch(batch, 0.0, c, aux=aux)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG stream is untouched
    assert not aux.training
    assert (aux.encoder.dropout, aux.encoder.attention_dropout) == (AUX_CFG.dropout,
                                                                    AUX_CFG.attention_dropout)
    b = corrupt_batch(batch, 0.0, c, aux=aux)
    assert torch.equal(a.input_ids, b.input_ids)  # same batch: reproducible
    assert a.temperature.tolist() == [1.5] * 16
    plain = corrupt_batch(batch, 0.0, cfg(schedule="fixed"), aux=aux)
    assert torch.equal(plain.selected, a.selected)
    assert not torch.equal(plain.input_ids, a.input_ids)  # dropout changed the aux model


@pytest.mark.parametrize("augmentation", ["dropout", "drop_attention"])
def test_dropout_augmentations_are_thread_safe(aux, augmentation):
    """Two threads corrupting different batches with one shared aux model (as RunInference
    threads do) get exactly the bytes each gets alone: no shared model state, no global RNG."""
    import threading

    c = cfg(augmentation=augmentation, schedule="constant", t0=1.5)
    rows = [make_batch(16, 48, seed=20 + i) for i in range(2)]
    jobs = [KeyedBatch(ids, torch.arange(16) + 100 * i, 0, 0, attention_mask=attn)
            for i, (ids, attn) in enumerate(rows)]
    alone = [corrupt_batch(batch, 0.0, c, aux=aux).input_ids for batch in jobs]
    got: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    start = threading.Barrier(2)

    def work(i):
        start.wait()
        for _ in range(5):
            got[i].append(corrupt_batch(jobs[i], 0.0, c, aux=aux).input_ids)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for i in range(2):
        assert len(got[i]) == 5 and all(torch.equal(x, alone[i]) for x in got[i])
    assert not torch.equal(alone[0], corrupt_batch(jobs[0], 0.0, cfg(schedule="fixed"),
                                                   aux=aux).input_ids)


def test_corrupt_batch_drop_token_changes_the_aux_input(aux):
    ids, attn = make_batch(16, 48, seed=14)
    batch = KeyedBatch(ids, torch.arange(16), 0, 0, attention_mask=attn)
    plain = corrupt_batch(batch, 0.0, cfg(schedule="fixed"), aux=aux)
    dropped = corrupt_batch(batch, 0.0,
                            cfg(augmentation="drop_token", schedule="constant", t0=1.9),
                            aux=aux)
    none = corrupt_batch(batch, 0.0, cfg(augmentation="drop_token", schedule="fixed"), aux=aux)
    assert torch.equal(plain.selected, dropped.selected)
    assert torch.equal(plain.input_ids, none.input_ids)  # rate 0: exactly the plain aux
    assert not torch.equal(plain.input_ids, dropped.input_ids)
    assert bool((dropped.input_ids[~dropped.selected] == ids[~dropped.selected]).all())


def test_corrupt_batch_outputs_are_trainable_tensors(aux):
    ids, attn = make_batch(4, 32, seed=12)
    out = corrupt_batch(KeyedBatch(ids, torch.arange(4), 0, 0, attention_mask=attn), 0.5, cfg(),
                        aux=aux)
    assert not out.input_ids.is_inference() and not out.selected.is_inference()
    emb = torch.nn.Embedding(V, 8)
    emb(out.input_ids).sum().backward()  # an inference tensor would refuse to be saved
    assert emb.weight.grad is not None


def test_corrupt_batch_argument_errors(aux):
    ids, attn = make_batch(2, 16)
    batch = KeyedBatch(ids, torch.arange(2), 0, 0, attention_mask=attn)
    with pytest.raises(ValueError, match="auxiliary model"):
        corrupt_batch(batch, 0.0, cfg())
    with pytest.raises(ValueError, match="unigram"):
        corrupt_batch(batch, 0.0, cfg(replacement="unigram"), vocab_size=V)
    with pytest.raises(ValueError, match="vocabulary size"):
        corrupt_batch(batch, 0.0, cfg(replacement="uniform"))
    with pytest.raises(ValueError, match="agree"):
        corrupt_batch(batch, 0.0, cfg(replacement="unigram"),
                      unigram_counts=torch.ones(V + 1, dtype=torch.long), aux=aux)
    with pytest.raises(ConfigError, match="corruption.augmentation"):
        corrupt_batch(batch, 0.0, cfg(replacement="uniform", augmentation="dropout"),
                      vocab_size=V)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree(aux):
    ids, attn = make_batch(32, 64, seed=13)
    seq = torch.arange(32) * 1_000_003
    cuda = torch.device("cuda")
    assert torch.equal(R.keyed_bits(7, 3, seq, 1, (64,)),
                       R.keyed_bits(7, 3, seq.to(cuda), 1, (64,)).cpu())
    bert = MLMConfig(mask_prob=0.15, mask_token_prob=0.8, random_token_prob=0.1)
    for a, b in zip(mask_positions(KeyedBatch(ids, seq, 7, 3), bert, V),
                    mask_positions(KeyedBatch(ids.to(cuda), seq.to(cuda), 7, 3), bert, V)):
        assert torch.equal(a, b.cpu())
    c = cfg(replacement="unigram->smoothed_onehot")
    counts = torch.arange(V)
    host = corrupt_batch(KeyedBatch(ids, seq, 7, 0, attention_mask=attn), 0.2, c,
                         unigram_counts=counts)
    dev = corrupt_batch(KeyedBatch(ids.to(cuda), seq.to(cuda), 7, 0,
                                   attention_mask=attn.to(cuda)), 0.2, c, unigram_counts=counts)
    # Samples may differ only at float near-ties of log / log1p between the devices.
    assert float((host.input_ids != dev.input_ids.cpu()).double().mean()) < 1e-3


def test_corrupt_batch_with_aux_in_many_chunks_equals_one_chunk(aux, monkeypatch):
    ids, attn = make_batch(12, 48, seed=12)
    batch = KeyedBatch(ids, torch.arange(12) * 7, 3, 1, attention_mask=attn)
    u = torch.linspace(0.0, 1.0, 12)
    for c in (cfg(), cfg(augmentation="log_interp_unigram")):
        counts = torch.arange(V) * 5 % 89 + 1
        whole = corrupt_batch(batch, u, c, aux=aux, unigram_counts=counts)
        n = int(whole.selected.sum())
        assert S._CHUNK_ELEMENTS // V >= n  # the default: one chunk
        with monkeypatch.context() as m:
            calls = []
            m.setattr(C, "_row_chunks", lambda n, v, d, f=C._row_chunks: calls.append(
                list(f(n, v, d))) or iter(calls[-1]))
            m.setattr(S, "_CHUNK_ELEMENTS", 4 * V)  # 4 rows per chunk
            split = corrupt_batch(batch, u, c, aux=aux, unigram_counts=counts)
        assert len(calls[0]) == -(-n // 4) > 5  # the aux head ran in many chunks
        assert torch.equal(split.input_ids, whole.input_ids)
        assert torch.equal(split.labels, whole.labels)
        assert int(whole.labels.sum()) > 0
