"""Fine-tuning (`fast-electra finetune`, `fast-electra finetune-data`).

    run.py             the command: one run or a grid, resumable
    config.py          the task file ([task], [finetune], [grid])
    data.py            task rows (TSV / JSONL / Parquet) -> encoded batches
    inputs.py          the pre-trained encoder and the task files, read once per invocation
    model.py           encoder + classification head; layer-wise lr decay
    metrics.py         accuracy, F1, MCC, Pearson, Spearman
    demo_tasks.py      demo tasks from a prepared corpus (`fast-electra finetune-data`)
"""
