"""train.mode -> the task that trains it: the one module that knows every mode.

The modes build on trainer.modes.base and never import this module, so the registry can import
them all at the top (no cycle, and no import hidden in a function).
"""

from __future__ import annotations

from collections.abc import Callable

from trainer.config.run import RunConfig
from trainer.distributed import Dist
from trainer.errors import UserError
from trainer.modes.base import Task
from trainer.modes.early_exit import EarlyExitTask
from trainer.modes.fast_online import FastOnlineTask
from trainer.modes.joint import JointTask
from trainer.modes.mlm import MLMTask
from trainer.modes.rtd import RTDTask

# The order is the one the error below lists.
MODES: dict[str, Callable[[RunConfig, Dist], Task]] = {
    "rtd": RTDTask,                  # the main mode: offline RTD shards, no aux in the loop
    "mlm": MLMTask,                  # pre-train the auxiliary MLM
    "electra": JointTask,            # joint baselines: original ELECTRA ...
    "decoupled": JointTask,          # ... and DecoupledOptim
    "fast-online": FastOnlineTask,   # Fast-ELECTRA with the frozen aux in the loop
    "early-exit": EarlyExitTask,     # the generator is the discriminator's lower layers
}


def build_task(cfg: RunConfig, d: Dist) -> Task:
    task = MODES.get(cfg.train.mode)
    if task is None:
        raise UserError(f"train.mode = {cfg.train.mode!r} is not a training mode; "
                        f"available: {', '.join(map(repr, MODES))}")
    return task(cfg, d)
