"""The trainer: one loop for every mode, launched with torchrun (DDP) or as one process.

    torchrun --nproc_per_node 2 -m trainer.train --config configs/tiny.toml --set train.mode=mlm
    fast-electra train --config configs/tiny.toml --set train.mode=mlm           # 1 process
    torchrun ... -m trainer.train --config C --resume           # = --set train.resume=auto

train.micro_batch_size_per_rank * grad_accum * world size must equal train.global_batch_size
(train.grad_accum = 0 derives grad_accum from the world size): the data order is defined per
global batch, so any world size sees the same samples at each step. Rank 0 writes
``config.toml``, ``metrics.jsonl`` and the checkpoints (``trainer.checkpoint``) into
train.out_dir. A non-finite loss or gradient stops the run with a message; the last
checkpoint stays intact.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from trainer import checkpoint, distributed
from trainer.cli import config_parser, main_guard, resolve_config
from trainer.config.load import to_dict, to_toml
from trainer.config.run import RunConfig
from trainer.data.padding import bucket_batch, num_buckets
from trainer.data.prefetch import Prefetcher
from trainer.errors import UserError
from trainer.logger import MetricsLog, peak_memory_gb
from trainer.modes.base import Task
from trainer.modes.registry import build_task
from trainer.optim import Optimized, build_optimized
from trainer.resume import ResumeError, check_resume_config, resolve_resume
from trainer.step import (
    StepOutput,
    StepSetup,
    Sums,
    autocast_context,
    dropout_seed,
    train_step,
)


class TrainingError(UserError):
    """The run cannot go on (a non-finite loss or gradient)."""


def grad_accum_steps(cfg: RunConfig, world_size: int) -> int:
    """train.grad_accum, or the value that makes the global batch when it is 0; raises when
    micro-batch x grad_accum x world size cannot equal train.global_batch_size."""
    t = cfg.train
    per_rank = t.micro_batch_size_per_rank * world_size
    if t.grad_accum == 0 and t.global_batch_size % per_rank == 0:
        return t.global_batch_size // per_rank
    if per_rank * t.grad_accum == t.global_batch_size:
        return t.grad_accum
    hint = (f"with {world_size} process(es) set train.grad_accum = "
            f"{t.global_batch_size // per_rank} (or 0)" if t.global_batch_size % per_rank == 0
            else f"{t.global_batch_size} is not divisible by micro_batch_size_per_rank x world "
                 f"size = {per_rank}: change one of them")
    raise UserError(f"train.global_batch_size = {t.global_batch_size}, but "
                    f"micro_batch_size_per_rank ({t.micro_batch_size_per_rank}) x grad_accum "
                    f"({t.grad_accum or 'auto'}) x world size ({world_size}) cannot make it; "
                    + hint)


def compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process so far (first compiles and
    recompiles alike): the counter dynamo keeps in torch 2.x."""
    from torch._dynamo.utils import counters  # here: importing dynamo costs ~1 s at start

    return counters["stats"]["unique_graphs"]


def compile_blocks(model: torch.nn.Module, cfg: RunConfig) -> None:
    """Compile every Transformer block of ``model`` in place, with static shapes.

    Per block, as torchtitan does, not the whole model: the blocks hold nearly all the
    FLOPs and only dense ops on (B, T, H), while the heads and modes index by data-dependent
    masks (MLM positions, sampled replacements) whose sizes change every batch and would
    break the graph or recompile. The blocks share one code object, so equal shapes reuse one
    graph across layers. ``dynamic=False``: a new length compiles a new specialised graph
    instead of one symbolic-shape graph, and the batch buckets (train.compile_pad_multiple)
    bound the lengths. In place (``Module.compile``), so state_dict keys stay as they are and
    checkpoints load either way. Called before DDP wraps the model: DDP's gradient hooks sit
    on the parameters, outside the compiled regions, and dynamo never traces the DDP module,
    so torch._dynamo.config.optimize_ddp (graph splitting at DDP bucket boundaries) does not
    come into play and the all-reduce overlaps the backward block by block as in eager.
    """
    t = cfg.train
    if t.compile_pad_multiple:
        # Graphs per code object: buckets x (encoders of distinct widths, e.g. generator and
        # discriminator) x dropout rates; past the limit dynamo would silently run eager.
        import torch._dynamo.config as dyn
        name = "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit"
        setattr(dyn, name, max(getattr(dyn, name),
                               4 * num_buckets(t.compile_pad_multiple, cfg.data.max_seq_len)))
    for m in model.modules():
        blocks = getattr(m, "blocks", None)  # every encoder keeps its layers in .blocks
        if isinstance(blocks, torch.nn.ModuleList):
            for block in blocks:
                block.compile(dynamic=False)


