"""``train.mode = "rtd"``: the discriminator learns from the offline RTD shards, with no
auxiliary model in the loop (the Fast-ELECTRA saving, taken to zero).

    torchrun --nproc_per_node 2 -m trainer.train --config configs/tiny.toml --set train.mode=rtd

The shard set (train.rtd_dir, or generate.rtd_dir) decides the training order: the sample at
global index g = step * global_batch + i is position g % N of epoch g // N. Rank r of W reads
its slice [(m*W + r) * B, (m*W + r + 1) * B) of each global batch for micro-batch m straight
from the row groups that hold it, so any world size trains on the same stream and a resume
at any step needs no scan. Each rank keeps its files open and decodes each row group once
(``trainer.data.RTDShards``); rank 0 checks every file's row count at start, the others
each file's at its first read. Batches are padded on the right to their longest sequence;
padded positions are masked out of attention and of the loss.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainer.config.run import RunConfig
from trainer.data.order import micro_batch_start
from trainer.data.rtd_format import RTDBatch, pad_rows
from trainer.data.rtd_shards import RTDShards
from trainer.data.sealed import EpochWait
from trainer.distributed import Dist
from trainer.errors import UserError
from trainer.model.encoder_config import EncoderConfig
from trainer.model.heads import Discriminator
from trainer.modes.base import Task
from trainer.tokenizer import NUM_SPECIAL, PAD_ID


def ordinary_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The tokens the headline RTD metrics count, (B, T) bool: real (``attention_mask``) and not
    a special id ([CLS], [SEP], [UNK], ...: ids < NUM_SPECIAL). Specials are never selected for
    replacement and no sampler emits one (``trainer.corruption``), so they are always label 0
    (a replaced position is always ordinary) and would flatter every figure. ``input_ids``
    may be the original or the corrupted row: both have their specials at the same places."""
    return attention_mask.bool() & (input_ids >= NUM_SPECIAL)


# What rtd_counts returns (sums over tokens); an evaluation starts every one of them at 0.
RTD_SUM_KEYS = tuple(f"{name}_{k}" for name in ("rtd", "rtd_all")
                     for k in ("tp", "fp", "fn", "tn", "nll"))


def rtd_counts(logits: torch.Tensor, labels: torch.Tensor, input_ids: torch.Tensor,
               attention_mask: torch.Tensor) -> dict:
    """Sums for ``rtd_metrics``, all (B, T): confusion counts of the replaced class and the
    summed BCE, over the ordinary tokens (``rtd_tp/fp/fn/tn/nll``, see ``ordinary_mask``) and
    over every real token (``rtd_all_*``). Measurement only: the training loss is not this.
    Masked sums over every position, no gather: the values stay 0-d tensors on the device."""
    x, y = logits.float(), labels.float()  # (B, T)
    pred, gold = x > 0, y.bool()
    nll = F.binary_cross_entropy_with_logits(x, y, reduction="none").double()  # (B, T)
    out = {}
    for name, mask in (("rtd", ordinary_mask(input_ids, attention_mask)),
                       ("rtd_all", attention_mask.bool())):
        out.update({f"{name}_tp": (pred & gold & mask).sum(),
                    f"{name}_fp": (pred & ~gold & mask).sum(),
                    f"{name}_fn": (~pred & gold & mask).sum(),
                    f"{name}_tn": (~pred & ~gold & mask).sum(),
                    # where, not a product: a non-finite value at a padded position stays out.
                    f"{name}_nll": torch.where(mask, nll, 0.0).sum()})
    return out


def masked_mean_bce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
                    ) -> torch.Tensor:
    """Mean BCE-with-logits over mask's positions, all (B, T), computed at every position and
    weighted: the gather ``logits[mask]`` would read the count back from the device. An empty
    mask gives 0 (not NaN)."""
    mask = mask.bool()
    per = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    return torch.where(mask, per, 0.0).sum() / mask.sum().clamp_min(1)


