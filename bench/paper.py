"""The papers' claims at CPU scale in one command, each beside the paper's figure.

    python -m bench.paper --quick                  # <= 12 min on 2 cores: 1 seed, 32 steps
    python -m bench.paper                          # the full plan: 3 seeds, 600 steps
    python -m bench.paper --corpus shards/x/corpus # any prepared corpus (else the embedded one)
    python -m bench.paper --task configs/finetune/sst2.toml --train T.tsv --dev D.tsv

Rows: 1 cost per update (interleaved repetitions), 2 curriculum, 3 replacement
distributions, 4 equal wall-clock, 5 DecoupledOptim (loss weight vs generator lr), 6 adaptive
early-exit generator, 7 downstream fine-tuning of every discriminator (plus --from-scratch),
8 shard reuse across an lr sweep. Setup first: ``pipeline.prepare`` (configs/tiny.toml's
embedded corpus unless --corpus), the frozen aux (configs/tiny_aux.toml's recipe, 2 ranks),
one RTD shard set (``pipeline.generate``), the corpus continuation task
(``fast-electra finetune-data``) unless --task. Writes into --out (default runs/paper):
``paper_report.json``, ``paper_report.md``, ``plots/``; every sub-run's folder and log.

Resumable: a finished row (``rows/<row>.json``) is skipped, and so is every finished sub-run
of an unfinished one; all writes are temp + rename. An --out of other settings is refused.
A row that fails is reported as not run, with the error, and retried by the next invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import traceback

from bench import paper_cost, paper_report, paper_rows, paper_rows_time
from bench.paper_runs import PLANS, Bench, BenchError, read_json
from trainer.atomic import write_text_atomic
from trainer.cli import main_guard
from trainer.errors import UserError
from trainer.tools.evaluate import write_json


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.paper", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer seeds and steps, same rows")
    size.add_argument("--smoke", action="store_true",
                      help="the smallest plan (a few steps): for the test, not for figures")
    p.add_argument("--out", default="runs/paper", help="output folder (default %(default)s)")
    p.add_argument("--config", default="configs/tiny.toml",
                   help="base run config: model sizes, lr (default %(default)s)")
    p.add_argument("--aux-config", default="configs/tiny_aux.toml",
                   help="the frozen aux's MLM run (default %(default)s)")
    p.add_argument("--corpus", help="a prepared corpus folder (default: prepare the config's)")
    p.add_argument("--task", help="fine-tuning task file (configs/finetune/*.toml); needs "
                                  "--train and --dev (TSV with header, JSONL or Parquet)")
    p.add_argument("--train", help="training file of --task")
    p.add_argument("--dev", help="dev file of --task")
    p.add_argument("--demo-task", choices=("continuation", "order"), default="continuation",
                   help="without --task: the task built from the corpus (default %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override a key of every run's config")
    p.add_argument("--jobs", type=int, default=2,
                   help="independent sub-runs at a time (timed rows always run alone)")
    p.add_argument("--in-process", action="store_true",
                   help="call each entry point's main(argv) here instead of a process each "
                        "(fast start: the smoke test); implies --jobs 1")
    return p


def check_settings(bench: Bench) -> None:
    path = os.path.join(bench.out, "settings.json")
    settings = json.loads(json.dumps(bench.settings()))
    if os.path.isfile(path):
        old = read_json(path)
        if old != settings:
            diff = sorted(k for k in {*old, *settings} if old.get(k) != settings.get(k))
            raise BenchError(f"{path}: this folder holds a bench run with other settings "
                             f"({', '.join(diff)}); use another --out or delete the folder")
    else:
        write_json(path, settings)


def run(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    if args.task and not (args.train and args.dev):
        raise UserError("--task needs --train and --dev (the task's labelled files)")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    bench = Bench(args, PLANS[mode])
    check_settings(bench)
    bench.write_config()
    started = time.perf_counter()
    elapsed: dict[str, str] = {}

    def timed(name, fn):
        t = time.perf_counter()
        n = len(bench.runner.started)
        value = fn()
        took = time.perf_counter() - t
        elapsed[name] = (f"{took:.0f} s" if len(bench.runner.started) > n
                         else f"skipped ({took:.1f} s)")
        print(f"paper: {name}: {elapsed[name]}", flush=True)
        return value

    print(f"paper: {mode} plan {PLANS[mode]} -> {bench.out}", flush=True)
    timed("setup", lambda: (bench.prepare_corpus(), bench.train_aux(),
                            bench.generate_shards(), bench.make_task()))
    rows: dict[str, dict] = {}
    skipped = []
    steps = {
        "cost": lambda: paper_cost.run_row(bench),
        "curriculum": lambda: paper_rows.curriculum(bench),
        "replacement": lambda: paper_rows.replacement(bench),
        "wallclock": lambda: paper_rows_time.equal_wallclock(bench, rows["cost"]),
        "decoupled": lambda: paper_rows.decoupled(bench),
        "early_exit": lambda: paper_rows.early_exit(bench, rows["cost"]),
        "downstream": lambda: paper_rows_time.downstream(bench, discriminators(rows)),
        "sweep": lambda: paper_rows_time.sweep(bench),
    }
    for name, fn in steps.items():
        path = os.path.join(bench.out, "rows", f"{name}.json")
        if os.path.isfile(path):
            rows[name] = read_json(path)
            skipped.append(name)
            took = rows[name].get("elapsed_seconds")
            elapsed[name] = "skipped (finished earlier" + (
                f" in {took:.0f} s)" if took is not None else ")")
            print(f"paper: {name}: skipped (finished earlier: {path})", flush=True)
            continue
        try:
            t0 = time.perf_counter()
            rows[name] = timed(name, fn)
            rows[name]["elapsed_seconds"] = time.perf_counter() - t0
            write_json(path, rows[name])
        except (UserError, KeyError, OSError, ValueError, RuntimeError) as e:
            # Kept in the report as "not run" with the reason; the next invocation retries.
            rows[name] = {"error": f"not run: {type(e).__name__}: {str(e)[-600:]}"}
            elapsed[name] = "failed"
            print(f"paper: {name}: FAILED\n{traceback.format_exc()}", file=sys.stderr,
                  flush=True)
    report = {"mode": mode, "command": "python -m bench.paper " + shlex.join(
                  argv if argv is not None else sys.argv[1:]),
              "settings": bench.settings(), "rows": rows, "skipped_rows": skipped,
              "sub_runs_started": bench.runner.started, "elapsed": elapsed,
              "device": rows.get("cost", {}).get("device"),
              "elapsed_seconds": time.perf_counter() - started}
    plot_dir = os.path.join(bench.out, "plots")
    os.makedirs(plot_dir, exist_ok=True)
    report["plots"] = sorted(
        [os.path.relpath(p, bench.out) for p in paper_report.plots(report, plot_dir)]
        + [os.path.relpath(os.path.join(plot_dir, d, f), bench.out)
           for d in sorted(os.listdir(plot_dir)) if os.path.isdir(os.path.join(plot_dir, d))
           for f in sorted(os.listdir(os.path.join(plot_dir, d)))])
    write_json(os.path.join(bench.out, "paper_report.json"), report)
    md = os.path.join(bench.out, "paper_report.md")
    write_text_atomic(md, paper_report.markdown(report))
    print(f"paper: {mode} done in {report['elapsed_seconds'] / 60:.1f} min; {md}", flush=True)
    failed = [r for r, v in rows.items() if "error" in v]
    if failed:
        raise BenchError(f"rows not run: {', '.join(failed)} (reasons in {md}); re-run to retry "
                         "them: finished rows are kept")
    return report


def discriminators(rows: dict) -> dict[str, str]:
    """Every discriminator the rows trained, label -> checkpoint folder, first seen wins."""
    out: dict[str, str] = {}
    for name in ("curriculum", "replacement", "wallclock", "decoupled", "early_exit"):
        for label, path in rows.get(name, {}).get("discriminators", {}).items():
            out.setdefault(label, path)
    return out


def main(argv: list[str] | None = None) -> int:
    return main_guard(run, argv)


if __name__ == "__main__":
    sys.exit(main())
