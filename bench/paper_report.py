"""The report of ``python -m bench.paper``: every row's measurement beside the paper's figure
(quoted from the paper, with its table), a verdict that states the numbers it
compares, the Markdown table, and the PNG plots that are not training curves (those come from
``fast-electra plot``).
"""

from __future__ import annotations

import os

from trainer.tools.plot import require_matplotlib, save_figure

ROWS = ("cost", "curriculum", "replacement", "wallclock", "decoupled", "early_exit",
        "downstream", "sweep")
TITLES = {
    "cost": "1. Cost per update (time, memory) vs electra",
    "curriculum": "2. Curriculum: exponential T vs fixed T = 1 vs constant T = 2",
    "replacement": "3. Replacement distributions",
    "wallclock": "4. Equal wall-clock: electra, decoupled, rtd",
    "decoupled": "5. DecoupledOptim: rtd_weight vs generator_lr on the generator's MLM loss",
    "early_exit": "6. Adaptive early-exit generator",
    "downstream": "7. Downstream fine-tuning of every discriminator",
    "sweep": "8. Shard reuse: 4-point lr sweep on one shard set vs 4 fast-online runs",
}
PAPER = {
    "cost": "online Fast-ELECTRA 0.71-0.81 of ELECTRA's s/update, 0.83-0.85 of its memory "
            "(Fast-ELECTRA Table 7); offline: aux cost 0 (Table 1: 591.9 of 990.5 GFLOPs = "
            "0.60 base); adaptive early exit 1.15x steps/s = 0.87 of the time (Kang et al. "
            "Table 1)",
    "curriculum": "fixed aux: RTD accuracy 0 for the first 10K+ updates; MNLI 88.3 fixed vs "
                  "89.1 curriculum; at 2K updates 80% vs 85% (Fast-ELECTRA D.2, Fig. 4)",
    "replacement": "MNLI: aux 89.1 > TF 85.7 > UNF->SOH 85.3 > TF->SOH 84.9 > SOH 83.8; "
                   "uniform diverged (loss plunges to ~0, diverges ~10K updates) "
                   "(Fast-ELECTRA D.1, Table 6)",
    "wallclock": "no equal-time table; at equal steps GLUE base: Fast-ELECTRA 88.7, METRO "
                 "re-impl. 88.5, ELECTRA 85.5 (Fast-ELECTRA Table 5); DecoupledOptim 89.1",
    "decoupled": "lambda in {50, 70, 100, 200} barely moves the generator's MLM; generator lr "
                 "controls it (DecoupledOptim Fig. 3; no number given)",
    "early_exit": "1.15x steps/s over ELECTRA (2.75 vs 2.4), comparable GLUE: MNLI 77.39 vs "
                  "76.09 (Kang et al. Table 1)",
    "downstream": "GLUE base average: Fast-ELECTRA 88.7, ELECTRA 85.5, DecoupledOptim 89.1 "
                  "(Fast-ELECTRA Table 5, DecoupledOptim); no from-scratch figure",
    "sweep": "offline corruption is reusable across hyper-parameter search: aux cost 0 per run "
             "(Fast-ELECTRA Sec. 3; no timing given)",
}


# The paper's figure for each discriminator of the downstream table (MNLI / GLUE, not ours).
PAPER_DOWNSTREAM = {
    "curriculum-exponential@early": "MNLI ~85 at 2K updates (D.2, tempered)",
    "curriculum-exponential": "MNLI 89.1 (Table 6, Fast-ELECTRA)",
    "curriculum-fixed@early": "MNLI ~80 at 2K updates (D.2, fixed)",
    "curriculum-fixed": "MNLI 88.3 (D.2, fixed aux)",
    "replacement-uniform": "diverged (Table 6)",
    "replacement-unigram": "MNLI 85.7 (Table 6, TF)",
    "replacement-smoothed_onehot": "MNLI 83.8 (Table 6)",
    "replacement-uniform->smoothed_onehot": "MNLI 85.3 (Table 6)",
    "replacement-unigram->smoothed_onehot": "MNLI 84.9 (Table 6)",
    "electra": "GLUE 85.5 (Table 5, ELECTRA); MNLI 76.09 (Kang, small)",
    "wallclock-decoupled": "GLUE 89.1 (DecoupledOptim, equal steps)",
    "wallclock-rtd": "GLUE 88.7 (Table 5, equal steps)",
    "decoupled-g0.0001": "-", "decoupled-g0.001": "-", "electra-w10": "-",
    "early-exit": "MNLI 77.39 (Kang et al. Table 1, small)",
    "from-scratch": "-",
}
PAPER_COST = {"electra": "1.00 / 1.00", "decoupled": "no figure (same FLOPs)",
              "early-exit": "0.87 (1.15x steps/s, Kang) / -",
              "fast-online": "0.71-0.81 / 0.83-0.85 (Table 7)",
              "rtd": "aux 0: 0.60 of FLOPs (Table 1 base) / 0.77 (23.0 of 30.0 GB)"}