def rtd_metrics(s: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Sums of ``rtd_counts`` -> the headline metrics over the ordinary tokens (accuracy,
    precision/recall/F1 of the replaced class, mean BCE ``rtd_loss``, ``replaced_fraction``),
    and for reference ``rtd_all_accuracy`` / ``rtd_all_loss`` over every real token."""
    tp, fp, fn, tn = s["rtd_tp"], s["rtd_fp"], s["rtd_fn"], s["rtd_tn"]
    total = max(tp + fp + fn + tn, 1.0)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    total_all = max(s["rtd_all_tp"] + s["rtd_all_fp"] + s["rtd_all_fn"] + s["rtd_all_tn"], 1.0)
    return {f"{prefix}rtd_accuracy": (tp + tn) / total, f"{prefix}rtd_precision": precision,
            f"{prefix}rtd_recall": recall, f"{prefix}rtd_f1": f1,
            f"{prefix}rtd_loss": s["rtd_nll"] / total,
            f"{prefix}replaced_fraction": (tp + fn) / total,
            f"{prefix}rtd_all_accuracy": (s["rtd_all_tp"] + s["rtd_all_tn"]) / total_all,
            f"{prefix}rtd_all_loss": s["rtd_all_nll"] / total_all}


@dataclass(frozen=True)
class DataPlan:
    """A run of train.max_steps x train.global_batch_size samples drawn in order from
    ``epochs`` x ``samples_per_epoch`` (sample g is position g % N of epoch g // N): what it
    needs, which epochs it trains on and which one it holds out. ``pipeline.generate``, the
    trainer and ``trainer.tools.plan`` all judge a data plan with this one rule."""

    max_steps: int
    """train.max_steps."""
    global_batch_size: int
    """train.global_batch_size: across every rank and micro-batch, not per rank."""
    epochs: int
    """Epochs of the data set (generate.epochs, or the RTD manifest's)."""
    samples_per_epoch: int
    """Rows per epoch: the corpus's sequences."""

    @classmethod
    def of(cls, cfg: RunConfig, epochs: int, samples_per_epoch: int) -> DataPlan:
        return cls(cfg.train.max_steps, cfg.train.global_batch_size, epochs, samples_per_epoch)

    @property
    def needed(self) -> int:
        return self.max_steps * self.global_batch_size

    @property
    def available(self) -> int:
        return self.epochs * self.samples_per_epoch

    @property
    def epochs_trained(self) -> int:
        """Epochs the run reaches into, the last one perhaps in part."""
        return -(-self.needed // self.samples_per_epoch)

    @property
    def feasible(self) -> bool:
        return self.needed <= self.available

    @property
    def heldout_epoch(self) -> int | None:
        """The last epoch when the run never reaches it (evaluation reads its first rows)."""
        return self.epochs - 1 if self.epochs > self.epochs_trained else None

    def steps_possible(self, epochs: int) -> int:
        return epochs * self.samples_per_epoch // self.global_batch_size

    def shortfall(self, source: str, fix: str) -> str:
        """The refusal: the numbers, then the two ways out (more epochs, fewer steps)."""
        n, held = self.epochs_trained, self.steps_possible(self.epochs - 1)
        return (f"train.max_steps = {self.max_steps:,} x train.global_batch_size = "
                f"{self.global_batch_size:,} needs {self.needed:,} samples; {source} "
                f"{self.epochs} epoch(s) x {self.samples_per_epoch:,} = {self.available:,} "
                f"samples ({self.steps_possible(self.epochs):,} steps); {fix}: generate.epochs "
                f"= {n + 1} ({n} to train on + 1 held out), or train.max_steps = "
                f"{self.steps_possible(self.epochs):,}"
                + (f" ({held:,} to keep epoch {self.epochs - 1} held out)" if held else ""))

    def heldout_warning(self, fix: str) -> str | None:
        """One line when every epoch is trained on: evaluation then has no unseen rows and
        the run logs no eval_* metrics. None when an epoch is held out."""
        if self.heldout_epoch is not None:
            return None
        n = self.epochs_trained
        return (f"warning: no held-out epoch: train.max_steps x train.global_batch_size = "
                f"{self.needed:,} samples reach into all {self.epochs} epoch(s) of "
                f"{self.samples_per_epoch:,}, so the run logs no eval_* metrics; {fix} "
                f"generate.epochs = {n + 1} ({n} trained + 1 held out)")


RTD_FIX = "generate more epochs or lower train.max_steps"


def check_rtd_plan(cfg: RunConfig, shards: RTDShards) -> DataPlan:
    """The shard set's manifest against the run, before any shard is read: a UserError when
    it cannot feed train.max_steps."""
    plan = DataPlan.of(cfg, shards.num_epochs, shards.rows_per_epoch)
    if not plan.feasible:
        raise UserError(plan.shortfall(f"{shards.root} holds", RTD_FIX))
    return plan


def open_rtd(cfg: RunConfig, verify: bool = True, checksums: bool = False,
             log: Callable[[str], None] | None = None) -> RTDShards:
    """The shard set to train on, checked against the model config. With ``verify`` every
    file's footer is read now to check its row count (one rank does it: the others check
    each file when they first read it), with ``checksums`` its sha256 too (a full read). A
    set still being generated is followed: a read of an epoch not sealed yet waits for its
    seal as train.wait_for_epochs_s says, printing to ``log``."""
    root = cfg.train.rtd_dir or cfg.generate.rtd_dir
    rtd = RTDShards(root)
    rtd.follow(EpochWait(cfg.train.wait_for_epochs_s, log))
    if verify:
        rtd.verify(checksums)
    if rtd.vocab_size != cfg.tokenizer.vocab_size:
        raise UserError(f"{root} was generated with a vocabulary of {rtd.vocab_size}, the "
                        f"config says tokenizer.vocab_size = {cfg.tokenizer.vocab_size}; set "
                        f"--set tokenizer.vocab_size={rtd.vocab_size}")
    seq_len = rtd.manifest["corpus"]["max_seq_len"]
    if seq_len > cfg.data.max_seq_len:
        raise UserError(f"{root} holds sequences of up to {seq_len} tokens, the model takes "
                        f"data.max_seq_len = {cfg.data.max_seq_len}")
    return rtd


@dataclass(frozen=True)
class SampleStream:
    """The global stream of samples a discriminator trains on, as ``RTDTask.setup`` checks it
    against the run and names it to the user."""

    num_epochs: int
    """Epochs of the stream."""
    samples_per_epoch: int
    """Samples in each epoch."""
    fingerprint: str
    """Identifies the stream's data: a resume on other data is refused."""
    what: str
    """How messages name the stream, e.g. "rtd on <rtd_dir>"."""
    fix: str
    """What a user does when the stream is too short for train.max_steps."""


class RTDTask(Task):
    """``train.mode = "rtd"``. The global stream is ``rows(start, count)``; subclasses that
    compute the rows instead of reading them (``fast-online``) override ``rows``/``ready``."""

    model_kind = "discriminator"
    rtd: RTDShards | None = None
    """The shard set read (None for the subclasses that compute their rows)."""

    def __init__(self, cfg: RunConfig, d: Dist):
        if d.is_main and cfg.train.verify_checksums:
            root = cfg.train.rtd_dir or cfg.generate.rtd_dir
            print(f"train: checking the sha256 of every file of {root}", flush=True)
        self.rtd = open_rtd(cfg, verify=d.is_main,
                            checksums=d.is_main and cfg.train.verify_checksums,
                            log=_print if d.is_main else None)
        if d.is_main and not self.rtd.complete:
            print(f"train: {self.rtd.root} is still being generated: epoch(s) "
                  f"{self.rtd.sealed_epochs() or 'none'} of {self.rtd.num_epochs} sealed; each "
                  "epoch is waited for before it is read", flush=True)
        self.setup(cfg, d, SampleStream(self.rtd.num_epochs, self.rtd.rows_per_epoch,
                                        self.rtd.fingerprint, f"rtd on {self.rtd.root}",
                                        RTD_FIX))

    def setup(self, cfg: RunConfig, d: Dist, stream: SampleStream) -> None:
        """The discriminator, the step budget and the held-out epoch of ``stream``."""
        num_epochs, samples_per_epoch = stream.num_epochs, stream.samples_per_epoch
        self.cfg, self.device = cfg, d.device
        self.data_fingerprint = stream.fingerprint
        self.num_epochs, self.samples_per_epoch = num_epochs, samples_per_epoch
        plan = DataPlan.of(cfg, num_epochs, samples_per_epoch)
        total, steps = plan.available, plan.steps_possible(num_epochs)
        if not plan.feasible:
            raise UserError(plan.shortfall(f"{stream.what} holds", stream.fix))
        self.model = Discriminator(EncoderConfig.main(cfg))
        fraction = self.replaced_fraction()
        self.model.head.init_prior_(fraction)
        # An epoch the run never reaches is held out: evaluation reads its first positions.
        self.heldout_epoch = plan.heldout_epoch
        if d.is_main:
            u_end = cfg.train.max_steps * cfg.train.global_batch_size / total
            print(f"train: {stream.what}: {num_epochs} epoch(s) x {samples_per_epoch:,} samples, "
                  f"{cfg.train.max_steps} of {steps} possible steps; discriminator "
                  f"{self.model.num_parameters():,} parameters, its RTD bias at the prior "
                  f"log-odds of {fraction:.2%} replaced", flush=True)
            if u_end < 1.0:
                print(f"train: warning: the run stops at u = {u_end:.3f} of the data plan: its "
                      f"temperature schedule is truncated there ({1 - u_end:.1%} of the "
                      "samples unused)", flush=True)
            if self.heldout_epoch is not None:
                print(f"train: epoch {self.heldout_epoch} is never trained on: evaluation "
                      f"uses its first {cfg.train.eval_sequences} samples", flush=True)
            elif cfg.train.eval_every:
                print(f"train: {plan.heldout_warning('to hold one out, make')}", file=sys.stderr,
                      flush=True)

    def optimized(self, model):
        return [("model", model, self.cfg.train.lr)]

    def replaced_fraction(self) -> float:
        """The share of real tokens labelled replaced in the stream's first global batch: the
        RTD head's prior. Read from the data rather than the manifest so that ``fast-online``
        (no manifest) starts from the very same model as ``rtd`` on its shards."""
        b = self.ready({k: v.to(self.device)
                        for k, v in self.rows(0, self.cfg.train.global_batch_size).items()})
        fraction = float(b["labels"][b["attention_mask"]].float().mean())
        # Clamped: a degenerate set (nothing or everything replaced) has no finite log-odds.
        return min(max(fraction, 1e-4), 1 - 1e-4)

    def rows(self, start: int, count: int) -> dict[str, torch.Tensor]:
        """Global samples [start, start + count), across epochs, as padded CPU tensors."""
        n = self.samples_per_epoch
        parts, g = [], start
        while g < start + count:
            epoch, pos = divmod(g, n)
            end = min(pos + (start + count - g), n)
            parts.append(self.rtd.read_range(epoch, pos, end))
            g += end - pos
        return collate(parts)

    def ready(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch on the device as the discriminator sees it (shard rows already are)."""
        return b

    def await_step(self, step: int) -> None:
        """Every epoch the whole global batch of ``step`` touches is sealed (waits on a set
        still being generated). Every rank waits for the same epochs before the same step, so
        none sits in a collective while another waits for data."""
        if self.rtd is None or self.rtd.complete:
            return
        g, n = self.cfg.train.global_batch_size, self.samples_per_epoch
        for epoch in range(step * g // n, ((step + 1) * g - 1) // n + 1):
            self.rtd.require(epoch)

    def micro_batch(self, step: int, micro: int, d: Dist) -> dict[str, torch.Tensor]:
        t = self.cfg.train
        self.await_step(step)
        start = micro_batch_start(step, micro, d.rank, d.world_size, t.global_batch_size,
                                  t.micro_batch_size_per_rank)
        batch = self.rows(start, t.micro_batch_size_per_rank)
        batch["sample_ids"] = torch.arange(start, start + t.micro_batch_size_per_rank)
        return batch

    def loss(self, model, b):
        b = self.ready(b)
        logits = model(b["input_ids"], b["attention_mask"]).float()  # (B, T)
        real = b["attention_mask"]
        loss = masked_mean_bce(logits, b["labels"], real)
        with torch.no_grad():
            sums = rtd_counts(logits, b["labels"], b["input_ids"], real)
            sums.update(tokens=real.sum(), temperature_sum=b["temperature"].sum(),
                        samples=torch.tensor(float(len(b["temperature"]))),
                        sample_id_sum=b["sample_ids"].double().sum())
        return loss, sums

    def train_metrics(self, sums):
        # sample_id_sum: the sum of global sample indices trained in the interval, the same
        # for any world size (a cheap witness that every rank read its own slice).
        return {**rtd_metrics(sums), "temperature": sums["temperature_sum"] / sums["samples"],
                "sample_id_sum": sums["sample_id_sum"]}

    def evaluate(self, model, d):
        if self.heldout_epoch is None:
            return {}
        n = min(self.cfg.train.eval_sequences, self.samples_per_epoch)
        lo, hi = n * d.rank // d.world_size, n * (d.rank + 1) // d.world_size
        size = self.cfg.train.micro_batch_size_per_rank
        first = self.heldout_epoch * self.samples_per_epoch
        sums = dict.fromkeys(RTD_SUM_KEYS, 0.0)  # every rank reports every key
        for start in range(lo, hi, size):
            rows = self.rows(first + start, min(size, hi - start))
            b = self.ready({k: v.to(self.device) for k, v in rows.items()})
            logits = model(b["input_ids"], b["attention_mask"]).float()
            for k, v in rtd_counts(logits, b["labels"], b["input_ids"],
                                   b["attention_mask"]).items():
                sums[k] += v.item()
        return sums

    def eval_metrics(self, sums):
        """eval_rtd_* (eval_rtd_loss included) over the ordinary tokens; eval_rtd_all_*."""
        if not sums["rtd_all_tp"] + sums["rtd_all_fp"] + sums["rtd_all_fn"] + \
                sums["rtd_all_tn"]:
            return {}
        return rtd_metrics(sums, "eval_")


def _print(line: str) -> None:
    print(line, flush=True)


def collate(parts: list[RTDBatch]) -> dict[str, torch.Tensor]:
    """Decoded shard rows (RTDBatch parts, in order) -> padded tensors: input_ids (B, T)
    long, attention_mask (B, T) bool, labels (B, T) float, temperature (B,)."""
    batch = RTDBatch.concat(parts)
    flat = slice(batch.offsets[0], batch.offsets[-1])
    ids, real = pad_rows(batch.tokens[flat], batch.lengths, PAD_ID, np.int64)  # (B, T) each
    labels, _ = pad_rows(batch.flat_labels[flat], batch.lengths, 0, np.float32)  # (B, T)
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(real),
            "labels": torch.from_numpy(labels),
            "temperature": torch.from_numpy(np.array(batch.temperature, np.float32))}
