"""Run logging (rank 0 only): one JSON object per log interval in ``metrics.jsonl`` and a
one-line human progress report with ETA.

    log = MetricsLog(out_dir, max_steps, resume_step)   # truncates lines past resume_step
    log.write({"step": 20, "loss": 3.2, ...})
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time

import torch

METRICS = "metrics.jsonl"


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


class MetricsLog:
    def __init__(self, out_dir: str, max_steps: int, resume_step: int = 0):
        self.path = os.path.join(out_dir, METRICS)
        self.max_steps = max_steps
        self.start_step = resume_step
        self.start_time = time.perf_counter()
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
        self.progress(record)

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
