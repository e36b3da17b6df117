"""What every training mode is: the Task protocol, and CorpusTask, the base of the modes that
read the corpus (mlm, electra / decoupled, early-exit) with its keyed masking and held-out split.

``trainer.train`` runs the same loop for every task; a task owns its model, its data order and
its metrics. Sums returned by ``loss``/``evaluate`` are added over micro-batches, ranks and
the log interval before ``train_metrics``/``eval_metrics`` turn them into ratios.

    task = build_task(cfg, dist)            # trainer.modes.registry: MLMTask for "mlm", ...
    batch = task.micro_batch(step, micro, dist)
    loss, sums = task.loss(model, batch)
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from trainer.config.run import MLMConfig, RunConfig
from trainer.config.sections import CorruptionConfig
from trainer.corruption.batch import KeyedBatch
from trainer.corruption.distributions import unigram_logprobs
from trainer.corruption.masking import mask_positions
from trainer.data.corpus_shards import open_corpus
from trainer.data.corpus_tokens import CorpusTokens, TrainOrder
from trainer.data.manifest import manifest_fingerprint
from trainer.distributed import Dist
from trainer.errors import UserError
from trainer.model.heads import MLMHead, RTDHead
from trainer.tokenizer import NUM_SPECIAL

# Held-out masks are fixed across runs, steps and seeds: evaluations stay comparable.
_EVAL_SEED = 7


class Task(Protocol):
    model: torch.nn.Module
    model_kind: str
    data_fingerprint: str
    samples_per_epoch: int

    def optimized(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, float]]: ...

    def micro_batch(self, step: int, micro: int, d: Dist) -> dict[str, torch.Tensor]:
        """This rank's micro-batch ``micro`` of step ``step``, as CPU tensors (built ahead in
        a background thread; the loop moves them to the device)."""

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]: ...

    def evaluate(self, model: torch.nn.Module, d: Dist) -> dict[str, float]: ...

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]: ...

    def after_step(self, done: int, step_sums: dict[str, torch.Tensor | float], d: Dist
                   ) -> None:
        """Runs on every rank after each optimizer step (``done`` steps made) with that step's
        rank-local sums, still on the device; state it changes must live in the model (a
        resume restores only that). Default: nothing (early-exit updates its exit
        probabilities here)."""


def expected_replaced_fraction(unigram_counts: np.ndarray, mask_prob: float) -> float:
    """Share of real tokens a generator that samples from the corpus unigram replaces by a
    different token: mask_prob x (ordinary share of tokens) x (1 - sum_v p_v^2). It is where
    a joint generator starts (its MLM bias is the unigram), so the discriminator's prior."""
    counts = np.asarray(unigram_counts, np.float64)
    p = counts[NUM_SPECIAL:] / max(counts[NUM_SPECIAL:].sum(), 1.0)
    ordinary = counts[NUM_SPECIAL:].sum() / max(counts.sum(), 1.0)
    return mask_prob * ordinary * (1.0 - float((p * p).sum()))


def init_priors_(model: torch.nn.Module, unigram_counts: np.ndarray,
                 replaced_fraction: float | None = None) -> None:
    """Start every MLM head at the corpus unigram (``MLMHead.init_unigram_``) and every RTD
    head at the prior log-odds of ``replaced_fraction`` (``RTDHead.init_prior_``), so that
    neither spends its first steps learning a constant. A resume overwrites both."""
    logp = unigram_logprobs(unigram_counts)[0]  # (V,)
    for m in model.modules():
        if isinstance(m, MLMHead):
            m.init_unigram_(logp.to(m.bias.device))
        elif isinstance(m, RTDHead):
            if replaced_fraction is None:
                raise ValueError("init_priors_: the model has an RTD head; pass "
                                 "replaced_fraction")
            m.init_prior_(replaced_fraction)


class CorpusTask(Task):
    """What the corpus-reading modes share: the corpus in memory, the held-out split, the
    step -> samples order, and masking keyed by (seed, epoch, seq_id), so a step's masks never
    depend on world size or resumption. Subclasses add the model, loss and metrics."""

    eval_seed = _EVAL_SEED

    def __init__(self, cfg: RunConfig, d: Dist, masking: MLMConfig | CorruptionConfig):
        self.cfg, self.device = cfg, d.device
        self.masking = masking
        corpus = open_corpus(cfg)
        self.data_fingerprint = manifest_fingerprint(corpus.manifest)
        self.tokens = CorpusTokens(corpus, cfg.data.cache_dir)
        train_ids, heldout = self.tokens.split(cfg.train.holdout_fraction)
        if len(train_ids) == 0:
            raise UserError(f"train.holdout_fraction = {cfg.train.holdout_fraction} leaves no "
                            f"training sequences in {cfg.data.corpus_dir}")
        self.order = TrainOrder(train_ids, cfg.train.global_batch_size, cfg.train.seed)
        self.heldout = heldout[:cfg.train.eval_sequences]
        self.samples_per_epoch = len(train_ids)
        self.unigram_counts = corpus.unigram_counts()

    def announce(self, d: Dist, what: str) -> None:
        if d.is_main:
            print(f"train: {what}; {self.samples_per_epoch:,} training and "
                  f"{len(self.heldout):,} held-out sequences from {self.cfg.data.corpus_dir}",
                  flush=True)

    def optimized(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, float]]:
        """(name, module, peak lr) per optimizer."""
        return [("model", model, self.cfg.train.lr)]

    def _masked(self, seq_ids: np.ndarray, epochs: np.ndarray, seed: int
                ) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = self.tokens.batch(seq_ids)  # (B, T) each
        masked = input_ids.clone()
        selected = torch.zeros_like(input_ids, dtype=torch.bool)
        sid = torch.from_numpy(seq_ids)
        for e in np.unique(epochs):  # a global batch can straddle an epoch boundary
            rows = torch.from_numpy(epochs == e)
            masked[rows], selected[rows] = mask_positions(
                KeyedBatch(input_ids[rows], sid[rows], seed, int(e)), self.masking,
                vocab_size=self.cfg.tokenizer.vocab_size)
        tensors = {"input_ids": masked, "original_ids": input_ids,
                   "attention_mask": attention_mask, "selected": selected,
                   "labels": input_ids[selected], "seq_ids": sid,
                   "epochs": torch.from_numpy(epochs)}
        return tensors

    def micro_batch(self, step: int, micro: int, d: Dist) -> dict[str, torch.Tensor]:
        seq_ids, epochs = self.order.micro_batch(step, micro, d.rank, d.world_size,
                                                 self.cfg.train.micro_batch_size_per_rank)
        return self._masked(seq_ids, epochs, self.cfg.train.seed)

    def heldout_batches(self, d: Dist):
        """This rank's share of the held-out sequences, masked with the fixed eval seed."""
        mine = self.heldout[d.rank::d.world_size]
        size = self.cfg.train.micro_batch_size_per_rank
        for i in range(0, len(mine), size):
            seq_ids = mine[i:i + size]
            batch = self._masked(seq_ids, np.zeros(len(seq_ids), np.int64), self.eval_seed)
            yield {k: v.to(self.device) for k, v in batch.items()}
