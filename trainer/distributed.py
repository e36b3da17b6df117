"""Process-group setup from the torchrun environment, and the few collectives the loop needs.

    torchrun --nproc_per_node 2 -m trainer.train --config configs/tiny.toml   # DDP, 2 ranks
    fast-electra train --config configs/tiny.toml                             # 1 process

nccl on GPU, gloo on CPU. Without torchrun's variables the run is a single process and no
process group is created.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from trainer.errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int, key: str = "train.device") -> torch.device:
    """``auto`` = this rank's GPU when CUDA is visible, else CPU; ``cuda`` insists on a GPU
    (``key`` names the config key in the error)."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key} = 'cuda' but no CUDA device is visible; use 'auto' or "
                        "'cpu', or check CUDA_VISIBLE_DEVICES and the driver")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(requested_device: str = "auto", timeout_s: float | None = None) -> Dist:
    """This process's rank and device, and the process group under torchrun. ``timeout_s``
    (``train.dist_timeout_s``) bounds every wait for the other ranks, the group's own
    rendezvous included; None keeps torch's default (10 minutes for NCCL)."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(requested_device, local)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None,
                                timeout=None if timeout_s is None
                                else timedelta(seconds=timeout_s))
    return Dist(rank, world, local, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum a small float64 vector over ranks (metrics); a no-op on one process."""
    if d.enabled:
        values = values.to(d.device)
        dist.all_reduce(values)
    return values.cpu()


def all_ok(ok: bool, d: Dist) -> list[int]:
    """The ranks whose ``ok`` is False (every rank gets the same list); [] on one process."""
    if not d.enabled:
        return [] if ok else [d.rank]
    flags = torch.zeros(d.world_size, dtype=torch.float64)
    flags[d.rank] = 0.0 if ok else 1.0
    return [r for r, bad in enumerate(all_reduce_sum(flags, d).tolist()) if bad]


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
