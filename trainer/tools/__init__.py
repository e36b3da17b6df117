"""The user tools, each behind a `python -m trainer.<command>` entry at trainer/<command>.py
(may import any room of trainer).

    evaluate.py        held-out RTD / MLM metrics of checkpoints (+ eval_metrics.py)
    cost.py            FLOPs, parameters and time per step (paper Table 3)
    plot.py            PNG curves of runs' metrics.jsonl
    sweep.py           one training run per grid point
    finetune/          fine-tuning on GLUE-style task files, and the demo tasks
    hf/                Hugging Face import (aux MLM) and export (ELECTRA)
"""
