"""Fine-tune a pre-trained discriminator on a GLUE-style task from local files.

    python -m trainer.finetune --checkpoint runs/tiny/rtd --task configs/finetune/sst2.toml \\
        --train data/sst2/train.tsv --dev data/sst2/dev.tsv [--test data/sst2/test.tsv] \\
        --out-dir runs/finetune/sst2 [--set finetune.lr=3e-5 ...] [--from-scratch]
    python -m trainer.finetune ... --grid       # every point of the task file's [grid]

``--checkpoint`` is a checkpoint folder or a run folder (its latest checkpoint) of any run
that holds a discriminator (rtd, fast-online, electra, decoupled; trainer.pretrained). The
tokenizer is the checkpoint's corpus's ``tokenizer.model`` (``--tokenizer`` overrides).
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
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import sentencepiece as spm
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.cli import main_guard
from trainer.config.load import to_toml
from trainer.data.manifest import TOKENIZER_FILE
from trainer.distributed import pick_device
from trainer.errors import UserError
from trainer.model.encoder import INIT_STD, Encoder
from trainer.model.encoder_config import EncoderConfig
from trainer.model.params import weight_decay_groups
from trainer.optim import lr_factor
from trainer.pretrained import (
    DISCRIMINATOR_KINDS,
    checkpoint_config,
    discriminator_config,
    load_discriminator,
    read_meta,
    resolve_checkpoint,
)
from trainer.tokenizer import load_tokenizer
from trainer.tools.finetune.config import (
    FinetuneConfig,
    FinetuneSpec,
    TaskConfig,
    describe,
    grid_points,
    load_finetune_config,
    point_name,
    to_dict,
)
from trainer.tools.finetune.data import EncodedData, encode, label_names_from, read_rows
from trainer.train import autocast_context

RESULTS = "results.json"


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Metrics (numpy; all higher-is-better)
# ---------------------------------------------------------------------------------------------

def confusion(pred: np.ndarray, gold: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows = gold class, columns = predicted class."""
    return np.bincount(gold * num_classes + pred, minlength=num_classes ** 2).reshape(
        num_classes, num_classes).astype(np.float64)


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(pred == gold))


def f1(pred: np.ndarray, gold: np.ndarray, num_classes: int) -> float:
    """Binary: F1 of class 1. Multi-class: the unweighted mean of the per-class F1 (macro).
    A class never predicted and never present scores 0, as in scikit-learn."""
    c = confusion(pred, gold, num_classes)
    tp = np.diag(c)
    denom = c.sum(0) + c.sum(1)  # 2 tp + fp + fn
    per_class = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(per_class[1] if num_classes == 2 else per_class.mean())


def mcc(pred: np.ndarray, gold: np.ndarray, num_classes: int) -> float:
    """Matthews correlation (Gorodkin's multi-class R_K; the usual MCC for two classes);
    0 when every prediction or every gold label is one class."""
    c = confusion(pred, gold, num_classes)
    s, correct = c.sum(), np.trace(c)
    p, t = c.sum(0), c.sum(1)  # predicted / true counts per class
    denom = math.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((correct * s - p @ t) / denom) if denom > 0 else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.astype(np.float64) - x.mean(), y.astype(np.float64) - y.mean()
    denom = math.sqrt((x @ x) * (y @ y))
    return float(x @ y / denom) if denom > 0 else 0.0


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Start index of each run of equal values, and each element's run.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    run_of = np.cumsum(np.r_[True, sorted_x[1:] != sorted_x[:-1]]) - 1
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = ((starts + 1 + ends) / 2.0)[run_of]  # mean of ranks start+1 .. end
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(average_ranks(x), average_ranks(y))


def score(task: TaskConfig, pred: np.ndarray, gold: np.ndarray, num_classes: int
          ) -> dict[str, float]:
    if task.type == "regression":
        return {"pearson": pearson(pred, gold), "spearman": spearman(pred, gold)}
    return {"accuracy": accuracy(pred, gold), "f1": f1(pred, gold, num_classes),
            "mcc": mcc(pred, gold, num_classes)}


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

class ClassificationHead(nn.Module):
    """On the [CLS] state: dropout, dense, activation, dropout, out_proj (ELECTRA)."""

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float, activation: str):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, num_outputs)
        self.dropout = dropout
        self.activation = torch.tanh if activation == "tanh" else F.gelu
        for layer in (self.dense, self.out_proj):
            nn.init.normal_(layer.weight, std=INIT_STD)
            nn.init.zeros_(layer.bias)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        x = F.dropout(cls, self.dropout, self.training)  # (B, H)
        x = F.dropout(self.activation(self.dense(x)), self.dropout, self.training)
        return self.out_proj(x)  # (B, C)


