"""Fine-tune a pre-trained discriminator on a GLUE-style task from local files.

    fast-electra finetune --checkpoint runs/tiny/rtd --task configs/finetune/sst2.toml \\
        --train data/sst2/train.tsv --dev data/sst2/dev.tsv [--test data/sst2/test.tsv] \\
        --out-dir runs/finetune/sst2 [--set finetune.lr=3e-5 ...] [--from-scratch]
    fast-electra finetune ... --grid       # every point of the task file's [grid]

``--checkpoint`` is a checkpoint folder or a run folder (its latest checkpoint) of any run
that holds a discriminator (rtd, fast-online, electra, decoupled; trainer.pretrained). The
tokenizer is the checkpoint's corpus's (``--tokenizer`` overrides).
``--from-scratch`` fine-tunes the same architecture from random initialisation: the baseline
that shows what pre-training bought. The model is the encoder plus a head on [CLS] (ELECTRA's:
dropout, dense, GELU, dropout, out_proj); cross-entropy for classification, MSE for
regression. AdamW or AdaMax, linear warm-up over finetune.warmup_proportion of the steps then
linear decay, ELECTRA's layer-wise lr decay, gradient clipping; dev is scored after every
epoch (accuracy, F1 (binary, or macro over classes), Matthews correlation; or Pearson and
Spearman) and the best epoch by task.metric is reported along with the final one.

A run folder holds ``config.toml`` (resolved), ``labels.json`` (class index -> label),
``metrics.jsonl`` (one line per epoch), ``test_predictions.tsv`` (with --test: the best
epoch's predictions) and, written last and atomically, ``results.json``. A folder whose
results.json matches the same inputs and settings is a finished run and is skipped, so a
``--grid`` search (one folder per point under --out-dir, then ``summary.json`` and
``summary.tsv``) can be re-launched after an interruption and only runs what is missing. The
shipped space (configs/finetune/base.toml) was written without access to Table 4 of the
Fast-ELECTRA paper: check its values against that table before reporting a reproduction.
Single process; deterministic on CPU for a given finetune.seed; bf16 autocast on a GPU.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from trainer.atomic import write_text_atomic
from trainer.cli import main_guard
from trainer.config.load import to_toml
from trainer.distributed import pick_device
from trainer.errors import UserError
from trainer.model.encoder import Encoder
from trainer.optim import Optimized, linear_schedule
from trainer.step import LossFn, StepOutput, StepSetup, autocast_context, train_step
from trainer.tools.finetune.config import (
    FinetuneConfig,
    FinetuneSpec,
    describe,
    grid_points,
    load_finetune_config,
    point_name,
    to_dict,
)
from trainer.tools.finetune.data import EncodedData
from trainer.tools.finetune.inputs import (
    Pretrained,
    TaskData,
    TaskFiles,
    effective_max_seq_len,
    open_pretrained,
)
from trainer.tools.finetune.metrics import score
from trainer.tools.finetune.model import FinetuneModel, build_optimizer

RESULTS = "results.json"


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def predict(model: FinetuneModel, data: EncodedData, ft: FinetuneConfig, device: torch.device,
            regression: bool) -> np.ndarray:
    model.eval()
    out = []
    for input_ids, mask, _ in data.batches(np.arange(len(data)), ft.eval_batch_size):
        with autocast_context(device, ft.precision):
            logits = model(input_ids.to(device), mask.to(device)).float()  # (B, C)
        out.append((logits[:, 0] if regression else logits.argmax(-1)).cpu().numpy())
    model.train()
    return np.concatenate(out)


def finetune_loss(model: FinetuneModel, batch: dict[str, torch.Tensor], regression: bool,
                  device: torch.device, precision: str) -> tuple[torch.Tensor, dict]:
    """train_step's loss: the forward under autocast, the loss in fp32 outside it."""
    with autocast_context(device, precision):
        out = model(batch["input_ids"], batch["attention_mask"]).float()  # (B, C)
    labels = batch["labels"]  # (B,) class ids, or targets for regression
    loss = F.mse_loss(out[:, 0], labels) if regression else F.cross_entropy(out, labels)
    return loss, {}


