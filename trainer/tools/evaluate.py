"""Evaluate trained checkpoints: RTD metrics of a discriminator on an RTD shard set, held-out
MLM metrics of a generator on the corpus.

    fast-electra evaluate --config configs/tiny.toml --checkpoint runs/tiny/rtd
    fast-electra evaluate --config configs/tiny.toml --checkpoint runs/tiny/aux \\
        --checkpoint runs/tiny/rtd/checkpoints/step_00000300 --rtd-dir shards/tiny/rtd \\
        [--epochs 0,1] [--max-sequences 2048] [--only rtd|mlm] [--json eval.json]

``--checkpoint`` is a checkpoint folder or a run folder (its latest checkpoint); give several
for one table row each. What is measured depends on what the checkpoint holds
(``trainer.pretrained``):

- a discriminator (``rtd``, ``fast-online``, or the D of a joint ``electra``/``decoupled``
  run): on the RTD shard set (``--rtd-dir``, else train.rtd_dir, else generate.rtd_dir), per
  epoch and overall, over the ordinary tokens (real and not a special id:
  ``trainer.modes.rtd.ordinary_mask``; [CLS]/[SEP] are never replaced and would flatter every
  figure): accuracy, precision/recall/F1 of the replaced class, ROC-AUC, BCE loss, the
  replaced fraction, and for reference the accuracy and loss of the best constant guess (the
  majority class; the replaced fraction as p). ``rtd_all_accuracy``, ``rtd_all_auc`` and
  ``rtd_all_loss`` are the same over every real (non-pad) token, specials included;
  ``tokens`` / ``all_tokens`` count both sets.
  ``--max-sequences N`` reads the first N positions of each epoch. Batches stream from the
  shards (``train.micro_batch_size_per_rank`` sequences each); the set is never loaded whole.
  An epoch the checkpoint was trained on (same shard set, reached by its step) is marked.
- a generator (``mlm``, or the G of a joint run): masked-token loss and accuracy on the
  held-out documents of data.corpus_dir, masked exactly as ``MLMTask`` evaluates during
  training (fixed evaluation seed, [mlm] ratios, train.holdout_fraction, at most
  train.eval_sequences or ``--max-sequences`` sequences), and the loss of the unigram
  baseline. The corpus token ids are held in memory, as in mlm training.

ROC-AUC (ties count 1/2) is exact: it is computed from counts of each distinct logit value
per label, merged every 2^20 tokens, so memory grows with the number of distinct logits, not
tokens: at most 65,536 for bf16 logits (GPU autocast), about one per token for fp32 logits.
Past 2^23 distinct values (128 MiB) the logits are binned, monotonically, by dropping low
mantissa bits, 4 at a time; the value is then approximate and ``rtd_auc_margin`` (0 when
exact) bounds the error: half the fraction of (replaced, kept) pairs that share a bin
(``rtd_all_auc`` is binned alike).

The model runs on train.device (``auto``: a GPU when visible) with bf16 autocast on GPU
(train.precision), under ``torch.inference_mode``. The model's shape comes from the
checkpoint's own config; data paths, batch size, masking and device from ``--config`` and
``--set``. ``--json OUT`` writes every number (and the resolved config) atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Literal

import torch

from trainer.atomic import write_text_atomic
from trainer.cli import config_parser, main_guard, resolve_config
from trainer.config.load import to_dict
from trainer.config.run import RunConfig
from trainer.data.corpus_shards import CorpusShards
from trainer.data.manifest import manifest_fingerprint
from trainer.data.prefetch import Prefetcher
from trainer.data.rtd_format import RTDBatch
from trainer.data.rtd_shards import RTDShards
from trainer.distributed import Dist, pick_device
from trainer.errors import UserError
from trainer.model.encoder_config import EncoderConfig
from trainer.model.heads import Discriminator, MLMModel
from trainer.modes.mlm import MLMTask
from trainer.modes.rtd import collate
from trainer.pretrained import (
    DISCRIMINATOR_KINDS,
    GENERATOR_KINDS,
    checkpoint_config,
    discriminator_config,
    generator_config,
    load_discriminator,
    load_generator,
    read_meta,
    resolve_checkpoint,
)
from trainer.step import autocast_context
from trainer.tools.eval_metrics import RTDAccumulator


def check_fits(model_cfg: EncoderConfig, vocab_size: int, seq_len: int, data: str,
               path: str) -> None:
    """Refuse data whose vocabulary or sequence length the model cannot take."""
    if vocab_size != model_cfg.vocab_size:
        raise UserError(f"{data} has a vocabulary of {vocab_size} tokens, the model of {path} "
                        f"has {model_cfg.vocab_size}: evaluate it on data made with its own "
                        "tokenizer")
    if model_cfg.position == "absolute" and seq_len > model_cfg.max_seq_len:
        raise UserError(f"{data} holds sequences of up to {seq_len} tokens, the model of "
                        f"{path} takes at most {model_cfg.max_seq_len} positions")


def _slice(part: RTDBatch, a: int, b: int) -> RTDBatch:
    return RTDBatch(part.positions[a:b], part.seq_ids[a:b], part.input_ids[a:b],
                    part.labels[a:b], part.temperature[a:b])


def rtd_batches(rtd: RTDShards, epoch: int, count: int, batch_size: int,
                device: torch.device) -> Prefetcher:
    """Collated batches of positions [0, count) of ``epoch``, built ahead in a thread. The
    shards are read about a row group at a time (a whole number of batches), not once per
    batch, so each row group is decompressed once."""
    per_chunk = max(1, -(-rtd.manifest["layout"]["row_group_rows"] // batch_size))
    chunk_rows = per_chunk * batch_size
    chunk: dict = {}

    def make(i: int, _micro: int) -> dict[str, torch.Tensor]:
        first = i // per_chunk * chunk_rows
        if chunk.get("start") != first:
            chunk.update(start=first, part=rtd.read_range(epoch, first,
                                                          min(first + chunk_rows, count)))
        a = i * batch_size - first
        return collate([_slice(chunk["part"], a, a + batch_size)])

    return Prefetcher(make, 0, -(-count // batch_size), 1, pin=device.type == "cuda")


def evaluate_rtd(model: Discriminator, rtd: RTDShards, epochs: list[int], cfg: RunConfig,
                 device: torch.device, max_sequences: int | None = None) -> dict:
    """{"epochs": {epoch: metrics}, "all": metrics over those epochs}, in batches of
    train.micro_batch_size_per_rank under train.precision."""
    batch_size, precision = cfg.train.micro_batch_size_per_rank, cfg.train.precision
    total = RTDAccumulator(device)
    per_epoch = {}
    for epoch in epochs:
        count = min(max_sequences or rtd.rows_per_epoch, rtd.rows_per_epoch)
        acc = RTDAccumulator(device)
        batches = rtd_batches(rtd, epoch, count, batch_size, device)
        try:
            with torch.inference_mode(), autocast_context(device, precision):
                for _ in range(-(-count // batch_size)):
                    b = {k: v.to(device, non_blocking=True) for k, v in batches.get().items()}
                    acc.add(model(b["input_ids"], b["attention_mask"]).float(), b)  # (B, T)
        finally:
            batches.close()
        per_epoch[epoch] = acc.metrics()
        total.merge(acc)
    return {"epochs": per_epoch, "all": total.metrics()}


def open_shards(root: str, epochs: list[int] | None) -> tuple[RTDShards, list[int]]:
    rtd = RTDShards(root)
    rtd.verify()
    chosen = list(range(rtd.num_epochs)) if epochs is None else epochs
    for e in chosen:
        rtd.epoch_files(e)  # raises, naming the epochs the set holds
    return rtd, chosen


def trained_epochs(meta: dict, rtd: RTDShards) -> set[int]:
    """Epochs of ``rtd`` that the discriminator of ``meta`` was trained on (none unless it
    was trained on this very shard set)."""
    if meta.get("data_fingerprint") != rtd.fingerprint:
        return set()
    seen = int(meta.get("samples_seen", 0))
    return set(range(min(-(-seen // rtd.rows_per_epoch), rtd.num_epochs)))


# ---------------------------------------------------------------------------------------------
# MLM metrics of a generator on the held-out documents
# ---------------------------------------------------------------------------------------------

def evaluate_mlm(model: MLMModel, cfg: RunConfig, device: torch.device,
                 max_sequences: int | None = None) -> dict:
    """MLMTask's own held-out evaluation (its masking, split and unigram baseline) of
    ``model``, with data and masking settings from ``cfg``."""
    if max_sequences is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train,
                                                                 eval_sequences=max_sequences))
    d = Dist(0, 1, 0, device)
    task = MLMTask(cfg, d)
    with torch.inference_mode(), autocast_context(device, cfg.train.precision):
        sums = task.evaluate(model, d)
    m = task.eval_metrics(sums)
    if not m:
        raise UserError(f"no held-out sequences in {cfg.data.corpus_dir} with "
                        f"train.holdout_fraction = {cfg.train.holdout_fraction}; raise it")
    return {"sequences": len(task.heldout), "masked_tokens": int(sums["count"]),
            "mlm_loss": m["eval_mlm_loss"], "mlm_accuracy": m["eval_mlm_accuracy"],
            "unigram_loss": m["eval_unigram_loss"]}


def heldout_warnings(meta: dict, cfg: RunConfig, corpus: CorpusShards) -> list[str]:
    """Why the held-out split may hold text the generator was trained on."""
    trained = checkpoint_config(meta)
    notes = []
    if meta.get("data_fingerprint") not in (None, manifest_fingerprint(corpus.manifest)):
        notes.append(f"it was trained on another corpus than {corpus.root}")
    if trained.train.holdout_fraction != cfg.train.holdout_fraction:
        notes.append(f"it was trained with train.holdout_fraction = "
                     f"{trained.train.holdout_fraction}, this evaluation holds out "
                     f"{cfg.train.holdout_fraction}")
    return notes


# ---------------------------------------------------------------------------------------------
# One checkpoint, many checkpoints, the table
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """What ``fast-electra evaluate`` (and ``fast-electra fair-eval``) measure, beyond the run
    config: the options of their command lines."""

    rtd_dir: str | None = None
    """The RTD shard set (--rtd-dir); None: train.rtd_dir, else generate.rtd_dir."""
    epochs: list[int] | None = None
    """The RTD epochs to evaluate (--epochs); None: every epoch of the set."""
    max_sequences: int | None = None
    """RTD: the first N positions of each epoch; MLM: at most N held-out sequences
    (--max-sequences); None: all, and train.eval_sequences."""
    only: Literal["rtd", "mlm"] | None = None
    """Only this part (--only); None: every part the checkpoint's models support."""