def evaluate(task: Task, model: torch.nn.Module, d: distributed.Dist, precision: str) -> dict:
    model.eval()
    with torch.inference_mode(), autocast_context(d.device, precision):
        sums = task.evaluate(model, d)
    model.train()
    keys = sorted(sums)
    if not keys:  # the task has no held-out data
        return {}
    total = distributed.all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64),
                                       d)
    return task.eval_metrics(dict(zip(keys, total.tolist(), strict=True)))


@dataclass
class Run:
    """One run as the loop holds it: built by ``build``, stepped by ``train_step``."""
    cfg: RunConfig
    d: distributed.Dist
    task: Task
    model: torch.nn.Module  # the task's model, unwrapped: what checkpoints hold
    setup: StepSetup        # setup.model is the DDP wrapper when distributed
    after_step: Callable[[int, Sums, distributed.Dist], None]  # the task's hook
    graphs_at_start: int    # compiled_graphs() before this run compiled anything


@dataclass
class Interval:
    """What the next log record sums: device tensors until it is written (no host sync)."""
    sums: Sums = field(default_factory=dict)
    steps: int = 0
    start: float = field(default_factory=time.perf_counter)
    evaluation: dict[str, float] = field(default_factory=dict)

    def add(self, out: StepOutput, parts: list[Optimized]) -> None:
        # Micro-batch by micro-batch, then the norms: the order fixes the float sums.
        for sums in out.micro_sums:
            for k, v in sums.items():
                self.sums[k] = self.sums.get(k, 0.0) + v
        for part, norm in zip(parts, out.grad_norms, strict=True):
            key = "grad_norm_sum" if len(parts) == 1 else f"grad_norm_{part.name}_sum"
            self.sums[key] = self.sums.get(key, 0.0) + norm.detach()
        self.steps += 1


def build(cfg: RunConfig, d: distributed.Dist, accum: int) -> Run:
    """The task and its model on the device (compiled, DDP-wrapped), one AdamW + schedule per
    optimized part, and this rank's dropout stream."""
    t = cfg.train
    torch.manual_seed(t.seed)  # identical initial weights on every rank
    task = build_task(cfg, d)
    model = task.model.to(d.device)
    graphs_at_start = compiled_graphs() if t.compile else 0
    if t.compile:
        compile_blocks(model, cfg)
    wrapped = DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None) \
        if d.enabled else model
    parts = build_optimized(task.optimized(model), t)  # [(name, module, peak lr)]
    torch.manual_seed(dropout_seed(t.seed, d.rank))
    setup = StepSetup(wrapped, parts, accum, t.clip_grad_norm, t.precision, d.device, d.enabled)
    return Run(cfg, d, task, model, setup, task.after_step, graphs_at_start)


def resume(run: Run, path: str) -> int:
    """Load the checkpoint at ``path`` (weights, optimizers, schedules, RNG) into ``run``;
    -> the step it was saved at."""
    cfg, d, task = run.cfg, run.d, run.task
    state, meta, rng = checkpoint.load(path, d.rank)
    for key in check_resume_config(meta["config"], cfg):
        if d.is_main:
            print(f"train: note: {key} differs from the checkpoint's config")
    if meta["data_fingerprint"] != task.data_fingerprint:
        # In full: fast-online's fingerprints share their corpus part and differ after it.
        raise ResumeError(f"cannot resume from {path}: it was trained on data with "
                            f"fingerprint {meta['data_fingerprint']}, this config reads data "
                            f"with fingerprint {task.data_fingerprint} (a different shard "
                            "set, corpus or data plan). Point the config at the data the "
                            "checkpoint was trained on, or start a new train.out_dir")
    run.model.load_state_dict(state["model"])
    for part, o, sc in zip(run.setup.parts, state["optimizers"], state["schedulers"],
                           strict=True):
        part.optimizer.load_state_dict(o)
        part.scheduler.load_state_dict(sc)
    if rng is not None:
        checkpoint.set_rng_state(rng)
    if d.is_main:
        print(f"train: resumed from {path} at step {meta['step']}", flush=True)
    return meta["step"]


