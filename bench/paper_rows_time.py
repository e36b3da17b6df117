"""Rows 4, 7 and 8 of ``python -m bench.paper``: equal wall-clock, downstream fine-tuning of
every discriminator, and shard reuse across an lr sweep.

Row 4 gives electra, decoupled and rtd the same seconds: electra trains the plan's steps, the
others the steps that take as long at the cost row's interleaved median seconds per step (so
the budget does not depend on what else ran at the time); the runs' own logged seconds are
reported beside it. Row 8 times a real ``fast-electra sweep`` (4 lrs, one shard set) against 4
fast-online runs, one after another, nothing else running; the aux's seconds (the shard set's
``pipeline.generate``) are counted once.
"""

from __future__ import annotations

import os
import statistics

from bench.paper_rows import checkpoints, mean_seconds_per_step
from bench.paper_runs import record_wall, run_finished, wall_seconds
from trainer.tools.plot import read_metrics

SWEEP_LRS = ("1e-3", "2e-3", "5e-3", "1e-2")


def equal_wallclock(bench, cost: dict) -> dict:
    t, p = cost["modes"], bench.plan
    budget = p.steps * t["electra"]["seconds_per_step"]["raw_median"]
    most = bench.epochs * bench.corpus().num_sequences // p.batch  # the shard set's length
    steps = {"electra": p.steps,
             "decoupled": max(1, round(p.steps / t["decoupled"]["seconds_per_step"]["median"])),
             "rtd": min(most, max(1, round(p.steps / t["rtd"]["seconds_per_step"]["median"])))}
    runs = bench.runner.parallel([
        lambda: bench.train("electra", ["train.mode=electra", "joint.rtd_weight=50.0"]),
        lambda: bench.train("wallclock-decoupled", ["train.mode=decoupled"],
                            steps=steps["decoupled"]),
        lambda: bench.train("wallclock-rtd", ["train.mode=rtd"], steps=steps["rtd"])])
    names = ("electra", "decoupled", "rtd")
    dirs = dict(zip(names, (r["dir"] for r in runs), strict=True))
    gen = bench.generate_seconds()
    return {"budget_seconds": budget, "steps": steps, "rtd_capped_by_shards": steps["rtd"] == most,
            "logged_train_seconds": {n: mean_seconds_per_step(d) * steps[n]
                                     for n, d in dirs.items()},
            "generate_seconds": gen,
            "generate_seconds_amortised_over_sweep": None if gen is None
            else gen / bench.plan.sweep_points,
            "discriminators": {("electra" if n == "electra" else f"wallclock-{n}"):
                               checkpoints(d)[-1] for n, d in dirs.items()}}


def downstream(bench, discriminators: dict[str, str]) -> dict:
    """fast-electra finetune of every discriminator and of --from-scratch, plan.seeds seeds each;
    per label the final-epoch and best-epoch dev metric: mean, min, max."""
    task = bench.make_task()
    seeds = range(bench.plan.seeds)
    jobs = [(label, path, s) for label, path in discriminators.items() for s in seeds]
    jobs += [("from-scratch", None, s) for s in seeds]
    results = bench.runner.parallel([
        (lambda label=label, path=path, s=s: bench.finetune(path, s, task, label))
        for label, path, s in jobs])
    by_label: dict[str, list[dict]] = {}
    for (label, _, _), r in zip(jobs, results, strict=True):
        by_label.setdefault(label, []).append(r)
    metric = results[0]["metric"]
    table = {}
    for label, rs in by_label.items():
        final = [r["final"][f"dev_{metric}"] for r in rs]
        best = [r["best"][f"dev_{metric}"] for r in rs]
        table[label] = {"final": _stats(final), "best": _stats(best),
                        "checkpoint": discriminators.get(label)}
    return {"metric": metric, "task": task, "seeds": len(seeds), "table": table}


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values),
            "values": values}


def sweep(bench) -> dict:
    p = bench.plan
    lrs = SWEEP_LRS[:p.sweep_points]
    root = os.path.join(bench.out, "runs", "sweep-offline")
    points = [os.path.join(root, "sweep", f"train.lr={lr}") for lr in lrs]
    if not all(run_finished(d, p.sweep_steps) for d in points):
        argv = ["--config", bench.config]
        for s in [*bench.train_sets(p.sweep_steps), "train.mode=rtd", f"train.out_dir={root}"]:
            argv += ["--set", s]
        record_wall(root, bench.runner.call("sweep/offline", "trainer.tools.sweep",
                                            [*argv, "--grid", "train.lr=" + ",".join(lrs)]))
    offline = wall_seconds(root)
    online = [bench.train(f"sweep-online-lr{lr}", ["train.mode=fast-online", f"train.lr={lr}"],
                          steps=p.sweep_steps)["seconds"] for lr in lrs]
    gen = bench.generate_seconds()
    read_share = p.sweep_steps * p.batch / (bench.epochs * bench.corpus().num_sequences)
    online_dirs = [os.path.join(bench.out, "runs", f"sweep-online-lr{lr}") for lr in lrs]
    final = {lr: _last(d, "loss") for lr, d in zip(lrs, points, strict=True)}
    final_online = {lr: _last(d, "loss") for lr, d in zip(lrs, online_dirs, strict=True)}
    logged = {side: sum(mean_seconds_per_step(d) * p.sweep_steps for d in dirs)
              for side, dirs in (("offline", points), ("online", online_dirs))}
    return {"lrs": list(lrs), "steps": p.sweep_steps, "offline_sweep_seconds": offline,
            "logged_train_seconds": logged,
            "generate_seconds": gen, "online_run_seconds": online,
            "online_total": sum(online), "offline_total": offline + (gen or 0.0),
            "offline_total_prorated": offline + (gen or 0.0) * read_share,
            "share_of_shards_read": read_share, "final_loss_offline": final,
            "final_loss_online": final_online}


def _last(run_dir: str, key: str) -> float:
    rows = [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if key in r]
    return rows[-1][key]
