"""The boolean-mask implementation of the training step, kept as the reference the masked-sum
implementation is compared against (tests/trainer/modes/test_no_host_sync.py): each function is
a mode's method in its boolean-mask form, with boolean gathers, ``nonzero``, ``unique`` and
host reads. ``boolean_reference()`` puts them on the classes for the duration of a ``with``
block, so one model instance (same parameters) can run either implementation.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from trainer.corruption.batch import KeyedBatch
from trainer.corruption.corrupt import aux_autocast, corrupt_batch
from trainer.corruption.distributions import aux_logprobs
from trainer.corruption.sampling import sample_tokens
from trainer.model.heads import MLMHead, MLMModel
from trainer.modes.early_exit import EarlyExitGenerator, EarlyExitModel, EarlyExitTask
from trainer.modes.fast_online import FastOnlineTask
from trainer.modes.joint import JointInputs, JointModel, JointTask, embedding_topk_logprobs
from trainer.modes.mlm import MLMTask
from trainer.modes.rtd import RTDTask, ordinary_mask

# --- trainer/model/heads.py ----------------------------------------------------------------


def mlm_head_forward(self, hidden: torch.Tensor, positions: torch.Tensor | None = None
                     ) -> torch.Tensor:
    if positions is not None:
        if positions.dtype != torch.bool or positions.shape != hidden.shape[:2]:
            raise ValueError(f"positions must be a bool mask of shape "
                             f"{tuple(hidden.shape[:2])}, got {positions.dtype} "
                             f"{tuple(positions.shape)}")
        hidden = hidden[positions]  # (N, H)
    h = self.ln(F.gelu(self.dense(hidden)))  # (..., H)
    return F.linear(h, self.weight, self.bias)  # (..., V)


def mlm_model_forward(self, input_ids, attention_mask=None, positions_mask=None, dropout=None):
    return self.head(self.encoder(input_ids, attention_mask, dropout=dropout), positions_mask)


# --- trainer/modes/rtd.py ------------------------------------------------------------------


def rtd_counts(logits: torch.Tensor, labels: torch.Tensor, input_ids: torch.Tensor,
               attention_mask: torch.Tensor) -> dict:
    out = {}
    for name, mask in (("rtd", ordinary_mask(input_ids, attention_mask)),
                       ("rtd_all", attention_mask.bool())):
        x, y = logits[mask].float(), labels[mask].float()
        pred, gold = x > 0, y.bool()
        out.update({f"{name}_tp": (pred & gold).sum(), f"{name}_fp": (pred & ~gold).sum(),
                    f"{name}_fn": (~pred & gold).sum(), f"{name}_tn": (~pred & ~gold).sum(),
                    f"{name}_nll": F.binary_cross_entropy_with_logits(
                        x, y, reduction="none").double().sum()})
    return out


def rtd_loss(self, model, b):
    b = self.ready(b)
    logits = model(b["input_ids"], b["attention_mask"]).float()  # (B, T)
    real = b["attention_mask"]
    loss = F.binary_cross_entropy_with_logits(logits[real], b["labels"][real])
    with torch.no_grad():
        sums = rtd_counts(logits, b["labels"], b["input_ids"], real)
        sums.update(tokens=real.sum(), temperature_sum=b["temperature"].sum(),
                    samples=torch.tensor(float(len(b["temperature"]))),
                    sample_id_sum=b["sample_ids"].double().sum())
    return loss, sums


# --- trainer/modes/fast_online.py ----------------------------------------------------------


def fast_online_ready(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    ids, mask = b["input_ids"], b["attention_mask"]  # (B, T)
    corrupted = torch.empty_like(ids)
    labels = torch.empty(ids.shape, dtype=torch.float32, device=ids.device)
    temperature = torch.empty(len(ids), dtype=torch.float32, device=ids.device)
    epochs = b["epochs"].cpu()
    for e in epochs.unique().tolist():
        rows = (epochs == e).to(ids.device)
        with aux_autocast(ids.device):
            batch = KeyedBatch(ids[rows], b["seq_ids"][rows], self.cfg.generate.seed, int(e),
                               attention_mask=mask[rows])
            out = corrupt_batch(batch, b["u"][rows.cpu()], self.cfg.corruption, aux=self.aux,
                                unigram_counts=self.unigram,
                                vocab_size=self.cfg.tokenizer.vocab_size)
        corrupted[rows] = out.input_ids.clone()
        labels[rows] = out.labels.float()
        temperature[rows] = out.temperature.float()
    return {**b, "input_ids": corrupted, "labels": labels, "temperature": temperature}


# --- trainer/modes/mlm.py ------------------------------------------------------------------


def mlm_forward(self, model, b):
    logits = model(b["input_ids"], b["attention_mask"], positions_mask=b["selected"])
    return logits.float()  # (N, V)


def mlm_loss(self, model, b):
    logits = self._forward(model, b)  # (N, V)
    loss = F.cross_entropy(logits, b["labels"])
    return loss, {"mlm_correct": (logits.argmax(-1) == b["labels"]).sum().detach(),
                  "mlm_count": torch.tensor(float(len(b["labels"]))),
                  "tokens": b["attention_mask"].sum().detach()}


# --- trainer/modes/joint.py ----------------------------------------------------------------


def joint_generate(self, masked_ids, attention_mask, selected, targets, exit_index: int):
    g_logits = self.generator(masked_ids, attention_mask, positions_mask=selected)  # (N, V)
    stats = {"gen_correct": (g_logits.detach().argmax(-1) == targets).sum(),
             "gen_count": torch.tensor(float(len(targets)))}
    return F.cross_entropy(g_logits.float(), targets), g_logits, stats


def joint_forward(self, batch: JointInputs, seed: int, exit_index: int = -1):
    masked_ids, original_ids, attention_mask = (batch.masked_ids, batch.original_ids,
                                                batch.attention_mask)
    selected, seq_ids, epochs = batch.selected, batch.seq_ids, batch.epochs
    targets = original_ids[selected]  # (N,)
    mlm_loss, g_logits, stats = self.generate(masked_ids, attention_mask, selected, targets,
                                              exit_index)
    table = self.discriminator.encoder.word_emb.weight if self.topk else None  # (V, H)
    with torch.no_grad():
        logp = embedding_topk_logprobs(table, targets, self.topk) if self.topk \
            else aux_logprobs(g_logits.detach())  # (N, V), specials excluded
        rows, cols = selected.nonzero(as_tuple=True)  # (N,) each, batch-then-time order
        sampled = torch.empty_like(targets)
        for e in epochs.unique():  # keyed noise per epoch; a batch may straddle two
            n = epochs[rows] == e
            sampled[n] = sample_tokens(logp[n], seed, int(e), seq_ids[rows[n]], cols[n])
        corrupted = original_ids.clone()
        corrupted[selected] = sampled
        labels = (corrupted != original_ids) & attention_mask  # (B, T)
    if self.topk:
        l2 = (table[targets] - table[sampled]).float().pow(2).sum(-1).mean()
        stats["embedding_l2"] = l2.detach()
        mlm_loss = mlm_loss + self.embedding_l2_weight * l2
    d_logits = self.discriminator(corrupted, attention_mask)  # (B, T)
    real = attention_mask.bool()
    rtd_loss = F.binary_cross_entropy_with_logits(d_logits[real].float(),
                                                  labels[real].float())
    with torch.no_grad():
        stats.update(rtd_counts(d_logits, labels, corrupted, real))
    return mlm_loss, rtd_loss, stats


def joint_exit_index(self, b) -> int:
    return -1


def joint_run(self, model, b, seed, exit_index: int = -1):
    return model(JointInputs(b["input_ids"], b["original_ids"], b["attention_mask"],
                             b["selected"], b["seq_ids"], b["epochs"]), seed, exit_index)


def joint_loss(self, model, b):
    mlm_loss, rtd_loss, stats = self._run(model, b, self.cfg.train.seed, self.exit_index(b))
    stats.update(mlm_loss_sum=mlm_loss.detach(), tokens=b["attention_mask"].sum())
    return mlm_loss + self.rtd_weight * rtd_loss, stats


# --- trainer/modes/early_exit.py -----------------------------------------------------------


def early_exit_generator_forward(self, input_ids, attention_mask, positions_mask):
    hidden = self.encoder.exits(input_ids, attention_mask, self.exits)  # [(B, T, H)]
    return [head(h, positions_mask) for head, h in zip(self.heads, hidden, strict=True)]


def early_exit_generate(self, masked_ids, attention_mask, selected, targets, exit_index: int):
    logits = self.generator(masked_ids, attention_mask, selected)  # [(N, V)] per exit
    mlm_loss = sum(w * F.cross_entropy(lg.float(), targets)
                   for w, lg in zip(self.loss_weights, logits, strict=True))
    stats = {f"gen_correct_exit{layer}": (lg.detach().argmax(-1) == targets).sum()
             for layer, lg in zip(self.exits, logits, strict=True)}
    stats.update(gen_correct=stats[f"gen_correct_exit{self.exits[-1]}"],
                 gen_count=torch.tensor(float(len(targets))),
                 exit_layer_sum=torch.tensor(float(self.exits[exit_index])))
    return mlm_loss, logits[exit_index], stats


def early_exit_exit_index(self, b) -> int:
    step = int(b["step"])
    u = np.random.default_rng([self.cfg.train.seed, step, 0xE417]).random()
    cdf = np.cumsum(self.model.exit_probs.cpu().numpy())
    return min(int(np.searchsorted(cdf, u, side="right")), len(cdf) - 1)


# (class, attribute, reference function); a subclass that inherits an attribute gets the
# reference too, since only the defining class is patched.
PATCHES = [
    (MLMHead, "forward", mlm_head_forward),
    (MLMModel, "forward", mlm_model_forward),
    (RTDTask, "loss", rtd_loss),
    (FastOnlineTask, "ready", fast_online_ready),
    (MLMTask, "_forward", mlm_forward),
    (MLMTask, "loss", mlm_loss),
    (JointModel, "generate", joint_generate),
    (JointModel, "forward", joint_forward),
    (JointTask, "exit_index", joint_exit_index),
    (JointTask, "_run", joint_run),
    (JointTask, "loss", joint_loss),
    (EarlyExitGenerator, "forward", early_exit_generator_forward),
    (EarlyExitModel, "generate", early_exit_generate),
    (EarlyExitTask, "exit_index", early_exit_exit_index),
]


@contextlib.contextmanager
def boolean_reference():
    """Run the boolean-mask implementation inside the block (the classes are restored after,
    whatever the block raised)."""
    saved = [(cls, name, cls.__dict__.get(name)) for cls, name, _ in PATCHES]
    try:
        for cls, name, fn in PATCHES:
            setattr(cls, name, fn)
        yield
    finally:
        for cls, name, old in saved:
            if old is None:
                delattr(cls, name)
            else:
                setattr(cls, name, old)
