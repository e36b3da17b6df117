"""The run config's sections for the data side and the models: [data], [tokenizer], [model],
[aux], [corruption], [generate]. One dataclass per concern, each field checked where it is
defined and documented by the string literal under it (``describe`` renders those for
``--help-config``). The training sections and RunConfig are in trainer.config.run, loading
in trainer.config.load.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
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
    memory-map, one folder per corpus manifest (``trainer.data.corpus_tokens.CorpusTokens``).
    Empty = $XDG_CACHE_HOME/fast-electra, or ~/.cache/fast-electra. Safe to delete."""

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
    """The corpus tokenizer: SentencePiece BPE with fixed special-token ids (trained by
    pipeline.prepare, see trainer.tokenizer), or a Hugging Face fast tokenizer (an existing
    model's), renumbered so that its five special tokens take the same ids."""

    kind: str = "sentencepiece"
    """"sentencepiece", or "hf": tokenise with the Hugging Face tokenizer at tokenizer.model
    (e.g. the vocabulary of an imported public masked LM)."""
    model: str = ""
    """sentencepiece: an existing ``.model`` file, or empty to train one from data.input.
    hf: a folder with tokenizer.json (an HF model folder, or the folder fast-electra hf
    import writes) or a tokenizer.json file."""
    vocab_size: int = 128_000
    """Vocabulary size (paper: 128K). Must equal the size of an existing tokenizer."""
    train_max_sentences: int = 2_000_000
    """At most this many lines (sampled deterministically, in input order) train the model."""
    character_coverage: float = 0.9999
    """SentencePiece character_coverage; rare characters fall back to bytes."""

    def __post_init__(self):
        check(self.kind in ("sentencepiece", "hf"), "tokenizer.kind",
              f"must be 'sentencepiece' or 'hf', got {self.kind!r}")
        if self.kind == "hf":
            check(bool(self.model), "tokenizer.model", "tokenizer.kind = 'hf' needs the "
                  "tokenizer's folder or tokenizer.json here")
            check(self.vocab_size > 5, "tokenizer.vocab_size",
                  f"must be > 5 (the special tokens), got {self.vocab_size}")
        else:
            check(self.vocab_size >= 300, "tokenizer.vocab_size",
                  f"must be >= 300 (256 byte-fallback pieces + specials), got {self.vocab_size}")
        check(self.train_max_sentences >= 1, "tokenizer.train_max_sentences", "must be >= 1")
        check(0.9 <= self.character_coverage <= 1.0, "tokenizer.character_coverage",
               "must be in [0.9, 1.0]")


@dataclass(frozen=True)
class EncoderShape:
    """What fixes an encoder's shape and regularisation, declared once: [model] is exactly
    these keys, [aux] overrides the sizes among them, and the model's EncoderConfig
    (trainer.model.encoder_config) adds the vocabulary and sequence length. Frozen because
    EncoderConfig is, and a dataclass inherits from one of the same kind."""

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
    otherwise stays near its initial value (see trainer/model/encoder.py)."""
    layer_norm: Literal["post", "pre"] = "post"
    """Post-LN (paper, with Admin-style init) or pre-LN."""
    dropout: float = 0.1
    """Hidden dropout."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities."""
    attention: Literal["sdpa", "flex"] = "sdpa"
    """Attention kernel: "sdpa" (scaled_dot_product_attention with the relative bias and the
    padding as one (batch, heads, T, T) additive mask, built with its gradient in every layer)
    or "flex" (compiled flex_attention on CUDA: the bias is read from the (buckets, heads)
    table inside the kernel and padded key blocks are skipped; CUDA for training, torch has
    no CPU backward for it). Same function and weights either way. "flex" has no attention
    dropout, so it needs model.attention_dropout = 0; a later request for it (fine-tuning,
    the drop_attention augmentation) runs that call on the sdpa path."""
    layer_norm_eps: float = 1e-5
    """Epsilon of every LayerNorm (PyTorch's default; BERT / ELECTRA checkpoints use 1e-12,
    which ``fast-electra hf import`` sets so that an imported model is exact)."""


def shape_fields() -> tuple[str, ...]:
    """The names of EncoderShape's fields, in declaration order."""
    return tuple(f.name for f in fields(EncoderShape))


@dataclass(frozen=True)
class ModelConfig(EncoderShape):
    """The discriminator (main model) of paper Table 2."""

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
        check(self.attention in ("sdpa", "flex"), "model.attention",
              f"must be 'sdpa' or 'flex', got {self.attention!r}")
        check(self.attention != "flex" or self.attention_dropout == 0.0, "model.attention",
              f"'flex' has no dropout on attention probabilities: set "
              f"model.attention_dropout = 0 (got {self.attention_dropout}) or use 'sdpa'")
        check(self.layer_norm_eps > 0, "model.layer_norm_eps",
               f"must be > 0, got {self.layer_norm_eps}")


@dataclass
class AuxConfig:
    """The auxiliary MLM (generator): same width as the main model, fewer layers (Table 2).
    Each key is the EncoderShape field of the same name; 0 takes [model]'s."""

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
    """How sequences are masked and corrupted (docs/design.md, "Corruption")."""

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
    (``pipeline.gpu_slots.worker_device``)."""
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
    model-free replacements, which load no model. On the local runner on a GPU machine the
    default worker count is GPUs x max(1, model_copies) (at most one per core); an explicit
    ``--direct_num_workers`` wins."""
    head_precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    """Precision of the aux's LM head (the vocabulary projection at the masked positions,
    in chunks of at most 2**24 logits) on CUDA: "fp32" (exact, the same draws as a CPU up to
    near-ties), "tf32" (TF32 tensor-core matmul, scoped to the head) or "bf16" (bf16 autocast
    on the head); the log-softmax and the sampling stay float32. Faster on a GPU at a 128K
    vocabulary, but other draws: a non-fp32 value is part of the shard set's fingerprint.
    A CPU computes only fp32: other values are refused with generate.device = cpu, and by a
    worker that finds no GPU."""

    def __post_init__(self):
        check(self.epochs >= 1, "generate.epochs", f"must be >= 1, got {self.epochs}")
        check(self.batch_tokens >= 1, "generate.batch_tokens", "must be >= 1")
        check(self.part_rows >= 1, "generate.part_rows", "must be >= 1")
        check(self.model_copies >= 0, "generate.model_copies",
              f"must be >= 0 (0 = one copy per SDK process), got {self.model_copies}")
        check(self.head_precision in ("fp32", "tf32", "bf16"), "generate.head_precision",
              f"must be 'fp32', 'tf32' or 'bf16', got {self.head_precision!r}")
        check(self.head_precision == "fp32" or self.device != "cpu", "generate.head_precision",
              f"{self.head_precision!r} needs a GPU, but generate.device = 'cpu': a CPU "
              "computes the head in fp32 only; set generate.head_precision = 'fp32' or "
              "generate.device = 'cuda'")
