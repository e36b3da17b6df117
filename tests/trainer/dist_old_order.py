"""Test driver, run under torchrun by tests/trainer/test_dist_startup.py: the start-up order
the trainer must not have. The process group starts first, then rank 0 alone reads every
footer of the shard set while the other ranks wait in a collective (in the trainer, DDP's
constructor), bounded by the group's timeout.

    torchrun --nproc_per_node 2 -m tests.trainer.dist_old_order RTD_DIR TIMEOUT_S
"""

from __future__ import annotations

import sys

from trainer import distributed
from trainer.data.rtd_shards import RTDShards


def main(root: str, timeout_s: str) -> None:
    d = distributed.setup("cpu", float(timeout_s))
    try:
        if d.is_main:
            RTDShards(root).verify()  # every file, one rank, after the group started
        distributed.barrier(d)  # the others wait here, as in DDP's first collective
        if d.is_main:
            print("old order: all ranks passed the barrier", flush=True)
    finally:
        distributed.teardown()


if __name__ == "__main__":
    main(*sys.argv[1:])