class FinetuneModel(nn.Module):
    """Encoder + ClassificationHead: (B, C) logits, or (B, 1) predictions for regression."""

    def __init__(self, encoder: Encoder, num_outputs: int, ft: FinetuneConfig):
        super().__init__()
        self.encoder = encoder
        self.encoder.set_dropout(ft.dropout, ft.attention_dropout)
        self.head = ClassificationHead(encoder.cfg.hidden_size, num_outputs, ft.dropout,
                                       ft.head_activation)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask)  # (B, T, H)
        return self.head(hidden[:, 0])  # [CLS] -> (B, C)


def layer_depth(name: str, num_layers: int) -> int:
    """ELECTRA's depth of a parameter: embeddings 0, block k k+1, head num_layers + 2. The
    relative position table, shared by all blocks and read with the inputs, counts as an
    embedding; a pre-LN final LayerNorm belongs to the top block."""
    if name.startswith("head."):
        return num_layers + 2
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    if name.startswith("encoder.final_ln."):
        return num_layers
    return 0


def param_groups(model: FinetuneModel, ft: FinetuneConfig) -> list[dict]:
    """One group per (depth, decayed or not), lr = ft.lr * layer_decay^(L + 2 - depth), as in
    ELECTRA's _get_layer_lrs (so the top block gets lr * d^2 and the embeddings
    lr * d^(L+2)); which parameters are decayed is trainer.model.weight_decay_groups' rule."""
    decayed = {id(p) for p in weight_decay_groups(model, ft.weight_decay)[0]["params"]}
    L = model.encoder.cfg.num_layers
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        depth, decay = layer_depth(name, L), id(p) in decayed
        group = groups.setdefault((depth, decay), {
            "params": [], "names": [], "depth": depth,
            "lr": ft.lr * ft.layer_decay ** (L + 2 - depth),
            "weight_decay": ft.weight_decay if decay else 0.0})
        group["params"].append(p)
        group["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: FinetuneModel, ft: FinetuneConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, ft)
    betas = (ft.adam_beta1, ft.adam_beta2)
    if ft.optimizer == "adamax":
        return torch.optim.Adamax(groups, lr=ft.lr, betas=betas, eps=ft.adam_eps)
    return torch.optim.AdamW(groups, lr=ft.lr, betas=betas, eps=ft.adam_eps)


# ---------------------------------------------------------------------------------------------
# Inputs shared by every run of one invocation
# ---------------------------------------------------------------------------------------------

@dataclass
class Pretrained:
    """The checkpoint's encoder (None with --from-scratch), its config and tokenizer."""

    path: str
    encoder_cfg: EncoderConfig
    encoder: Encoder | None
    tokenizer_path: str
    sp: spm.SentencePieceProcessor


def open_pretrained(checkpoint: str, tokenizer: str | None, from_scratch: bool) -> Pretrained:
    path = resolve_checkpoint(checkpoint)
    meta = read_meta(path, "discriminator", DISCRIMINATOR_KINDS)
    run_cfg = checkpoint_config(meta)
    if tokenizer is None:
        tokenizer = os.path.join(run_cfg.data.corpus_dir, TOKENIZER_FILE)
        if not os.path.isfile(tokenizer):
            raise UserError(f"the checkpoint's corpus tokenizer {tokenizer} does not exist (its "
                            f"data.corpus_dir is {run_cfg.data.corpus_dir!r}, relative to where "
                            "it was trained); pass --tokenizer PATH to the corpus's "
                            "tokenizer.model")
    sp = load_tokenizer(tokenizer)
    enc_cfg = discriminator_config(meta)
    if sp.get_piece_size() != enc_cfg.vocab_size:
        raise UserError(f"tokenizer {tokenizer} has {sp.get_piece_size()} pieces but the "
                        f"checkpoint's model has a vocabulary of {enc_cfg.vocab_size}; give the "
                        "tokenizer of the corpus the checkpoint was trained on (--tokenizer)")
    encoder = None if from_scratch else load_discriminator(path).encoder
    return Pretrained(path, enc_cfg, encoder, tokenizer, sp)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class TaskData:
    label_names: list[str]
    train: EncodedData
    dev: EncodedData
    test: EncodedData | None
    fingerprint: dict
    """Absolute path and sha256 of every file: what makes a finished run the same run."""


class TaskFiles:
    """The train/dev/test rows, read once, tokenized once per max_seq_len."""

    def __init__(self, task: TaskConfig, train: str, dev: str, test: str | None):
        self.task = task
        self.rows = {"train": read_rows(train, task), "dev": read_rows(dev, task)}
        if test:
            self.rows["test"] = read_rows(test, task, require_label=False)
        self.label_names = label_names_from(self.rows["train"], task)
        self.fingerprint = {name: {"path": os.path.abspath(p), "sha256": sha256_file(p)}
                            for name, p in (("train", train), ("dev", dev), ("test", test)) if p}
        self._encoded: dict[int, TaskData] = {}

    def encoded(self, sp: spm.SentencePieceProcessor, max_seq_len: int) -> TaskData:
        if max_seq_len not in self._encoded:
            splits = {name: encode(rows, self.task, self.label_names, sp, max_seq_len,
                                   labelled=name != "test")
                      for name, rows in self.rows.items()}
            for name, data in splits.items():
                if data.truncated:
                    print(f"finetune: {data.truncated} of {len(data)} {name} examples truncated "
                          f"to {max_seq_len} tokens", flush=True)
            self._encoded[max_seq_len] = TaskData(self.label_names, splits["train"],
                                                  splits["dev"], splits.get("test"),
                                                  self.fingerprint)
        return self._encoded[max_seq_len]


def effective_max_seq_len(ft: FinetuneConfig, enc_cfg: EncoderConfig) -> int:
    if ft.max_seq_len > enc_cfg.max_seq_len:
        raise UserError(f"finetune.max_seq_len = {ft.max_seq_len} exceeds the checkpoint's "
                        f"data.max_seq_len = {enc_cfg.max_seq_len}; set it to at most that (or 0)")
    return ft.max_seq_len or enc_cfg.max_seq_len


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


def train_one(spec: FinetuneSpec, pre: Pretrained, data: TaskData, out_dir: str,
              inputs: dict) -> dict:
    """Fine-tune one configuration in ``out_dir`` and return (and write) its results."""
    task, ft = spec.task, spec.finetune
    regression = task.type == "regression"
    device = pick_device(ft.device, 0, "finetune.device")
    num_outputs = 1 if regression else len(data.label_names)
    os.makedirs(out_dir, exist_ok=True)
    write_atomic(os.path.join(out_dir, "config.toml"), to_toml(spec))
    write_atomic(os.path.join(out_dir, "labels.json"),
                 json.dumps({"labels": data.label_names}, indent=1) + "\n")

    torch.manual_seed(ft.seed)
    encoder = (Encoder(pre.encoder_cfg) if pre.encoder is None
               else copy.deepcopy(pre.encoder))
    model = FinetuneModel(encoder, num_outputs, ft).to(device).train()
    opt = build_optimizer(model, ft)
    steps_per_epoch = math.ceil(len(data.train) / ft.batch_size)
    total = ft.epochs * steps_per_epoch
    warmup = round(ft.warmup_proportion * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total))
    order_rng = np.random.default_rng(ft.seed)

    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    open(metrics_path, "w").close()  # an unfinished earlier attempt starts over
    epochs, best, best_state = [], None, None
    step, start = 0, time.perf_counter()
    for epoch in range(1, ft.epochs + 1):
        loss_sum, n = 0.0, 0
        for input_ids, mask, labels in data.train.batches(
                order_rng.permutation(len(data.train)), ft.batch_size):
            input_ids, mask, labels = input_ids.to(device), mask.to(device), labels.to(device)
            with autocast_context(device, ft.precision):
                out = model(input_ids, mask).float()  # (B, C)
            loss = (F.mse_loss(out[:, 0], labels) if regression
                    else F.cross_entropy(out, labels))
            loss.backward()
            if ft.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), ft.clip_grad_norm)
            if not torch.isfinite(loss):
                raise UserError(f"{out_dir}: non-finite loss at step {step + 1}; lower "
                                "finetune.lr or check the labels")
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            loss_sum, n, step = loss_sum + loss.item(), n + 1, step + 1
        dev_pred = predict(model, data.dev, ft, device, regression)
        record = {"epoch": epoch, "step": step, "train_loss": loss_sum / n,
                  "lr": sched.get_last_lr()[-1], "seconds": time.perf_counter() - start,
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
        pred = predict(model, data.test, ft, device, regression)
        names = [f"{p:.6g}" for p in pred] if regression else [data.label_names[p] for p in pred]
        write_atomic(os.path.join(out_dir, "test_predictions.tsv"),
                     "index\tprediction\n" + "".join(f"{i}\t{p}\n" for i, p in enumerate(names)))
    results = {"inputs": inputs, "config": to_dict(spec), "metric": task.metric,
               "best_epoch": best["epoch"], "best": best, "final": epochs[-1],
               "epochs": epochs, "labels": data.label_names, "steps": total,
               "num_examples": {"train": len(data.train), "dev": len(data.dev),
                                **({"test": len(data.test)} if data.test else {})},
               "device": str(device), "seconds": time.perf_counter() - start}
    write_atomic(os.path.join(out_dir, RESULTS), json.dumps(results, indent=1) + "\n")
    return results


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
    write_atomic(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=1) + "\n")
    table = summary_table(rows, metric)
    write_atomic(os.path.join(out_dir, "summary.tsv"), table)
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
    p = argparse.ArgumentParser(prog="python -m trainer.finetune", description=__doc__,
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
    p.add_argument("--tokenizer", help="SentencePiece model (default: the checkpoint's corpus's)")
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