def check_loss(out_dir: str, step: int, out: StepOutput) -> None:
    """train_step's guard: refuse the update of step ``step`` after a non-finite loss."""
    if not torch.isfinite(out.loss):
        raise UserError(f"{out_dir}: non-finite loss at step {step}; lower finetune.lr or "
                        "check the labels")


def build_step(model: FinetuneModel, ft: FinetuneConfig, total: int, device: torch.device
               ) -> StepSetup:
    """One optimizer (finetune.optimizer, layer-wise lr decay), warm-up over
    finetune.warmup_proportion of the ``total`` steps then linear decay; one batch a step."""
    opt = build_optimizer(model, ft)
    sched = linear_schedule(opt, round(ft.warmup_proportion * total), total)
    # precision "fp32" here: finetune_loss autocasts the forward only.
    return StepSetup(model, [Optimized("model", model, opt, sched)], accum=1,
                     clip_grad_norm=ft.clip_grad_norm if ft.clip_grad_norm > 0 else None,
                     precision="fp32", device=device)


def run_epoch(setup: StepSetup, loss_fn: LossFn, batches: Iterable[tuple[torch.Tensor, ...]],
              out_dir: str, step: int) -> tuple[float, int]:
    """One step per (input_ids, mask, labels) batch, from step ``step``; -> (mean loss, steps
    made so far)."""
    loss_sum, n = 0.0, 0
    for input_ids, mask, labels in batches:
        batch = {"input_ids": input_ids.to(setup.device),
                 "attention_mask": mask.to(setup.device), "labels": labels.to(setup.device)}
        out = train_step(setup, loss_fn, [batch],
                         guard=functools.partial(check_loss, out_dir, step + n + 1))
        loss_sum, n = loss_sum + out.loss.item(), n + 1
    return loss_sum / n, step + n


def train_one(spec: FinetuneSpec, pre: Pretrained, data: TaskData, out_dir: str,
              inputs: dict) -> dict:
    """Fine-tune one configuration in ``out_dir`` and return (and write) its results."""
    task, ft = spec.task, spec.finetune
    regression = task.type == "regression"
    device = pick_device(ft.device, 0, "finetune.device")
    num_outputs = 1 if regression else len(data.label_names)
    os.makedirs(out_dir, exist_ok=True)
    write_text_atomic(os.path.join(out_dir, "config.toml"), to_toml(spec))
    write_text_atomic(os.path.join(out_dir, "labels.json"),
                      json.dumps({"labels": data.label_names}, indent=1) + "\n")

    torch.manual_seed(ft.seed)
    encoder = (Encoder(pre.encoder_cfg) if pre.encoder is None
               else copy.deepcopy(pre.encoder))
    if pre.encoder is not None and ft.rescale_to_init:
        encoder.rescale_to_init_()
    model = FinetuneModel(encoder, num_outputs, ft).to(device).train()
    total = ft.epochs * math.ceil(len(data.train) / ft.batch_size)
    setup = build_step(model, ft, total, device)
    loss_fn = functools.partial(finetune_loss, regression=regression, device=device,
                                precision=ft.precision)
    order_rng = np.random.default_rng(ft.seed)

    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    open(metrics_path, "w").close()  # an unfinished earlier attempt starts over
    epochs, best, best_state = [], None, None
    step, start = 0, time.perf_counter()
    for epoch in range(1, ft.epochs + 1):
        order = order_rng.permutation(len(data.train))
        train_loss, step = run_epoch(setup, loss_fn, data.train.batches(order, ft.batch_size),
                                     out_dir, step)
        dev_pred = predict(model, data.dev, ft, device, regression)
        record = {"epoch": epoch, "step": step, "train_loss": train_loss,
                  "lr": setup.parts[0].scheduler.get_last_lr()[-1],
                  "seconds": time.perf_counter() - start,
                  **{f"dev_{k}": v for k, v in score(task, dev_pred, data.dev.labels,
                                                     num_outputs).items()}}
        epochs.append(record)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        is_best = best is None or record[f"dev_{task.metric}"] > best[f"dev_{task.metric}"]
        if is_best:
            best = record
            if data.test is not None:  # the test set is predicted with the best epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        print(f"finetune: {os.path.basename(out_dir)} epoch {epoch}/{ft.epochs} step {step} "
              f"loss {record['train_loss']:.4f} dev {task.metric} "
              f"{record[f'dev_{task.metric}']:.4f}{' (best)' if is_best else ''}", flush=True)

    if data.test is not None:
        model.load_state_dict(best_state)
        write_test_predictions(model, data, ft, device, regression, out_dir)
    results = {"inputs": inputs, "config": to_dict(spec), "metric": task.metric,
               "best_epoch": best["epoch"], "best": best, "final": epochs[-1],
               "epochs": epochs, "labels": data.label_names, "steps": total,
               "num_examples": {"train": len(data.train), "dev": len(data.dev),
                                **({"test": len(data.test)} if data.test else {})},
               "device": str(device), "seconds": time.perf_counter() - start}
    write_text_atomic(os.path.join(out_dir, RESULTS), json.dumps(results, indent=1) + "\n")
    return results


