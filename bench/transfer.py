"""Does pre-training transfer? Fine-tune and linear-probe pre-trained encoders against random
initialisation on real labelled tasks, at several pre-training budgets.

    make demo                                 # the corpus, aux, shards and 1x discriminator
    .venv/bin/python -m bench.transfer --quick          # 1x: rtd, mlm, scratch (~16 min)
    .venv/bin/python -m bench.transfer                  # 1x, 4x, 16x; every encoder
    .venv/bin/python -m bench.transfer --budgets 1,4 --encoders rtd,scratch

Encoders (each budget k multiplies the demo's updates; the demo recipe otherwise, 2 ranks):
  rtd          the discriminator on offline shards (configs/tiny.toml; 1x is the demo's run,
               413 updates on 3 of 4 epochs; kx trains 413k updates on a shard set of its own
               whose plan covers exactly those updates)
  fast-online  the same discriminator with the frozen demo aux in the loop (same curriculum)
  electra      joint ELECTRA (generator of the [aux] shape, shared embeddings)
  mlm          the auxiliary MLM itself (configs/tiny_aux.toml; 1x is the demo's aux, 150 updates)
  scratch      the discriminator's architecture from random initialisation (no budget)

Tasks: ``wordnet`` and ``fortunes`` (fast-electra finetune-data --task ...; Debian's
wordnet-base and fortunes), fine-tuned with configs/finetune/<task>.toml, seeds 0,1,2 for
every encoder (paired: a seed fixes the head's initialisation, the data order and dropout).
Linear probes (bench/transfer_probe.py) read the frozen [CLS] state, the mean token state
and the mean word embedding; the peer is a random-initialised encoder.

Every sub-run is a real command in its own process (trainer.train under torchrun,
pipeline.generate, fast-electra finetune) with its log in <out>/logs/; finished sub-runs are kept,
so an interrupted bench resumes. Writes <out>/transfer.json, transfer.md and transfer.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass

from bench.paper_runs import REPO, BenchError, Runner, read_json, run_finished
from bench.transfer_report import write_report
from trainer import checkpoint
from trainer.atomic import write_text_atomic
from trainer.cli import main_guard
from trainer.data.corpus_shards import CorpusShards
from trainer.data.manifest import ShardError
from trainer.pretrained import (
    DISCRIMINATOR_KINDS,
    GENERATOR_KINDS,
    checkpoint_config,
    read_meta,
    resolve_checkpoint,
)
from trainer.tools.cost import estimate

ENCODERS = ("rtd", "fast-online", "electra", "mlm", "scratch")
TASKS = ("wordnet", "fortunes")
DEMO = {"corpus": "shards/tiny/corpus", "aux": "runs/tiny/aux", "rtd": "runs/tiny/rtd"}


@dataclass(frozen=True)
class Plan:
    """Sizes of one bench mode."""

    budgets: tuple[int, ...]   # multiples of the 1x updates below
    encoders: tuple[str, ...]
    rtd_steps: int             # 1x updates of rtd / fast-online / electra (the demo's 413)
    mlm_steps: int             # 1x updates of the MLM (the demo aux's 150)
    batch: int                 # global batch of every pre-training run (the demo's 64)
    nproc: int                 # ranks of every pre-training run (the demo's 2)
    finetune_sets: tuple[str, ...] = ()  # --set of every fine-tuning run


PLANS = {
    "full": Plan((1, 4, 16), ENCODERS, 413, 150, 64, 2),
    "quick": Plan((1,), ("rtd", "mlm", "scratch"), 413, 150, 64, 2),
    "smoke": Plan((1, 2), ("rtd", "mlm", "scratch"), 3, 3, 8, 1, ("finetune.epochs=1",)),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.transfer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/transfer", help="output folder (resumable)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1x; rtd, mlm and scratch")
    mode.add_argument("--smoke", action="store_true", help="the tests' plan: a few updates")
    p.add_argument("--budgets", help="comma-separated multiples of the demo's updates "
                                     "(default: the plan's; full 1,4,16)")
    p.add_argument("--encoders", help=f"comma-separated subset of {', '.join(ENCODERS)}")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated real tasks")
    p.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds")
    p.add_argument("--corpus", default=DEMO["corpus"], help="prepared corpus (the demo's)")
    p.add_argument("--aux", default=DEMO["aux"],
                   help="the frozen aux (run or checkpoint; the demo's): generate and "
                        "fast-online use it, and it is the 1x mlm encoder")
    p.add_argument("--rtd", default=DEMO["rtd"],
                   help="the 1x rtd discriminator (the demo's; trained on --corpus); empty: "
                        "train it here")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="config override of every pre-training "
                   "run (e.g. the model's size)")
    p.add_argument("--jobs", type=int, default=2, help="fine-tuning runs at once")
    p.add_argument("--in-process", action="store_true",
                   help="1-process sub-runs call main(argv) here (the smoke test)")
    return p


def tokenizer_matches(corpus_a: str, corpus_b: str) -> bool:
    """Whether two prepared corpora share a tokenizer (the same folder when one is gone)."""
    if os.path.realpath(corpus_a) == os.path.realpath(corpus_b):
        return True
    try:
        shas = [CorpusShards(c).manifest["tokenizer"]["sha256"] for c in (corpus_a, corpus_b)]
    except ShardError:
        return False
    return shas[0] == shas[1]


class Transfer:
    """Paths and sub-runs of one bench folder; a finished sub-run is never started again."""

    def __init__(self, args, plan: Plan):
        self.args, self.plan = args, plan
        self.out = os.path.abspath(args.out)
        self.runner = Runner(os.path.join(self.out, "logs"), args.jobs, args.in_process)
        encoders = ("aux", *(["rtd"] if args.rtd else []))  # given as runs or checkpoints
        for flag in ("corpus", *encoders):
            if not os.path.exists(getattr(args, flag)):
                demo = " (the demo's: run `make demo` first)" \
                    if getattr(args, flag) == DEMO[flag] else ""
                raise BenchError(f"--{flag} {getattr(args, flag)} not found{demo}")
        self.corpus_dir = os.path.abspath(args.corpus)
        self.aux = os.path.abspath(resolve_checkpoint(args.aux))
        for flag in encoders:
            self.check_vocabulary(flag, resolve_checkpoint(getattr(args, flag)))
        # Beam's in-process runner: one part per epoch, which one worker writes.
        self.beam = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]

    def check_vocabulary(self, flag: str, ckpt: str) -> None:
        """Every encoder of one bench shares the vocabulary of --corpus: scratch and the kx runs
        are built on it, so a --aux or --rtd from another corpus would compare models that read
        the tasks through different tokenizers."""
        meta = read_meta(ckpt, "model", (*DISCRIMINATOR_KINDS, *GENERATOR_KINDS))
        own = os.path.join(REPO, checkpoint_config(meta).data.corpus_dir)
        if not tokenizer_matches(own, self.corpus_dir):
            raise BenchError(f"--{flag} {ckpt} was trained on the corpus {own}, whose tokenizer "
                             f"is not that of --corpus {self.corpus_dir}: pass the {flag} "
                             "trained on --corpus" + (" (or --rtd '' to train it here)"
                                                      if flag == "rtd" else ""))

    # -- tasks ---------------------------------------------------------------------------

    def task(self, name: str) -> dict:
        d = os.path.join(self.out, "tasks", name)
        if not os.path.isfile(os.path.join(d, "source.json")):
            self.runner.call(f"tasks/{name}", "trainer.tools.finetune.demo_tasks",
                             [d, "--task", name])
        return {"name": name, "config": os.path.join(REPO, "configs", "finetune",
                                                     f"{name}.toml"),
                "train": os.path.join(d, "train.tsv"), "dev": os.path.join(d, "dev.tsv")}

    # -- pre-training --------------------------------------------------------------------

    def steps(self, encoder: str, k: int) -> int:
        return (self.plan.mlm_steps if encoder == "mlm" else self.plan.rtd_steps) * k

    def epochs_for(self, steps: int) -> int:
        """Epochs of a data plan that a run of ``steps`` updates reads to its end."""
        return math.ceil(steps * self.plan.batch / CorpusShards(self.corpus_dir).num_sequences)

    def common_sets(self) -> list[str]:
        c = CorpusShards(self.corpus_dir)
        return [f"data.corpus_dir={self.corpus_dir}", f"data.max_seq_len={c.max_seq_len}",
                f"tokenizer.vocab_size={c.vocab_size}", f"generate.aux_checkpoint={self.aux}",
                *self.args.overrides]

    def train(self, name: str, config: str, steps: int, sets: list[str]) -> str:
        """One trainer.train run in <out>/runs/<name>; skipped when finished."""
        out_dir = os.path.join(self.out, "runs", name)
        if not run_finished(out_dir, steps):
            per_rank = self.plan.batch // self.plan.nproc
            argv = ["--config", os.path.join(REPO, config)]
            for s in [*self.common_sets(), f"train.max_steps={steps}",
                      f"train.warmup_steps={steps // 10}", f"train.checkpoint_every={steps}",
                      f"train.eval_every={steps}", f"train.log_every={max(1, steps // 20)}",
                      f"train.global_batch_size={self.plan.batch}",
                      f"train.micro_batch_size_per_rank={per_rank}", "train.grad_accum=0",
                      "train.keep_checkpoints=1", f"train.out_dir={out_dir}",
                      "train.resume=auto", *sets]:
                argv += ["--set", s]
            self.runner.call(f"train/{name}", "trainer.train", argv, nproc=self.plan.nproc)
        return checkpoint.find_latest(out_dir)

    def shards(self, k: int) -> str:
        """An rtd shard set for budget k whose plan is exactly the run's updates."""
        rtd_dir = os.path.join(self.out, "shards", f"x{k}")
        if not os.path.isfile(os.path.join(rtd_dir, "manifest.json")):
            argv = ["--config", os.path.join(REPO, "configs", "tiny.toml"), "--overwrite"]
            steps = self.steps("rtd", k)
            # The run the set serves, so that generate's sizing check reads the right plan.
            for s in (*self.common_sets(), f"generate.rtd_dir={rtd_dir}",
                      f"generate.epochs={self.epochs_for(steps)}", f"train.max_steps={steps}",
                      f"train.global_batch_size={self.plan.batch}",
                      f"train.micro_batch_size_per_rank={self.plan.batch}",
                      "train.grad_accum=0", "train.warmup_steps=0", "train.eval_every=0"):
                argv += ["--set", s]
            self.runner.call(f"generate/x{k}", "pipeline.generate", [*argv, *self.beam])
        return rtd_dir

    def pretrain(self, encoder: str, k: int) -> str:
        """The checkpoint folder of ``encoder`` at budget k (scratch: the rtd architecture)."""
        if encoder == "scratch":  # the 1x rtd run, whatever the budgets: one scratch row
            return self.pretrain("rtd", 1)
        steps = self.steps(encoder, k)
        if k == 1 and encoder == "mlm":
            return self.aux
        if k == 1 and encoder == "rtd" and self.args.rtd:
            return os.path.abspath(resolve_checkpoint(self.args.rtd))
        if encoder == "mlm":
            return self.train(f"mlm-x{k}", "configs/tiny_aux.toml", steps, [])
        plan = [f"generate.epochs={self.epochs_for(steps)}"]
        done = os.path.join(self.out, "runs", f"{encoder}-x{k}")
        if run_finished(done, steps):  # its shard set may be gone: a finished run needs none
            return checkpoint.find_latest(done)
        if encoder == "rtd":
            return self.train(f"rtd-x{k}", "configs/tiny.toml", steps,
                              [f"train.rtd_dir={self.shards(k)}", *plan])
        return self.train(f"{encoder}-x{k}", "configs/tiny.toml", steps,
                          [f"train.mode={encoder}", *plan])

    # -- downstream ----------------------------------------------------------------------

    def finetune(self, name: str, ckpt: str, scratch: bool, task: dict, seed: int) -> dict:
        out_dir = os.path.join(self.out, "finetune", task["name"], name, f"seed{seed}")
        done = os.path.join(out_dir, "results.json")
        if not os.path.isfile(done):
            argv = ["--checkpoint", ckpt, "--task", task["config"], "--train", task["train"],
                    "--dev", task["dev"], "--out-dir", out_dir, "--set", f"finetune.seed={seed}"]
            for s in self.plan.finetune_sets:
                argv += ["--set", s]
            self.runner.call(f"finetune/{task['name']}/{name}/seed{seed}",
                             "trainer.tools.finetune.run",
                             [*argv, *(["--from-scratch"] if scratch else [])])
        return read_json(done)

    def probe(self, name: str, ckpt: str, random_init: bool, task: dict) -> dict:
        path = os.path.join(self.out, "probe", task["name"], f"{name}.json")
        if not os.path.isfile(path):
            self.runner.call(f"probe/{task['name']}/{name}", "bench.transfer_probe",
                             ["--checkpoint", ckpt, "--task", task["config"], "--train",
                              task["train"], "--dev", task["dev"], "--json", path,
                              *(["--random-init"] if random_init else [])])
        return read_json(path)


