"""Row 1 of ``python -m bench.paper``: cost per update of every mode, at the same
discriminator, generator size and batch (Fast-ELECTRA Table 7).

Each measurement is one process running ``bench/joint.py``'s ``child`` (the same task, loss,
backward, clip and AdamW step as trainer.train; the first step untimed; seconds per timed step
and peak memory): on CPU the process's peak resident set (``ru_maxrss``) above its RSS just
before the task was built, on GPU ``torch.cuda.max_memory_allocated``. Measurements are
interleaved, ``electra decoupled early-exit fast-online rtd`` then again, ``cost_reps`` times,
so a slow minute of a shared machine hits every mode alike; the row reports per mode the median
and min..max over the repetitions, as ratios to electra's median. The fast-online aux is the
bench's frozen aux (2 layers, as every generator here). ``fast-electra cost`` gives the analytic
FLOPs ratios of the same config beside them.

    python -m bench.paper_cost --child '{"mode": "rtd", ...}'     # one measurement (internal)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

MODES = ("electra", "decoupled", "early-exit", "fast-online", "rtd")


def child_args(bench, mode: str) -> dict:
    return {"config": bench.config, "corpus": bench.corpus_dir, "rtd": bench.rtd_dir,
            "aux": bench.aux_checkpoint(), "mode": mode, "steps": bench.plan.cost_steps,
            "batch": bench.plan.batch, "device": "auto"}


def child_main(argv: list[str] | None = None) -> int:
    """One measurement: bench/joint.py's child in this process, JSON on the last line."""
    from bench.joint import child

    p = argparse.ArgumentParser(prog="python -m bench.paper_cost")
    p.add_argument("--child", required=True, help="JSON of bench/joint.py's child arguments")
    p.add_argument("--out", required=True, help="where the JSON result is written")
    args = p.parse_args(argv)
    result = child(argparse.Namespace(**json.loads(args.child)))
    from trainer.tools.evaluate import write_json

    write_json(args.out, result)
    print(json.dumps(result))
    return 0


main = child_main


def summary(values: list[float], ref: float) -> dict:
    return {"median": statistics.median(values) / ref, "min": min(values) / ref,
            "max": max(values) / ref, "raw_median": statistics.median(values),
            "raw": values}


def run_row(bench) -> dict:
    """The interleaved measurements (each one a finished file is kept: resumable), then the
    ratios to electra, and fast-electra cost's analytic FLOPs of the same config."""
    root = os.path.join(bench.out, "cost")
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    for rep in range(bench.plan.cost_reps):
        for mode in MODES:
            path = os.path.join(root, f"rep{rep}-{mode}.json")
            if not os.path.isfile(path):
                bench.runner.call(f"cost/rep{rep}-{mode}", "bench.paper_cost",
                                  ["--child", json.dumps(child_args(bench, mode)),
                                   "--out", path])
            with open(path) as f:
                results[mode].append(json.load(f))
    ref_t = statistics.median(r["seconds_per_step"] for r in results["electra"])
    ref_m = statistics.median(r["memory_gb"] for r in results["electra"])
    table = {m: {"seconds_per_step": summary([r["seconds_per_step"] for r in rs], ref_t),
                 "memory": summary([r["memory_gb"] for r in rs], max(ref_m, 1e-9))}
             for m, rs in results.items()}
    analytic = os.path.join(root, "trainer_cost.json")
    if not os.path.isfile(analytic):
        argv = ["--config", bench.config, "--json"]
        for s in bench.data_sets():
            argv += ["--set", s]
        log = os.path.join(bench.runner.log_dir, "cost_trainer.cost.log")
        bench.runner.call("cost/trainer.cost", "trainer.tools.cost", argv)
        with open(log) as f:  # fast-electra cost --json prints the object (after nothing else)
            text = f.read()
        from trainer.tools.evaluate import write_json

        write_json(analytic, json.loads(text[text.index("{"):]))
    with open(analytic) as f:
        cost = json.load(f)
    device = results["electra"][0]["device"]
    memory_kind = ("torch.cuda.max_memory_allocated" if device.startswith("cuda") else
                   "CPU peak RSS (ru_maxrss) above the RSS before the task was built")
    if bench.runner.in_process:  # one process's ru_maxrss only grows: no per-mode figure
        memory_kind = "none (--in-process: every mode shares one process's peak RSS)"
    return {"modes": table, "device": device, "memory_measure": memory_kind,
            "reps": bench.plan.cost_reps, "timed_steps": bench.plan.cost_steps - 1,
            "batch": bench.plan.batch, "analytic_flops": {
                "fast_over_joint": cost["fast"]["total_gflops"] / cost["joint"]["total_gflops"],
                "offline_over_joint": cost["offline"]["total_gflops"]
                / cost["joint"]["total_gflops"],
                "fast_memory_over_joint": cost["fast"]["total_gb"] / cost["joint"]["total_gb"]}}


if __name__ == "__main__":
    sys.exit(child_main())