def write_test_predictions(model: FinetuneModel, data: TaskData, ft: FinetuneConfig,
                           device: torch.device, regression: bool, out_dir: str) -> None:
    pred = predict(model, data.test, ft, device, regression)
    names = [f"{p:.6g}" for p in pred] if regression else [data.label_names[p] for p in pred]
    write_text_atomic(os.path.join(out_dir, "test_predictions.tsv"),
                      "index\tprediction\n" + "".join(f"{i}\t{p}\n" for i, p in enumerate(names)))


def finished(out_dir: str, inputs: dict, spec: FinetuneSpec) -> dict | None:
    """The results of a finished run of exactly these inputs and settings in ``out_dir``;
    None when there is none. A finished run of something else is refused, not overwritten."""
    path = os.path.join(out_dir, RESULTS)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        done = json.load(f)
    want = {"inputs": inputs, "config": to_dict(spec)}
    diff = [f"{part}.{k}" for part in want for k in set(want[part]) | set(done.get(part, {}))
            if want[part].get(k) != done.get(part, {}).get(k)]
    if diff:
        raise UserError(f"{out_dir} holds a finished run with different {', '.join(sorted(diff))}"
                        "; give another --out-dir or delete that folder")
    return done


def run_one(spec: FinetuneSpec, pre: Pretrained, files: TaskFiles, out_dir: str,
            from_scratch: bool) -> dict:
    max_seq_len = effective_max_seq_len(spec.finetune, pre.encoder_cfg)
    inputs = {"checkpoint": os.path.abspath(pre.path), "from_scratch": from_scratch,
              "tokenizer": os.path.abspath(pre.tokenizer_path), "max_seq_len": max_seq_len,
              **files.fingerprint}
    done = finished(out_dir, inputs, spec)
    if done is not None:
        print(f"finetune: {out_dir} is finished; skipping", flush=True)
        return done
    return train_one(spec, pre, files.encoded(pre.sp, max_seq_len), out_dir, inputs)


# ---------------------------------------------------------------------------------------------
# Grid
# ---------------------------------------------------------------------------------------------

def run_grid(spec: FinetuneSpec, pre: Pretrained, files: TaskFiles, out_dir: str,
             from_scratch: bool, select: str) -> dict:
    """Every [grid] point in its own folder; then summary.json/.tsv and the best point by the
    ``select`` ("best": best-epoch, or "final": last-epoch) dev task.metric."""
    if not spec.grid:
        raise UserError("--grid: the task file has no [grid] table; add one (see "
                        "configs/finetune/base.toml) or --set grid.lr=[1e-4,2e-4]")
    points = grid_points(spec)  # every point validated before the first run
    for _, ft in points:
        effective_max_seq_len(ft, pre.encoder_cfg)
    rows = []
    for i, (values, ft) in enumerate(points, 1):
        name = point_name(values)
        print(f"finetune: grid point {i}/{len(points)}: {name}", flush=True)
        point = dataclasses.replace(spec, finetune=ft, grid={})
        results = run_one(point, pre, files, os.path.join(out_dir, name), from_scratch)
        rows.append({"point": name, "values": values, "out_dir": os.path.join(out_dir, name),
                     "best_epoch": results["best_epoch"], "best": results["best"],
                     "final": results["final"]})
    metric = f"dev_{spec.task.metric}"
    winner = max(rows, key=lambda r: r[select][metric])  # first of equals: file order
    summary = {"task": spec.task.name, "metric": spec.task.metric, "select": select,
               "from_scratch": from_scratch, "points": rows, "best": winner}
    write_text_atomic(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=1) + "\n")
    table = summary_table(rows, metric)
    write_text_atomic(os.path.join(out_dir, "summary.tsv"), table)
    print(table.replace("\t", "  "), end="")
    print(f"finetune: best point ({select} epoch, dev {spec.task.metric}): {winner['point']} = "
          f"{winner[select][metric]:.4f}", flush=True)
    return summary


