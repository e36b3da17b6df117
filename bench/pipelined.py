"""Training while generate writes: the demo flow run sequentially and pipelined, timed.

    make demo                     # once: the corpus shards/tiny/corpus and aux runs/tiny/aux
    .venv/bin/python bench/pipelined.py [--config configs/tiny.toml] [--out runs/pipelined]
        [--steps 413]

Two runs from this process, each into fresh folders under ``--out`` (removed first; the
demo's shards/tiny/rtd and runs/tiny/rtd are never touched), with the demo's commands
(``OMP_NUM_THREADS=1``, the trainer on 2 gloo ranks via torchrun):

sequential  ``pipeline.generate`` (all epochs), then ``trainer.train``;
pipelined   ``pipeline.generate`` started, the trainer started as soon as ``plan.json``
            exists (it waits for each epoch's seal itself), then both awaited.

Prints the wall-clock of each run, generate's own time (from the sequential run), the share
of generate's time hidden = (sequential - pipelined) / generate, and whether the final
metrics.jsonl records of the two runs are equal apart from timing fields ("identical", or
the fields that differ). Both processes share the same cores here, so on a small machine the
hidden share is a lower bound of what separate generate and training hardware give.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
TIMING = {"seconds_per_step", "tokens_per_s", "peak_memory_gb"}


def commands(args, name: str) -> tuple[list[str], list[str], str]:
    """(generate, train) command lines writing under ``--out/name``, and the rtd folder."""
    rtd, run = os.path.join(args.out, name, "rtd"), os.path.join(args.out, name, "train")
    sets = ["--set", f"generate.rtd_dir={rtd}", "--set", f"train.out_dir={run}",
            "--set", f"train.max_steps={args.steps}"]
    gen = [sys.executable, "-m", "pipeline.generate", "--config", args.config, *sets]
    train = [os.path.join(BIN, "torchrun"), "--standalone", "--nproc_per_node", "2",
             "-m", "trainer.train", "--config", args.config, *sets]
    return gen, train, rtd


def start(cmd: list[str], log: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)


def wait(p: subprocess.Popen, log: str) -> None:
    if p.wait() != 0:
        sys.exit(f"bench: {' '.join(p.args)} failed (exit {p.returncode}); see {log}")


def fresh(args, name: str) -> str:
    folder = os.path.join(REPO, args.out, name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    return folder


def sequential(args) -> tuple[float, float]:
    """(wall-clock, generate's time) of generate then train."""
    folder = fresh(args, "sequential")
    gen, train, _ = commands(args, "sequential")
    t0 = time.monotonic()
    wait(start(gen, f"{folder}/generate.log"), f"{folder}/generate.log")
    t_gen = time.monotonic() - t0
    wait(start(train, f"{folder}/train.log"), f"{folder}/train.log")
    return time.monotonic() - t0, t_gen


def pipelined(args) -> float:
    """Wall-clock of generate with the trainer started as soon as plan.json exists."""
    folder = fresh(args, "pipelined")
    gen, train, rtd = commands(args, "pipelined")
    t0 = time.monotonic()
    g = start(gen, f"{folder}/generate.log")
    while not os.path.exists(os.path.join(REPO, rtd, "plan.json")):
        if g.poll() is not None:
            wait(g, f"{folder}/generate.log")
            break
        time.sleep(0.2)
    t = start(train, f"{folder}/train.log")
    wait(g, f"{folder}/generate.log")
    wait(t, f"{folder}/train.log")
    return time.monotonic() - t0


def final_record(args, name: str) -> dict:
    with open(os.path.join(REPO, args.out, name, "train", "metrics.jsonl")) as f:
        last = [line for line in f if line.strip()][-1]
    return {k: v for k, v in json.loads(last).items() if k not in TIMING}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/tiny.toml")
    p.add_argument("--out", default="runs/pipelined")
    p.add_argument("--steps", type=int, default=413, help="train.max_steps (demo: 413)")
    args = p.parse_args(argv)
    for need in ("shards/tiny/corpus/manifest.json", "runs/tiny/aux/checkpoints"):
        if not os.path.exists(os.path.join(REPO, need)):
            sys.exit(f"bench: {need} is missing: run `make demo` first")
    seq, t_gen = sequential(args)
    pipe = pipelined(args)
    print(f"steps {args.steps}, config {args.config}")
    print(f"sequential wall     {seq:8.1f} s")
    print(f"pipelined wall      {pipe:8.1f} s")
    print(f"generate alone      {t_gen:8.1f} s  (sequential run)")
    print(f"generate hidden     {(seq - pipe) / t_gen:8.1%}  (sequential - pipelined) / generate")
    a, b = final_record(args, "sequential"), final_record(args, "pipelined")
    diff = {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}
    print("final metrics       " + ("identical" if not diff else f"differ: {diff}"))


if __name__ == "__main__":
    main()
