"""The training sections ([mlm], [joint], [train]) and RunConfig, the whole run: every command
reads this one object and uses the sections it needs.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from typing import Literal

from trainer.config.sections import (
    AuxConfig,
    CorruptionConfig,
    DataConfig,
    GenerateConfig,
    ModelConfig,
    TokenizerConfig,
    _check_masking,
    check,
)


@dataclass
class MLMConfig:
    """Dynamic masking of ``train.mode = "mlm"`` (pre-training the auxiliary model; BERT)."""

    mask_prob: float = 0.15
    """Fraction of non-special tokens selected for prediction."""
    mask_token_prob: float = 0.8
    """Of the selected tokens, the fraction replaced by [MASK]."""
    random_token_prob: float = 0.1
    """Of the selected tokens, the fraction replaced by a random token; the rest are kept."""

    def __post_init__(self):
        _check_masking("mlm", self.mask_prob, self.mask_token_prob, self.random_token_prob)


@dataclass
class JointConfig:
    """The joint modes: ``electra``, ``decoupled`` (trainer.modes.joint) and ``early-exit``
    (trainer.modes.early_exit)."""

    embedding_sharing: Literal["shared", "none", "gdes"] = "shared"
    """electra: generator and discriminator share token embeddings, keep their own, or use
    DeBERTaV3's gradient-disentangled sharing. decoupled always keeps them separate."""
    rtd_weight: float = 50.0
    """electra: lambda in loss = MLM + lambda * RTD (ELECTRA: 50)."""
    generator_lr: float = 2e-4
    """decoupled: peak lr of the generator's own optimizer (paper: 2e-4; D uses train.lr)."""
    exit_layers: list[int] = field(default_factory=list)
    """early-exit: generator layers with an MLM head, ascending, the last = aux.num_layers
    (paper: 3, 6, 9, 12). Empty = 4 exits evenly spaced up to aux.num_layers."""
    exit_init_probs: list[float] = field(default_factory=list)
    """early-exit: initial exit-selection probabilities P_1, one per exit. Empty = proportional
    to 1, 2, ..., K (paper, 4 exits: 0.1, 0.2, 0.3, 0.4)."""
    exit_update_every: int = 100
    """early-exit: steps between updates P <- softmax(P + alpha * clip(acc_t - acc_{t-1}, -1,
    1) * R), R = 0, 1, ..., K-1, acc = the discriminator's RTD accuracy over those steps."""
    exit_alpha: float = 1.0
    """early-exit: alpha of the P update (the paper's value was not available offline)."""
    replacement: Literal["generator", "embedding_topk"] = "generator"
    """electra/decoupled: sample replacements from the generator, or Kang et al.'s "Emb-Gen"
    ablation: one of the embedding_topk_k nearest tokens (L2) to the original in the
    discriminator's embedding table, with an auxiliary L2 term."""
    embedding_topk_k: int = 10
    """embedding_topk: neighbours to choose among (uniformly)."""
    embedding_l2_weight: float = 1.0
    """embedding_topk: weight of the auxiliary term, the mean squared L2 distance between the
    discriminator embeddings of each original token and its replacement."""

    def __post_init__(self):
        check(self.rtd_weight > 0, "joint.rtd_weight", f"must be > 0, got {self.rtd_weight}")
        check(self.generator_lr > 0, "joint.generator_lr", "must be > 0")
        check(all(x >= 1 for x in self.exit_layers)
               and self.exit_layers == sorted(set(self.exit_layers)), "joint.exit_layers",
               f"must be ascending layer numbers >= 1, got {self.exit_layers}")
        check(not self.exit_init_probs or (
            len(self.exit_init_probs) == len(self.exit_layers or [0] * 4)
            and all(p >= 0 for p in self.exit_init_probs)
            and abs(sum(self.exit_init_probs) - 1) < 1e-6), "joint.exit_init_probs",
               "must be one non-negative probability per exit, summing to 1, got "
               f"{self.exit_init_probs}")
        check(self.exit_update_every >= 1, "joint.exit_update_every", "must be >= 1")
        check(self.exit_alpha >= 0, "joint.exit_alpha", "must be >= 0")
        check(self.embedding_topk_k >= 1, "joint.embedding_topk_k", "must be >= 1")
        check(self.embedding_l2_weight >= 0, "joint.embedding_l2_weight", "must be >= 0")