def evaluate_checkpoint(path: str, cfg: RunConfig, device: torch.device,
                        options: EvalOptions) -> dict:
    """Every metric the checkpoint's models support (or only ``options.only``)."""
    only, max_sequences = options.only, options.max_sequences
    path = resolve_checkpoint(path)
    meta = read_meta(path, "model", (*DISCRIMINATOR_KINDS, *GENERATOR_KINDS))
    kind = meta["model_kind"]
    if only == "rtd" and kind not in DISCRIMINATOR_KINDS:
        raise UserError(f"{path} holds only a generator (model kind {kind!r}); RTD metrics need "
                        "a checkpoint of a discriminator (train.mode rtd, electra, decoupled)")
    if only == "mlm" and kind not in GENERATOR_KINDS:
        raise UserError(f"{path} holds only a discriminator (model kind {kind!r}); MLM metrics "
                        "need a checkpoint of a generator (train.mode mlm, electra, decoupled)")
    result = {"checkpoint": path, "model_kind": kind, "mode": meta.get("mode"),
              "step": meta.get("step")}
    if kind in DISCRIMINATOR_KINDS and only in (None, "rtd"):
        root = options.rtd_dir or cfg.train.rtd_dir or cfg.generate.rtd_dir
        rtd, chosen = open_shards(root, options.epochs)
        check_fits(discriminator_config(meta), rtd.vocab_size,
                   rtd.manifest["corpus"]["max_seq_len"], f"the RTD shard set {root}", path)
        model = load_discriminator(path, device)
        rtd_result = evaluate_rtd(model, rtd, chosen, cfg, device, max_sequences)
        seen = trained_epochs(meta, rtd)
        for e, m in rtd_result["epochs"].items():
            m["trained_on"] = e in seen
        result["rtd"] = {"rtd_dir": rtd.root, **rtd_result}
        del model
    if kind in GENERATOR_KINDS and only in (None, "mlm"):
        corpus = CorpusShards(cfg.data.corpus_dir)
        check_fits(generator_config(meta), corpus.vocab_size, corpus.max_seq_len,
                   f"the corpus {corpus.root}", path)
        for note in heldout_warnings(meta, cfg, corpus):
            print(f"evaluate: warning: {path}: {note}; its held-out loss may be optimistic",
                  flush=True)
        result["mlm"] = {"corpus_dir": corpus.root,
                         **evaluate_mlm(load_generator(path, device), cfg, device,
                                        max_sequences)}
    return result


