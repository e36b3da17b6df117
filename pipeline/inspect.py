"""Print a summary of a shard set (RTD or corpus) from its manifest.

    fast-electra inspect shards/tiny/rtd            # epochs, rows, replaced fraction,
                                                    # temperature range per epoch, aux
    fast-electra inspect shards/tiny/rtd --verify   # also check every file's sha256
    fast-electra inspect shards/tiny/corpus
    fast-electra inspect shards/tiny/rtd --plot shards/tiny/rtd-schedule.png

Reads only manifest.json (plus the files with ``--verify``); needs no Beam. ``--plot`` draws,
over training progress u, each part's temperature range next to the configured schedule, and
the replaced fraction per part and per epoch (needs matplotlib: ``pip install -e '.[plot]'``).
"""

from __future__ import annotations

import argparse
import json
import sys

from trainer.cli import main_guard
from trainer.corruption.schedules import schedule_value
from trainer.data.corpus_shards import CorpusShards
from trainer.data.manifest import MANIFEST, ShardError, resolve_fs
from trainer.data.rtd_shards import RTDShards
from trainer.errors import UserError
from trainer.tools.plot import require_matplotlib, save_figure


def rtd_summary(rtd: RTDShards) -> list[str]:
    m = rtd.manifest
    aux = m.get("aux")
    c = m["corruption"]
    lines = [
        f"RTD shard set {rtd.root}",
        f"  corpus      {m['corpus']['dir']} (manifest sha256 "
        f"{m['corpus']['manifest_sha256'][:16]}...)",
        "  aux         " + ("none (model-free replacement)" if aux is None else
                            f"{aux['checkpoint']} step {aux.get('step')} state sha256 "
                            f"{aux['state_sha256'][:16]}..."),
        f"  corruption  replacement={c['replacement']} augmentation={c['augmentation']} "
        f"schedule={c['schedule']} t0={c['t0']:g} tau={c['tau']:g} "
        f"granularity={c['granularity']} mask_prob={c['mask_prob']:g}",
        f"  seed {m['seed']}, {m['epochs']} epoch(s) x {m['num_sequences']:,} rows, "
        f"{len(m['files'])} part(s), {m['num_tokens']:,} tokens, "
        f"{m['shard_bytes'] / max(m['num_tokens'], 1):.3f} bytes/token "
        f"(input_ids {m['token_dtype']})",
        "  epoch       rows      tokens  replaced   temperature",
    ]
    for e in range(rtd.num_epochs):
        files = rtd.epoch_files(e)
        rows = sum(f["rows"] for f in files)
        tokens = sum(f["tokens"] for f in files)
        replaced = sum(f["replaced"] for f in files)
        lo = min(f["temperature_min"] for f in files)
        hi = max(f["temperature_max"] for f in files)
        lines.append(f"  {e:5d} {rows:10,d} {tokens:11,d} {replaced / max(tokens, 1):8.2%}   "
                     f"{hi:.4f} -> {lo:.4f}")
    return lines


