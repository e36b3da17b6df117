"""The fine-tuning config: a task file with ``[task]``, ``[finetune]`` and ``[grid]`` tables.

    spec = load_finetune_config("configs/finetune/sst2.toml", ["finetune.lr=3e-5"])
    spec.task.text_a, spec.finetune.lr, spec.grid        # {"lr": [1e-5, ...], ...}
    for overrides, ft in grid_points(spec): ...          # one FinetuneConfig per grid point

Task files ``extends = "base.toml"`` (configs/finetune/base.toml holds the shared defaults and
the search space). Loading is as strict as trainer.config: an unknown table or key, or a value
of the wrong type, is a ``ConfigError`` naming the key and listing the valid ones. ``[grid]``
maps a ``finetune`` key to the list of values to try; the grid is their product.

The shipped search space (configs/finetune/base.toml: lr {1e-5, 2e-5, 3e-5, 5e-5, 1e-4}, batch
size {16, 32}, epochs {2, 3, 10}, warm-up 0.1, layer-wise decay {0.8, 0.9}) follows ELECTRA /
Fast-ELECTRA fine-tuning practice but was written without access to Table 4 of the Fast-ELECTRA
paper (arXiv 2310.07347): its values must be checked against that table before results are
reported as a reproduction.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from trainer.config.load import (
    apply_overrides,
    build_sections,
    coerce,
    grid_product,
    read_toml,
    toml_value,
)
from trainer.config.load import describe as describe_sections
from trainer.config.sections import ConfigError, check

CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc")
REGRESSION_METRICS = ("pearson", "spearman")


@dataclass
class TaskConfig:
    """What the data looks like and how it is scored (one GLUE-style task)."""

    name: str = ""
    """Task name, used in printed summaries only."""
    type: Literal["classification", "regression"] = "classification"
    """Classification (labels are classes, ints or strings) or regression (float labels)."""
    format: Literal["auto", "tsv", "jsonl", "parquet"] = "auto"
    """File format of train/dev/test; ``auto`` decides per file by extension (.tsv, .jsonl /
    .json, .parquet). TSV files have a header row and no quoting (as GLUE's)."""
    text_a: str = "sentence"
    """Field (column) of the first text."""
    text_b: str = ""
    """Field of the second text of a pair task (e.g. ``sentence2``); empty = single sentence."""
    label: str = "label"
    """Field of the label. A test file may lack it."""
    labels: list[str] = field(default_factory=list)
    """Classification: the label values in class-index order (written as strings, e.g.
    ["0", "1"]); empty = the train file's distinct labels, sorted (numerically when they are
    all integers). For binary F1 the class at index 1 is the positive one."""
    metric: str = ""
    """Dev metric that picks the best epoch and the best grid point; empty = ``accuracy``
    (classification) or ``spearman`` (regression). ELECTRA reports mcc for CoLA, spearman
    for STS-B and accuracy elsewhere."""

    def __post_init__(self):
        check(bool(self.text_a), "task.text_a", "must name a field")
        check(bool(self.label), "task.label", "must name a field")
        check(self.text_b != self.text_a, "task.text_b", "must differ from task.text_a")
        check(len(set(self.labels)) == len(self.labels), "task.labels",
               f"has duplicates: {self.labels}")
        if self.type == "regression":
            check(not self.labels, "task.labels", "must be empty for a regression task")
        check(not self.labels or len(self.labels) >= 2, "task.labels",
               "needs at least 2 classes")
        allowed = self.metrics
        if not self.metric:
            self.metric = "accuracy" if self.type == "classification" else "spearman"
        check(self.metric in allowed, "task.metric",
               f"got {self.metric!r}; a {self.type} task reports {', '.join(allowed)}")

    @property
    def metrics(self) -> tuple[str, ...]:
        return CLASSIFICATION_METRICS if self.type == "classification" else REGRESSION_METRICS


@dataclass
class FinetuneConfig:
    """Optimisation of one fine-tuning run (the keys ``[grid]`` may sweep)."""

    lr: float = 1e-4
    """Peak learning rate (of the head; lower layers get less with layer_decay < 1)."""
    batch_size: int = 32
    """Training examples per step."""
    epochs: int = 3
    """Passes over the training set; dev is scored after each."""
    warmup_proportion: float = 0.1
    """Fraction of the steps with a linear warm-up from 0; then linear decay to 0."""
    layer_decay: float = 0.8
    """Layer-wise lr decay (ELECTRA): the head gets lr, the top block lr * d^2, each block
    below one more factor d, the embeddings lr * d^(L+2). 1.0 = the same lr everywhere."""
    weight_decay: float = 0.01
    """Decoupled weight decay (not on biases, LayerNorm, Admin omegas, relative biases)."""
    optimizer: Literal["adamw", "adamax"] = "adamw"
    """AdamW, or AdaMax (torch.optim.Adamax; weight decay then is L2 added to the gradient)."""
    adam_beta1: float = 0.9
    """First-moment decay."""
    adam_beta2: float = 0.999
    """Second-moment (AdaMax: infinity-norm) decay."""
    adam_eps: float = 1e-6
    """Denominator epsilon."""
    clip_grad_norm: float = 1.0
    """Gradient-norm clip; 0 = off."""
    max_seq_len: int = 0
    """Tokens per example incl. [CLS]/[SEP] (longest-first truncation); 0 = the checkpoint's
    data.max_seq_len, which is also the upper limit."""
    dropout: float = 0.1
    """Hidden dropout of the encoder and the head during fine-tuning."""
    attention_dropout: float = 0.1
    """Attention-probability dropout of the encoder during fine-tuning."""
    head_activation: Literal["gelu", "tanh"] = "gelu"
    """Head: dropout, dense, activation, dropout, out_proj. ``gelu`` is ELECTRA's
    classification head (as in Hugging Face's ElectraClassificationHead), ``tanh`` BERT's
    pooler."""
    pooling: Literal["cls", "mean"] = "cls"
    """What the head reads: the [CLS] state (ELECTRA, BERT) or the mean of every token's state
    (padding excluded). Replaced-token detection never trains the [CLS] state (its label is
    constant), so a pre-trained discriminator's [CLS] carries little about the text."""
    rescale_to_init: bool = True
    """Before fine-tuning, bring the pre-trained word embeddings back to the initialisation's
    RMS (trainer.model.encoder.Encoder.rescale_to_init_): the same function, but embeddings
    that pre-training grew 2-3x would otherwise adapt several times slower than a random
    init's. A no-op for --from-scratch."""
    eval_batch_size: int = 128
    """Examples per forward when scoring dev/test."""
    seed: int = 0
    """Seed of the head (and, with --from-scratch, encoder) initialisation, order and dropout."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` = the GPU when CUDA is visible, else CPU."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """``auto`` = bf16 autocast on GPU, fp32 on CPU."""

    def __post_init__(self):
        check(self.lr > 0, "finetune.lr", f"must be > 0, got {self.lr}")
        for name in ("batch_size", "epochs", "eval_batch_size"):
            check(getattr(self, name) >= 1, f"finetune.{name}",
                   f"must be >= 1, got {getattr(self, name)}")
        check(0.0 <= self.warmup_proportion <= 1.0, "finetune.warmup_proportion",
               f"must be in [0, 1], got {self.warmup_proportion}")
        check(0.0 < self.layer_decay <= 1.0, "finetune.layer_decay",
               f"must be in (0, 1], got {self.layer_decay}")
        check(self.weight_decay >= 0, "finetune.weight_decay", "must be >= 0")
        for name in ("adam_beta1", "adam_beta2"):
            check(0.0 <= getattr(self, name) < 1.0, f"finetune.{name}", "must be in [0, 1)")
        check(self.adam_eps > 0, "finetune.adam_eps", "must be > 0")
        check(self.clip_grad_norm >= 0, "finetune.clip_grad_norm", "must be >= 0 (0 = off)")
        check(self.max_seq_len == 0 or self.max_seq_len >= 4, "finetune.max_seq_len",
               f"must be 0 (the checkpoint's) or >= 4, got {self.max_seq_len}")
        for name in ("dropout", "attention_dropout"):
            check(0.0 <= getattr(self, name) < 1.0, f"finetune.{name}", "must be in [0, 1)")


@dataclass
class FinetuneSpec:
    """A whole task file: the task, one run's settings and the search space."""

    task: TaskConfig = field(default_factory=TaskConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    grid: dict[str, list] = field(default_factory=dict)


SECTIONS: dict[str, type] = {"task": TaskConfig, "finetune": FinetuneConfig}


def _build(raw: dict, source: str) -> FinetuneSpec:
    built = build_sections(raw, SECTIONS, source, free=("grid",))
    grid = raw.get("grid", {})
    check(isinstance(grid, dict), f"{source}: [grid]", f"must be a table, got {grid!r}")
    hints = typing.get_type_hints(FinetuneConfig)
    checked = {}
    for key, values in grid.items():
        check(key in hints, f"grid.{key}", f"is not a finetune key; valid: "
               f"{', '.join(sorted(hints))}")
        values = values if isinstance(values, list) else [values]
        check(len(values) >= 1, f"grid.{key}", "must list at least one value")
        checked[key] = [coerce(f"grid.{key}[{i}]", v, hints[key]) for i, v in enumerate(values)]
    return FinetuneSpec(built["task"], built["finetune"], checked)


def load_finetune_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()
                         ) -> FinetuneSpec:
    """Read a task file (following ``extends``) and apply ``table.key=value`` overrides."""
    path = Path(path)
    return _build(apply_overrides(read_toml(path), overrides, SECTIONS, free=("grid",)),
                  str(path))


def grid_points(spec: FinetuneSpec) -> list[tuple[dict, FinetuneConfig]]:
    """Every combination of the ``[grid]`` values, in file order, as (the swept values,
    the finetune config with them applied). Each point is validated here, before any run."""
    points = []
    for point in grid_product(list(spec.grid.items())):
        values = dict(point)
        try:
            points.append((values, dataclasses.replace(spec.finetune, **values)))
        except ConfigError as e:
            raise ConfigError(f"grid point {values}: {e}") from None
    return points


def point_name(values: dict) -> str:
    """A grid point's folder name, e.g. ``lr=2e-05,batch_size=32,epochs=3``."""
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in values.items()) or "default"


def to_dict(spec: FinetuneSpec) -> dict:
    return dataclasses.asdict(spec)


def describe(spec: FinetuneSpec) -> str:
    """Every key with its current value and meaning (``--help-config``)."""
    out = [describe_sections(spec, SECTIONS)]
    out.append("[grid]  finetune key = [values to try]; the grid is the product")
    out += [f"  grid.{k} = {toml_value(v)}" for k, v in spec.grid.items()]
    return "\n".join(out)
