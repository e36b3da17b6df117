"""Corruption for replaced token detection, the entry point: ``corrupt_batch`` selects positions
(masking.py), plans the batch's augmentation from the schedule value (schedules.py,
augmentations.py), runs the frozen aux at the selected positions or a model-free distribution
(distributions.py) and draws the replacements (sampling.py). ONE implementation, used offline
(the Beam ``generate`` job) and online (the trainer's joint / fast-online modes), so that both
produce the same bytes for the same (seed, epoch, seq_id).

    from trainer.corruption.batch import KeyedBatch
    from trainer.corruption.corrupt import corrupt_batch
    from trainer.corruption.schedules import schedule_value

    batch = KeyedBatch(input_ids, seq_ids, seed, epoch,  # (B, T) long, [CLS] at 0; (B,) long
                       attention_mask=attention_mask)    # (B, T) bool
    out = corrupt_batch(batch, u, cfg.corruption,        # u: (B,) fraction of training done
                        aux=aux_model, unigram_counts=None)
    out.input_ids, out.labels                         # (B, T) corrupted ids, uint8 RTD labels
    out.temperature                                   # (B,) float32 schedule value used
    schedule_value("exponential", 0.0, t0=2.0, tau=0.1)  # -> 2.0 (Eq. 2)

Randomness: ``trainer.corruption.keyed_rng`` (counter-based, no generator state, 64-bit row
keys; bit-exact everywhere but where a float rounding of the CDF moves a draw across a boundary,
and the dropout augmentations' masks, drawn from a per-call torch generator seeded by the
batch's keys).

Cost at scale (128K vocabulary): one keyed 53-bit uniform per masked position, inverted through
the CDF (``sample_tokens``); the aux LM head runs at the masked positions only, in float32 even
under autocast, in row chunks of at most 2**20 logits (2**24 on a GPU), each sampled
before the next is made, so no (N, V) tensor exists; the model-free distributions have closed
forms (``sample_model_free``) that draw the same token as the dense inverse CDF without building
any (N, V) row.

Sequences are left-aligned ([CLS] at index 0, padding on the right): the position counter is
the index in the row, so left padding would change the draws.

Schedules and the meaning of the schedule value. ``schedule_value`` returns a temperature-like
value T(u), T = 1 meaning "no augmentation", for every schedule; the augmentation *strength* is
g(u) = T(u) - 1, from g_max = t0 - 1 at the start of training to (about) 0 at the end. That value
T is what the ``temperature`` column of the RTD shards stores, for every augmentation. The
curriculum always goes from EASY to HARD, as in Fast-ELECTRA (T > 1 flattens the auxiliary
distribution, so early replacements are more random and easier to detect; T -> 1 gives the
auxiliary model's own, harder, replacements):

- ``temperature``: sample from softmax(log p / T). Also valid for model-free replacements
  (flattens them toward uniform over normal tokens). Note that log p / T is exactly the
  log-interpolation of p with the uniform distribution with weight 1 - 1/T.
- ``log_interp_unigram``: p ~ p_unigram^g * p_aux^(1-g): starts at the unigram distribution
  (g = 1 when t0 = 2; frequent tokens, context-free, easy) and ends at the aux model (g = 0).
- ``dropout`` / ``drop_attention``: the frozen aux model samples in train mode with hidden /
  attention dropout rate g (a degraded, easier generator), ending with no dropout (g = 0).
- ``drop_token``: a fraction g of the aux model's input tokens (normal, not selected) become
  [UNK], so it sees less context (easier replacements), ending with full context.
- Replacements ``p1->p2`` (``uniform->smoothed_onehot``, ``unigram->smoothed_onehot``): the
  schedule drives the replacement itself, p ~ p1^g * p2^(1-g): from p1 at the start (g = 1 when
  t0 = 2; every selected token replaced by a context-free token, easy) to p2 = smoothed one-hot
  at the end (g = 0; the original kept with mass alpha, so fewer and sparser replacements; the
  replaced tokens stay context-free either way, which is why these are ablations). Their
  augmentation must be the default ``temperature``, which for them means exactly this.

Strengths used as weights or rates must lie in [0, 1] (dropout rates in [0, 1)), i.e.
1 <= t0 <= 2; ``validate_corruption`` raises ConfigError otherwise. Granularity: the caller
passes u per sample; with ``corruption.granularity = "epoch"`` it passes the epoch's u for every
sample of the epoch. The dropout augmentations act on a whole forward pass, so they use one rate
per batch (the mean strength of its samples; consecutive samples have nearly equal u) and report
1 + that rate as every sample's temperature.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from trainer.config.sections import CorruptionConfig
from trainer.corruption.augmentations import plan_augmentation, validate_corruption
from trainer.corruption.batch import KeyedBatch
from trainer.corruption.distributions import (
    Replacement,
    aux_logprobs,
    log_interp,
    unigram_logprobs,
)
from trainer.corruption.keyed_rng import (
    STREAM_DROPOUT,
    keyed_bits,
)
from trainer.corruption.masking import drop_tokens, mask_positions
from trainer.corruption.sampling import (
    _row_chunks,
    keyed_sample_uniform,
    sample_model_free,
    sample_tokens,
)
from trainer.corruption.schedules import schedule_value
from trainer.model.dropout import DropoutPlan


@dataclass
class CorruptedBatch:
    input_ids: torch.Tensor  # (B, T) long: the discriminator's input
    labels: torch.Tensor  # (B, T) uint8: 1 = replaced by a different token
    temperature: torch.Tensor  # (B,) float32: the schedule value used for each sample
    selected: torch.Tensor  # (B, T) bool: the positions that were masked and resampled


def aux_autocast(device: torch.device | str):
    """The precision of the aux encoder for every caller that corrupts with it (generate's
    workers, fast-online's training step): bf16 autocast on CUDA, float32 elsewhere, whatever
    autocast surrounds the call (the trainer's ``train.precision``), so fast-online reproduces
    the rows generate writes on the same hardware. The LM head is float32 in any case
    (``_aux_head_fp32``)."""
    dev = torch.device(device)
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")


def _aux_hidden(aux, aux_in: KeyedBatch, selected: torch.Tensor, plan) -> torch.Tensor:
    """The frozen aux encoder's hidden states at the selected positions (N, H), in the
    caller's autocast; aux_in: the aux's input rows (masked, with drop_token's [UNK]s) and the
    batch's keys. The dropout augmentations pass their rates and a generator for this
    call (``DropoutPlan``): the shared model is never switched to train mode or re-rated, and
    no global RNG is touched, so RunInference threads sharing one model cannot disturb each
    other. Dropout masks cannot be keyed per sequence, so the generator is seeded from the
    batch's keys: reproducible for the same batch (e.g. a Beam retry)."""
    generator = None
    if plan.hidden_dropout > 0 or plan.attention_dropout > 0:
        generator = torch.Generator(device=aux_in.input_ids.device)
        generator.manual_seed(int(keyed_bits(aux_in.seed, aux_in.epoch, aux_in.seq_ids,
                                             STREAM_DROPOUT, (1,)).sum()))
    dropout = DropoutPlan(plan.hidden_dropout, plan.attention_dropout, generator)
    return aux.encoder(aux_in.input_ids, aux_in.attention_mask,
                       dropout=dropout)[selected]  # (N, H)


def _aux_head_fp32(aux, hidden: torch.Tensor) -> torch.Tensor:
    """The aux LM head on hidden (n, H) in float32 whatever the surrounding autocast: bf16
    logits move ~1% of the samples, so CPU and GPU workers would write different bytes."""
    with torch.autocast(hidden.device.type, enabled=False):
        return aux.head(hidden.float())  # (n, V) float32


def corrupt_batch(batch: KeyedBatch, u, cfg: CorruptionConfig, aux=None, unigram_counts=None,
                  vocab_size: int | None = None) -> CorruptedBatch:
    """Mask, sample replacements and label one batch; the same code offline and online.

    batch: its rows with an attention_mask; u: float or (B,) training progress per sample
    (granularity is the caller's: pass the epoch's u for every sample for ``epoch``), aux: the
    frozen ``MLMModel`` (replacement ``aux`` only; model-free replacements never touch a
    model), unigram_counts (V,) for the unigram-based kinds, vocab_size when neither aux nor
    unigram_counts fixes it.
    The aux model runs under inference_mode with its LM head only at selected positions; every
    sample is drawn by ``sample_tokens`` at the selected positions, including those that kept
    their original token in the aux input (ELECTRA). Labels are 1 where the sample differs from the
    original token.
    """
    validate_corruption(cfg)
    rep, aug = cfg.replacement, cfg.augmentation
    if rep == "aux" and aux is None:
        raise ValueError("corruption.replacement = 'aux' needs the auxiliary model (aux=...)")
    needs_unigram = "unigram" in rep or aug == "log_interp_unigram"
    if needs_unigram and unigram_counts is None:
        raise ValueError(f"corruption '{rep}' / '{aug}' needs the corpus unigram counts "
                         "(CorpusShards.unigram_counts())")
    sizes = {"vocab_size": vocab_size,
             "the auxiliary model": None if aux is None else aux.cfg.vocab_size,
             "the unigram counts": None if unigram_counts is None else len(unigram_counts)}
    known = {k: v for k, v in sizes.items() if v is not None}
    if len(set(known.values())) != 1:
        raise ValueError("corrupt_batch: the vocabulary size must be given (vocab_size, aux or "
                         f"unigram_counts) and agree; got {known}")
    V = next(iter(known.values()))
    input_ids, seed, epoch = batch.input_ids, batch.seed, batch.epoch
    B, T = input_ids.shape
    dev = input_ids.device
    batch = replace(batch, seq_ids=batch.seq_ids.to(dev).long())
    u = torch.as_tensor(u, dtype=torch.float64).cpu().expand(B)
    # On the host in float64: the schedule value (and any threshold derived from it) must not
    # depend on the device's float32 exp.
    plan = plan_augmentation(cfg, schedule_value(cfg.schedule, u, cfg.t0, cfg.tau))

    with torch.inference_mode():
        masked, selected = mask_positions(batch, cfg)
        b_idx, t_idx = selected.nonzero(as_tuple=True)  # (N,) each, batch-then-time order
        original = input_ids[b_idx, t_idx]  # (N,)
        sel_ids = batch.seq_ids[b_idx]  # (N,)
        temp = plan.temperature.float().to(dev)[b_idx]  # (N,)
        weight = plan.weight.float().to(dev)[b_idx]  # (N,)
        sampled = torch.empty_like(original)
        if rep != "aux":
            u_draw = keyed_sample_uniform(seed, epoch, sel_ids, t_idx)  # (N,) float64
            sampled = sample_model_free(
                Replacement(rep, V, cfg.smoothed_onehot_alpha, unigram_counts), u_draw,
                original, temp, weight)
        elif original.numel():
            aux_ids = masked
            if aug == "drop_token":
                aux_ids = drop_tokens(masked, selected, batch.seq_ids, seed, epoch,
                                      plan.drop_token)
            aux_in = replace(batch, input_ids=aux_ids)
            hidden = _aux_hidden(aux, aux_in, selected, plan)  # (N, H)
            # Row chunks: at no time more than a bounded (n, V) block of logits exists.
            for rows in _row_chunks(original.numel(), V, dev):
                lp = aux_logprobs(_aux_head_fp32(aux, hidden[rows]))  # (n, V) float32
                if aug == "log_interp_unigram":
                    lp = log_interp(unigram_logprobs(unigram_counts, lp.shape[0], dev), lp,
                                    weight[rows])
                sampled[rows] = sample_tokens(lp, seed, epoch, sel_ids[rows], t_idx[rows],
                                              temp[rows])
    # Leave inference mode with ordinary tensors: the discriminator's embedding saves its
    # indices for backward, which an inference tensor refuses.
    corrupted = input_ids.clone()
    corrupted[b_idx.clone(), t_idx.clone()] = sampled.clone()
    labels = (corrupted != input_ids).to(torch.uint8)
    return CorruptedBatch(corrupted, labels, plan.used.to(dev), selected.clone())
