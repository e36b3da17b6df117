"""Plot training curves from run folders' ``metrics.jsonl``: one PNG per metric family, several
runs overlaid (one colour per run, one line style per key).

    fast-electra plot runs/tiny                        # -> runs/tiny/plots/*.png
    fast-electra plot runs/a runs/b --out plots/ab     # overlay two runs
    fast-electra plot runs/sweep-lr                    # a fast-electra sweep root: all points
    fast-electra plot runs/tiny --metrics loss,rtd_f1,grad_norm,tokens_per_s

Families (the default --metrics): ``loss`` (loss and every ``*_loss``, train and eval),
``rtd_f1`` (train and eval), ``mlm_accuracy`` (MLM and generator accuracy, train and eval),
``lr`` (``lr`` and per-optimizer ``lr_<name>``), ``temperature`` (mean schedule value of the
samples trained on). Any other name NAME plots the keys NAME, eval_NAME and NAME_* (e.g.
``grad_norm`` also plots ``grad_norm_generator``). A family no run logs is skipped with a note.
Needs matplotlib: ``pip install -e '.[plot]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass

from trainer.atomic import open_atomic
from trainer.cli import main_guard
from trainer.errors import UserError
from trainer.logger import METRICS

DEFAULT_METRICS = ("loss", "rtd_f1", "mlm_accuracy", "lr", "temperature")
# family -> (figure title, y-axis label); other names get the key itself as both.
TITLES = {
    "loss": ("Loss", "loss (nats)"),
    "rtd_f1": ("Replaced token detection F1", "F1 of the replaced class"),
    "mlm_accuracy": ("Masked LM accuracy", "accuracy at masked positions"),
    "lr": ("Learning rate", "learning rate"),
    "temperature": ("Temperature of the training samples", "mean schedule value T"),
}
# Train keys solid, eval keys dashed: the style tells the key apart, the colour the run.
STYLES = ("-", "--", ":", "-.")


@dataclass
class Run:
    name: str
    dir: str
    records: list[dict]


def require_matplotlib():
    """matplotlib's Figure class, without pyplot (no display, no global backend change)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise UserError("plotting needs matplotlib, which is not installed: "
                        "pip install -e '.[plot]'") from e
    return Figure


def save_figure(fig, path: str) -> str:
    """Write ``fig`` as a PNG to ``path`` atomically, so a reader never sees half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open_atomic(path) as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    return path


def read_metrics(path: str) -> list[dict]:
    """The records of one metrics.jsonl; a torn last line (a run killed mid-write) is ignored."""
    with open(path) as f:
        lines = f.readlines()
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) and not line.endswith("\n"):
                break
            raise UserError(f"{path}:{i}: not a JSON object ({e.msg}); the file is damaged: "
                            "remove that line or re-run the training") from e
        if not isinstance(record, dict) or "step" not in record:
            raise UserError(f"{path}:{i}: a record without 'step'; is this a metrics.jsonl "
                            "written by trainer.train?")
        records.append(record)
    return records


def _runs_in(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(p for p in os.listdir(folder) if os.path.isfile(os.path.join(folder, p, METRICS)))


def find_runs(paths: list[str]) -> list[Run]:
    """Each path is a run folder (holding metrics.jsonl) or a fast-electra sweep root (its
    ``sweep/<point>/`` folders, or that ``sweep`` folder itself)."""
    found: list[tuple[str, str]] = []  # (name, dir)
    for path in paths:
        path = os.path.normpath(path)
        if os.path.isfile(os.path.join(path, METRICS)):
            found.append((os.path.basename(os.path.abspath(path)), path))
            continue
        sweep = path if os.path.basename(path) == "sweep" else os.path.join(path, "sweep")
        points = _runs_in(sweep)
        if not points:
            inside = _runs_in(path)
            hint = (f"it holds the runs {', '.join(inside)}: pass them as {path}/<run>"
                    if inside else "pass a train.out_dir of a run that has logged at least "
                    "once, or a fast-electra sweep root")
            raise UserError(f"{path}: no {METRICS} here (nor in {sweep}/<point>/ of a "
                            f"fast-electra sweep); {hint}")
        found += [(p, os.path.join(sweep, p)) for p in points]
    names = [n for n, _ in found]
    if len(set(names)) < len(names):  # e.g. runs/a/aux and runs/b/aux: name them by path
        common = os.path.commonpath([os.path.abspath(d) for _, d in found])
        found = [(os.path.relpath(os.path.abspath(d), common), d) for _, d in found]
    return [Run(n, d, read_metrics(os.path.join(d, METRICS))) for n, d in found]


def family_keys(family: str, keys: set[str]) -> list[str]:
    """The logged keys that belong to ``family``, train keys first."""
    if family == "loss":
        members = {k for k in keys if k == "loss" or k.endswith("_loss")}
    elif family == "mlm_accuracy":
        members = {k for k in keys if k.endswith("mlm_accuracy")}
    else:
        members = {k for k in keys if k in (family, f"eval_{family}")
                   or k.startswith((f"{family}_", f"eval_{family}_"))}
    return sorted(members - {"step"}, key=lambda k: (k.startswith("eval_"), k != family, k))


def series(run: Run, key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records that hold a number for ``key``: eval metrics appear on
    eval steps only."""
    pts = [(r["step"], float(r[key])) for r in run.records
           if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)]
    return [s for s, _ in pts], [v for _, v in pts]


