"""The `fast-electra` command: one dispatch table from subcommand to the ``main(argv)`` of the
module that implements it.

    fast-electra --help                     # every command, one line each
    fast-electra evaluate --help            # that command's own options
    fast-electra cost --config configs/tiny.toml

Each target is imported only when its command runs, so ``fast-electra --help`` loads neither
torch nor Beam, and a training node without apache_beam still runs the trainer's commands
(trainer never imports pipeline/ in its source; the pipeline targets are names here).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

PROG = "fast-electra"

# name -> ("module:function", one-line description). The function takes the command's argv
# (everything after its name) and returns the exit status.
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("pipeline.prepare:main", "Beam job: raw text -> tokenised corpus shards"),
    "corpus-data": ("pipeline.gcide:main",
                    "build an English pre-training corpus (Webster 1913, Debian dict-gcide)"),
    "generate": ("pipeline.generate:main",
                 "Beam job: corpus -> per-epoch RTD shards from a frozen aux"),
    "inspect": ("pipeline.inspect:main", "summary of a shard set (RTD or corpus)"),
    "fair-eval": ("pipeline.fair_eval:main",
                  "score discriminators on one shared set from one standalone generator"),
    "train": ("trainer.train:main",
              "train in this one process (several: torchrun --nproc_per_node N -m trainer.train)"),
    "sweep": ("trainer.tools.sweep:main", "one training run per grid point, then a table"),
    "evaluate": ("trainer.tools.evaluate:main",
                 "held-out RTD / MLM metrics of trained checkpoints"),
    "cost": ("trainer.tools.cost:main", "FLOPs, parameters, memory and time per update"),
    "plan": ("trainer.tools.plan:main", "the data plan of a run, checked before any work"),
    "finetune": ("trainer.tools.finetune.run:main",
                 "fine-tune a discriminator on a GLUE-style task from local files"),
    "finetune-data": ("trainer.tools.finetune.demo_tasks:main",
                      "build fine-tuning task files (real tasks, corpus proxies)"),
    "hf": ("trainer.tools.hf.cli:main", "Hugging Face import (aux MLM) and export"),
    "plot": ("trainer.tools.plot:main", "PNG curves of runs' metrics.jsonl"),
}


def resolve(name: str) -> Callable[[list[str] | None], int]:
    """The function behind command ``name`` (imports its module)."""
    module, _, function = COMMANDS[name][0].partition(":")
    return getattr(importlib.import_module(module), function)


def parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:<{width}}  {summary}"
                        for name, (_, summary) in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{PROG} COMMAND [ARGS ...]",
        description=f"ELECTRA-style pre-training, one command per step.\n\ncommands:\n{listing}",
        epilog=f"`{PROG} COMMAND --help` shows the command's own options.\n`{PROG} train` "
               "runs one process; for several ranks or machines use\n"
               "torchrun --nproc_per_node N -m trainer.train.")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    if not argv or argv[0] in ("-h", "--help"):
        # Bare `fast-electra` is a usage error, but the list of commands is what helps there.
        p.print_help(sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        p.error(f"unknown command {name!r}; the commands: {', '.join(COMMANDS)}")  # exits 2
    try:
        run = resolve(name)
    except ModuleNotFoundError as e:
        # A node installed for training only may lack a command's third-party package (Beam
        # for the pipeline jobs): say which, instead of a traceback.
        if (e.name or "").split(".")[0] in ("pipeline", "trainer"):
            raise
        print(f"error: {PROG} {name} needs the package {e.name!r}, which is not installed",
              file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