def rtd_figure(rtd: RTDShards):
    """Two panels over training progress u = (e * N + p) / (E * N): each part's temperature
    range (from the manifest) over the schedule the corruption config defines, and the
    fraction of tokens replaced, per part and per epoch. Returns a matplotlib Figure."""
    Figure = require_matplotlib()
    from matplotlib.ticker import PercentFormatter

    m, c = rtd.manifest, rtd.manifest["corruption"]
    epochs, n = rtd.num_epochs, rtd.rows_per_epoch
    total = epochs * n
    fig = Figure(figsize=(9, 6.5))
    temp_ax, repl_ax = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))

    u = [i / 400 for i in range(401)]
    if c["granularity"] == "epoch":  # one value per epoch, held for the whole epoch
        curve = [schedule_value(c["schedule"], min(int(x * epochs), epochs - 1) / epochs,
                                c["t0"], c["tau"]) for x in u]
    else:
        curve = [schedule_value(c["schedule"], x, c["t0"], c["tau"]) for x in u]
    temp_ax.plot(u, curve, color="0.25", linewidth=1, label=f"configured schedule "
                 f"({c['schedule']}, t0={c['t0']:g}, tau={c['tau']:g}, {c['granularity']})")
    for i, f in enumerate(sorted(m["files"], key=lambda f: (f["epoch"], f["position_start"]))):
        lo = (f["epoch"] * n + f["position_start"]) / total
        hi = (f["epoch"] * n + f["position_end"]) / total
        # The edge line keeps a part with min == max (a constant schedule) visible.
        temp_ax.fill_between([lo, hi], f["temperature_min"], f["temperature_max"],
                             color="C0", alpha=0.45, linewidth=0.8, edgecolor="C0",
                             label="shards: min..max per part" if i == 0 else None)
        replaced = f["replaced"] / max(f["tokens"], 1)
        repl_ax.plot([lo, hi], [replaced, replaced], color="C1", linewidth=1.5, zorder=3,
                     label="per part" if i == 0 else None)
    for e in range(epochs):
        files = rtd.epoch_files(e)
        frac = sum(f["replaced"] for f in files) / max(sum(f["tokens"] for f in files), 1)
        repl_ax.plot([e / epochs, (e + 1) / epochs], [frac, frac], color="C3", linewidth=3,
                     alpha=0.5, label="per epoch" if e == 0 else None)
        repl_ax.annotate(f"epoch {e}: {frac:.2%}", ((e + 0.5) / epochs, frac),
                         textcoords="offset points", xytext=(0, 6), ha="center",
                         fontsize="small", color="C3")
        for ax in (temp_ax, repl_ax):
            if e:
                ax.axvline(e / epochs, color="0.6", linestyle=":", linewidth=1)
    value = "temperature T" if c["augmentation"] == "temperature" else \
        f"schedule value T = 1 + strength ({c['augmentation']})"
    temp_ax.set_title(f"{rtd.root}: {epochs} epoch(s) x {n:,} samples, "
                      f"replacement {c['replacement']}", fontsize="medium")
    temp_ax.set_ylabel(value)
    temp_ax.legend(fontsize="small", loc="upper right")
    repl_ax.set_ylabel("replaced fraction of tokens")
    repl_ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    repl_ax.margins(y=0.3)  # room for the per-epoch labels
    repl_ax.set_xlabel("training progress u = (e*N + position) / (E*N)")
    repl_ax.legend(fontsize="small", loc="lower left")
    for ax in (temp_ax, repl_ax):
        ax.grid(True, alpha=0.3)
        ax.set_xlim(0, 1)
    return fig


def corpus_summary(corpus: CorpusShards) -> list[str]:
    m = corpus.manifest
    return [
        f"corpus shard set {corpus.root}",
        f"  {m['num_documents']:,} documents, {m['num_sequences']:,} sequences, "
        f"{m['num_tokens']:,} tokens in {len(m['files'])} part(s); vocab "
        f"{m['tokenizer']['vocab_size']}, max_seq_len {m['max_seq_len']}, "
        f"{m['shard_bytes'] / max(m['num_tokens'], 1):.3f} bytes/token",
    ]


def run(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(prog="fast-electra inspect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="a shard set folder (the one holding manifest.json)")
    parser.add_argument("--verify", action="store_true",
                        help="check every file's row count and sha256 (reads everything)")
    parser.add_argument("--plot", metavar="OUT.png",
                        help="RTD sets: also write a PNG of the temperature schedule and the "
                             "replaced fraction over training progress")
    args = parser.parse_args(argv)
    fs, path = resolve_fs(args.dir)
    try:
        with fs.open_input_stream(f"{path}/{MANIFEST}") as f:
            kind = json.loads(f.read()).get("kind")
    except (FileNotFoundError, json.JSONDecodeError):
        kind = "rtd"  # let the reader explain what is wrong
    if kind == "corpus":
        if args.plot:
            raise UserError(f"--plot draws an RTD shard set's schedule; {args.dir} holds a "
                            "corpus: pass the rtd folder (generate.rtd_dir)")
        shards = CorpusShards(args.dir)
        lines = corpus_summary(shards)
    elif kind == "rtd":
        shards = RTDShards(args.dir)
        if not shards.complete:  # its summary needs every epoch's totals
            raise ShardError(
                f"{args.dir} is an rtd shard set still being generated: epoch(s) "
                f"{shards.sealed_epochs() or 'none'} of {shards.num_epochs} sealed (plan.json, "
                "no manifest.json yet). fast-electra inspect reads complete sets: run it again "
                "once every epoch is sealed (fast-electra generate --epochs A:B writes the "
                "rest)")
        lines = rtd_summary(shards)
    else:
        raise ShardError(f"{args.dir}/{MANIFEST}: unknown kind {kind!r}")
    if args.verify:
        shards.verify(checksums=True)
        lines.append("  verified: every file present, row counts and sha256 match")
    print("\n".join(lines))
    if args.plot:
        print(f"wrote {save_figure(rtd_figure(shards), args.plot)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    return main_guard(run, argv)


if __name__ == "__main__":
    sys.exit(main())