def _f(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


# Over the ordinary tokens, but the all_* columns: every real token, [CLS]/[SEP] included.
RTD_COLUMNS = (("accuracy", "rtd_accuracy"), ("precision", "rtd_precision"),
               ("recall", "rtd_recall"), ("f1", "rtd_f1"), ("auc", "rtd_auc"),
               ("loss", "rtd_loss"), ("replaced", "replaced_fraction"),
               ("majority", "majority_accuracy"), ("const_loss", "constant_loss"),
               ("all_acc", "rtd_all_accuracy"), ("all_auc", "rtd_all_auc"),
               ("all_loss", "rtd_all_loss"))


def format_table(results: list[dict]) -> str:
    """One row per checkpoint (RTD: overall, then one indented row per epoch; MLM: one)."""
    lines = []
    name_w = max(len(r["checkpoint"]) for r in results) + 2
    rtd = [r for r in results if "rtd" in r]
    if rtd:
        sets = sorted({r["rtd"]["rtd_dir"] for r in rtd})
        lines.append(f"RTD on {', '.join(sets)} (* = an epoch the model was trained on; "
                     "ordinary tokens, [CLS]/[SEP] excluded; all_*: every real token)")
        lines.append(f"{'checkpoint':<{name_w}}{'epoch':>6}{'tokens':>12}"
                     + "".join(f"{h:>11}" for h, _ in RTD_COLUMNS))
        for r in rtd:
            rows = [("all", r["rtd"]["all"], r["checkpoint"])]
            rows += [(f"{e}{'*' if m.get('trained_on') else ''}", m, "")
                     for e, m in r["rtd"]["epochs"].items()]
            for label, m, name in rows:
                lines.append(f"{name:<{name_w}}{label:>6}{m.get('tokens', 0):>12,}"
                             + "".join(f"{_f(m.get(k)):>11}" for _, k in RTD_COLUMNS))
    mlm = [r for r in results if "mlm" in r]
    if mlm:
        if lines:
            lines.append("")
        lines.append(f"MLM on the held-out documents of {mlm[0]['mlm']['corpus_dir']}")
        lines.append(f"{'checkpoint':<{name_w}}{'sequences':>10}{'masked':>10}{'mlm_loss':>11}"
                     f"{'accuracy':>11}{'unigram_loss':>14}")
        for r in mlm:
            m = r["mlm"]
            lines.append(f"{r['checkpoint']:<{name_w}}{m['sequences']:>10,}"
                         f"{m['masked_tokens']:>10,}{_f(m['mlm_loss']):>11}"
                         f"{_f(m['mlm_accuracy']):>11}{_f(m['unigram_loss']):>14}")
    return "\n".join(lines)


def write_json(path: str, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically, creating its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def parse_epochs(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(e) for e in text.split(",") if e.strip()]
    except ValueError:
        raise UserError(f"--epochs {text!r}: expected comma-separated epoch numbers, e.g. "
                        "0,1") from None


def add_eval_arguments(parser) -> None:
    """Options shared with pipeline.fair_eval."""
    parser.add_argument("--checkpoint", action="append", required=True, metavar="DIR",
                        help="checkpoint folder, or run folder (its latest checkpoint); "
                             "repeatable: one table row each")
    parser.add_argument("--max-sequences", type=int, metavar="N",
                        help="RTD: the first N positions of each epoch (default: all); MLM: "
                             "at most N held-out sequences (default: train.eval_sequences)")
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON here")


def eval_device(cfg: RunConfig) -> torch.device:
    return pick_device(cfg.train.device, 0)


def report(results: list[dict], cfg: RunConfig, json_path: str | None, extra=None) -> None:
    print(format_table(results), flush=True)
    if json_path:
        write_json(json_path, {**(extra or {}), "results": results, "config": to_dict(cfg)})
        print(f"evaluate: wrote {json_path}")


def run(argv: list[str] | None = None) -> list[dict]:
    parser = config_parser("fast-electra evaluate", __doc__)
    add_eval_arguments(parser)
    parser.add_argument("--rtd-dir", metavar="D",
                        help="RTD shard set (default: train.rtd_dir, else generate.rtd_dir)")
    parser.add_argument("--epochs", metavar="E,E",
                        help="RTD epochs to evaluate, e.g. 0,1 (default: all)")
    parser.add_argument("--only", choices=("rtd", "mlm"),
                        help="only this part (a joint checkpoint gives both by default)")
    args = parser.parse_args(argv)
    if args.max_sequences is not None and args.max_sequences < 1:
        raise UserError(f"--max-sequences must be >= 1, got {args.max_sequences}")
    cfg = resolve_config(args)
    options = EvalOptions(args.rtd_dir, parse_epochs(args.epochs), args.max_sequences,
                          args.only)
    device = eval_device(cfg)
    results = []
    for path in args.checkpoint:
        print(f"evaluate: {path} on {device}", flush=True)
        results.append(evaluate_checkpoint(path, cfg, device, options))
    report(results, cfg, args.json)
    return results


def main(argv: list[str] | None = None) -> int:
    return main_guard(run, argv)


if __name__ == "__main__":
    sys.exit(main())