def pretraining_gflops(encoder: str, steps: int, batch: int, ckpt: str) -> float:
    """Pre-training compute, fast-electra cost's conventions (per sequence at full length, backward
    = 2 x forward) x sequences: rtd the offline design, fast-online fast_masked_head, electra
    joint; mlm the aux's share of the joint design (its forward and backward)."""
    est = estimate(checkpoint_config(read_meta(ckpt, "model",
                                               (*DISCRIMINATOR_KINDS, *GENERATOR_KINDS))))
    per_seq = {"rtd": est["offline"]["total_gflops"],
               "fast-online": est["fast_masked_head"]["total_gflops"],
               "electra": est["joint"]["total_gflops"],
               "mlm": est["joint"]["aux_gflops"]}[encoder]
    return per_seq * batch * steps


def summary(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values),
            "values": values}


def run(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.budgets:
        plan = dataclasses.replace(plan, budgets=tuple(int(b) for b in args.budgets.split(",")))
    if args.encoders:
        plan = dataclasses.replace(plan, encoders=tuple(args.encoders.split(",")))
    bad = sorted(set(plan.encoders) - set(ENCODERS))
    if bad or min(plan.budgets) < 1:
        raise BenchError(f"--encoders takes {', '.join(ENCODERS)} (got {', '.join(bad)}); "
                         f"--budgets positive integers (got {plan.budgets})")
    seeds = [int(s) for s in args.seeds.split(",")]
    bench = Transfer(args, plan)
    tasks = [bench.task(t) for t in args.tasks.split(",")]
    points = [(e, k) for k in plan.budgets for e in plan.encoders if e != "scratch"]
    points += [("scratch", 0)] if "scratch" in plan.encoders else []
    ckpts = {}  # pre-training first, one run at a time: each takes every core
    for encoder, k in points:
        name = "scratch" if encoder == "scratch" else f"{encoder}-x{k}"
        ckpts[name] = (encoder, k, bench.pretrain(encoder, k))
    results: dict = {"plan": dataclasses.asdict(plan), "seeds": seeds, "tasks": {}}
    for task in tasks:
        jobs = [(name, seed) for name in ckpts for seed in seeds]
        runs = bench.runner.parallel([
            (lambda n=name, s=seed: bench.finetune(n, ckpts[n][2], n == "scratch", task, s))
            for name, seed in jobs])
        rows = {}
        for name, (encoder, k, ckpt) in ckpts.items():
            mine = [r for (n, _), r in zip(jobs, runs, strict=True) if n == name]
            rows[name] = {
                "encoder": encoder, "budget": k, "checkpoint": ckpt,
                "updates": 0 if encoder == "scratch" else bench.steps(encoder, k),
                "gflops": 0.0 if encoder == "scratch" else pretraining_gflops(
                    encoder, bench.steps(encoder, k), plan.batch, ckpt),
                "finetune": summary([r["final"]["dev_accuracy"] for r in mine]),
                "train_loss": summary([r["final"]["train_loss"] for r in mine]),
                # scratch's features are a random-initialised encoder's (the probe's peer)
                "probe": bench.probe("random-init" if encoder == "scratch" else name, ckpt,
                                     encoder == "scratch", task)}
        if "scratch" in rows:
            base = rows["scratch"]["finetune"]["values"]
            for row in rows.values():
                if "finetune" in row and row["encoder"] != "scratch":
                    row["vs_scratch"] = summary([a - b for a, b in zip(
                        row["finetune"]["values"], base, strict=True)])
        results["tasks"][task["name"]] = rows
    results["sub_runs_started"] = list(bench.runner.started)
    write_text_atomic(os.path.join(bench.out, "transfer.json"),
                      json.dumps(results, indent=1) + "\n")
    write_report(results, bench.out)
    print(f"bench.transfer: {len(bench.runner.started)} sub-run(s) started; "
          f"{bench.out}/transfer.md", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    return main_guard(run, argv)


if __name__ == "__main__":
    sys.exit(main())
