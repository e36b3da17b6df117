"""Run logging (rank 0 only): one JSON object per log interval in ``metrics.jsonl``, a
one-line human progress report with ETA, and optionally TensorBoard scalars.

    log = MetricsLog(out_dir, max_steps, resume_step)   # truncates lines past resume_step
    log.write({"step": 20, "loss": 3.2, ...})
    log.close()

    MetricsLog(out_dir, max_steps, resume_step, tensorboard=True)   # + out_dir/tensorboard/
    tensorboard --logdir runs/tiny/tensorboard                      # needs '.[tensorboard]'

TensorBoard tags: ``eval/<key>`` for eval_* keys, ``optim/<key>`` for lr and grad norms,
``system/<key>`` for speed and memory, ``train/<key>`` for the rest.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time

import torch

from trainer.errors import UserError

METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
_NOT_SCALARS = ("step", "sample_id_sum")  # the x axis; a data-order checksum
_SYSTEM_KEYS = ("tokens_per_s", "seconds_per_step", "peak_memory_gb")


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory allocated by torch, or this process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def tensorboard_tag(key: str) -> str:
    if key.startswith("eval_"):
        return f"eval/{key.removeprefix('eval_')}"
    if key.startswith(("lr", "grad_norm")):
        return f"optim/{key}"
    return f"system/{key}" if key in _SYSTEM_KEYS else f"train/{key}"


def open_tensorboard(out_dir: str, resume_step: int):
    """A SummaryWriter on out_dir/tensorboard; on resume, events after ``resume_step`` left by
    the interrupted run are hidden (purge_step), as metrics.jsonl drops its lines."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch raises this when the tensorboard package is missing
        raise UserError("train.tensorboard = true needs the tensorboard package: "
                        "pip install -e '.[tensorboard]' (or set train.tensorboard = false)"
                        ) from e
    return SummaryWriter(os.path.join(out_dir, TENSORBOARD),
                         purge_step=resume_step + 1 if resume_step else None)


class MetricsLog:
    def __init__(self, out_dir: str, max_steps: int, resume_step: int = 0,
                 tensorboard: bool = False):
        self.path = os.path.join(out_dir, METRICS)
        self.max_steps = max_steps
        self.start_step = resume_step
        self.start_time = time.perf_counter()
        # Opened first: a missing tensorboard package stops the run before the file is touched.
        self.tensorboard = open_tensorboard(out_dir, resume_step) if tensorboard else None
        # A resumed run continues the file from its checkpoint: lines written after that
        # checkpoint by the interrupted run are replaced, so the file reads as one run.
        kept = []
        if resume_step and os.path.exists(self.path):
            with open(self.path) as f:
                kept = [line for line in f if line.strip()
                        and json.loads(line).get("step", 0) <= resume_step]
        with open(self.path, "w") as f:
            f.writelines(kept)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self.tensorboard is not None:
            for key, value in sorted(record.items()):
                if key not in _NOT_SCALARS and isinstance(value, int | float) \
                        and not isinstance(value, bool):
                    self.tensorboard.add_scalar(tensorboard_tag(key), value, record["step"])
            # Log intervals are seconds apart: flushing each keeps a live dashboard current.
            self.tensorboard.flush()
        self.progress(record)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def progress(self, r: dict) -> None:
        step = r["step"]
        elapsed = time.perf_counter() - self.start_time
        done = step - self.start_step
        eta = elapsed / done * (self.max_steps - step) if done > 0 else float("nan")
        extra = " | ".join(f"{k} {r[k]:.4g}" for k in sorted(r)
                           if k not in ("step", "loss", "tokens_per_s", "seconds_per_step",
                                        "peak_memory_gb", "epoch", "sample_id_sum")
                           and not k.startswith(("lr", "grad_norm")) and isinstance(r[k], float))
        print(f"step {step}/{self.max_steps} | loss {r['loss']:.4f} | "
              + (f"{extra} | " if extra else "")
              + f"lr {r['lr']:.2e} | {r['tokens_per_s'] / 1000:.1f}k tok/s | "
              f"{r['seconds_per_step']:.3f} s/step | ETA {_fmt_duration(eta)}",
              file=sys.stdout, flush=True)