def family_figure(family: str, runs: list[Run]):
    """A matplotlib Figure of ``family`` across ``runs``, or None when no run logs it."""
    keys = family_keys(family, {k for r in runs for rec in r.records for k in rec})
    if not keys:
        return None
    Figure = require_matplotlib()
    fig = Figure(figsize=(8, 4.8))
    ax = fig.add_subplot()
    colours = [f"C{i % 10}" for i in range(len(runs))]
    styles = {key: STYLES[i % len(STYLES)] for i, key in enumerate(keys)}
    # Runs x keys labels would crowd the legend: with both, one legend per dimension.
    both = len(runs) > 1 and len(keys) > 1
    for run, colour in zip(runs, colours, strict=True):
        for key in keys:
            steps, values = series(run, key)
            if not steps:
                continue
            sparse = len(steps) < 0.5 * len(run.records)  # eval points: show each one
            ax.plot(steps, values, color=colour, linestyle=styles[key],
                    marker="o" if sparse or len(steps) == 1 else None, markersize=3,
                    label=None if both else run.name if len(runs) > 1 else key)
    title, ylabel = TITLES.get(family, (family, family))
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    if family == "lr":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.grid(True, alpha=0.3)
    if both:
        from matplotlib.lines import Line2D

        by_run = ax.legend([Line2D([], [], color=c) for c in colours], [r.name for r in runs],
                           title="run", fontsize="small", loc="upper left",
                           bbox_to_anchor=(1.01, 1.0))
        ax.add_artist(by_run)
        ax.legend([Line2D([], [], color="0.3", linestyle=styles[k]) for k in keys], keys,
                  title="metric", fontsize="small", loc="lower left", bbox_to_anchor=(1.01, 0.0))
    else:
        ax.legend(fontsize="small", loc="best")
    return fig


def plot_runs(runs: list[Run], metrics: list[str], out_dir: str) -> list[str]:
    written = []
    for family in metrics:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", family)
        fig = family_figure(family, runs)
        if fig is None:
            print(f"plot: note: no run logs {family!r}; skipped", flush=True)
        else:
            written.append(save_figure(fig, os.path.join(out_dir, f"{name}.png")))
    return written


def run(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(prog="fast-electra plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="train.out_dir folders, or fast-electra sweep roots")
    parser.add_argument("--out", help="folder for the PNGs (default: <first RUN_DIR>/plots)")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                        help="comma-separated families or keys (default: %(default)s)")
    args = parser.parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics:
        raise UserError("--metrics is empty; give e.g. --metrics loss,rtd_f1")
    runs = find_runs(args.runs)
    require_matplotlib()  # before any work: the message says how to install it
    for r in runs:
        if not r.records:
            print(f"plot: note: {r.dir}/{METRICS} has no records yet", flush=True)
    written = plot_runs(runs, metrics, args.out or os.path.join(args.runs[0], "plots"))
    if not written:
        raise UserError(f"none of {', '.join(metrics)} is logged by "
                        f"{', '.join(r.dir for r in runs)}; see the keys in {METRICS}")
    for path in written:
        print(path)
    return written


def main(argv: list[str] | None = None) -> int:
    return main_guard(run, argv)


if __name__ == "__main__":
    sys.exit(main())
