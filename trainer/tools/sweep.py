"""Hyper-parameter sweeps over one shard set: every grid point is a normal training run in its
own folder, launched one after another (or only printed), then a table of final metrics.

    fast-electra sweep --config configs/tiny.toml --set train.mode=rtd \\
        --grid train.lr=5e-4,1e-3,2e-3 --grid train.warmup_steps=10,30 [--nproc 2] [--print]

Run folders are ``<train.out_dir>/sweep/<key=value,...>/``; a point whose folder already holds
a finished run (its last checkpoint at train.max_steps) is not run again, so a sweep can be
re-launched after an interruption. The shards are only read, so several sweeps (or several
machines) can share one shard set.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

from trainer import checkpoint
from trainer.cli import config_parser, main_guard, resolve_config
from trainer.config.load import grid_product, load_config
from trainer.errors import UserError

SUMMARY_KEYS = ("loss", "rtd_f1", "eval_rtd_f1", "eval_mlm_loss", "gen_mlm_accuracy")


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    grid = []
    for spec in specs:
        key, _, values = spec.partition("=")
        if "." not in key or not values:
            raise UserError(f"--grid {spec!r}: expected section.key=v1,v2,...")
        grid.append((key, values.split(",")))
    return grid


def points(grid: list[tuple[str, list[str]]]) -> list[list[str]]:
    """Every combination as a list of ``key=value`` overrides."""
    return [[f"{k}={v}" for k, v in point] for point in grid_product(grid)]


def command(args, overrides: list[str], out_dir: str) -> list[str]:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node", str(args.nproc)] if args.nproc > 1 else
                [sys.executable])
    cmd = [*launcher, "-m", "trainer.train", "--config", args.config]
    for o in [*args.overrides, *overrides, f"train.out_dir={out_dir}", "train.resume=auto"]:
        cmd += ["--set", o]
    return cmd


def last_record(out_dir: str) -> dict:
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    merged: dict = {}
    for r in lines:  # eval metrics arrive on some lines only: keep the latest of each
        merged.update(r)
    return merged


def run(argv: list[str] | None = None) -> list[dict]:
    parser = config_parser("fast-electra sweep", __doc__)
    parser.add_argument("--grid", action="append", default=[], metavar="SECTION.KEY=V1,V2",
                        help="values to sweep for one key (repeatable: the grid is the product)")
    parser.add_argument("--nproc", type=int, default=1, help="ranks per run (torchrun)")
    parser.add_argument("--print", dest="print_only", action="store_true",
                        help="print the commands instead of running them")
    args = parser.parse_args(argv)
    cfg = resolve_config(args, echo=False)
    grid = parse_grid(args.grid)
    if not grid:
        raise UserError("give at least one --grid section.key=v1,v2,...")
    rows = []
    configs = [(o, load_config(args.config, [*args.overrides, *o])) for o in points(grid)]
    for overrides, point_cfg in configs:  # every point validated before the first launch
        out_dir = os.path.join(cfg.train.out_dir, "sweep", ",".join(overrides))
        cmd = command(args, overrides, out_dir)
        steps = checkpoint.list_steps(out_dir)
        max_steps = point_cfg.train.max_steps
        if args.print_only:
            print(shlex.join(cmd))
            continue
        if steps and steps[-1] >= max_steps:
            print(f"sweep: {out_dir} is finished; skipping", flush=True)
        else:
            print(f"sweep: {shlex.join(cmd)}", flush=True)
            result = subprocess.run(cmd)
            if result.returncode != 0:
                raise UserError(f"sweep: the run in {out_dir} failed (exit {result.returncode}); "
                                "fix it and re-launch the sweep: finished points are skipped")
        rows.append({"point": ",".join(overrides), "out_dir": out_dir,
                     **{k: v for k, v in last_record(out_dir).items() if k in SUMMARY_KEYS}})
    if rows:
        keys = [k for k in SUMMARY_KEYS if any(k in r for r in rows)]
        width = max(len(r["point"]) for r in rows)
        print(f"{'point':{width}s} " + " ".join(f"{k:>14s}" for k in keys))
        for r in rows:
            print(f"{r['point']:{width}s} " + " ".join(
                f"{r[k]:14.4f}" if k in r else f"{'-':>14s}" for k in keys))
    return rows


def main(argv: list[str] | None = None) -> int:
    return main_guard(run, argv)


if __name__ == "__main__":
    sys.exit(main())
