"""Does pre-training pay? Fine-tune a discriminator checkpoint and the same architecture from
random initialisation (``--from-scratch``) on a task, over several seeds, in one run.

    make demo                                   # the discriminator and the corpus
    .venv/bin/fast-electra finetune-data shards/tiny/corpus data/order --task order
    .venv/bin/python bench/finetune.py --task configs/finetune/demo_order.toml \\
        --train data/order/train.tsv --dev data/order/dev.tsv [--checkpoint runs/tiny/rtd]
        [--seeds 0,1,2] [--out-root runs/finetune_bench/order] [--set finetune.lr=3e-4]

Runs ``fast-electra finetune`` once per (seed, pre-trained | scratch) into
``<out-root>/<pre|scratch>-<seed>`` (a finished folder is reused, so an interrupted bench
resumes) and prints each run's final and best dev metric, then mean and spread (min..max) per
side and the difference pre-trained - scratch. Final = after the last epoch (no selection on
dev); best = the best epoch on dev (optimistic for both sides alike).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_one(args, kind: str, seed: int) -> dict:
    out = os.path.join(args.out_root, f"{kind}-{seed}")
    cmd = [sys.executable, "-m", "trainer.tools.finetune.run", "--checkpoint", args.checkpoint,
           "--task", args.task, "--train", args.train, "--dev", args.dev, "--out-dir", out,
           "--set", f"finetune.seed={seed}"]
    for s in args.overrides:
        cmd += ["--set", s]
    if kind == "scratch":
        cmd.append("--from-scratch")
    done = os.path.join(out, "results.json")
    if not os.path.isfile(done):
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"bench: {' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    with open(done) as f:
        return json.load(f)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--checkpoint", default="runs/tiny/rtd")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out-root", default="runs/finetune_bench")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    table = {}
    for kind in ("pre", "scratch"):
        for seed in seeds:
            res = run_one(args, kind, seed)
            metric = res["metric"]
            table[kind, seed] = (res["final"][f"dev_{metric}"], res["best"][f"dev_{metric}"])
    print(f"task {args.task}, dev {args.dev}, checkpoint {args.checkpoint}, seeds {seeds}; "
          f"metric {metric}")
    print("| init | " + " | ".join(f"seed {s} final (best)" for s in seeds) +
          " | final: mean (min..max) | best: mean (min..max) |")
    print("|---|" + "---:|" * (len(seeds) + 2))
    means = {}
    for kind, name in (("pre", "pre-trained (the checkpoint)"), ("scratch", "from scratch")):
        finals = [table[kind, s][0] for s in seeds]
        bests = [table[kind, s][1] for s in seeds]
        means[kind] = (statistics.mean(finals), statistics.mean(bests))
        cells = " | ".join(f"{f:.3f} ({b:.3f})" for f, b in zip(finals, bests, strict=True))
        print(f"| {name} | {cells} | {means[kind][0]:.3f} ({min(finals):.3f}..{max(finals):.3f})"
              f" | {means[kind][1]:.3f} ({min(bests):.3f}..{max(bests):.3f}) |")
    print(f"pre-trained - scratch: final {means['pre'][0] - means['scratch'][0]:+.3f}, "
          f"best {means['pre'][1] - means['scratch'][1]:+.3f}")


if __name__ == "__main__":
    main()
