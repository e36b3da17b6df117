"""pipeline.inspect --plot on a real shard set written by pipeline.generate (model-free
replacement, so no auxiliary checkpoint is needed). The text summary is tested in
test_generate.py."""

from __future__ import annotations

import os

import pytest

from pipeline.inspect import main as inspect_main
from pipeline.inspect import rtd_figure
from tests.helpers import colour_pixels
from trainer.data.rtd_shards import RTDShards

pytest.importorskip("matplotlib")

pytestmark = pytest.mark.usefixtures("one_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_a_png_and_keeps_the_summary(smoothed_rtd, tmp_path, capsys):
    rtd_dir, manifest = smoothed_rtd
    assert inspect_main([str(rtd_dir)]) == 0
    plain = capsys.readouterr().out
    out = tmp_path / "figs" / "schedule.png"
    assert inspect_main([str(rtd_dir), "--plot", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == plain + f"wrote {out}\n"
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert os.listdir(out.parent) == ["schedule.png"]  # no temp file left behind
    # The parts' replaced fractions (C1) and the epochs' means (C3) are drawn: fails on a
    # blank or half-drawn figure (tests/trainer/tools/test_plot.py shows a blank one has none).
    assert colour_pixels(out, "C1") > 50 and colour_pixels(out, "C3") > 10  # C3: 2 short lines
    # Several parts per epoch (200 rows each), so the figure has steps to draw.
    rows = RTDShards(str(rtd_dir)).rows_per_epoch
    assert len(manifest["files"]) == 2 * -(-rows // 200) >= 4


def test_plot_refuses_a_corpus(prepared, tmp_path, capsys):
    assert inspect_main([str(prepared[0]), "--plot", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "corpus" in err and "rtd" in err
    assert not (tmp_path / "x.png").exists()


def test_plot_draws_what_the_manifest_says(smoothed_rtd):
    rtd_dir, manifest = smoothed_rtd
    temp_ax, repl_ax = rtd_figure(RTDShards(str(rtd_dir))).axes
    files = sorted(manifest["files"], key=lambda f: (f["epoch"], f["position_start"]))
    bands = temp_ax.collections  # one min..max band per part, in training order
    assert len(bands) == len(files)
    for band, f in zip(bands, files, strict=True):
        ys = band.get_paths()[0].vertices[:, 1]
        assert min(ys) == pytest.approx(f["temperature_min"])
        assert max(ys) == pytest.approx(f["temperature_max"])
    schedule, *_ = temp_ax.get_lines()
    assert schedule.get_ydata()[0] == 2.0 and schedule.get_ydata()[-1] < 1.01
    # Drawn in this order: the parts, then each epoch's mean (epoch separators after).
    *parts, epoch0, epoch1 = [line.get_ydata()[0] for line in repl_ax.get_lines()[:len(files) + 2]]
    assert parts == pytest.approx([f["replaced"] / f["tokens"] for f in files])
    fracs = [sum(f["replaced"] for f in files if f["epoch"] == e)
             / sum(f["tokens"] for f in files if f["epoch"] == e) for e in (0, 1)]
    assert [epoch0, epoch1] == pytest.approx(fracs)
    assert fracs[0] > fracs[1]  # smoothed_onehot: a hotter epoch replaces more tokens
