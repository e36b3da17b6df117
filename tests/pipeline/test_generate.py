"""pipeline.generate end to end: a real Beam pipeline over the prepared test corpus, with a real
(tiny, few-step) auxiliary MLM checkpoint trained by trainer.train."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.corrupt_write import CorruptionHandler
from pipeline.generate import main, run
from pipeline.generate_fns import Layout
from pipeline.inspect import main as inspect_main
from tests import conftest
from tests.helpers import GENERATE_SMALL as SMALL
from tests.helpers import TINY, gen_argv, kill_9_when, shard_files
from trainer.checkpoint import save as save_checkpoint
from trainer.config.load import load_config, to_dict
from trainer.corruption.corrupt import corrupt_batch
from trainer.corruption.distributions import aux_logprobs, replacement_logprobs
from trainer.corruption.masking import mask_positions
from trainer.corruption.schedules import schedule_value
from trainer.data.corpus_shards import CorpusShards
from trainer.data.manifest import ShardError
from trainer.data.order import progress, unpermute
from trainer.data.rtd_format import decode_rtd_table, encode_rtd_rows, token_dtype
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
            out = corrupt_batch(ids, torch.ones_like(ids, dtype=torch.bool),
                                torch.tensor([r.seq_id]), e,
                                (e * n + r.position) / (2 * n), cfg.corruption, 7, aux=aux)
            assert np.array_equal(out.input_ids[0].numpy(), r.input_ids)
            assert float(out.temperature[0]) == r.temperature


def test_a_joint_checkpoints_generator_is_the_aux(prepared, tmp_path):
    """The generator of an electra run ("from a previous training round") drives generate."""
    corpus_dir, _, _ = prepared
    cfg = load_config(TINY, [*SMALL, "train.mode=electra", "aux.num_layers=1"])
    torch.manual_seed(0)
    joint = JointModel(cfg)
    meta = {"step": 1, "mode": "electra", "config": to_dict(cfg), "model_kind": "joint"}
    path = save_checkpoint(str(tmp_path / "electra"), 1, {"model": joint.state_dict()}, meta, 0,
                           1, lambda: None)
    manifest = run(gen_argv(corpus_dir, tmp_path / "rtd", f"generate.aux_checkpoint={path}",
                            "generate.device=cpu"))
    assert manifest["aux"]["checkpoint"] == path
    assert manifest["aux"]["config"]["train"]["mode"] == "electra"
    assert 0 < sum(int(x.labels.sum()) for x in RTDShards(str(tmp_path / "rtd")).rows(epoch=0))


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
            out = corrupt_batch(ids, ids != 0, torch.from_numpy(seq_ids), e,
                                (e * n + positions) / (2 * n), cfg.corruption, 5, aux=aux)
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


# ---------------------------------------------------------------------------------------------
# Re-runs and errors
# ---------------------------------------------------------------------------------------------

def test_rerun_is_noop_different_refused_overwrite_cleans(prepared, tmp_path, capsys):
    corpus_dir, _, _ = prepared
    rtd_dir = tmp_path / "rtd"
    base = ["corruption.replacement=uniform", "generate.epochs=2"]
    run(gen_argv(corpus_dir, rtd_dir, *base))
    mtime = os.path.getmtime(rtd_dir / "manifest.json")
    capsys.readouterr()
    assert main(gen_argv(corpus_dir, rtd_dir, *base)) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert os.path.getmtime(rtd_dir / "manifest.json") == mtime

    assert main(gen_argv(corpus_dir, rtd_dir, *base, "generate.seed=1")) == 2
    err = capsys.readouterr().err
    assert "different rtd shard set" in err and "seed" in err and "--overwrite" in err

    # An interrupted run: no manifest, a temp file and a part of an epoch no longer wanted.
    os.remove(rtd_dir / "manifest.json")
    (rtd_dir / "epoch=0000" / ".tmp-part-00000.parquet-x").write_bytes(b"partial")
    (rtd_dir / "epoch=0009").mkdir()
    (rtd_dir / "epoch=0009" / "part-00000.parquet").write_bytes(b"stale")
    m = run(gen_argv(corpus_dir, rtd_dir, "corruption.replacement=uniform", "generate.epochs=1"))
    left = sorted(os.path.relpath(os.path.join(d, f), rtd_dir)
                  for d, _, fs in os.walk(rtd_dir) for f in fs)
    assert left == sorted(["manifest.json", "config.toml", *(f["name"] for f in m["files"])])
    with open(rtd_dir / "manifest.json") as f:
        assert json.load(f)["epochs"] == 1


def test_rerun_writes_identical_bytes(prepared, tmp_path):
    corpus_dir, _, _ = prepared
    argv = gen_argv(corpus_dir, tmp_path / "rtd", "corruption.replacement=uniform",
                    "generate.epochs=1")

    def files() -> dict[str, bytes]:
        return {str(p.relative_to(tmp_path)): p.read_bytes()
                for p in sorted((tmp_path / "rtd").glob("epoch=*/*.parquet"))}

    run(argv)
    first = files()
    run([*argv, "--overwrite"])
    assert files() == first and len(first) == 5


def test_fingerprint_records_what_changes_bytes(prepared, tmp_path, capsys):
    """batch_rows (from generate.batch_tokens) changes the dropout augmentations' bytes: a
    re-run with another is refused; generate.model_copies changes nothing: still a no-op."""
    corpus_dir, _, _ = prepared
    rtd_dir = tmp_path / "rtd"
    base = ["corruption.replacement=uniform", "generate.epochs=1"]
    m = run(gen_argv(corpus_dir, rtd_dir, *base))
    fp = m["fingerprint"]
    assert fp["batch_rows"] == 16 and fp["token_dtype"] == "<u2" and fp["rows_per_part"] == 200
    assert {"schema_version", "sampler", "row_group_rows"} <= set(fp)
    capsys.readouterr()
    assert main(gen_argv(corpus_dir, rtd_dir, *base, "generate.model_copies=2")) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(gen_argv(corpus_dir, rtd_dir, *base, "generate.batch_tokens=512")) == 2
    err = capsys.readouterr().err
    assert "different rtd shard set" in err and "batch_rows" in err and "--overwrite" in err
    # Another batch_tokens with the same batch_rows (1024 // 64 == 1050 // 64) is the same set.
    assert main(gen_argv(corpus_dir, rtd_dir, *base, "generate.batch_tokens=1050")) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_errors_are_clear(prepared, aux_checkpoint, tmp_path, capsys):
    corpus_dir, _, _ = prepared

    def fails(*sets, corpus=corpus_dir) -> str:
        assert main(gen_argv(corpus, tmp_path / "rtd", *sets)) == 2
        return capsys.readouterr().err

    # replacement = aux and no checkpoint
    assert "needs generate.aux_checkpoint" in fails("generate.aux_checkpoint=")
    assert "manifest.json" in fails("corruption.replacement=uniform",
                                    corpus=tmp_path / "nowhere")
    # A checkpoint whose meta says it holds no generator.
    fake = tmp_path / "disc"
    fake.mkdir()
    with open(os.path.join(aux_checkpoint, "meta.json")) as f:
        meta = json.load(f)
    (fake / "meta.json").write_text(json.dumps(dict(meta, model_kind="rtd", mode="rtd")))
    err = fails(f"generate.aux_checkpoint={fake}")
    assert "has no generator" in err and str(fake) in err
    # Vocabulary mismatch: the aux model's config says 700 tokens, the corpus has 600.
    meta["config"]["tokenizer"]["vocab_size"] = 700
    (fake / "meta.json").write_text(json.dumps(meta))
    err = fails(f"generate.aux_checkpoint={fake}")
    assert "700" in err and "600" in err
    assert "meta.json" in fails(f"generate.aux_checkpoint={tmp_path / 'none'}")
    err = fails("corruption.replacement=uniform", "tokenizer.vocab_size=8000")
    assert "8000" in err and "600" in err
    if not torch.cuda.is_available():
        err = fails("corruption.replacement=uniform", "generate.device=cuda")
        assert "CUDA" in err
    assert not os.path.exists(tmp_path / "rtd" / "manifest.json")


def test_bad_corpus_is_refused(prepared, tmp_path, capsys):
    """A corpus part whose bytes differ from its manifest, and a manifest with other special
    ids: clear errors, and no manifest is written."""
    corpus_dir, _, _ = prepared
    bad = tmp_path / "corpus"
    shutil.copytree(corpus_dir, bad)
    table = pq.read_table(bad / "part-00001.parquet")
    doc_ids = pa.array(np.asarray(table.column("doc_id")) + 1)
    pq.write_table(table.set_column(1, "doc_id", doc_ids), bad / "part-00001.parquet")
    argv = gen_argv(bad, tmp_path / "rtd", "corruption.replacement=uniform")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "part-00001.parquet" in err and "sha256" in err
    assert not os.path.exists(tmp_path / "rtd" / "manifest.json")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["tokenizer"]["special_ids"]["mask"] = 9
    (bad / "manifest.json").write_text(json.dumps(manifest))
    assert main(argv) == 2
    assert "special token ids" in capsys.readouterr().err
    assert main(gen_argv(corpus_dir, tmp_path / "rtd", "generate.epochs=0")) == 2
    assert "generate.epochs" in capsys.readouterr().err


def test_inspect_prints_summary(aux_rtd, prepared, capsys):
    rtd_dir, manifest = aux_rtd
    assert inspect_main([str(rtd_dir), "--verify"]) == 0
    out = capsys.readouterr().out
    assert manifest["aux"]["state_sha256"][:16] in out and "verified" in out
    epoch_lines = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(epoch_lines) == 2 and "2.0000 ->" in epoch_lines[0]
    assert inspect_main([str(prepared[0])]) == 0
    assert "corpus shard set" in capsys.readouterr().out


def test_killed_run_leaves_no_manifest_and_rerun_completes(prepared, aux_checkpoint, tmp_path):
    """kill -9 in the middle of the Beam job: the folder reads as incomplete; the next run
    removes the leftovers and writes a complete set."""
    corpus_dir, _, _ = prepared
    rtd_dir = tmp_path / "rtd"
    sets = [f"generate.aux_checkpoint={aux_checkpoint}", "generate.epochs=3"]
    argv = gen_argv(corpus_dir, rtd_dir, *sets, beam=("--direct_num_workers=2",))
    # Killed once the Beam job has written a part or a temporary: the leftovers must exist
    # (fails if the kill landed before anything was written, or after the run finished) and
    # the re-run must clear the ones it does not rewrite.
    kill_9_when("pipeline.generate", argv, lambda: shard_files(rtd_dir) != [])
    leftovers = shard_files(rtd_dir)
    assert leftovers and not (rtd_dir / "manifest.json").exists()
    with pytest.raises(ShardError, match="incomplete"):
        RTDShards(str(rtd_dir))
    manifest = run(gen_argv(corpus_dir, rtd_dir, *sets))
    rtd = RTDShards(str(rtd_dir))
    rtd.verify(checksums=True)
    assert rtd.num_epochs == 3 and len(manifest["files"]) == 3 * len(rtd.epoch_files(0))
    assert shard_files(rtd_dir) == sorted(f["name"] for f in manifest["files"])  # no temps
    assert [r.position for r in rtd.rows(epoch=2)] == list(range(rtd.rows_per_epoch))


@pytest.mark.parametrize("vocab", [600, 70_000])
def test_rtd_encoding_round_trips(vocab):
    rng = np.random.default_rng(0)
    lengths = [1, 7, 8, 9, 64, 3]
    ids = [rng.integers(0, vocab, n) for n in lengths]
    labels = [rng.integers(0, 2, n).astype(np.uint8) for n in lengths]
    dtype = token_dtype(vocab)
    assert dtype == ("<u2" if vocab <= 65536 else "<i4")
    table = encode_rtd_rows(np.arange(6), np.arange(6)[::-1], ids, labels,
                            np.linspace(2, 1, 6), dtype)
    for sliced, lo in [(table, 0), (table.slice(2, 3), 2)]:
        got = decode_rtd_table(sliced, dtype)
        for i, r in enumerate(got.rows()):
            assert r.position == lo + i and r.seq_id == 5 - lo - i
            assert np.array_equal(r.input_ids, ids[lo + i]) and r.input_ids.dtype == np.int32
            assert np.array_equal(r.labels, labels[lo + i]) and r.labels.dtype == np.uint8


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
        masked, selected = mask_positions(ids, seq_ids, 7, 0, cfg.corruption.mask_prob,
                                          cfg.corruption.mask_token_prob, attention_mask=attn)
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
        return replacement_logprobs("uniform", original, 600)

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
        return lambda masked, attn, selected, original: replacement_logprobs(
            kind, original, 600, weight=torch.zeros(len(original)),
            alpha=cfg.corruption.smoothed_onehot_alpha, unigram_counts=counts)

    for obs, exp, std in replacement_moments(rtd_dir, corpus_dir, cfg, model_free(replacement)):
        assert abs(obs - exp) < 5 * std, (obs, exp, std)
    # The test has power: the same samples judged against another distribution fail it.
    wrong = "unigram" if replacement == "uniform" else "uniform"
    assert any(abs(obs - exp) > 5 * std for obs, exp, std in
               replacement_moments(rtd_dir, corpus_dir, cfg, model_free(wrong)))


# Older imports (``from tests.pipeline.test_generate import aux_checkpoint, aux_rtd``) keep
# working: the session fixtures of tests/conftest.py, built once (tests.helpers.once).
aux_checkpoint, aux_rtd = conftest.aux_checkpoint, conftest.aux_rtd
