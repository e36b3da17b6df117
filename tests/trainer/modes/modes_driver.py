"""Many trainer runs in one launch: the tests' way to train every mode under 1 process and
under torchrun without paying torchrun's start and the imports once per run.

    python -m tests.trainer.modes.modes_driver JOBS.json
    torchrun --standalone --nproc_per_node 2 -m tests.trainer.modes.modes_driver JOBS.json

JOBS.json is a list, run in order by every rank:
    {"argv": [...]}              trainer.train.main(argv), exactly as ``python -m trainer.train``
                                 (a non-zero exit status stops the driver with it)
    {"cut": [src, dst, step]}    copy run folder src to dst without its checkpoints after
                                 ``step``, as a crash right after that checkpoint leaves it;
                                 "drop_rng": true also deletes the RNG files of the one kept
The process group is set up once, here, so the runs share it (trainer.train keeps a group
it did not create).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys

from trainer import checkpoint, distributed
from trainer.train import main as train_main


def cut(src: str, dst: str, step: int, drop_rng: bool = False) -> None:
    shutil.copytree(src, dst)
    for s in checkpoint.list_steps(dst):
        if s > step:
            shutil.rmtree(checkpoint.step_dir(dst, s))
    if drop_rng:
        for path in glob.glob(os.path.join(checkpoint.step_dir(dst, step), "rng_rank*.pt")):
            os.remove(path)


def main(path: str) -> int:
    with open(path) as f:
        jobs = json.load(f)
    d = distributed.setup("cpu")
    try:
        for i, job in enumerate(jobs):
            if "cut" in job:
                if d.is_main:
                    cut(*job["cut"], drop_rng=job.get("drop_rng", False))
                distributed.barrier(d)
                continue
            rc = train_main(job["argv"])
            if rc:
                print(f"modes_driver: job {i} exited with {rc}: {job['argv']}", file=sys.stderr)
                return rc
    finally:
        distributed.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