def f(x, d=3) -> str:
    return "-" if x is None else f"{x:.{d}f}"


def _ratio(m: dict) -> str:
    return f"{f(m['median'], 2)} ({f(m['min'], 2)}..{f(m['max'], 2)})"


def _down(rows: dict, label: str) -> float | None:
    t = rows.get("downstream", {}).get("table", {})
    return t[label]["final"]["mean"] if label in t else None


def summarise(row: str, r: dict, rows: dict) -> tuple[str, str]:
    """(ours, verdict) of one row: the numbers and whether they agree with the paper's."""
    if row == "cost":
        m = r["modes"]
        fo, rt = m["fast-online"], m["rtd"]
        ours = (f"s/step: fast-online {_ratio(fo['seconds_per_step'])}, rtd "
                f"{_ratio(rt['seconds_per_step'])}, decoupled "
                f"{_ratio(m['decoupled']['seconds_per_step'])}, early-exit "
                f"{_ratio(m['early-exit']['seconds_per_step'])}; memory: fast-online "
                f"{_ratio(fo['memory'])}, rtd {_ratio(rt['memory'])}")
        t, mem = fo["seconds_per_step"]["median"], fo["memory"]["median"]
        ok = (0.71 <= t <= 0.81) + (0.83 <= mem <= 0.85)
        verdict = (f"{('differs', 'partly', 'agrees')[ok]}: fast-online time {t:.2f} of "
                   f"electra's (paper 0.71-0.81), memory {mem:.2f} (paper 0.83-0.85)")
        a = r["analytic_flops"]
        verdict += (f". fast-electra cost for these shapes (aux as deep as the discriminator; the "
                    f"paper's is 1/3): FLOPs fast/joint {a['fast_over_joint']:.2f}, offline/"
                    f"joint {a['offline_over_joint']:.2f}, memory fast/joint "
                    f"{a['fast_memory_over_joint']:.2f}")
        return ours, verdict
    if row == "curriculum":
        last = {n: v[-1] for n, v in r["fair"].items()}
        first = {n: v[0] for n, v in r["fair"].items()}
        ours = "; ".join(f"{n}: fair AUC {f(last[n]['auc'])} F1 {f(last[n]['f1'])} (first ckpt "
                         f"F1 {f(first[n]['f1'])}), downstream {f(_down(rows, 'curriculum-' + n))}"
                         for n in last)
        e, x = last["exponential"]["auc"], last["fixed"]["auc"]
        de, dx = _down(rows, "curriculum-exponential"), _down(rows, "curriculum-fixed")
        # AUC differences under 0.01 are within what reruns of one run move
        # (docs/benchmarks.md, the probe table).
        word = "agrees" if e - x > 0.01 else "differs" if x - e > 0.01 else "no difference"
        verdict = f"{word}: fair AUC exponential {e:.3f} vs fixed {x:.3f} (margin 0.01)"
        if de is not None and dx is not None:
            verdict += (f"; downstream {de:.3f} vs {dx:.3f} "
                        f"({'curriculum ahead, as the paper' if de > dx else 'no gain'})")
        return ours, verdict
    if row == "replacement":
        names = list(r["fair"])
        downs = {n: _down(rows, "curriculum-exponential" if n.startswith("aux")
                          else f"replacement-{n}") for n in names}
        ours = "; ".join(f"{n}: min loss {f(r['loss_shape'][n]['min'])} @ step "
                         f"{r['loss_shape'][n]['min_step']}, downstream {f(downs[n])}"
                         for n in names)
        u, others = r["loss_shape"]["uniform"], [r["loss_shape"][n]["min"] for n in names
                                                if n != "uniform"]
        plunge = u["min"] < 0.5 * min(others)
        known = {n: d for n, d in downs.items() if d is not None}
        best = max(known, key=known.get) if known else ""
        ok = plunge + best.startswith("aux")
        verdict = (f"{('differs', 'partly', 'agrees')[ok]}: uniform's loss "
                   f"{'plunges' if plunge else 'does not plunge'} (min {u['min']:.3f} vs the "
                   f"others' lowest {min(others):.3f})")
        if known:
            verdict += f"; best downstream: {best} {known[best]:.3f} (paper: aux)"
        return ours, verdict
    if row == "wallclock":
        labels = {"electra": "electra", "decoupled": "wallclock-decoupled",
                  "rtd": "wallclock-rtd"}
        d = {n: _down(rows, lab) for n, lab in labels.items()}
        ours = (f"budget {r['budget_seconds']:.0f} s: steps " +
                ", ".join(f"{n} {s}" for n, s in r["steps"].items()) + "; downstream " +
                ", ".join(f"{n} {f(v)}" for n, v in d.items()) +
                f"; shard generation {f(r['generate_seconds'], 1)} s once "
                f"({f(r['generate_seconds_amortised_over_sweep'], 1)} s per sweep point)")
        if None in d.values():
            return ours, "no downstream figure"
        rival = max(d["electra"], d["decoupled"])
        return ours, (f"agrees: rtd {d['rtd']:.3f} > {rival:.3f} at equal time"
                      if d["rtd"] > rival else
                      f"no difference: rtd {d['rtd']:.3f} = {rival:.3f}" if d["rtd"] == rival
                      else f"differs: rtd {d['rtd']:.3f} < {rival:.3f} at equal time")
    if row == "decoupled":
        e, dd = r["electra_max_rel_diff"], r["decoupled_max_rel_diff"]
        ours = (f"max relative difference of the generator's training MLM loss: electra "
                f"lambda 10 vs 50: {e:.3f}; decoupled lr 1e-4 vs 1e-3: {dd:.3f} (held-out: "
                f"{f(r['electra_eval_max_rel_diff'])} vs {f(r['decoupled_eval_max_rel_diff'])})")
        return ours, (f"agrees: lambda moves it {dd / max(e, 1e-12):.1f}x less than the lr"
                      if e < dd else f"differs: lambda moves it as much ({e:.3f} vs {dd:.3f})")
    if row == "early_exit":
        de, dl = _down(rows, "early-exit"), _down(rows, "electra")
        lo, hi = r["steps_per_s_range"]
        ours = (f"steps/s vs electra {r['steps_per_s_vs_electra']:.2f}x ({lo:.2f}..{hi:.2f}; "
                f"training runs {r['training_runs_steps_per_s_vs_electra']:.2f}x); final P "
                + ", ".join(f"{k[6:]}: {v:.2f}" for k, v in r["final_exit_probs"].items())
                + f"; downstream {f(de)} vs electra {f(dl)}")
        s = r["steps_per_s_vs_electra"]
        return ours, (f"{'agrees' if s >= 1.05 else 'differs'}: {s:.2f}x steps/s (paper 1.15x)")
    if row == "downstream":
        t = r["table"]
        scratch = t["from-scratch"]["final"]["mean"]
        pre = {k: v["final"]["mean"] for k, v in t.items() if k != "from-scratch"}
        above = sum(v > scratch for v in pre.values())
        ours = (f"{r['metric']} over {r['seeds']} seed(s): from scratch {scratch:.3f}; "
                f"pre-trained {min(pre.values()):.3f}..{max(pre.values()):.3f}")
        return ours, (f"{'agrees' if 2 * above > len(pre) else 'differs'}: {above} of "
                      f"{len(pre)} discriminators beat from-scratch (pre-training should help)")
    if row == "sweep":
        ours = (f"offline: sweep {r['offline_sweep_seconds']:.0f} s + shards "
                f"{f(r['generate_seconds'], 0)} s once = {r['offline_total']:.0f} s "
                f"({r['offline_total_prorated']:.0f} s with the shard time prorated to the "
                f"{r['share_of_shards_read']:.0%} read); online: {r['online_total']:.0f} s")
        ok = r["offline_total"] < r["online_total"]
        verdict = (f"{'agrees' if ok else 'differs'}: offline/online wall-clock = "
                   f"{r['offline_total'] / r['online_total']:.2f} "
                   f"(prorated {r['offline_total_prorated'] / r['online_total']:.2f})")
        lg = r.get("logged_train_seconds")
        if lg:
            ours += (f"; the runs' logged training seconds (no start-up): offline "
                     f"{lg['offline']:.0f} s, online {lg['online']:.0f} s")
            verdict += f"; training alone {lg['offline'] / lg['online']:.2f}"
        return ours, verdict
    raise KeyError(row)