@dataclass
class TrainConfig:
    """The trainer (``torchrun -m trainer.train``)."""

    mode: Literal["rtd", "mlm", "electra", "decoupled", "fast-online", "early-exit"] = "rtd"
    """What to train: rtd on shards, mlm, or a joint mode (docs/training.md)."""
    out_dir: str = "runs/run"
    """Run folder: config.toml, metrics.jsonl, checkpoints/."""
    rtd_dir: str = ""
    """RTD shard set to stream in ``rtd`` mode; empty = generate.rtd_dir."""
    max_steps: int = 125_000
    """Optimizer steps (paper: 125K)."""
    warmup_steps: int = 10_000
    """Linear warm-up steps (paper: 10K), then linear decay to 0 at max_steps."""
    micro_batch_size_per_rank: int = 32
    """Sequences per forward/backward on one rank."""
    grad_accum: int = 0
    """Micro-batches per optimizer step; 0 = derive it at launch as global_batch_size /
    (micro_batch_size_per_rank * world size), so one config runs on any number of ranks."""
    global_batch_size: int = 2048
    """Sequences per optimizer step across all ranks (paper: 2048); must equal
    micro_batch_size_per_rank * grad_accum * world size."""
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and LayerNorm)."""
    clip_grad_norm: float = 2.0
    """Gradient-norm clip."""
    seed: int = 0
    """Seed of initialisation, dynamic masking and dropout."""
    resume: str = ""
    """Checkpoint folder to resume from, ``auto`` for the latest in out_dir, or empty."""
    log_every: int = 100
    """Steps per metrics line."""
    checkpoint_every: int = 5000
    """Steps per checkpoint."""
    keep_checkpoints: int = 3
    """Checkpoints kept (oldest deleted first)."""
    eval_every: int = 1000
    """Steps between evaluations on the held-out documents (0 = never)."""
    holdout_fraction: float = 0.01
    """Fraction of the corpus documents held out of MLM training for evaluation (chosen by a
    fixed hash of doc_id, the same for every run on the corpus)."""
    eval_sequences: int = 512
    """At most this many held-out sequences per evaluation."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` = the rank's GPU when CUDA is visible, else CPU."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """``auto`` = bf16 autocast on GPU, fp32 on CPU."""
    compile: bool = False
    """Compile every Transformer block with torch.compile (static shapes), before DDP wraps
    the model; evaluation runs the same modules uncompiled."""
    compile_pad_multiple: int = 64
    """With train.compile: each training batch is padded on the right to the smallest
    multiple of this >= its longest sequence (at most data.max_seq_len), so the compiled
    blocks see at most ceil(data.max_seq_len / this) sequence lengths, one graph each;
    0 = pad to the longest sequence (one graph per distinct length). Unused without
    train.compile, where batches are padded to their longest sequence."""
    wait_for_epochs_s: float = 120.0
    """In ``rtd`` mode, on a shard set still being generated (pipeline.generate writes it
    epoch by epoch; docs/training.md): before every epoch it needs (and the held-out one),
    each rank waits for the epoch's seal, saying what it waits for every 30 s. While a live
    generate run holds the epoch it waits however long that takes; when none does (a crashed
    run being re-run, a gap between two range jobs) it waits this many seconds, then stops
    (exit 2) naming the epoch and the command that generates it. 0 = never wait: an unsealed
    epoch stops the run at once. A complete set never waits."""
    verify_checksums: bool = False
    """Before training, read every file of the data set once to check its sha256 against the
    manifest (rank 0; ``--verify-checksums``). Without it only presence and row counts are
    checked, which is instant."""
    dist_timeout_s: float = 1800.0
    """Seconds a rank waits for the others in a collective (``init_process_group``'s
    timeout; NCCL's own default is 600) before the run stops with a timeout error. Data
    checks happen before the process group starts, split over the ranks, so this only has
    to cover the ranks' start-up skew and the longest step, checkpoint or evaluation."""
    tensorboard: bool = False
    """Also write TensorBoard scalars to <out_dir>/tensorboard (needs pip install -e
    '.[tensorboard]')."""

    def __post_init__(self):
        check(self.eval_every >= 0, "train.eval_every", "must be >= 0")
        check(0.0 <= self.holdout_fraction < 1.0, "train.holdout_fraction", "must be in [0, 1)")
        check(self.eval_sequences >= 1, "train.eval_sequences", "must be >= 1")
        check(self.wait_for_epochs_s >= 0 and math.isfinite(self.wait_for_epochs_s),
              "train.wait_for_epochs_s", f"must be a number of seconds >= 0 (0 = never wait), "
              f"got {self.wait_for_epochs_s}")
        check(self.dist_timeout_s > 0 and math.isfinite(self.dist_timeout_s),
              "train.dist_timeout_s", f"must be a number of seconds > 0, got "
              f"{self.dist_timeout_s} (e.g. 1800)")
        for name in ("max_steps", "micro_batch_size_per_rank", "global_batch_size",
                     "log_every", "checkpoint_every", "keep_checkpoints"):
            check(getattr(self, name) >= 1, f"train.{name}", "must be >= 1")
        check(self.grad_accum >= 0, "train.grad_accum", "must be >= 0 (0 = derive it)")
        check(self.compile_pad_multiple >= 0, "train.compile_pad_multiple",
              f"must be >= 0 (0 = pad to the longest sequence), got {self.compile_pad_multiple}")
        check(0 <= self.warmup_steps <= self.max_steps, "train.warmup_steps",
               f"must be in [0, train.max_steps={self.max_steps}], got {self.warmup_steps}")
        check(self.lr > 0 and math.isfinite(self.lr), "train.lr", f"must be > 0, got {self.lr}")
        per_rank_step = self.micro_batch_size_per_rank * max(self.grad_accum, 1)
        check(self.global_batch_size % per_rank_step == 0, "train.global_batch_size",
               f"{self.global_batch_size} is not a multiple of micro_batch_size_per_rank * "
               f"grad_accum = {per_rank_step}")


@dataclass
class RunConfig:
    """A whole run: every command reads this one object and uses the sections it needs."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    aux: AuxConfig = field(default_factory=AuxConfig)
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    mlm: MLMConfig = field(default_factory=MLMConfig)
    joint: JointConfig = field(default_factory=JointConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS: dict[str, type] = typing.get_type_hints(RunConfig)