def open_log(run: Run, start: int) -> MetricsLog | None:
    """Rank 0: config.toml and the metrics log of train.out_dir; None on the other ranks."""
    t = run.cfg.train
    if not run.d.is_main:
        return None
    os.makedirs(t.out_dir, exist_ok=True)
    with open(os.path.join(t.out_dir, "config.toml"), "w") as f:
        f.write(to_toml(run.cfg))
    return MetricsLog(t.out_dir, t.max_steps, start, tensorboard=t.tensorboard)


def save_checkpoint(run: Run, step: int) -> None:
    t, d, parts = run.cfg.train, run.d, run.setup.parts
    state = {"model": run.model.state_dict(),
             "optimizers": [p.optimizer.state_dict() for p in parts],
             "schedulers": [p.scheduler.state_dict() for p in parts]}
    meta = {"step": step, "samples_seen": step * t.global_batch_size, "mode": t.mode,
            "world_size": d.world_size, "config": to_dict(run.cfg),
            "data_fingerprint": run.task.data_fingerprint, "model_kind": run.task.model_kind}
    checkpoint.save(t.out_dir, step, state, meta,
                    checkpoint.SaveContext(d.rank, t.keep_checkpoints,
                                           lambda: distributed.barrier(d)))


def check_finite(run: Run, done: int, out: StepOutput) -> None:
    """train_step's guard: stop before the update of step ``done`` when any rank's loss or
    gradient norm is not finite. One host sync per optimizer step: the price of never
    applying (or checkpointing) a non-finite update."""
    finite = torch.isfinite(out.loss) and all(torch.isfinite(n) for n in out.grad_norms)
    bad = torch.tensor([0.0 if finite else 1.0], dtype=torch.float64)
    if distributed.all_reduce_sum(bad, run.d).item() > 0:
        last = checkpoint.find_latest(run.cfg.train.out_dir)
        raise TrainingError(
            f"non-finite loss or gradient at step {done} (loss {out.loss.item()}, grad "
            f"norm {out.grad_norms[0].item()}); stopped without updating. Last good "
            f"checkpoint: {last or 'none'}. Lower train.lr, raise train.warmup_steps, or "
            "check the data")


def log_record(run: Run, interval: Interval, done: int) -> dict:
    """The metrics.jsonl record of the interval ending at step ``done``: its sums over ranks
    (the one host sync of the interval) turned into means and the task's metrics."""
    t, d, task, parts = run.cfg.train, run.d, run.task, run.setup.parts
    keys = sorted(interval.sums)
    totals = distributed.all_reduce_sum(
        torch.tensor([float(interval.sums[k]) for k in keys], dtype=torch.float64), d)
    sums = dict(zip(keys, totals.tolist(), strict=True))
    seconds = time.perf_counter() - interval.start
    return {
        "step": done,
        "epoch": done * t.global_batch_size / task.samples_per_epoch,
        "loss": sums["loss_sum"] / sums["micro_batches"],
        "lr": parts[0].scheduler.get_last_lr()[0],
        **{k.removesuffix("_sum"): v / d.world_size / interval.steps
           for k, v in sums.items() if k.startswith("grad_norm")},
        **{f"lr_{p.name}": p.scheduler.get_last_lr()[0] for p in parts[1:]},
        "tokens_per_s": sums["tokens"] / seconds,
        "seconds_per_step": seconds / interval.steps,
        "peak_memory_gb": peak_memory_gb(d.device),
        **({"compiled_graphs": compiled_graphs() - run.graphs_at_start} if t.compile else {}),
        **task.train_metrics(sums), **interval.evaluation,
    }


def evaluate_eagerly(run: Run) -> dict:
    # Eager: held-out batches keep their own lengths (and a short last batch), each of which
    # would otherwise compile a graph for a rare pass.
    t = run.cfg.train
    with torch.compiler.set_stance("force_eager") if t.compile else contextlib.nullcontext():
        return evaluate(run.task, run.setup.model, run.d, t.precision)


def make_batch(run: Run, step: int, micro: int) -> dict[str, torch.Tensor]:
    """Micro-batch ``micro`` of step ``step`` on the host (the prefetch thread builds it)."""
    t = run.cfg.train
    batch = run.task.micro_batch(step, micro, run.d)
    if t.compile:  # a fixed set of lengths: one compiled graph each
        batch = bucket_batch(batch, t.compile_pad_multiple, run.cfg.data.max_seq_len)
    return batch


def device_batches(run: Run, prefetch: Prefetcher) -> Iterator[dict[str, torch.Tensor]]:
    """One step's micro-batches, each moved to the device as the step reaches it."""
    for _ in range(run.setup.accum):
        yield {k: v.to(run.d.device, non_blocking=True) for k, v in prefetch.get().items()}


