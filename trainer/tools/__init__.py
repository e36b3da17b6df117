"""The user tools, each a subcommand of `fast-electra` (commands.py: the dispatch table) and a
module of its own, `python -m trainer.tools.<module>` (may import any room of trainer).

    commands.py        `fast-electra COMMAND`: the table command -> module:main, imported lazily
    evaluate.py        held-out RTD / MLM metrics of checkpoints (+ eval_metrics.py)
    cost.py            FLOPs, parameters and time per step (paper Table 3)
    plan.py            the data plan of a run, checked before any work
    plot.py            PNG curves of runs' metrics.jsonl
    sweep.py           one training run per grid point
    finetune/          fine-tuning on GLUE-style task files, and the demo tasks
    hf/                Hugging Face import (aux MLM) and export (ELECTRA)
"""
