"""bench.transfer's report: one markdown table per task (fine-tuning mean (min..max) over
seeds, the paired difference vs scratch, the probes) and a plot of downstream accuracy against
pre-training compute, one line per encoder and task."""

from __future__ import annotations

import os

from trainer.atomic import open_atomic, write_text_atomic


def _spread(s: dict, signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(s['mean'])} ({f.format(s['min'])}..{f.format(s['max'])})"


def table(task: str, rows: dict, seeds: list[int]) -> str:
    lines = [f"### {task}", "",
             f"Dev accuracy after the last fine-tuning epoch, mean (min..max) over seeds "
             f"{', '.join(map(str, seeds))}; vs scratch: the paired per-seed difference; "
             "probes: logistic regression on frozen features ([CLS] / mean token state / "
             "mean word embedding; scratch's row: a random-initialised encoder's).", "",
             "| encoder | budget | pre-training GFLOPs | fine-tuned | vs scratch | final train "
             "loss | probe [CLS] | probe mean | probe embeddings |",
             "|---|---:|---:|---|---|---:|---:|---:|---:|"]
    order = sorted(rows, key=lambda n: (rows[n]["encoder"] != "scratch",
                                        rows[n]["encoder"], rows[n]["budget"]))
    for name in order:
        r = rows[name]
        p = r["probe"]
        budget = f"{r['budget']}x" if r["budget"] else "-"
        ft = _spread(r["finetune"])
        vs = _spread(r["vs_scratch"], signed=True) if "vs_scratch" in r else "-"
        loss = f"{r['train_loss']['mean']:.3f}"
        gflops = f"{r['gflops']:,.0f}" if r.get("gflops") else "-"
        lines.append(f"| {r['encoder']} | {budget} | {gflops} | {ft} | {vs} | {loss} | "
                     f"{p['cls']:.3f} | {p['mean']:.3f} | {p['embeddings']:.3f} |")
    majority = next(iter(rows.values()))["probe"]["majority"]
    lines += ["", f"Majority class: {majority:.3f}.", ""]
    return "\n".join(lines)


def write_report(results: dict, out: str, plot: bool = True) -> str:
    parts = ["# bench.transfer", ""]
    parts += [table(t, rows, results["seeds"]) for t, rows in results["tasks"].items()]
    path = os.path.join(out, "transfer.md")
    write_text_atomic(path, "\n".join(parts))
    if plot:
        plot_compute(results, os.path.join(out, "transfer.png"))
    print("\n".join(parts), flush=True)
    return path


def plot_compute(results: dict, path: str) -> None:
    """Fine-tuned dev accuracy (mean, min..max bars) against pre-training GFLOPs (log x), one
    line per (task, encoder); scratch as a dashed level per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = results["tasks"][task]
        by_encoder: dict[str, list[dict]] = {}
        for r in rows.values():
            if r["encoder"] != "scratch":
                by_encoder.setdefault(r["encoder"], []).append(r)
        for encoder, rs in sorted(by_encoder.items()):
            rs.sort(key=lambda r: r["gflops"])
            x = [r["gflops"] for r in rs]
            y = [r["finetune"]["mean"] for r in rs]
            err = [[r["finetune"]["mean"] - r["finetune"]["min"] for r in rs],
                   [r["finetune"]["max"] - r["finetune"]["mean"] for r in rs]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=encoder)
        if "scratch" in rows:
            s = rows["scratch"]["finetune"]
            ax.axhline(s["mean"], color="k", ls="--", label="scratch (mean)")
            ax.axhspan(s["min"], s["max"], color="k", alpha=0.08)
        ax.set_xscale("log")
        ax.set_xlabel("pre-training compute (GFLOPs, fast-electra cost conventions)")
        ax.set_ylabel("dev accuracy after fine-tuning")
        ax.set_title(task)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with open_atomic(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