def downstream_table(r: dict) -> list[str]:
    lines = [f"| discriminator | final dev {r['metric']}: mean (min..max) | best epoch: mean "
             "(min..max) | paper |", "|---|---:|---:|---|"]
    for label, v in r["table"].items():
        fi, be = v["final"], v["best"]
        lines.append(f"| {label} | {fi['mean']:.3f} ({fi['min']:.3f}..{fi['max']:.3f}) | "
                     f"{be['mean']:.3f} ({be['min']:.3f}..{be['max']:.3f}) | "
                     f"{PAPER_DOWNSTREAM.get(label, '-')} |")
    return lines


def detail_tables(rows: dict) -> list[str]:
    """Curriculum checkpoints, replacement loss shapes, the sweep's totals."""
    out = []
    c = rows.get("curriculum", {})
    if "fair" in c:
        out += ["", "## Curriculum (row 2): fair RTD (aux at T = 1, ordinary tokens) per "
                "checkpoint", "", "| schedule | step | AUC | F1 | loss | accuracy (majority) |",
                "|---|---:|---:|---:|---:|---:|"]
        out += [f"| {n} | {p['step']} | {p['auc']:.3f} | {p['f1']:.3f} | {p['loss']:.4f} | "
                f"{p['accuracy']:.3f} ({p['majority']:.3f}) |"
                for n, pts in c["fair"].items() for p in pts]
    r = rows.get("replacement", {})
    if "loss_shape" in r:
        out += ["", "## Replacement distributions (row 3): training loss and fair RTD", "",
                "| distribution | first loss | min loss (step) | last loss | fair AUC | fair F1 |",
                "|---|---:|---:|---:|---:|---:|"]
        out += [f"| {n} | {v['first']:.4f} | {v['min']:.4f} ({v['min_step']}) | "
                f"{v['last']:.4f} | {r['fair'][n]['auc']:.3f} | {r['fair'][n]['f1']:.3f} |"
                for n, v in r["loss_shape"].items()]
    w = rows.get("sweep", {})
    if "online_total" in w:
        out += ["", "## Shard reuse (row 8)", "",
                f"lrs {', '.join(w['lrs'])}, {w['steps']} steps each. Offline: fast-electra sweep "
                f"{w['offline_sweep_seconds']:.1f} s, pipeline.generate "
                f"{f(w['generate_seconds'], 1)} s (once). Online runs: "
                + ", ".join(f"{x:.1f}" for x in w["online_run_seconds"]) + " s."]
    return out


