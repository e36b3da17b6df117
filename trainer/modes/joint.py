"""Joint training baselines: original ELECTRA and DecoupledOptim (and the Emb-Gen ablation).

    torchrun --nproc_per_node 2 -m trainer.train --config configs/tiny.toml --set train.mode=electra
    torchrun --nproc_per_node 2 -m trainer.train --config configs/tiny.toml \\
        --set train.mode=decoupled --set joint.generator_lr=2e-4

``electra`` (Clark et al. 2020): a generator (the [aux] sizes) and a discriminator ([model])
trained together on dynamically masked corpus sequences; loss = MLM(G) + joint.rtd_weight *
RTD(D); one AdamW over both. Token embeddings are shared (``shared``: D reads G's table, G's
LM head is tied to it), separate (``none``) or gradient-disentangled (``gdes``, DeBERTaV3:
D's table = stop_grad(G's) + its own delta).

``decoupled`` (DecoupledOptim, Dong et al. 2023): separate embeddings and two AdamW optimizers
with their own learning rates (joint.generator_lr for G, train.lr for D). The sample that
replaces a masked token carries no gradient and nothing is shared, so G's gradient comes only
from the MLM loss and D's only from the RTD loss: each optimizer sees only its own model's
gradient, and a loss weight no longer changes the updates (Adam is invariant to it).

Replacements are samples (``sample_tokens``) of G's distribution at the masked positions
(specials excluded), keyed by (seed, epoch, seq_id, position) like the offline pipeline; labels
are 1 where the sample differs from the original token. With ``joint.replacement =
"embedding_topk"`` (Kang et al.'s "Emb-Gen" ablation) the sample is instead one of the k
nearest tokens (L2) to the original in the discriminator's embedding table, and the mean
squared distance between the two embeddings is added to the loss (joint.embedding_l2_weight);
the generator is still trained, so its MLM accuracy stays comparable, but not sampled from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from trainer.config.run import RunConfig
from trainer.corruption.distributions import aux_logprobs
from trainer.corruption.sampling import sample_tokens
from trainer.distributed import Dist
from trainer.errors import UserError
from trainer.model.encoder_config import EncoderConfig
from trainer.model.heads import Discriminator, MLMModel, selected_index
from trainer.modes.base import CorpusTask, expected_replaced_fraction, init_priors_
from trainer.modes.rtd import RTD_SUM_KEYS, masked_mean_bce, rtd_counts, rtd_metrics
from trainer.tokenizer import NUM_SPECIAL


class GDESEmbedding(nn.Module):
    """DeBERTaV3's gradient-disentangled embedding: ``stop_grad(source) + delta``. The RTD
    loss trains only ``delta``; the source table learns from the generator's MLM loss alone."""

    def __init__(self, source: nn.Embedding):
        super().__init__()
        self.source = [source]  # a list: not a submodule, so its weights are not owned twice
        self.delta = nn.Parameter(torch.zeros_like(source.weight))

    @property
    def weight(self) -> torch.Tensor:
        return self.source[0].weight.detach() + self.delta  # (V, H)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)  # (B, T, H)


def embedding_topk_logprobs(table: torch.Tensor, original: torch.Tensor, k: int
                            ) -> torch.Tensor:
    """Kang et al.'s "Emb-Gen": uniform over the k nearest normal tokens (L2) to each original
    token in the embedding ``table`` (V, H), the token itself excluded. original (N,) ->
    log-probabilities (N, V): log(1/k) on the neighbours, -inf elsewhere."""
    table = table.detach().float()
    dist = torch.cdist(table[original], table)  # (N, V)
    dist[:, :NUM_SPECIAL] = math.inf
    dist.scatter_(1, original[:, None], math.inf)
    near = dist.topk(k, dim=-1, largest=False).indices  # (N, k)
    logp = torch.full_like(dist, -math.inf)
    return logp.scatter_(1, near, -math.log(k))


@dataclass(frozen=True)
class JointInputs:
    """A masked micro-batch as ``JointModel.forward`` takes it: a dataclass of tensors, which
    DDP passes to the module as it is."""

    masked_ids: torch.Tensor
    """(B, T) the sequences with the selected positions masked: the generator's input."""
    original_ids: torch.Tensor
    """(B, T) the sequences as the corpus holds them."""
    attention_mask: torch.Tensor
    """(B, T) bool, True on the real tokens."""
    selected: torch.Tensor
    """(B, T) bool, the positions the generator predicts and its samples replace."""
    seq_ids: torch.Tensor
    """(B,) each row's sequence id, a key of its sampling noise."""
    epochs: torch.Tensor
    """(B,) each row's epoch, a key of its sampling noise (a batch may straddle two)."""
    targets: torch.Tensor | None = None
    """(N,) original_ids at selected, gathered on the host (the batch's labels); its length is
    the selected count, so the step reads nothing back from the device. None: that count is
    read back (a host sync: for callers outside training)."""

    @classmethod
    def of(cls, b: dict[str, torch.Tensor]) -> JointInputs:
        """From a batch of ``CorpusTask`` (its ``input_ids`` are the masked ones)."""
        return cls(b["input_ids"], b["original_ids"], b["attention_mask"], b["selected"],
                   b["seq_ids"], b["epochs"], targets=b["labels"])