def due(done: int, every: int, max_steps: int) -> bool:
    """Whether a thing done every ``every`` steps (0: never) and at the end is due."""
    return every > 0 and (done % every == 0 or done == max_steps)


def train(cfg: RunConfig, d: distributed.Dist) -> None:
    t = cfg.train
    accum = grad_accum_steps(cfg, d.world_size)
    resume_path = resolve_resume(cfg)
    run = build(cfg, d, accum)
    start = resume(run, resume_path) if resume_path else 0
    log = open_log(run, start)
    interval = Interval()
    run.setup.model.train()
    prefetch = Prefetcher(functools.partial(make_batch, run), start, t.max_steps, accum,
                          pin=d.device.type == "cuda")
    try:
        for step in range(start, t.max_steps):
            done = step + 1
            out = train_step(run.setup, run.task.loss, device_batches(run, prefetch),
                             guard=functools.partial(check_finite, run, done))
            interval.add(out, run.setup.parts)
            run.after_step(done, out.sums(), d)
            if due(done, t.eval_every, t.max_steps):
                interval.evaluation = evaluate_eagerly(run)
            if due(done, t.log_every, t.max_steps):
                record = log_record(run, interval, done)
                if log is not None:
                    log.write(record)
                interval = Interval()
            if due(done, t.checkpoint_every, t.max_steps):
                save_checkpoint(run, done)
    finally:
        prefetch.close()
        if log is not None:
            log.close()


def check_data_before_group(cfg: RunConfig, rank: int, world: int):
    """The rtd mode's shard check (every footer; sha256s with train.verify_checksums), done
    before the process group exists and split over the ranks (every world-th file each), so
    that no rank waits in a collective while another reads the whole set: at scale that
    outlasts any collective timeout. -> (the shard set or None, this rank's error or None);
    ``confirm_data_check`` combines the ranks' results once the group is up."""
    if cfg.train.mode != "rtd":
        return None, None
    from trainer.data.rtd_shards import RTDShards
    from trainer.modes.rtd import check_rtd_plan

    root = cfg.train.rtd_dir or cfg.generate.rtd_dir
    try:
        shards = RTDShards(root)
        check_rtd_plan(cfg, shards)  # the manifest's sizes, before any file is read
        if rank == 0:
            what = "footer and sha256" if cfg.train.verify_checksums else "footer"
            print(f"train: checking the {what} of every file of {root} ({world} rank(s), "
                  f"each 1/{world})", flush=True)
        shards.verify(cfg.train.verify_checksums, rank, world)
        return shards, None
    except UserError as e:
        return None, e


def confirm_data_check(cfg: RunConfig, d: distributed.Dist, shards, error) -> None:
    """Every rank learns whether every slice passed: a failing rank raises its own error,
    the others name it; on success the set counts as verified in this process (the task
    does not read it again)."""
    failed = distributed.all_ok(error is None, d)
    if error is not None:
        raise error
    if failed:
        raise UserError(f"the data check failed on rank(s) {failed}: see their error above")
    if shards is not None:
        shards.mark_verified(cfg.train.verify_checksums)


def run(argv: list[str] | None = None) -> None:
    parser = config_parser("torchrun -m trainer.train", __doc__)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in train.out_dir "
                             "(same as --set train.resume=auto)")
    parser.add_argument("--verify-checksums", action="store_true",
                        help="check the sha256 of every data file before training "
                             "(same as --set train.verify_checksums=true)")
    args = parser.parse_args(argv)
    if args.resume:
        args.overrides.append("train.resume=auto")
    if args.verify_checksums:
        args.overrides.append("train.verify_checksums=true")
    rank = int(os.environ.get("RANK", 0))
    cfg = resolve_config(args, echo=rank == 0)
    # A caller that set up the process group itself (several runs in one launch) keeps it.
    owns_group = not torch.distributed.is_initialized()
    shards, error = check_data_before_group(cfg, rank, int(os.environ.get("WORLD_SIZE", 1)))
    d = distributed.setup(cfg.train.device, cfg.train.dist_timeout_s)
    try:
        confirm_data_check(cfg, d, shards, error)
        train(cfg, d)
    finally:
        if owns_group:
            distributed.teardown()


def main(argv: list[str] | None = None) -> int:
    return main_guard(run, argv)


if __name__ == "__main__":
    sys.exit(main())
