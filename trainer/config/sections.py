"""Typed, strictly validated run configuration: one dataclass per concern, loaded from TOML.

Every command reads one TOML file plus ``--set section.key=value`` overrides:

    cfg = load_config("configs/tiny.toml", ["data.max_seq_len=256", "train.lr=1e-3"])
    print(to_toml(cfg))

An unknown section or key, or a value of the wrong type, is a ``ConfigError`` that names the
key and lists the valid ones. Each field's docstring (the string literal under it) is its
documentation; ``describe(cfg)`` renders them for ``--help-config``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from trainer.errors import UserError


class ConfigError(UserError):
    """A config file or override is invalid; the message names the key and the fix."""


def check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def _check_prob(value: float, key: str) -> None:
    check(0.0 <= value <= 1.0, key, f"must be in [0, 1], got {value}")


def _check_masking(section: str, mask_prob: float, mask_token_prob: float,
                   random_token_prob: float = 0.0) -> None:
    check(0.0 < mask_prob < 1.0, f"{section}.mask_prob", f"must be in (0, 1), got {mask_prob}")
    _check_prob(mask_token_prob, f"{section}.mask_token_prob")
    _check_prob(random_token_prob, f"{section}.random_token_prob")
    check(mask_token_prob + random_token_prob <= 1.0, f"{section}.mask_token_prob",
           f"{section}.mask_token_prob + random_token_prob must be <= 1")


@dataclass
class DataConfig:
    """Raw text in, corpus shards out (``pipeline.prepare``)."""

    input: list[str] = field(default_factory=list)
    """Globs of raw text (local paths or any Beam filesystem, e.g. gs://...). ``@stdlib`` stands
    for the Python standard library's sources (use with format = "pydoc"): the embedded default
    corpus, real English prose present on every machine with Python."""
    format: Literal["auto", "text", "jsonl", "parquet", "pydoc"] = "auto"
    """How to read the inputs. ``auto`` decides per file by extension (.jsonl/.json -> jsonl,
    .parquet -> parquet, .py -> pydoc, anything else -> text; .gz/.zst/.bz2 are decompressed)."""
    text_field: str = "text"
    """The JSON field (jsonl) or column (parquet) holding a document's text."""
    text_doc_split: Literal["blank_line", "line"] = "blank_line"
    """Plain text: a document is a block separated by blank lines, or a single line."""
    corpus_dir: str = "shards/corpus"
    """Where ``prepare`` writes the corpus shards and where every later stage reads them."""
    max_seq_len: int = 512
    """Tokens per sequence including [CLS] and [SEP]. Longer documents are split."""
    min_tail_tokens: int = 0
    """The last piece of a split document is dropped when it has fewer tokens than this
    (the count of dropped tokens goes into the manifest). 0 keeps every token."""
    part_text_bytes: int = 128 * 2**20
    """Text bytes per output part: each input file is cut into parts of about this many bytes,
    which sets the number and size of the Parquet files and the write parallelism."""
    row_group_rows: int = 4096
    """Sequences per Parquet row group (the unit a reader can fetch without a scan)."""
    max_undecodable_fraction: float = 0.05
    """The most of an input file's bytes (text, jsonl, pydoc) that may be invalid UTF-8, each
    run replaced by U+FFFD, before ``prepare`` refuses the file as binary or in another
    encoding (its text would be noise). 1.0 accepts any file; the counts are in the manifest."""
    cache_dir: str = ""
    """A local folder for what the trainer derives from the corpus once per machine: the flat
    token files that the corpus-reading modes (mlm, the joint baselines, fast-online)
    memory-map, one folder per corpus manifest (``trainer.data.CorpusTokens``). Empty =
    $XDG_CACHE_HOME/fast-electra, or ~/.cache/fast-electra. Safe to delete."""

    def __post_init__(self):
        if isinstance(self.input, str):
            self.input = [self.input]
        check(self.max_seq_len >= 8, "data.max_seq_len", f"must be >= 8, got {self.max_seq_len}")
        check(self.min_tail_tokens >= 0, "data.min_tail_tokens", "must be >= 0")
        check(self.part_text_bytes >= 1024, "data.part_text_bytes", "must be >= 1024")
        check(self.row_group_rows >= 1, "data.row_group_rows", "must be >= 1")
        check(bool(self.text_field), "data.text_field", "must not be empty")
        check(0.0 <= self.max_undecodable_fraction <= 1.0, "data.max_undecodable_fraction",
              f"must be in [0, 1], got {self.max_undecodable_fraction}")


@dataclass
class TokenizerConfig:
    """SentencePiece BPE tokenizer with fixed special-token ids (see trainer.tokenizer)."""

    model: str = ""
    """An existing SentencePiece ``.model`` file, or empty to train one from data.input."""
    vocab_size: int = 128_000
    """Vocabulary size (paper: 128K). Must equal the size of an existing model file."""
    train_max_sentences: int = 2_000_000
    """At most this many lines (sampled deterministically, in input order) train the model."""
    character_coverage: float = 0.9999
    """SentencePiece character_coverage; rare characters fall back to bytes."""

    def __post_init__(self):
        check(self.vocab_size >= 300, "tokenizer.vocab_size",
               f"must be >= 300 (256 byte-fallback pieces + specials), got {self.vocab_size}")
        check(self.train_max_sentences >= 1, "tokenizer.train_max_sentences", "must be >= 1")
        check(0.9 <= self.character_coverage <= 1.0, "tokenizer.character_coverage",
               "must be in [0.9, 1.0]")


@dataclass
class ModelConfig:
    """The discriminator (main model) of paper Table 2."""

    num_layers: int = 12
    """Transformer blocks."""
    hidden_size: int = 768
    """Model width."""
    num_heads: int = 12
    """Attention heads; must divide hidden_size."""
    ffn_size: int = 3072
    """Inner size of the feed-forward block."""
    position: Literal["relative", "absolute"] = "relative"
    """T5 relative position buckets shared across layers, or learned absolute positions."""
    rel_num_buckets: int = 32
    """Relative position buckets (paper: 32 base, 128 large)."""
    rel_max_distance: int = 128
    """Distance beyond which relative positions share a bucket (paper: 128 base, 256 large)."""
    rel_bias_scale: float = 1.0
    """The relative bias table is stored divided by this and multiplied back in the forward
    pass, so under Adam it learns at rel_bias_scale x train.lr (1 = plain T5). Word order
    reaches a relative-position model only through this table; at small step budgets it
    otherwise stays near its initial value (see trainer/model.py)."""
    layer_norm: Literal["post", "pre"] = "post"
    """Post-LN (paper, with Admin-style init) or pre-LN."""
    dropout: float = 0.1
    """Hidden dropout."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities."""
    layer_norm_eps: float = 1e-5
    """Epsilon of every LayerNorm (PyTorch's default; BERT / ELECTRA checkpoints use 1e-12,
    which ``python -m trainer.hf import`` sets so that an imported model is exact)."""

    def __post_init__(self):
        for name in ("num_layers", "hidden_size", "num_heads", "ffn_size",
                     "rel_num_buckets", "rel_max_distance"):
            check(getattr(self, name) >= 1, f"model.{name}", "must be >= 1")
        check(self.hidden_size % self.num_heads == 0, "model.num_heads",
               f"must divide model.hidden_size ({self.hidden_size}), got {self.num_heads}")
        check(self.rel_bias_scale > 0, "model.rel_bias_scale",
               f"must be > 0, got {self.rel_bias_scale}")
        _check_prob(self.dropout, "model.dropout")
        _check_prob(self.attention_dropout, "model.attention_dropout")
        check(self.layer_norm_eps > 0, "model.layer_norm_eps",
               f"must be > 0, got {self.layer_norm_eps}")


@dataclass
class AuxConfig:
    """The auxiliary MLM (generator): same width as the main model, fewer layers (Table 2)."""

    num_layers: int = 4
    """Transformer blocks of the auxiliary model (paper: 4 base, 6 large)."""
    hidden_size: int = 0
    """Width; 0 = same as model.hidden_size."""
    num_heads: int = 0
    """Attention heads; 0 = same as model.num_heads."""
    ffn_size: int = 0
    """Feed-forward size; 0 = same as model.ffn_size."""

    def __post_init__(self):
        check(self.num_layers >= 1, "aux.num_layers", "must be >= 1")
        for name in ("hidden_size", "num_heads", "ffn_size"):
            check(getattr(self, name) >= 0, f"aux.{name}", "must be >= 0 (0 = as the main model)")


@dataclass
class CorruptionConfig:
    """How sequences are masked and corrupted (DESIGN.md, "Corruption")."""

    replacement: Literal["aux", "uniform", "unigram", "smoothed_onehot",
                         "uniform->smoothed_onehot", "unigram->smoothed_onehot"] = "aux"
    """Replacement distribution: the frozen MLM, or a model-free one."""
    augmentation: Literal["temperature", "log_interp_unigram", "dropout", "drop_attention",
                          "drop_token"] = "temperature"
    """What the schedule controls."""
    schedule: Literal["exponential", "constant", "polynomial", "stepwise", "fixed"] = "exponential"
    """T(u) = 1 + (t0 - 1) exp(-u / tau) (Eq. 2), or an ablation; ``fixed`` is T = 1."""
    t0: float = 2.0
    """Initial temperature (or initial strength of the scheduled augmentation)."""
    tau: float = 0.1
    """Decay constant of the schedule (paper: 0.1)."""
    granularity: Literal["sample", "epoch"] = "sample"
    """Evaluate the schedule at each sample's own progress u, or once per epoch."""
    mask_prob: float = 0.15
    """Fraction of non-special tokens selected for prediction."""
    mask_token_prob: float = 0.85
    """Of the selected tokens, the fraction replaced by [MASK]; the rest keep the original."""
    smoothed_onehot_alpha: float = 0.35
    """Mass the smoothed one-hot distribution puts on the original token."""

    def __post_init__(self):
        _check_masking("corruption", self.mask_prob, self.mask_token_prob)
        _check_prob(self.smoothed_onehot_alpha, "corruption.smoothed_onehot_alpha")
        check(self.t0 > 0, "corruption.t0", f"must be > 0, got {self.t0}")
        check(self.tau > 0, "corruption.tau", f"must be > 0, got {self.tau}")


@dataclass
class GenerateConfig:
    """The offline corruption job (``pipeline.generate``)."""

    aux_checkpoint: str = ""
    """Checkpoint folder of the frozen auxiliary MLM (needed when corruption.replacement = aux)."""
    rtd_dir: str = "shards/rtd"
    """Where the RTD shard set is written."""
    epochs: int = 1
    """Epochs of corrupted data to dump (each a fresh permutation and fresh corruption)."""
    seed: int = 0
    """Seed of the training order, masking and sampling."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the auxiliary model runs; ``cuda`` fails (exit 2) if no GPU is visible, in the
    launcher for local runners and on each worker. Each model load on a machine takes the
    lowest free slot k (a lock file) and uses GPU k mod the GPU count
    (``pipeline.generate_fns.worker_device``)."""
    batch_tokens: int = 65_536
    """Tokens per inference batch: batches are max(1, batch_tokens // data.max_seq_len)
    consecutive positions of a part. Part of the fingerprint (the dropout augmentations use
    one rate per batch)."""
    part_rows: int = 65_536
    """Positions per output Parquet part of an epoch: the unit a worker corrupts and writes
    (it holds the part's input tokens, 2 bytes each up to 65,536 ids, while it works on it)."""
    model_copies: int = 0
    """Aux model copies per worker machine. 0: every Beam SDK process loads its own (Beam's
    default; on Dataflow use one SDK process per GPU). 1: one copy per machine shared by its
    SDK processes (RunInference ``large_model``); N > 1: N shared copies (RunInference
    ``model_copies``), spread over the machine's GPUs. Does not change the bytes; ignored by
    model-free replacements, which load no model."""

    def __post_init__(self):
        check(self.epochs >= 1, "generate.epochs", f"must be >= 1, got {self.epochs}")
        check(self.batch_tokens >= 1, "generate.batch_tokens", "must be >= 1")
        check(self.part_rows >= 1, "generate.part_rows", "must be >= 1")
        check(self.model_copies >= 0, "generate.model_copies",
              f"must be >= 0 (0 = one copy per SDK process), got {self.model_copies}")


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
    """The joint modes: ``electra``, ``decoupled`` (trainer.joint) and ``early-exit``
    (trainer.early_exit)."""

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
    """What to train (DESIGN.md, "Trainer")."""
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
    """Wrap the model in torch.compile."""
    verify_checksums: bool = False
    """Before training, read every file of the data set once to check its sha256 against the
    manifest (rank 0; ``--verify-checksums``). Without it only presence and row counts are
    checked, which is instant."""
    tensorboard: bool = False
    """Also write TensorBoard scalars to <out_dir>/tensorboard (needs pip install -e
    '.[tensorboard]')."""

    def __post_init__(self):
        check(self.eval_every >= 0, "train.eval_every", "must be >= 0")
        check(0.0 <= self.holdout_fraction < 1.0, "train.holdout_fraction", "must be in [0, 1)")
        check(self.eval_sequences >= 1, "train.eval_sequences", "must be >= 1")
        for name in ("max_steps", "micro_batch_size_per_rank", "global_batch_size",
                     "log_every", "checkpoint_every", "keep_checkpoints"):
            check(getattr(self, name) >= 1, f"train.{name}", "must be >= 1")
        check(self.grad_accum >= 0, "train.grad_accum", "must be >= 0 (0 = derive it)")
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


# ---------------------------------------------------------------------------------------------
# Loading and type checking
# ---------------------------------------------------------------------------------------------

def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list of {typing.get_args(tp)[0].__name__}"
    return tp.__name__


def coerce(key: str, value, tp):
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        check(value in typing.get_args(tp), key, f"got {value!r}, expected {_type_name(tp)}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, item_tp):
            value = [value]
        check(isinstance(value, list), key, f"got {value!r}, expected {_type_name(tp)}")
        return [coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    check(ok, key, f"got {value!r} ({type(value).__name__}), expected {_type_name(tp)}")
    return value


def parse_override(text: str):
    """``section.key=value`` -> (section, key, value) with value parsed as a TOML value when
    it is one (numbers, booleans, quoted strings, arrays) and taken as a bare string otherwise."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. train.lr=1e-3")
    dotted, raw = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def build_config(raw: dict, source: str = "<dict>") -> RunConfig:
    """Build a validated RunConfig from nested ``{section: {key: value}}``."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; valid sections: "
                          f"{sorted(SECTIONS)}")
    sections = {}
    for name, cls in SECTIONS.items():
        values = raw.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table, got {values!r}")
        hints = typing.get_type_hints(cls)
        bad = sorted(set(values) - set(hints))
        if bad:
            raise ConfigError(f"{source}: unknown key(s) {[f'{name}.{k}' for k in bad]}; valid "
                              f"keys of [{name}]: {', '.join(sorted(hints))}")
        kwargs = {k: coerce(f"{name}.{k}", v, hints[k]) for k, v in values.items()}
        sections[name] = cls(**kwargs)
    return RunConfig(**sections)


def read_toml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A config file's tables, with ``extends = "other.toml"`` (relative to the file) resolved:
    the file's keys override the ones it extends, key by key."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; the shipped configs are in configs/")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' makes a cycle: "
                          + " -> ".join(str(p) for p in (*seen, path.resolve())))
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends must be a path string, got {parent!r}")
    merged = read_toml(path.parent / parent, (*seen, path.resolve()))
    for section, values in raw.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...],
                    sections: dict[str, type], free: tuple[str, ...] = ()) -> dict:
    """Set each ``section.key=value`` of ``overrides`` in the nested dict ``raw``; the key must
    be a field of ``sections[section]``, except in the ``free`` sections (any key)."""
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in sections and section not in free:
            raise ConfigError(f"--set {text!r}: unknown section {section!r}; valid sections: "
                              f"{sorted({*sections, *free})}")
        if section in sections:
            hints = typing.get_type_hints(sections[section])
            if key not in hints:
                raise ConfigError(f"--set {text!r}: unknown key {section}.{key}; valid keys "
                                  f"of [{section}]: {', '.join(sorted(hints))}")
        raw.setdefault(section, {})[key] = value
    return raw


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a TOML run config (following ``extends``) and apply ``section.key=value``
    overrides, strictly."""
    path = Path(path)
    return build_config(apply_overrides(read_toml(path), overrides, SECTIONS), str(path))


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------------------------------
# Writing and describing
# ---------------------------------------------------------------------------------------------

def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(cfg) -> str:
    """The resolved config as TOML that ``load_config`` reads back to an equal RunConfig. Any
    dataclass whose fields are tables works (the fine-tuning task files use it too)."""
    lines = []
    for name, values in dataclasses.asdict(cfg).items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of a config dataclass."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def describe(cfg, sections: dict[str, type] = SECTIONS) -> str:
    """Every key of ``sections`` with its current value in ``cfg`` and its documentation
    (``--help-config``)."""
    out = []
    for name, cls in sections.items():
        out.append(f"[{name}]  {cls.__doc__}")
        docs = field_docs(cls)
        for k, v in dataclasses.asdict(getattr(cfg, name)).items():
            out.append(f"  {name}.{k} = {toml_value(v)}\n      {docs.get(k, '')}")
    return "\n".join(out)