def markdown(report: dict) -> str:
    rows = report["rows"]
    lines = [f"# Paper rows at CPU scale ({report['mode']} mode)", "",
             f"Command: `{report['command']}`; device {report.get('device', '?')}; "
             f"elapsed {report['elapsed_seconds'] / 60:.1f} min in this invocation.", "",
             "Scale: every run here is the tiny model for tens to hundreds of CPU steps; the "
             "papers' figures are base/large models after 125K+ steps, scored on GLUE/MNLI. "
             "Read the verdicts as whether the direction holds at this scale, not as a "
             "replication of the numbers.", "",
             "| row | ours | paper | verdict |", "|---|---|---|---|"]
    for row in ROWS:
        if row in rows and "error" not in rows[row]:
            ours, verdict = summarise(row, rows[row], rows)
        else:
            error = rows.get(row, {}).get("error", "not run")
            # One table cell: the error's last lines, flattened.
            ours, verdict = "not run", " ".join(error.split())[-400:].replace("|", "/")
        lines.append(f"| {TITLES[row]} | {ours} | {PAPER[row]} | {verdict} |")
    differs = [f"- {TITLES[r]}: {summarise(r, rows[r], rows)[1]}" for r in ROWS
               if r in rows and "error" not in rows[r]
               and summarise(r, rows[r], rows)[1].startswith(("differs", "partly",
                                                               "no difference"))]
    if differs:
        lines += ["", "## Where this run disagrees with the paper", "", *differs]
    lines += detail_tables(rows)
    if "downstream" in rows and "error" not in rows["downstream"]:
        lines += ["", "## Downstream (row 7)", "", *downstream_table(rows["downstream"])]
    if "cost" in rows and "error" not in rows["cost"]:
        c = rows["cost"]
        lines += ["", "## Cost (row 1)", "",
                  f"{c['reps']} interleaved repetitions x {c['timed_steps']} timed steps, batch "
                  f"{c['batch']}, on {c['device']}; memory = {c['memory_measure']}. "
                  "fast-electra cost's analytic FLOPs of the same config: fast/joint "
                  f"{c['analytic_flops']['fast_over_joint']:.2f}, offline/joint "
                  f"{c['analytic_flops']['offline_over_joint']:.2f}.", "",
                  "| mode | s/step (median) | x electra: median (min..max) | memory x electra "
                  "| paper: time / memory x electra |", "|---|---:|---:|---:|---|"]
        for mode, m in c["modes"].items():
            lines.append(f"| {mode} | {m['seconds_per_step']['raw_median']:.3f} | "
                         f"{_ratio(m['seconds_per_step'])} | {_ratio(m['memory'])} | "
                         f"{PAPER_COST[mode]} |")
    lines += ["", "## Elapsed per row (this invocation; 'skipped' = finished earlier)", ""]
    lines += [f"- {row}: {v}" for row, v in report["elapsed"].items()]
    lines += ["", "Plots: " + ", ".join(report.get("plots", []))]
    return "\n".join(lines) + "\n"