def summary_table(rows: list[dict], metric: str) -> str:
    width = max(len(r["point"]) for r in rows)
    lines = [f"{'point':{width}s}\tbest_epoch\tbest_{metric}\tfinal_{metric}"]
    lines += [f"{r['point']:{width}s}\t{r['best_epoch']:10d}\t{r['best'][metric]:.4f}\t"
              f"{r['final'][metric]:.4f}" for r in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fast-electra finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, help="task file, e.g. configs/finetune/sst2.toml")
    p.add_argument("--checkpoint", help="checkpoint folder, or a run folder (latest checkpoint)")
    p.add_argument("--train", help="training file (.tsv with header, .jsonl, .parquet)")
    p.add_argument("--dev", help="dev file, scored after every epoch")
    p.add_argument("--test", help="optional test file (labels not needed): predictions of the "
                                  "best epoch go to test_predictions.tsv")
    p.add_argument("--out-dir", help="run folder (with --grid: one sub-folder per point)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="TABLE.KEY=VALUE",
                   help="override a task-file key (repeatable): finetune.lr=3e-5, "
                        "task.text_b=sentence2, grid.lr=[1e-4,2e-4]")
    p.add_argument("--grid", action="store_true", help="run every point of the [grid] table")
    p.add_argument("--select", choices=("best", "final"), default="best",
                   help="--grid: rank points by their best-epoch (default) or final dev score")
    p.add_argument("--from-scratch", action="store_true",
                   help="same architecture, randomly initialised (the no-pre-training baseline)")
    p.add_argument("--tokenizer", help="a SentencePiece .model, or an HF tokenizer folder / "
                   "tokenizer.json (default: the tokenizer of the checkpoint's corpus)")
    p.add_argument("--help-config", action="store_true",
                   help="print every task-file key with its value and meaning, then exit")
    return p


def run(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    spec = load_finetune_config(args.task, args.overrides)
    if args.help_config:
        print(describe(spec))
        return {}
    missing = [f"--{k.replace('_', '-')}" for k in ("checkpoint", "train", "dev", "out_dir")
               if not getattr(args, k)]
    if missing:
        raise UserError(f"missing {', '.join(missing)} (see --help)")
    print(f"# resolved task config ({args.task}"
          + "".join(f" --set {o}" for o in args.overrides) + ")")
    print(to_toml(spec if args.grid else dataclasses.replace(spec, grid={})), flush=True)
    pre = open_pretrained(args.checkpoint, args.tokenizer, args.from_scratch)
    files = TaskFiles(spec.task, args.train, args.dev, args.test)
    scratch = " (architecture only: --from-scratch)" if args.from_scratch else ""
    print(f"finetune: {pre.path}{scratch}; {len(files.rows['train'])} train / "
          f"{len(files.rows['dev'])} dev examples; labels "
          f"{files.label_names or 'regression'}", flush=True)
    if args.grid:
        return run_grid(spec, pre, files, args.out_dir, args.from_scratch, args.select)
    results = run_one(dataclasses.replace(spec, grid={}), pre, files, args.out_dir,
                      args.from_scratch)
    metric = f"dev_{spec.task.metric}"
    print(f"finetune: best epoch {results['best_epoch']}: dev {spec.task.metric} "
          f"{results['best'][metric]:.4f}; final: {results['final'][metric]:.4f}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    return main_guard(run, argv)


if __name__ == "__main__":
    sys.exit(main())