class JointModel(nn.Module):
    """Generator + discriminator, one forward for both (DDP sees one module)."""

    def __init__(self, cfg: RunConfig):
        super().__init__()
        g_cfg, d_cfg = EncoderConfig.aux(cfg), EncoderConfig.main(cfg)
        sharing = cfg.joint.embedding_sharing if cfg.train.mode != "decoupled" else "none"
        if sharing != "none" and g_cfg.hidden_size != d_cfg.hidden_size:
            raise UserError(f"joint.embedding_sharing = {sharing!r} needs aux.hidden_size == "
                            f"model.hidden_size ({g_cfg.hidden_size} != {d_cfg.hidden_size}); "
                            "set joint.embedding_sharing = 'none'")
        self.generator = self.build_generator(g_cfg, cfg)
        table = self.generator.encoder.word_emb
        shared = {"shared": table, "gdes": GDESEmbedding(table), "none": None}[sharing]
        self.discriminator = Discriminator(d_cfg, word_embeddings=shared)
        self.topk = cfg.joint.embedding_topk_k if cfg.joint.replacement == "embedding_topk" \
            else 0
        self.embedding_l2_weight = cfg.joint.embedding_l2_weight

    def build_generator(self, g_cfg: EncoderConfig, cfg: RunConfig) -> nn.Module:
        return MLMModel(g_cfg)

    def generate(self, masked_ids, attention_mask, index, targets, exit_index):
        """(MLM loss, the logits (N, V) replacements are sampled from, stats) at the selected
        positions ``index`` (N,) (``selected_index``), whose original tokens are targets (N,)."""
        g_logits = self.generator(masked_ids, attention_mask, positions_index=index)  # (N, V)
        stats = {"gen_correct": (g_logits.detach().argmax(-1) == targets).sum(),
                 "gen_count": torch.tensor(float(len(targets)))}
        return F.cross_entropy(g_logits.float(), targets), g_logits, stats

    def forward(self, batch: JointInputs, seed: int, exit_index: int | torch.Tensor = -1):
        """(generator loss, rtd_loss, stats) of ``batch``; exit_index picks the early-exit
        generator's exit that samples (the deepest by default; a 0-d device tensor is chosen
        on the device)."""
        original_ids, attention_mask = batch.original_ids, batch.attention_mask
        targets = original_ids[batch.selected] if batch.targets is None else batch.targets
        T = original_ids.shape[1]
        index = selected_index(batch.selected, len(targets))  # (N,) flat, batch-then-time
        rows, cols = index // T, index % T  # (N,) each
        mlm_loss, g_logits, stats = self.generate(batch.masked_ids, attention_mask, index,
                                                  targets, exit_index)
        # Only Emb-Gen reads the table (under gdes, .weight is a fresh (V, H) sum).
        table = self.discriminator.encoder.word_emb.weight if self.topk else None  # (V, H)
        with torch.no_grad():
            logp = embedding_topk_logprobs(table, targets, self.topk) if self.topk \
                else aux_logprobs(g_logits.detach())  # (N, V), specials excluded
            # Keyed noise with each row's own epoch (a batch may straddle two): one call, the
            # draws those of one call per epoch, since a row's draw depends on its keys only.
            sampled = sample_tokens(logp, seed, batch.epochs[rows], batch.seq_ids[rows], cols,
                                    torch.ones(len(targets), device=logp.device))  # (N,)
            corrupted = original_ids.flatten().scatter(0, index, sampled).view_as(original_ids)
            labels = (corrupted != original_ids) & attention_mask  # (B, T)
        if self.topk:  # Emb-Gen's auxiliary term, on the discriminator's own table
            l2 = (table[targets] - table[sampled]).float().pow(2).sum(-1).mean()
            stats["embedding_l2"] = l2.detach()
            mlm_loss = mlm_loss + self.embedding_l2_weight * l2
        d_logits = self.discriminator(corrupted, attention_mask)  # (B, T)
        real = attention_mask.bool()  # the loss covers every real token, as in ELECTRA
        rtd_loss = masked_mean_bce(d_logits, labels, real)
        with torch.no_grad():  # the metrics' sums: ordinary tokens, and all real ones
            stats.update(rtd_counts(d_logits, labels, corrupted, real))
        return mlm_loss, rtd_loss, stats


