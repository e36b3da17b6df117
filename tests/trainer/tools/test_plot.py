"""fast-electra plot on real runs (two rtd runs on model-free shards, in a fast-electra sweep
layout) and the optional TensorBoard output of MetricsLog."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from tests.helpers import colour_pixels, metrics, train_argv, train_proc
from trainer.errors import UserError
from trainer.logger import MetricsLog
from trainer.tools.plot import family_figure, family_keys, find_runs, save_figure
from trainer.tools.plot import main as plot_main

pytestmark = pytest.mark.usefixtures("one_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
POINTS = ["train.lr=1e-3", "train.lr=3e-3"]


# Its two training runs take seconds: every test that uses it is marked slow.
@pytest.fixture(scope="module")
def sweep_root(prepared, smoothed_rtd, tmp_path_factory):
    """Two rtd runs on the session's smoothed_onehot set, laid out as ``fast-electra sweep --grid
    train.lr=1e-3,3e-3`` lays them out (<out_dir>/sweep/<point>/), launched side by side to
    halve the wait: 8 steps each, eval every 4 on the held-out second epoch, so they log loss,
    rtd_f1, eval_rtd_f1, lr and temperature."""
    corpus_dir, _, _ = prepared
    root = tmp_path_factory.mktemp("plot")
    rtd, _ = smoothed_rtd
    procs = [train_proc(train_argv(corpus_dir, root / "lr" / "sweep" / point, point,
                                   "train.mode=rtd", f"train.rtd_dir={rtd}",
                                   "train.max_steps=8", "train.eval_every=4",
                                   "train.eval_sequences=64", "train.checkpoint_every=8",
                                   "train.global_batch_size=16",
                                   "train.micro_batch_size_per_rank=16"))
             for point in POINTS]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    return root / "lr"


def pngs(folder) -> dict[str, dict[str, int]]:
    """{file name: {colour: pixels of it}} of the PNGs in ``folder``, for the colours of the
    first two series (C0, C1); fails on anything that is not a PNG."""
    out = {}
    for name in os.listdir(folder):
        assert (folder / name).read_bytes().startswith(PNG_MAGIC), name
        out[name] = {c: colour_pixels(folder / name, c) for c in ("C0", "C1")}
    return out


def test_colour_pixels_sees_only_what_was_drawn(tmp_path):
    """Negative control for the checks below: a figure with axes but no series has no pixel
    of a series colour; one line of C1 has C1 pixels and no C0 ones."""
    from matplotlib.figure import Figure

    blank = Figure(figsize=(4, 3))
    blank.add_subplot()
    save_figure(blank, str(tmp_path / "blank.png"))
    drawn = Figure(figsize=(4, 3))
    drawn.add_subplot().plot([0, 1, 2], [1, 3, 2], color="C1", linewidth=1.5)
    save_figure(drawn, str(tmp_path / "drawn.png"))
    got = pngs(tmp_path)
    assert got["blank.png"] == {"C0": 0, "C1": 0}
    assert got["drawn.png"]["C0"] == 0 and got["drawn.png"]["C1"] > 50


@pytest.mark.slow
def test_a_sweep_root_overlays_its_runs(sweep_root, tmp_path, capsys):
    assert plot_main([str(sweep_root), "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    # rtd runs log no MLM accuracy: that default family is skipped with a note.
    assert "no run logs 'mlm_accuracy'; skipped" in out
    written = {"loss.png", "rtd_f1.png", "lr.png", "temperature.png"}
    colours = pngs(tmp_path / "p")  # also: no temp file is left next to them
    assert set(colours) == written
    # Every figure overlays both runs (C0, C1): fails on an empty or one-run figure.
    assert all(min(c.values()) > 50 for c in colours.values()), colours
    assert [line for line in out.splitlines() if not line.startswith("plot: note")] == \
        [str(tmp_path / "p" / n) for n in ("loss.png", "rtd_f1.png", "lr.png", "temperature.png")]

    runs = find_runs([str(sweep_root)])
    assert [r.name for r in runs] == POINTS
    fig = family_figure("rtd_f1", runs)
    ax = fig.axes[0]
    drawn = [(line.get_color(), list(line.get_xdata()), list(line.get_ydata()))
             for line in ax.get_lines()]
    want = []
    for colour, point in zip(("C0", "C1"), POINTS, strict=True):
        records = metrics(sweep_root / "sweep" / point)
        for key in ("rtd_f1", "eval_rtd_f1"):
            want.append((colour, [r["step"] for r in records if key in r],
                         [r[key] for r in records if key in r]))
    assert drawn == want
    assert [s for _, s, _ in want] == [list(range(1, 9)), [4, 8]] * 2
    legends = [[t.get_text() for t in leg.get_texts()] for leg in fig.legends + ax.artists
               + [ax.get_legend()] if leg is not None]
    assert POINTS in legends and ["rtd_f1", "eval_rtd_f1"] in legends


@pytest.mark.slow
def test_one_run_default_out_dir_and_chosen_keys(sweep_root, tmp_path, capsys):
    run_dir = tmp_path / "train.lr=3e-3"
    shutil.copytree(sweep_root / "sweep" / "train.lr=3e-3", run_dir)
    assert plot_main([str(run_dir), "--metrics", "grad_norm,tokens_per_s,no_such_key"]) == 0
    assert "no run logs 'no_such_key'; skipped" in capsys.readouterr().out
    colours = pngs(run_dir / "plots")
    assert set(colours) == {"grad_norm.png", "tokens_per_s.png"}
    assert all(c["C0"] > 50 for c in colours.values()), colours  # the run's series is drawn


@pytest.mark.slow
def test_two_run_folders_overlay(sweep_root, tmp_path):
    a, b = (sweep_root / "sweep" / p for p in POINTS)
    assert plot_main([str(a), str(b), "--out", str(tmp_path), "--metrics", "temperature"]) == 0
    fig = family_figure("temperature", find_runs([str(a), str(b)]))
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == POINTS
    # Same shards, same batches: both runs trained on the same samples, so the same T.
    assert list(lines[0].get_ydata()) == list(lines[1].get_ydata())
    assert lines[0].get_ydata()[0] > lines[0].get_ydata()[-1] > 1.0


@pytest.mark.slow
def test_errors(sweep_root, tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    assert plot_main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "empty: no metrics.jsonl" in err and "fast-electra sweep" in err

    run_dir = tmp_path / "damaged"
    shutil.copytree(sweep_root / "sweep" / POINTS[0], run_dir)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "loss": 1.0}\n{"step": 10, "lo')  # a run killed mid-line
    assert len(find_runs([str(run_dir)])[0].records) == 9  # the torn last line is ignored
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write("\n")  # now a complete line that is not JSON
    assert plot_main([str(run_dir)]) == 2
    assert "damaged/metrics.jsonl:10: not a JSON object" in capsys.readouterr().err

    good = str(sweep_root / "sweep" / POINTS[0])
    assert plot_main([good, "--out", str(tmp_path / "none"), "--metrics", "nothing"]) == 2
    assert "none of nothing is logged" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if not installed
    assert plot_main([good, "--out", str(tmp_path / "none")]) == 2
    assert "pip install -e '.[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


@pytest.mark.slow
def test_tensorboard_scalars_and_resume(sweep_root, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = metrics(sweep_root / "sweep" / POINTS[0])  # (8 steps, eval at 4 and 8)
    with MetricsLog(str(tmp_path), 8, tensorboard=True) as log:
        for r in records[:6]:
            log.write(r)
    # An interrupted run resumed from its step-4 checkpoint: steps 5, 6 are logged again.
    with MetricsLog(str(tmp_path), 8, resume_step=4, tensorboard=True) as log:
        for r in records[4:]:
            log.write({**r, "loss": r["loss"] + 100.0})
    assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == \
        list(range(1, 9))

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/rtd_f1", "train/temperature", "eval/rtd_f1", "optim/lr",
            "optim/grad_norm", "system/tokens_per_s"} <= tags
    assert "train/sample_id_sum" not in tags and "train/step" not in tags
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    want = [(r["step"], r["loss"] + (100.0 if r["step"] > 4 else 0.0)) for r in records]
    assert [s for s, _ in loss] == [s for s, _ in want]  # the first run's 5, 6 are purged
    assert [v for _, v in loss] == pytest.approx([v for _, v in want], rel=1e-6)
    assert [e.step for e in events.Scalars("eval/rtd_f1")] == [4, 8]

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(UserError, match=r"pip install -e '\.\[tensorboard\]'"):
        MetricsLog(str(tmp_path / "x"), 8, tensorboard=True)


def test_families_gather_the_keys_of_every_mode():
    decoupled = {"step", "loss", "lr", "lr_generator", "gen_mlm_loss", "rtd_loss",
                 "eval_gen_mlm_loss", "eval_rtd_loss", "gen_mlm_accuracy",
                 "eval_gen_mlm_accuracy", "grad_norm_discriminator", "grad_norm_generator"}
    assert family_keys("lr", decoupled) == ["lr", "lr_generator"]
    assert family_keys("loss", decoupled) == ["loss", "gen_mlm_loss", "rtd_loss",
                                              "eval_gen_mlm_loss", "eval_rtd_loss"]
    assert family_keys("mlm_accuracy", decoupled) == ["gen_mlm_accuracy",
                                                      "eval_gen_mlm_accuracy"]
    assert family_keys("grad_norm", decoupled) == ["grad_norm_discriminator",
                                                   "grad_norm_generator"]
    assert family_keys("rtd_f1", decoupled) == []
