"""Every training mode under torchrun (2 gloo ranks) equals 1 process with grad accumulation,
and resumes exactly: from its own checkpoint, under 2 ranks, and across a world-size change.

Two launches of ``tests.trainer.modes.modes_driver`` do all the training (one torchrun launch, then
one process), each running every mode in turn through ``trainer.train.main``: the straight
6-step runs, copies cut back to their step-3 checkpoint (as a crash right after it leaves a
run), and the resumes of those copies. The tests then only compare folders.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import torch

from tests.helpers import metrics as all_metrics
from tests.helpers import strip_timing, train_argv, train_proc
from tests.trainer.modes.modes_driver import cut
from trainer import checkpoint
from trainer.train import main as train_main

# slow: one torchrun launch of 2 ranks and one process train every mode (the module fixture).
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

STEPS, CUT = 6, 3
DROPOUT = "mlm-dropout"
# Dropout off: it is drawn per rank, so 1 process and 2 ranks could not agree with it on.
COMMON = [f"train.max_steps={STEPS}", f"train.checkpoint_every={CUT}",
          "train.keep_checkpoints=5", "train.global_batch_size=8",
          "train.micro_batch_size_per_rank=4", f"train.eval_every={STEPS}",
          "train.eval_sequences=12", "train.device=cpu", "model.dropout=0",
          "model.attention_dropout=0"]


def modes(aux: str, aux_rtd_dir: str) -> dict[str, list[str]]:
    return {
        "mlm": ["train.mode=mlm"],
        "rtd": ["train.mode=rtd", f"train.rtd_dir={aux_rtd_dir}"],
        **{f"electra-{e}": ["train.mode=electra", f"joint.embedding_sharing={e}"]
           for e in ("shared", "none", "gdes")},
        "decoupled": ["train.mode=decoupled"],
        # generate.* as aux_rtd made its shard set.
        "fast-online": ["train.mode=fast-online", f"generate.aux_checkpoint={aux}",
                        "generate.epochs=2", "generate.seed=7"],
        # P is updated from the all-rank RTD accuracy at steps 2, 4, 6 (the first only records
        # it); alpha large enough that P visibly moves, so a rank-local accuracy shows.
        "early-exit": ["train.mode=early-exit", "joint.exit_update_every=2",
                       "joint.exit_alpha=20.0"],
        "embedding_topk": ["train.mode=electra", "joint.replacement=embedding_topk"],
        # Resume only (dropout is per rank): the RNG states must be restored, per rank.
        DROPOUT: ["train.mode=mlm", "model.dropout=0.1", "model.attention_dropout=0.1"],
    }


def launch(jobs: list[dict], path, nproc: int) -> float:
    path.write_text(json.dumps(jobs))
    start = time.perf_counter()
    p = train_proc([str(path)], nproc, module="tests.trainer.modes.modes_driver")
    try:  # ~15-25 s here: the timeout only keeps a deadlocked rank from hanging the suite
        _, err = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        p.terminate()  # torchrun stops its ranks on SIGTERM (each runs in its own session)
        _, err = p.communicate(timeout=60)
        pytest.fail(f"{' '.join(p.args)} hung (a rank waiting in a collective?): {err[-3000:]}")
    assert p.returncode == 0, err[-4000:]
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def runs(prepared, aux_checkpoint, aux_rtd, tmp_path_factory):
    """Both launches; returns (root, the modes' overrides). Folders
    under root: one/M and two/M (straight), one-resumed/M and two-resumed/M (cut to step 3,
    resumed on the same world size), two-then-one/M (2 ranks to step 3, 1 process from
    there), and the controls rng-lost and seed-1."""
    corpus_dir, _, _ = prepared
    root = tmp_path_factory.mktemp("modes")
    mm = modes(aux_checkpoint, str(aux_rtd[0]))

    def job(out, mode, *extra):
        return {"argv": train_argv(corpus_dir, out, *COMMON, *mm[mode], *extra)}

    def resume(src, dst, mode, drop_rng=False):
        return [{"cut": [str(src), str(dst), CUT], "drop_rng": drop_rng},
                job(dst, mode, "train.resume=auto")]

    two, one = [], []
    for m in mm:
        two += [job(root / "two" / m, m), *resume(root / "two" / m, root / "two-resumed" / m, m)]
        one += [job(root / "one" / m, m), *resume(root / "one" / m, root / "one-resumed" / m, m)]
        if m != DROPOUT:  # compared with 1 process all along: dropout off
            one += resume(root / "two" / m, root / "two-then-one" / m, m)
    # Fewer held-out sequences than ranks: rank 1 evaluates nothing, yet must join the
    # all_reduce, and early-exit's eval forward must not enter DDP (its buffer broadcast).
    few = ["train.eval_sequences=1", "train.max_steps=2", "train.eval_every=2"]
    two.append(job(root / "eval-1-seq" / "two", "early-exit", *few))
    one.append(job(root / "eval-1-seq" / "one", "early-exit", *few))
    # Negative controls: a resume that lost its RNG state, and another seed.
    one += resume(root / "one" / DROPOUT, root / "rng-lost", DROPOUT, drop_rng=True)
    one.append(job(root / "seed-1", "mlm", "train.seed=1"))
    seconds = {"two ranks": launch(two, root / "two.json", 2),
               "one process": launch(one, root / "one.json", 1)}
    print(f"modes_driver launches: {seconds}")
    return root, mm


def metrics(run_dir) -> list[dict]:
    return strip_timing(all_metrics(run_dir))


def state(run_dir, step: int = STEPS) -> dict:
    return checkpoint.load(checkpoint.step_dir(str(run_dir), step), 0)[0]["model"]


# 1 process vs 2 ranks need not be bit-exact: gloo sums the ranks' gradients and the logged
# sums in another order than accumulation does, and float addition is not associative. The
# differences measured are <= 6e-8 relative on the metrics (the weights came out identical:
# two addends commute), so 1e-5 leaves > 100x headroom and holds for other reduction
# orders; abs covers metrics near 0. A sample, mask or exit wrong on one rank moves the
# losses by > 3e-4 (the controls below measure it).
REL, ABS = 1e-5, 1e-7


def close(a: float, b: float) -> bool:
    return a == pytest.approx(b, rel=REL, abs=ABS)


def assert_runs_close(a_dir, b_dir, steps=range(1, STEPS + 1)):
    """Every metric of every step in ``steps`` and the final weights within REL/ABS."""
    a, b = metrics(a_dir), metrics(b_dir)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, len(a) + 1))
    for ra, rb in zip(a, b, strict=True):
        assert set(ra) == set(rb), ra["step"]
        if ra["step"] in steps:
            bad = {k: (ra[k], rb[k]) for k in ra if not close(ra[k], rb[k])}
            assert not bad, (a_dir.name, ra["step"], bad)
    sa, sb = state(a_dir, len(a)), state(b_dir, len(b))
    assert set(sa) == set(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=REL, atol=ABS, msg=lambda m: f"{k}: {m}")


def compared(root) -> list[str]:
    return sorted(p.name for p in (root / "one").iterdir() if p.name != DROPOUT)


# What each mode must log (beyond loss, lr, grad_norm): a mode that lost a metric, or logged
# it on one world size only, fails here.
KEYS = {"mlm": {"mlm_accuracy", "eval_mlm_loss", "eval_mlm_accuracy"},
        "rtd": {"rtd_f1", "sample_id_sum", "temperature", "eval_rtd_f1"},
        "joint": {"gen_mlm_loss", "gen_mlm_accuracy", "rtd_f1", "rtd_precision", "rtd_recall",
                  "eval_rtd_f1", "eval_gen_mlm_loss", "eval_gen_mlm_accuracy"},
        "decoupled": {"grad_norm_generator", "grad_norm_discriminator", "lr_generator"},
        "early-exit": {"exit_p1", "exit_p2", "exit_layer", "gen_mlm_accuracy_exit1",
                       "gen_mlm_accuracy_exit2"},
        "embedding_topk": {"embedding_l2"}}


def expected_keys(mode: str) -> set[str]:
    if mode in ("mlm", "rtd"):
        return KEYS[mode]
    if mode == "fast-online":
        return KEYS["rtd"]
    return KEYS["joint"] | KEYS.get(mode, set())


def test_every_mode_one_process_equals_two_ranks(runs):
    """Same global batch (1 process: 2 micro-batches accumulated; 2 ranks: one each), dropout
    off: every mode's metrics at every step (training, and the held-out evaluation at step 6,
    whose 12 sequences split into batches differently on 2 ranks) and its final weights
    agree. Catches a rank reading the wrong slice of the global batch, masks or replacements
    that depend on the rank or world size, a metric summed on one rank only, a world-size
    dependent evaluation, and early-exit's exit probabilities updated from one rank's
    accuracy instead of the all-rank one (P is logged and moves at steps 4 and 6). And an
    early-exit evaluation of 1 held-out sequence on 2 ranks (rank 1 has none) neither hangs
    nor changes the numbers."""
    root, _ = runs
    names = compared(root)
    assert len(names) == 9
    for m in names:
        assert_runs_close(root / "one" / m, root / "two" / m)
        assert expected_keys(m) <= set(metrics(root / "two" / m)[-1]), m
    # 1 held-out sequence: rank 1 evaluated nothing, and the evaluation is still that one.
    assert_runs_close(root / "eval-1-seq" / "one", root / "eval-1-seq" / "two")
    assert "eval_rtd_f1" in metrics(root / "eval-1-seq" / "two")[-1]
    ee = metrics(root / "two" / "early-exit")
    assert ee[0]["exit_p1"] == pytest.approx(1 / 3) and abs(ee[-1]["exit_p1"] - 1 / 3) > 0.05
    # The same data in the same order: rtd and fast-online log the sum of the sample indices.
    for m in ("rtd", "fast-online"):
        assert [r["sample_id_sum"] for r in metrics(root / "one" / m)] == \
            [r["sample_id_sum"] for r in metrics(root / "two" / m)]


def test_the_tolerance_has_power(runs):
    """Negative controls for REL: the next step's batch (one step of data order off) and
    another seed both move the losses and weights far outside the tolerance."""
    root, _ = runs
    for m in compared(root):
        a, b = metrics(root / "one" / m), metrics(root / "two" / m)
        shifted = [abs(x["loss"] - y["loss"]) / abs(x["loss"]) for x, y in zip(a[1:], b)]
        assert min(shifted) > 10 * REL, (m, shifted)  # measured: >= 3e-4
    seed1, one = metrics(root / "seed-1"), metrics(root / "one" / "mlm")
    assert all(abs(x["loss"] - y["loss"]) > 100 * REL * abs(y["loss"])
               for x, y in zip(seed1, one, strict=True))
    with pytest.raises(AssertionError):
        assert_runs_close(root / "seed-1", root / "one" / "mlm", steps=())


def assert_resumed_exactly(straight, resumed):
    """Bit-identical metrics (timing aside) and final weights, and the resumed run really
    trained steps 4-6: the cut removed its step-6 checkpoint, the resume wrote it again."""
    assert checkpoint.list_steps(str(resumed)) == [CUT, STEPS]
    assert metrics(resumed) == metrics(straight)
    sa, sb = state(straight), state(resumed)
    assert set(sa) == set(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa
                                                        if not torch.equal(sa[k], sb[k])]


def test_every_mode_resumes_exactly(runs):
    """Cut back to the step-3 checkpoint and resumed, 1 process: every mode (fast-online's
    data plan, early-exit's P and accuracy counts, decoupled's two optimizers and schedules,
    gdes' delta table) and a run with dropout on (the RNG states) continue bit for bit."""
    root, _ = runs
    names = sorted(p.name for p in (root / "one").iterdir())
    assert len(names) == 10
    for m in names:
        assert_resumed_exactly(root / "one" / m, root / "one-resumed" / m)


def test_every_mode_resumes_exactly_under_two_ranks(runs):
    """The same under torchrun: each rank restores its own RNG file (dropout is per rank)
    and its own slice of the step-4 batch."""
    root, _ = runs
    for m in sorted(p.name for p in (root / "two").iterdir()):
        assert_resumed_exactly(root / "two" / m, root / "two-resumed" / m)


def test_the_rng_check_has_power(runs):
    """Negative control: the same dropout run resumed without its RNG files (the loader
    then leaves the seed's fresh state) differs after the cut, so the exact equality above
    does test the restored RNG."""
    root, _ = runs
    lost, straight = metrics(root / "rng-lost"), metrics(root / "one" / DROPOUT)
    assert lost[:CUT] == straight[:CUT]
    assert all(abs(x["loss"] - y["loss"]) > 100 * REL * abs(y["loss"])
               for x, y in zip(lost[CUT:], straight[CUT:], strict=True))


def test_every_mode_resumes_on_another_world_size(runs):
    """2 ranks to the step-3 checkpoint, then 1 process with grad accumulation to step 6:
    equal (within REL) to 1 process all along. The data order is per global batch, so the
    world size may change at a resume; a rank-indexed data position, or state saved for
    one rank only, would break it."""
    root, _ = runs
    for m in compared(root):
        assert_runs_close(root / "one" / m, root / "two-then-one" / m)
        # Steps 1-3 are the 2-rank run's own log, kept.
        assert metrics(root / "two-then-one" / m)[:CUT] == metrics(root / "two" / m)[:CUT]


def test_resume_on_other_data_is_refused_naming_both_fingerprints(runs, prepared, rtd_dir,
                                                                  tmp_path, capsys):
    """A checkpoint resumed against a different shard set (rtd: the uniform-replacement set
    instead of the aux one), or against another data plan (fast-online: another
    generate.seed, same corpus), is refused before anything is written: exit 2, both
    fingerprints in full (fast-online's share their corpus part, a prefix could not tell
    them apart). Without the check both resumes would run (neither key is one the config
    check compares)."""
    root, mm = runs
    corpus_dir, _, _ = prepared
    for mode, other in (("rtd", f"train.rtd_dir={rtd_dir}"),
                        ("fast-online", "generate.seed=8")):
        run_dir = tmp_path / mode
        cut(str(root / "one" / mode), str(run_dir), CUT)
        before = (run_dir / "metrics.jsonl").read_text()
        saved = json.loads((run_dir / "checkpoints" / f"step_{CUT:08d}" / "meta.json")
                           .read_text())["data_fingerprint"]
        argv = train_argv(corpus_dir, run_dir, *COMMON, *mm[mode], other, "train.resume=auto")
        assert train_main(argv) == 2
        err = capsys.readouterr().err
        assert f"error: cannot resume from {checkpoint.step_dir(str(run_dir), CUT)}" in err
        new = err.split("this config reads data with fingerprint ")[1].split(" ")[0]
        assert f"trained on data with fingerprint {saved}," in err and new != saved
        if mode == "fast-online":
            assert new.startswith(saved.split(":")[0]) and ":seed=8:" in new
        assert (run_dir / "metrics.jsonl").read_text() == before
        assert checkpoint.list_steps(str(run_dir)) == [CUT]