JOINT_EVAL_SUM_KEYS = (*RTD_SUM_KEYS, "gen_correct", "gen_count", "gen_nll_sum", "batches")
"""The held-out sums of every joint mode (what ``joint_metrics`` and eval_metrics read)."""


def joint_metrics(s: dict[str, float], prefix: str = "") -> dict[str, float]:
    return {**rtd_metrics(s, prefix),
            f"{prefix}gen_mlm_accuracy": s["gen_correct"] / max(s["gen_count"], 1.0)}


class JointTask(CorpusTask):
    """``train.mode`` = ``electra`` or ``decoupled`` (and, by subclassing, ``early-exit``)."""

    model_kind = "joint"

    def __init__(self, cfg: RunConfig, d: Dist):
        c = cfg.corruption  # ELECTRA's recipe: 15% selected, 85% [MASK], 15% kept
        super().__init__(cfg, d, c)
        self.model = self.build_model(cfg)
        init_priors_(self.model, self.unigram_counts,
                     expected_replaced_fraction(self.unigram_counts, c.mask_prob))
        self.decoupled = cfg.train.mode == "decoupled"
        self.rtd_weight = 1.0 if self.decoupled else cfg.joint.rtd_weight
        self.announce(d, f"{cfg.train.mode}: generator "
                      f"{self.model.generator.num_parameters():,} + discriminator "
                      f"{self.model.discriminator.num_parameters():,} parameters")

    def build_model(self, cfg: RunConfig) -> JointModel:
        return JointModel(cfg)

    def optimized(self, model: JointModel) -> list[tuple[str, nn.Module, float]]:
        if self.decoupled:
            return [("discriminator", model.discriminator, self.cfg.train.lr),
                    ("generator", model.generator, self.cfg.joint.generator_lr)]
        return [("model", model, self.cfg.train.lr)]

    def exit_index(self, b: dict[str, torch.Tensor]) -> int:
        return -1

    def exit_choice(self, b: dict[str, torch.Tensor]) -> int | torch.Tensor:
        """The sampling exit of the step, for the model: ``exit_index`` or its device form."""
        return -1

    def _run(self, model, b, seed, exit_index: int | torch.Tensor = -1):
        return model(JointInputs.of(b), seed, exit_index)

    def loss(self, model, b):
        mlm_loss, rtd_loss, stats = self._run(model, b, self.cfg.train.seed, self.exit_choice(b))
        stats.update(mlm_loss_sum=mlm_loss.detach(), tokens=b["attention_mask"].sum())
        return mlm_loss + self.rtd_weight * rtd_loss, stats

    def train_metrics(self, sums):
        n = max(sums["micro_batches"], 1.0)
        extra = {"embedding_l2": sums["embedding_l2"] / n} if "embedding_l2" in sums else {}
        # rtd_loss (ordinary tokens) and rtd_all_loss (every real token, token-weighted: the
        # term that is optimized) come from joint_metrics.
        return {"gen_mlm_loss": sums["mlm_loss_sum"] / n, **joint_metrics(sums), **extra}

    def evaluate(self, model, d):
        # Every rank reports the same keys, zeros included: train.evaluate all-reduces them,
        # and a rank with no held-out batch (fewer held-out sequences than ranks) that
        # returned {} would skip the collective the other ranks wait in. Only what
        # eval_metrics reads is summed; the rest of a forward's stats are training-only.
        sums = dict.fromkeys(JOINT_EVAL_SUM_KEYS, 0.0)
        # The bare module: an inference forward needs none of DDP's gradient or buffer sync,
        # and a rank-local loop must not enter a wrapper that may communicate.
        model = model.module if isinstance(model, DDP) else model
        for b in self.heldout_batches(d):
            mlm_loss, _, stats = self._run(model, b, self.eval_seed)
            # Token-weighted, not a mean of batch means: how the held-out sequences fall into
            # batches depends on the world size, the loss over them must not.
            stats.update(gen_nll_sum=mlm_loss * stats["gen_count"], batches=1.0)
            for k in JOINT_EVAL_SUM_KEYS:
                sums[k] += float(stats[k])
        return sums

    def eval_metrics(self, sums):
        if not sums.get("batches"):
            return {}
        return {"eval_gen_mlm_loss": sums["gen_nll_sum"] / max(sums["gen_count"], 1.0),
                **joint_metrics(sums, "eval_")}
