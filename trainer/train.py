"""The trainer: one loop for every mode, launched with torchrun (DDP) or as one process.

    torchrun --nproc_per_node 2 -m trainer.train --config configs/tiny.toml --set train.mode=mlm
    python -m trainer.train --config configs/tiny.toml --set train.mode=mlm      # 1 process
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
import os
import sys
import time

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
from trainer.optim import build_optimizer, build_scheduler

# Keys whose change would make a resumed run diverge from the one it continues.
_RESUME_MUST_MATCH = ("data.max_seq_len", "tokenizer.vocab_size", "model.*", "aux.*",
                      "mlm.*", "joint.*", "corruption.*", "train.mode", "train.global_batch_size",
                      "train.seed", "train.lr", "train.warmup_steps", "train.weight_decay",
                      "train.clip_grad_norm", "train.holdout_fraction")


class TrainingError(UserError):
    """The run cannot go on (non-finite loss, inconsistent resume)."""


def autocast_context(device: torch.device, precision: str):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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


def _flat(cfg_dict: dict) -> dict:
    return {f"{s}.{k}": v for s, sec in cfg_dict.items() for k, v in sec.items()}


def check_resume_config(saved: dict, cfg: RunConfig) -> list[str]:
    """Raise on changes that break an exact continuation; return the harmless ones."""
    old, new = _flat(saved), _flat(to_dict(cfg))
    changed = sorted(k for k in new if old.get(k) != new[k])
    fatal = [k for k in changed if any(k == p or (p.endswith(".*") and k.startswith(p[:-1]))
                                       for p in _RESUME_MUST_MATCH)]
    if fatal:
        raise TrainingError(
            "cannot resume: the checkpoint was trained with different "
            + ", ".join(f"{k} ({old.get(k)!r} -> {new[k]!r})" for k in fatal)
            + ". Resume with the checkpoint's config.toml, or start a new train.out_dir")
    return changed


def resolve_resume(cfg: RunConfig) -> str | None:
    out_dir, resume = cfg.train.out_dir, cfg.train.resume
    if resume == "auto":
        return checkpoint.find_latest(out_dir)
    if resume:
        return resume
    existing = checkpoint.list_steps(out_dir)
    if existing:
        raise UserError(f"{out_dir} already holds checkpoints (up to step {existing[-1]}): pass "
                        "--resume to continue that run, or set train.out_dir to a new folder")
    return None


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


def train(cfg: RunConfig, d: distributed.Dist) -> None:
    t = cfg.train
    accum = grad_accum_steps(cfg, d.world_size)
    resume_path = resolve_resume(cfg)

    torch.manual_seed(t.seed)  # identical initial weights on every rank
    task = build_task(cfg, d)
    model = task.model.to(d.device)
    raw_model = model
    graphs_at_start = compiled_graphs() if t.compile else 0
    if t.compile:
        compile_blocks(model, cfg)
    ddp = DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None) \
        if d.enabled else model
    optimized = task.optimized(raw_model)  # [(name, module, peak lr)], one AdamW each
    opts = [build_optimizer(module, t, lr) for _, module, lr in optimized]
    scheds = [build_scheduler(opt, t) for opt in opts]
    # Dropout differs per rank (as it would across devices) but is reproducible.
    torch.manual_seed(t.seed * 1_000_003 + d.rank + 1)

    start = 0
    if resume_path:
        state, meta, rng = checkpoint.load(resume_path, d.rank)
        for key in check_resume_config(meta["config"], cfg):
            if d.is_main:
                print(f"train: note: {key} differs from the checkpoint's config")
        if meta["data_fingerprint"] != task.data_fingerprint:
            # In full: fast-online's fingerprints share their corpus part and differ after it.
            raise TrainingError(f"cannot resume from {resume_path}: it was trained on data with "
                                f"fingerprint {meta['data_fingerprint']}, this config reads data "
                                f"with fingerprint {task.data_fingerprint} (a different shard "
                                "set, corpus or data plan). Point the config at the data the "
                                "checkpoint was trained on, or start a new train.out_dir")
        raw_model.load_state_dict(state["model"])
        for opt, sched, o, sc in zip(opts, scheds, state["optimizers"], state["schedulers"],
                                     strict=True):
            opt.load_state_dict(o)
            sched.load_state_dict(sc)
        start = meta["step"]
        if rng is not None:
            checkpoint.set_rng_state(rng)
        if d.is_main:
            print(f"train: resumed from {resume_path} at step {start}", flush=True)

    log = None
    if d.is_main:
        os.makedirs(t.out_dir, exist_ok=True)
        with open(os.path.join(t.out_dir, "config.toml"), "w") as f:
            f.write(to_toml(cfg))
        log = MetricsLog(t.out_dir, t.max_steps, start, tensorboard=t.tensorboard)

    def save(step: int) -> None:
        state = {"model": raw_model.state_dict(),
                 "optimizers": [opt.state_dict() for opt in opts],
                 "schedulers": [sched.state_dict() for sched in scheds]}
        meta = {"step": step, "samples_seen": step * t.global_batch_size, "mode": t.mode,
                "world_size": d.world_size, "config": to_dict(cfg),
                "data_fingerprint": task.data_fingerprint, "model_kind": task.model_kind}
        checkpoint.save(t.out_dir, step, state, meta, d.rank, t.keep_checkpoints,
                        lambda: distributed.barrier(d))

    interval: dict[str, float] = {}
    pending_eval: dict[str, float] = {}
    interval_start, interval_steps = time.perf_counter(), 0
    ddp.train()

    def make(step: int, micro: int) -> dict[str, torch.Tensor]:
        batch = task.micro_batch(step, micro, d)
        if t.compile:  # a fixed set of lengths: one compiled graph each
            batch = bucket_batch(batch, t.compile_pad_multiple, cfg.data.max_seq_len)
        return batch

    prefetch = Prefetcher(make, start, t.max_steps, accum, pin=d.device.type == "cuda")
    try:
        for step in range(start, t.max_steps):
            # Only a task with an after_step hook (early-exit) needs the step's own sums.
            step_sums: dict[str, torch.Tensor | float] | None = \
                {} if hasattr(task, "after_step") else None
            for micro in range(accum):
                batch = {k: v.to(d.device, non_blocking=True) for k, v in prefetch.get().items()}
                sync = micro == accum - 1 or not d.enabled
                with (contextlib.nullcontext() if sync else ddp.no_sync()), \
                        autocast_context(d.device, t.precision):
                    loss, sums = task.loss(ddp, batch)
                (loss / accum).backward()
                # Tensors stay on the device until the log step: no host sync per micro-batch.
                sums["loss_sum"] = loss.detach().float()
                sums["micro_batches"] = 1.0
                for k, v in sums.items():
                    interval[k] = interval.get(k, 0.0) + v
                    if step_sums is not None:
                        step_sums[k] = step_sums.get(k, 0.0) + v
            # Each optimizer clips its own model's gradient (DecoupledOptim clips G and D apart).
            norms = [torch.nn.utils.clip_grad_norm_(module.parameters(), t.clip_grad_norm)
                     for _, module, _ in optimized]
            grad_norm = norms[0]
            finite = torch.isfinite(loss) and all(torch.isfinite(n) for n in norms)
            bad = torch.tensor([0.0 if finite else 1.0], dtype=torch.float64)
            if distributed.all_reduce_sum(bad, d).item() > 0:
                last = checkpoint.find_latest(t.out_dir)
                raise TrainingError(
                    f"non-finite loss or gradient at step {step + 1} (loss {loss.item()}, grad "
                    f"norm {grad_norm.item()}); stopped without updating. Last good checkpoint: "
                    f"{last or 'none'}. Lower train.lr, raise train.warmup_steps, or check the "
                    "data")
            for opt, sched in zip(opts, scheds, strict=True):
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            for (name, _, _), norm in zip(optimized, norms, strict=True):
                key = "grad_norm_sum" if len(norms) == 1 else f"grad_norm_{name}_sum"
                interval[key] = interval.get(key, 0.0) + norm.detach()
            interval_steps += 1
            done = step + 1
            if step_sums is not None:  # e.g. early-exit's update of its exit probabilities
                task.after_step(done, step_sums, d)

            if t.eval_every and (done % t.eval_every == 0 or done == t.max_steps):
                # Eager: held-out batches keep their own lengths (and a short last batch),
                # each of which would otherwise compile a graph for a rare pass.
                with (torch.compiler.set_stance("force_eager") if t.compile
                      else contextlib.nullcontext()):
                    pending_eval = evaluate(task, ddp, d, t.precision)
            if done % t.log_every == 0 or done == t.max_steps:
                keys = sorted(interval)
                totals = distributed.all_reduce_sum(
                    torch.tensor([float(interval[k]) for k in keys], dtype=torch.float64), d)
                sums = dict(zip(keys, totals.tolist(), strict=True))
                seconds = time.perf_counter() - interval_start
                record = {
                    "step": done,
                    "epoch": done * t.global_batch_size / task.samples_per_epoch,
                    "loss": sums["loss_sum"] / sums["micro_batches"],
                    "lr": scheds[0].get_last_lr()[0],
                    **{k.removesuffix("_sum"): v / d.world_size / interval_steps
                       for k, v in sums.items() if k.startswith("grad_norm")},
                    **{f"lr_{name}": sched.get_last_lr()[0]
                       for (name, _, _), sched in list(zip(optimized, scheds))[1:]},
                    "tokens_per_s": sums["tokens"] / seconds,
                    "seconds_per_step": seconds / interval_steps,
                    "peak_memory_gb": peak_memory_gb(d.device),
                    **({"compiled_graphs": compiled_graphs() - graphs_at_start}
                       if t.compile else {}),
                    **task.train_metrics(sums), **pending_eval,
                }
                if log is not None:
                    log.write(record)
                interval, pending_eval = {}, {}
                interval_start, interval_steps = time.perf_counter(), 0
            if done % t.checkpoint_every == 0 or done == t.max_steps:
                save(done)

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