def _figure(w=6.0, h=3.6):
    fig = require_matplotlib()(figsize=(w, h))
    return fig, fig.add_subplot(1, 1, 1)


def plots(report: dict, out_dir: str) -> list[str]:
    """The bar and fair-evaluation plots; training curves come from fast-electra plot per row."""
    rows, written = report["rows"], []
    if "cost" in rows and "error" not in rows["cost"]:
        fig, ax = _figure()
        modes = list(rows["cost"]["modes"])
        for i, key in enumerate(("seconds_per_step", "memory")):
            ms = [rows["cost"]["modes"][m][key] for m in modes]
            xs = [j + 0.4 * i for j in range(len(modes))]
            ax.bar(xs, [m["median"] for m in ms], 0.4, label=key.replace("_", " "),
                   yerr=[[m["median"] - m["min"] for m in ms], [m["max"] - m["median"]
                                                                for m in ms]])
        ax.axhspan(0.71, 0.81, color="0.85", zorder=0, label="paper: online time 0.71-0.81")
        ax.set_xticks([j + 0.2 for j in range(len(modes))], modes)
        ax.set_ylabel("x electra (median, min..max)")
        ax.legend(fontsize="small")
        written.append(save_figure(fig, os.path.join(out_dir, "cost.png")))
    if "curriculum" in rows and "error" not in rows["curriculum"]:
        fig, ax = _figure()
        for n, pts in rows["curriculum"]["fair"].items():
            (line,) = ax.plot([p["step"] for p in pts], [p["auc"] for p in pts], marker="o",
                              label=f"{n} AUC")
            ax.plot([p["step"] for p in pts], [p["f1"] for p in pts], marker="x",
                    linestyle="--", color=line.get_color(), label=f"{n} F1")
        ax.set_xlabel("step")
        ax.set_ylabel("fair RTD metric (aux at T = 1)")
        ax.legend(fontsize="small")
        written.append(save_figure(fig, os.path.join(out_dir, "curriculum_fair.png")))
    if "early_exit" in rows and "error" not in rows["early_exit"]:
        fig, ax = _figure()
        for k, pts in rows["early_exit"]["exit_probs"].items():
            ax.plot([s for s, _ in pts], [p for _, p in pts], label=f"P(exit {k[6:]})")
        ax.set_xlabel("step")
        ax.set_ylabel("exit probability")
        ax.legend(fontsize="small")
        written.append(save_figure(fig, os.path.join(out_dir, "early_exit_probs.png")))
    if "downstream" in rows and "error" not in rows["downstream"]:
        t = rows["downstream"]["table"]
        fig, ax = _figure(8, 4)
        labels = list(t)
        means = [t[k]["final"]["mean"] for k in labels]
        ax.bar(range(len(labels)), means,
               yerr=[[m - t[k]["final"]["min"] for k, m in zip(labels, means, strict=True)],
                     [t[k]["final"]["max"] - m for k, m in zip(labels, means, strict=True)]])
        ax.set_xticks(range(len(labels)), labels, rotation=75, fontsize="small")
        ax.set_ylabel(f"dev {rows['downstream']['metric']} (final epoch)")
        written.append(save_figure(fig, os.path.join(out_dir, "downstream.png")))
    if "sweep" in rows and "error" not in rows["sweep"]:
        r = rows["sweep"]
        fig, ax = _figure()
        ax.bar([0], [r["offline_sweep_seconds"]], label="offline sweep (4 rtd runs)")
        ax.bar([0], [r["generate_seconds"] or 0], bottom=[r["offline_sweep_seconds"]],
               label="shard generation (once)")
        ax.bar([1], [r["online_total"]], label="4 fast-online runs")
        ax.set_xticks([0, 1], ["offline", "online"])
        ax.set_ylabel("wall-clock seconds")
        ax.legend(fontsize="small")
        written.append(save_figure(fig, os.path.join(out_dir, "sweep.png")))
    return written
