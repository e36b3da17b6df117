"""pipeline.generate end to end: a real Beam pipeline over the prepared test corpus, with a real
(tiny, few-step) auxiliary MLM checkpoint trained by trainer.train."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from pipeline.corrupt_write import CorruptionHandler
from pipeline.generate import run
from pipeline.layout import Layout
from tests.helpers import GENERATE_SMALL as SMALL
from tests.helpers import TINY, gen_argv
from trainer.checkpoint import SaveContext
from trainer.checkpoint import save as save_checkpoint
from trainer.config.load import load_config, to_dict
from trainer.corruption.batch import KeyedBatch
from trainer.corruption.corrupt import corrupt_batch
from trainer.corruption.schedules import schedule_value
from trainer.data.corpus_shards import CorpusShards
from trainer.data.order import unpermute
from trainer.data.rtd_format import token_dtype
from trainer.data.rtd_shards import RTDShards
from trainer.modes.joint import JointModel
from trainer.pretrained import load_generator
from trainer.tokenizer import NUM_SPECIAL

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# The shard contract
# ---------------------------------------------------------------------------------------------

def test_rtd_shard_contract(prepared, aux_rtd):
    corpus_dir, _, _ = prepared
    rtd_dir, manifest = aux_rtd
    corpus = {r.seq_id: r.input_ids for r in CorpusShards(str(corpus_dir)).rows()}
    n = len(corpus)
    rtd = RTDShards(str(rtd_dir))
    rtd.verify(checksums=True)
    assert rtd.num_epochs == 2 and rtd.rows_per_epoch == n == manifest["num_sequences"]
    assert manifest["aux"]["config"]["aux"]["num_layers"] == 2
    assert len(manifest["aux"]["state_sha256"]) == 64
    assert len(rtd.epoch_files(0)) > 1  # several parts per epoch: range reads cross files
    last_t = None
    for e in range(2):
        rows = list(rtd.rows(epoch=e))
        assert [r.position for r in rows] == list(range(n))
        assert sorted(r.seq_id for r in rows) == list(range(n))
        for r in rows:
            orig = corpus[r.seq_id]
            assert r.input_ids.dtype.kind == "i" and len(r.input_ids) == len(orig)
            assert np.array_equal(r.labels, (r.input_ids != orig).astype(np.uint8))
            assert r.labels.dtype == np.uint8
            special = orig < NUM_SPECIAL
            assert not r.labels[special].any()  # specials are never selected
            assert (r.input_ids[~special] >= NUM_SPECIAL).all()  # never sampled either
            u = (e * n + r.position) / (2 * n)
            assert r.temperature == pytest.approx(schedule_value("exponential", u, 2.0, 0.1),
                                                  rel=1e-6)
            if last_t is not None:
                assert r.temperature <= last_t
            last_t = r.temperature
        replaced = sum(int(r.labels.sum()) for r in rows) / sum(len(r.labels) for r in rows)
        assert 0.05 < replaced < 0.15  # at most the selected 15% of normal tokens
    assert manifest["devices"] == ["cpu"]


def test_range_reads_touch_only_needed_rows(aux_rtd):
    rtd_dir, _ = aux_rtd
    rtd = RTDShards(str(rtd_dir))
    all_rows = list(rtd.rows(epoch=1))
    for lo, hi in [(0, 1), (195, 205), (17, 433), (rtd.rows_per_epoch - 3, rtd.rows_per_epoch)]:
        got = rtd.read_range(1, lo, hi)
        assert got.positions.tolist() == list(range(lo, hi))
        for a, b in zip(got.rows(), all_rows[lo:hi], strict=True):
            assert a.seq_id == b.seq_id and np.array_equal(a.input_ids, b.input_ids)
    assert len(rtd.read_range(0, 5, 5)) == 0


def test_samples_equal_corrupt_batch_one_at_a_time(prepared, aux_rtd, aux_checkpoint):
    """Batch independence: the shards equal corrupt_batch on each (epoch, seq_id) alone."""
    corpus_dir, _, _ = prepared
    rtd_dir, _ = aux_rtd
    corpus = {r.seq_id: r.input_ids for r in CorpusShards(str(corpus_dir)).rows()}
    cfg = load_config(TINY)
    aux = load_generator(str(aux_checkpoint))
    rtd = RTDShards(str(rtd_dir))
    n = rtd.rows_per_epoch
    for e in range(2):
        for r in list(rtd.rows(epoch=e))[::97]:
            ids = torch.from_numpy(corpus[r.seq_id].astype(np.int64))[None]
            batch = KeyedBatch(ids, torch.tensor([r.seq_id]), 7, e,
                               attention_mask=torch.ones_like(ids, dtype=torch.bool))
            out = corrupt_batch(batch, (e * n + r.position) / (2 * n), cfg.corruption, aux=aux)
            assert np.array_equal(out.input_ids[0].numpy(), r.input_ids)
            assert float(out.temperature[0]) == r.temperature


@pytest.mark.slow
def test_a_joint_checkpoints_generator_is_the_aux(prepared, tmp_path):
    """The generator of an electra run ("from a previous training round") drives generate."""
    corpus_dir, _, _ = prepared
    cfg = load_config(TINY, [*SMALL, "train.mode=electra", "aux.num_layers=1"])
    torch.manual_seed(0)
    joint = JointModel(cfg)
    meta = {"step": 1, "mode": "electra", "config": to_dict(cfg), "model_kind": "joint"}
    path = save_checkpoint(str(tmp_path / "electra"), 1, {"model": joint.state_dict()}, meta,
                           SaveContext.single_process())
    manifest = run(gen_argv(corpus_dir, tmp_path / "rtd", f"generate.aux_checkpoint={path}",
                            "generate.device=cpu"))
    assert manifest["aux"]["checkpoint"] == path
    assert manifest["aux"]["config"]["train"]["mode"] == "electra"
    assert 0 < sum(int(x.labels.sum()) for x in RTDShards(str(tmp_path / "rtd")).rows(epoch=0))


@pytest.mark.slow
def test_multiprocess_run_writes_identical_bytes(prepared, aux_rtd, aux_checkpoint, tmp_path):
    """2 worker processes sharing 2 model copies (RunInference model_copies: the calls go
    through Beam's cross-process proxy) write the bytes of 1 in-process worker."""
    corpus_dir, _, _ = prepared
    _, m1 = aux_rtd
    m2 = run(gen_argv(corpus_dir, tmp_path / "rtd", f"generate.aux_checkpoint={aux_checkpoint}",
                      "generate.epochs=2", "generate.seed=7", "generate.device=cpu",
                      "generate.batch_tokens=300",  # other batches: same bytes
                      "generate.model_copies=2",
                      beam=("--direct_running_mode=multi_processing", "--direct_num_workers=2")))
    assert [f["sha256"] for f in m1["files"]] == [f["sha256"] for f in m2["files"]]
    for f in m2["files"]:  # the streamed sha256 and size are the file's
        data = (tmp_path / "rtd" / f["name"]).read_bytes()
        assert len(data) == f["bytes"] and hashlib.sha256(data).hexdigest() == f["sha256"]


@pytest.mark.slow
def test_part_size_does_not_change_the_rows(prepared, aux_rtd, aux_checkpoint, tmp_path):
    """Other parts (so other batch boundaries, other files): the same rows, decoded."""
    corpus_dir, _, _ = prepared
    rtd_dir, m1 = aux_rtd
    m2 = run(gen_argv(corpus_dir, tmp_path / "rtd", f"generate.aux_checkpoint={aux_checkpoint}",
                      "generate.epochs=2", "generate.seed=7", "generate.device=cpu",
                      extra=("--set", "generate.part_rows=333")))
    assert len(m2["files"]) != len(m1["files"])
    a, b = RTDShards(str(rtd_dir)), RTDShards(str(tmp_path / "rtd"))
    for e in range(2):
        x, y = a.read_range(e, 0, a.rows_per_epoch), b.read_range(e, 0, b.rows_per_epoch)
        assert np.array_equal(x.seq_ids, y.seq_ids)
        assert np.array_equal(x.temperature, y.temperature)
        for i in range(len(x)):
            assert np.array_equal(x.input_ids[i], y.input_ids[i])
            assert np.array_equal(x.labels[i], y.labels[i])


@pytest.mark.slow
def test_rows_equal_corrupt_batch_on_fixed_batches(prepared, aux_checkpoint, tmp_path):
    """With the dropout augmentation (one rate and one mask stream per batch) every row equals
    a direct corrupt_batch call on its batch: batch_rows consecutive positions from the start
    of its part, padded to the batch's longest sequence."""
    corpus_dir, _, _ = prepared
    manifest = run(gen_argv(corpus_dir, tmp_path / "rtd",
                            f"generate.aux_checkpoint={aux_checkpoint}", "generate.epochs=2",
                            "generate.seed=5", "corruption.augmentation=dropout",
                            "corruption.t0=1.3", extra=("--set", "generate.part_rows=150")))
    cfg = load_config(TINY, [*SMALL, "corruption.augmentation=dropout", "corruption.t0=1.3"])
    aux = load_generator(str(aux_checkpoint))
    corpus = {r.seq_id: r.input_ids for r in CorpusShards(str(corpus_dir)).rows()}
    rtd = RTDShards(str(tmp_path / "rtd"))
    n, batch_rows = rtd.rows_per_epoch, manifest["layout"]["batch_rows"]
    assert batch_rows == 16 and manifest["layout"]["rows_per_part"] == 150
    for entry in rtd.files:
        e, lo, hi = entry["epoch"], entry["position_start"], entry["position_end"]
        got = rtd.read_range(e, lo, hi)
        for a in range(lo, hi, batch_rows):
            positions = np.arange(a, min(a + batch_rows, hi))
            seq_ids = unpermute(positions, n, 5, e)
            seqs = [corpus[s] for s in seq_ids]
            ids = torch.zeros(len(seqs), max(map(len, seqs)), dtype=torch.long)
            for i, seq in enumerate(seqs):
                ids[i, :len(seq)] = torch.from_numpy(seq.astype(np.int64))
            batch = KeyedBatch(ids, torch.from_numpy(seq_ids), 5, e, attention_mask=ids != 0)
            out = corrupt_batch(batch, (e * n + positions) / (2 * n), cfg.corruption, aux=aux)
            for i, p in enumerate(positions - lo):
                length = len(seqs[i])
                assert got.seq_ids[p] == seq_ids[i]
                assert np.array_equal(got.input_ids[p], out.input_ids[i, :length].numpy())
                assert np.array_equal(got.labels[p], out.labels[i, :length].numpy())
            assert np.array_equal(got.temperature[positions - lo], out.temperature.numpy())


def test_one_handler_shared_by_two_threads_writes_the_single_thread_bytes(
        prepared, aux_checkpoint):
    """RunInference runs several threads against one loaded model per process: two threads
    corrupting different batches through one CorruptionHandler's model (dropout augmentation:
    the model's rates and RNG would be shared state) get exactly what each gets alone."""
    import threading

    corpus_dir, _, _ = prepared
    cfg = load_config(TINY, [*SMALL, f"data.corpus_dir={corpus_dir}",
                             f"generate.aux_checkpoint={aux_checkpoint}",
                             "corruption.augmentation=dropout", "corruption.t0=1.5"])
    corpus = CorpusShards(str(corpus_dir))
    layout = Layout.plan(corpus.num_sequences, corpus.max_seq_len, cfg.generate.batch_tokens,
                         cfg.generate.part_rows)
    model = CorruptionHandler(cfg, layout, corpus.vocab_size, str(corpus_dir),
                              token_dtype(corpus.vocab_size)).load_model()
    rows = list(corpus.rows())

    def batch(k):
        chunk = rows[16 * k:16 * (k + 1)]
        lengths = np.array([len(r.input_ids) for r in chunk])
        return (0, np.arange(16 * k, 16 * (k + 1)), np.array([r.seq_id for r in chunk]),
                lengths, np.concatenate([r.input_ids for r in chunk]))

    alone = [model.corrupt(*batch(k))[0] for k in range(2)]
    got: dict[int, list] = {0: [], 1: []}
    start = threading.Barrier(2)

    def work(k):
        start.wait()
        for _ in range(4):
            got[k].append(model.corrupt(*batch(k))[0])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(2):
        assert len(got[k]) == 4 and all(np.array_equal(x, alone[k]) for x in got[k])
    plain = CorruptionHandler(load_config(TINY, [*SMALL, f"data.corpus_dir={corpus_dir}",
                                                 f"generate.aux_checkpoint={aux_checkpoint}"]),
                              layout, corpus.vocab_size, str(corpus_dir),
                              token_dtype(corpus.vocab_size)).load_model()
    assert not np.array_equal(plain.corrupt(*batch(0))[0], alone[0])  # dropout acted


def test_replaced_fraction_falls_with_temperature(prepared, tmp_path):
    """smoothed_onehot keeps the original with mass 0.35 at T = 1; a higher T flattens it, so
    more selected tokens are replaced early in the run than late."""
    corpus_dir, _, _ = prepared
    run(gen_argv(corpus_dir, tmp_path / "rtd", "corruption.replacement=smoothed_onehot",
                 "generate.epochs=1"))
    rows = list(RTDShards(str(tmp_path / "rtd")).rows(epoch=0))
    frac = lambda rs: sum(int(r.labels.sum()) for r in rs) / sum(len(r.labels) for r in rs)  # noqa: E731
    early, late = rows[:len(rows) // 10], rows[len(rows) // 2:]
    assert early[0].temperature == 2.0 and late[-1].temperature < 1.01
    assert frac(early) > 1.2 * frac(late)


@pytest.mark.slow
def test_model_free_fixed_and_epoch_granularity(prepared, tmp_path):
    corpus_dir, _, _ = prepared
    m = run(gen_argv(corpus_dir, tmp_path / "rtd", "corruption.replacement=uniform",
                     "corruption.schedule=fixed", "generate.epochs=2"))
    assert m["aux"] is None
    rtd = RTDShards(str(tmp_path / "rtd"))
    for e in range(2):
        rows = list(rtd.rows(epoch=e))
        assert {r.temperature for r in rows} == {1.0}
        assert sum(int(r.labels.sum()) for r in rows) > 0
    m = run(gen_argv(corpus_dir, tmp_path / "rtd2", "corruption.replacement=unigram",
                     "corruption.granularity=epoch", "generate.epochs=2"))
    rtd = RTDShards(str(tmp_path / "rtd2"))
    for e in range(2):
        want = schedule_value("exponential", e / 2, 2.0, 0.1)
        temps = {r.temperature for r in rtd.rows(epoch=e)}
        assert len(temps) == 1 and temps.pop() == pytest.approx(want, rel=1e-6)
