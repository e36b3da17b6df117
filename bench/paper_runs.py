"""The machinery of ``python -m bench.paper``: the size plan, sub-run launching, and the shared
setup (corpus, frozen aux, RTD shard set, fine-tuning task) every row reads.

Every sub-run is a real entry point (``pipeline.prepare``, ``pipeline.generate``,
``trainer.train``, ``fast-electra finetune``, ...), started as its own process (``--in-process``
calls its ``main(argv)`` instead: the smoke test uses it to stay fast), with its log in
``<out>/logs/``. A sub-run whose output is complete is not started again, so an interrupted
bench resumes where it stopped; the wall-clock seconds of each finished sub-run are kept
beside its output (``bench_wall.json``) for the rows that compare times.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from trainer import checkpoint
from trainer.atomic import write_text_atomic
from trainer.config.load import load_config, parse_override, toml_value
from trainer.data.corpus_shards import CorpusShards
from trainer.errors import UserError
from trainer.tools.evaluate import write_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WALL = "bench_wall.json"


class BenchError(UserError):
    """A sub-run failed or the output folder belongs to another bench; the message says which."""


@dataclass(frozen=True)
class Plan:
    """Sizes of one bench mode. Every row uses these; nothing is tuned per row."""

    mode: str
    steps: int           # updates of every quality run (discriminator or joint)
    batch: int           # sequences per update, every run (1 process, no accumulation)
    seeds: int           # fine-tuning seeds per discriminator (and for --from-scratch)
    cost_reps: int       # interleaved repetitions of the cost row (A B C ... A B C ...)
    cost_steps: int      # steps per cost measurement (the first is not timed)
    sweep_steps: int     # steps of each run of the shard-reuse row
    sweep_points: int    # lrs of that row's sweep (and as many fast-online runs)
    aux_steps: int       # 0 = the aux config's own train.max_steps
    ft_train: int        # examples of the default (corpus-built) task
    ft_dev: int
    fair_sequences: int  # sequences of the fair T = 1 set each discriminator is scored on
    eval_every: int      # trainer's own held-out evaluation interval


PLANS = {
    "full": Plan("full", steps=600, batch=32, seeds=3, cost_reps=5, cost_steps=6,
                 sweep_steps=150, sweep_points=4, aux_steps=0, ft_train=1000, ft_dev=400,
                 fair_sequences=2048, eval_every=100),
    "quick": Plan("quick", steps=32, batch=32, seeds=1, cost_reps=3, cost_steps=3,
                  sweep_steps=16, sweep_points=4, aux_steps=60, ft_train=200, ft_dev=100,
                  fair_sequences=512, eval_every=16),
    "smoke": Plan("smoke", steps=4, batch=4, seeds=1, cost_reps=1, cost_steps=2,
                  sweep_steps=2, sweep_points=2, aux_steps=2, ft_train=24, ft_dev=12,
                  fair_sequences=16, eval_every=4),
}

# Bench-wide model choices (README-worthy, in docs/paper.md): early-exit needs >= 2 generator
# exits, so every generator and the frozen aux get 2 layers (the paper's aux and ELECTRA's
# generator are one size: Table 2), exits at both.
BENCH_KEYS = {"aux": {"num_layers": 2}, "joint": {"exit_layers": [1, 2]}}


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def wall_seconds(out_dir: str) -> float | None:
    path = os.path.join(out_dir, WALL)
    return read_json(path)["seconds"] if os.path.isfile(path) else None


def record_wall(out_dir: str, seconds: float) -> None:
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, WALL), {"seconds": seconds})


def run_finished(out_dir: str, max_steps: int) -> bool:
    steps = checkpoint.list_steps(out_dir)
    return bool(steps) and steps[-1] >= max_steps


class Runner:
    """Starts sub-runs (a process each, or main(argv) in this process) and counts them."""

    def __init__(self, log_dir: str, jobs: int, in_process: bool):
        self.log_dir, self.in_process = log_dir, in_process
        self.jobs = 1 if in_process else max(1, jobs)
        self.started: list[str] = []
        self._lock = threading.Lock()
        os.makedirs(log_dir, exist_ok=True)

    def call(self, name: str, module: str, argv: list[str], nproc: int = 1) -> float:
        """Run ``module``'s command line; its wall-clock seconds. Raises BenchError on failure."""
        log = os.path.join(self.log_dir, name.replace("/", "_") + ".log")
        with self._lock:
            self.started.append(name)
        print(f"  run {name}", flush=True)
        start = time.perf_counter()
        if self.in_process and nproc == 1:
            with open(log, "w") as f, contextlib.redirect_stdout(f), \
                    contextlib.redirect_stderr(f):
                rc = importlib.import_module(module).main(argv)
        else:
            launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                         "--nproc_per_node", str(nproc)] if nproc > 1 else [sys.executable])
            env = dict(os.environ, OMP_NUM_THREADS="1",
                       PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
            with open(log, "w") as f:
                rc = subprocess.run([*launcher, "-m", module, *argv], cwd=REPO, env=env,
                                    stdout=f, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - start
        if rc:
            with open(log) as f:
                tail = f.read()[-2000:]
            raise BenchError(f"{name}: python -m {module} failed (exit {rc}); log {log}:\n"
                             f"{tail}\nFix the cause and re-run: finished sub-runs are kept")
        return seconds

    def parallel(self, thunks: list) -> list:
        """Call every thunk, ``jobs`` at a time; results in order; the first error is raised."""
        if self.jobs == 1 or len(thunks) <= 1:
            return [t() for t in thunks]
        with ThreadPoolExecutor(self.jobs) as pool:
            futures = [pool.submit(t) for t in thunks]
            return [f.result() for f in futures]


class Bench:
    """Paths, the base config and the sub-run helpers shared by the rows."""

    def __init__(self, args, plan: Plan):
        self.args, self.plan = args, plan
        self.out = os.path.abspath(args.out)
        self.runner = Runner(os.path.join(self.out, "logs"), args.jobs, args.in_process)
        self.config = os.path.join(self.out, "bench_config.toml")
        self.corpus_dir = os.path.abspath(args.corpus) if args.corpus \
            else os.path.join(self.out, "corpus")
        self.aux_run = os.path.join(self.out, "aux")
        self.rtd_dir = os.path.join(self.out, "shards", "rtd")
        self.fair_root = os.path.join(self.out, "shards", "fair")
        # Beam's in-process runner: the bench's sets are one part per epoch, which one worker
        # writes; the multi-process runner only added ~1 min of start-up per job here.
        self.beam = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]

    # -- setup ---------------------------------------------------------------------------

    def write_config(self) -> None:
        """The base config every sub-run reads: --config extended by BENCH_KEYS and --set."""
        tables = {s: dict(v) for s, v in BENCH_KEYS.items()}
        for text in self.args.overrides:
            section, key, value = parse_override(text)
            tables.setdefault(section, {})[key] = value
        lines = [f"extends = {toml_value(os.path.abspath(self.args.config))}", ""]
        for section, values in tables.items():
            lines += [f"[{section}]", *(f"{k} = {toml_value(v)}" for k, v in values.items()), ""]
        os.makedirs(self.out, exist_ok=True)
        write_text_atomic(self.config, "\n".join(lines))

    def prepare_corpus(self) -> None:
        if os.path.isfile(os.path.join(self.corpus_dir, "manifest.json")):
            return
        if self.args.corpus:
            raise BenchError(f"--corpus {self.args.corpus}: no manifest.json there; give a "
                             "folder written by python -m pipeline.prepare")
        self.runner.call("setup/prepare", "pipeline.prepare",
                         ["--config", self.config, "--set", f"data.corpus_dir={self.corpus_dir}",
                          *self.beam])

    def corpus(self) -> CorpusShards:
        return CorpusShards(self.corpus_dir)

    def data_sets(self) -> list[str]:
        c = self.corpus()
        return [f"data.corpus_dir={self.corpus_dir}", f"data.max_seq_len={c.max_seq_len}",
                f"tokenizer.vocab_size={c.vocab_size}"]

    @property
    def epochs(self) -> int:
        """Epochs of the data plan: enough for the longest run (the equal wall-clock rtd run
        may take up to 3x the steps of electra's), at least 1."""
        n = self.corpus().num_sequences
        return max(1, math.ceil(3 * self.plan.steps * self.plan.batch / n))

    @property
    def tau(self) -> float:
        """The paper's tau = 0.1 is a fraction of training (Eq. 2: u = updates done / all). Our
        data plan (u = sample / all generated samples) holds more samples than a quality run
        reads, so tau is scaled by the share one run reads: the schedule then has the
        paper's shape over the run's own updates."""
        n = self.corpus().num_sequences
        return 0.1 * self.plan.steps * self.plan.batch / (self.epochs * n)

    def plan_sets(self) -> list[str]:
        """The data plan (and curriculum) shared by the shard set and every fast-online run."""
        return [f"generate.epochs={self.epochs}", f"corruption.tau={self.tau:.6g}",
                "corruption.t0=2.0"]

    def aux_checkpoint(self) -> str:
        return checkpoint.find_latest(self.aux_run) or ""

    def train_aux(self) -> None:
        steps = self.plan.aux_steps
        sets = [*self.data_sets(), f"train.out_dir={self.aux_run}", "train.resume=auto"]
        if steps:  # fewer steps than the recipe's; warm-up as its share (30 of 150)
            sets += [f"train.max_steps={steps}", f"train.warmup_steps={steps // 5}",
                     f"train.checkpoint_every={steps}", f"train.eval_every={steps}"]
        if self.plan.mode == "smoke":
            sets += [f"train.micro_batch_size_per_rank={self.plan.batch}",
                     f"train.global_batch_size={self.plan.batch}", "train.grad_accum=0"]
        sets = [f"aux.num_layers={BENCH_KEYS['aux']['num_layers']}", *self.args.overrides, *sets]
        if run_finished(self.aux_run, load_config(self.args.aux_config, sets).train.max_steps):
            return
        argv = ["--config", self.args.aux_config]
        for s in sets:
            argv += ["--set", s]
        # The demo's recipe: 2 ranks (gloo) on CPU; one process in the smoke test.
        self.runner.call("setup/aux", "trainer.train", argv,
                         nproc=1 if self.args.in_process else 2)

    def generate_shards(self) -> None:
        if os.path.isfile(os.path.join(self.rtd_dir, "manifest.json")):
            return
        argv = ["--config", self.config]
        # The longest run the set serves (see epochs), for generate's sizing check.
        longest = [f"train.max_steps={3 * self.plan.steps}",
                   f"train.global_batch_size={self.plan.batch}",
                   f"train.micro_batch_size_per_rank={self.plan.batch}", "train.grad_accum=0",
                   "train.warmup_steps=0", "train.eval_every=0"]
        for s in [*self.data_sets(), *self.plan_sets(), *longest,
                  f"generate.aux_checkpoint={self.aux_checkpoint()}",
                  f"generate.rtd_dir={self.rtd_dir}"]:
            argv += ["--set", s]
        seconds = self.runner.call("setup/generate", "pipeline.generate",
                                   [*argv, "--overwrite", *self.beam])
        record_wall(self.rtd_dir + "-wall", seconds)

    def generate_seconds(self) -> float | None:
        return wall_seconds(self.rtd_dir + "-wall")

    def make_task(self) -> dict:
        """The labelled task: the user's files, or the corpus continuation task."""
        a = self.args
        if a.task:
            return {"task": os.path.abspath(a.task), "train": os.path.abspath(a.train),
                    "dev": os.path.abspath(a.dev), "built": False}
        d = os.path.join(self.out, "task")
        train, dev = os.path.join(d, "train.tsv"), os.path.join(d, "dev.tsv")
        if not os.path.isfile(dev):
            self.runner.call("setup/task", "trainer.tools.finetune.demo_tasks",
                             [self.corpus_dir, d, "--task", a.demo_task,
                              "--train", str(self.plan.ft_train), "--dev", str(self.plan.ft_dev)])
        task = {"continuation": "demo.toml", "order": "demo_order.toml"}[a.demo_task]
        return {"task": os.path.join(REPO, "configs", "finetune", task), "train": train,
                "dev": dev, "built": True, "kind": a.demo_task}

    # -- sub-runs ------------------------------------------------------------------------

    def train_sets(self, steps: int | None = None, checkpoints: int = 1) -> list[str]:
        p = self.plan
        steps = steps or p.steps
        every = max(1, steps // checkpoints)
        return [*self.data_sets(), f"train.max_steps={steps}",
                f"train.warmup_steps={max(0, steps // 10)}",
                f"train.micro_batch_size_per_rank={p.batch}", f"train.global_batch_size={p.batch}",
                "train.grad_accum=0", f"train.log_every={max(1, min(steps // 12, 20))}",
                f"train.checkpoint_every={every}", f"train.keep_checkpoints={checkpoints + 1}",
                f"train.eval_every={p.eval_every}", f"train.eval_sequences={16 * p.batch}",
                f"train.rtd_dir={self.rtd_dir}",
                f"generate.aux_checkpoint={self.aux_checkpoint()}", *self.plan_sets()]

    def train(self, name: str, sets: list[str], steps: int | None = None,
              checkpoints: int = 1) -> dict:
        """One trainer.train run in <out>/runs/<name>; skipped when finished. Returns its
        folder and wall-clock seconds (of the invocation that finished it)."""
        out_dir = os.path.join(self.out, "runs", name)
        steps = steps or self.plan.steps
        if not run_finished(out_dir, steps):
            argv = ["--config", self.config]
            for s in [*self.train_sets(steps, checkpoints), *sets,
                      f"train.out_dir={out_dir}", "train.resume=auto"]:
                argv += ["--set", s]
            record_wall(out_dir, self.runner.call(f"train/{name}", "trainer.train", argv))
        return {"dir": out_dir, "seconds": wall_seconds(out_dir)}

    def finetune(self, checkpoint_dir: str | None, seed: int, task: dict, name: str) -> dict:
        """fast-electra finetune of one checkpoint (None: --from-scratch of the bench's
        architecture) with one seed; its results.json."""
        out_dir = os.path.join(self.out, "finetune", name, f"seed{seed}")
        done = os.path.join(out_dir, "results.json")
        if not os.path.isfile(done):
            argv = ["--task", task["task"], "--train", task["train"], "--dev", task["dev"],
                    "--out-dir", out_dir, "--set", f"finetune.seed={seed}"]
            if checkpoint_dir is None:
                argv += ["--checkpoint", self.scratch_architecture(), "--from-scratch"]
            else:
                argv += ["--checkpoint", checkpoint_dir]
            self.runner.call(f"finetune/{name}/seed{seed}", "trainer.tools.finetune.run", argv)
        return read_json(done)

    def scratch_architecture(self) -> str:
        """--from-scratch needs a checkpoint only for its architecture and tokenizer: the
        offline (rtd) discriminator of the curriculum row, trained first."""
        return os.path.join(self.out, "runs", "curriculum-exponential")

    def fair_eval(self, name: str, checkpoints: list[str]) -> list[dict]:
        """pipeline.fair_eval of the checkpoint folders on one T = 1 set made by the frozen
        aux; their overall RTD metrics (ordinary tokens), in order."""
        out_json = os.path.join(self.out, "fair", f"{name}.json")
        if not os.path.isfile(out_json):
            argv = ["--config", self.config, "--generator", self.aux_checkpoint(),
                    "--out-dir", self.fair_root, "--max-sequences", str(self.plan.fair_sequences),
                    "--json", out_json]
            for s in self.data_sets():
                argv += ["--set", s]
            for c in checkpoints:
                argv += ["--checkpoint", c]
            self.runner.call(f"fair/{name}", "pipeline.fair_eval", [*argv, *self.beam])
        return [r["rtd"]["all"] for r in read_json(out_json)["results"]]

    def settings(self) -> dict:
        a = self.args
        return {"plan": asdict(self.plan), "config": os.path.abspath(a.config),
                "aux_config": os.path.abspath(a.aux_config), "overrides": list(a.overrides),
                "corpus": self.corpus_dir, "task": a.task or f"corpus {a.demo_task} task",
                "bench_keys": BENCH_KEYS}
