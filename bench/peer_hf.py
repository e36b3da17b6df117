"""Our discriminator vs ``transformers.ElectraForPreTraining`` of the same shape, in one run.

    make demo                                   # the RTD shards it reads (or pass your own)
    pip install -e '.[hf]'                      # transformers
    .venv/bin/python bench/peer_hf.py [--config configs/tiny.toml] [--set section.key=value ...]
        [--steps 413] [--eval-sequences 2048] [--threads 2] [--hf-zero-bias] [--json OUT]

Both models train in this one process on the same offline RTD batches (RTDTask.micro_batch
from global sample 0, as trainer.train reads them: global batch = train.global_batch_size,
micro-batches of train.micro_batch_size_per_rank, gradient accumulation), with the same loss
(RTDTask.loss: BCE-with-logits over every real token), the same optimizer (build_optimizer:
AdamW, betas 0.9/0.98, eps 1e-6, weight decay on >= 2-D weights only), the same schedule
(build_scheduler: warm-up then linear decay to 0 at --steps) and the same gradient clip
(train.clip_grad_norm). The config is forced to the HF ELECTRA shape: model.position =
absolute, model.layer_norm = post (ours keeps its Admin omegas, HF is plain post-LN); the HF
config is trainer.tools.hf.exporter.electra_config of the same EncoderConfig (hidden_act "gelu",
dropouts and layer_norm_eps from the config). torch.manual_seed(train.seed) precedes each
model's construction; each model's dropout draws from its own RNG stream seeded as the trainer
seeds it, so interleaving does not couple them. HF's RTD output bias starts at the same prior
log-odds as ours (RTDHead.init_prior_) unless --hf-zero-bias (the stock zero init).

Timing: the two models' steps alternate on each batch (the order flips every step, so drift
and cache effects hit both alike); s/step is the median over the steps after the first
--untimed, from the first micro-batch's forward to zero_grad after the optimizer step.
Scoring, after training: the first --eval-sequences samples of the last epoch (never trained
on: checked), over the ordinary tokens (trainer.modes.rtd.ordinary_mask): mean BCE, exact rank-based
ROC-AUC, F1 of "replaced" at logit 0 (p = 0.5), and the BCE of the best constant guess.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from trainer.config.load import load_config  # noqa: E402
from trainer.distributed import Dist, pick_device  # noqa: E402
from trainer.model.encoder_config import EncoderConfig  # noqa: E402
from trainer.modes.rtd import RTD_SUM_KEYS, RTDTask, ordinary_mask, rtd_counts, rtd_metrics  # noqa: E402
from trainer.optim import build_optimized  # noqa: E402
from trainer.step import StepSetup, autocast_context, dropout_seed, train_step  # noqa: E402
from trainer.tools.hf.common import require_transformers  # noqa: E402
from trainer.tools.hf.exporter import electra_config  # noqa: E402
from trainer.train import grad_accum_steps  # noqa: E402

FORCED = ["model.position=absolute", "model.layer_norm=post"]  # the HF ELECTRA shape


class HFLogits(torch.nn.Module):
    """ElectraForPreTraining called as our Discriminator is: (input_ids, attention_mask) ->
    (B, T) logits, so RTDTask.loss and the scoring treat both models alike."""

    def __init__(self, hf: torch.nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits


def rng_state(device: torch.device) -> tuple:
    return (torch.get_rng_state(),
            torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact ROC-AUC (Mann-Whitney U, tied scores get their average rank)."""
    pos = int(labels.sum())
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # 1-based rank of the last member of each tie group
    average_rank = ends - (counts - 1) / 2.0
    rank_sum = average_rank[inverse][labels].sum()
    return float((rank_sum - pos * (pos + 1) / 2.0) / (pos * neg))


def binary_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p)) if 0 < p < 1 else 0.0


@torch.no_grad()
def score(task: RTDTask, model: torch.nn.Module, first: int, n: int, device: torch.device,
          precision: str) -> dict:
    """Held-out metrics of ``model`` on global samples [first, first + n)."""
    model.eval()
    sums = dict.fromkeys(RTD_SUM_KEYS, 0.0)
    logits_all, labels_all = [], []
    size = task.cfg.train.micro_batch_size_per_rank
    with torch.inference_mode(), autocast_context(device, precision):
        for start in range(0, n, size):
            b = {k: v.to(device) for k, v in task.rows(first + start,
                                                       min(size, n - start)).items()}
            logits = model(b["input_ids"], b["attention_mask"]).float()
            for k, v in rtd_counts(logits, b["labels"], b["input_ids"],
                                   b["attention_mask"]).items():
                sums[k] += v.item()
            keep = ordinary_mask(b["input_ids"], b["attention_mask"])
            logits_all.append(logits[keep].double().cpu().numpy())
            labels_all.append(b["labels"][keep].bool().cpu().numpy())
    model.train()
    m = rtd_metrics(sums)
    x, y = np.concatenate(logits_all), np.concatenate(labels_all)
    return {"heldout_bce": m["rtd_loss"], "auc": roc_auc(x, y), "f1": m["rtd_f1"],
            "precision": m["rtd_precision"], "recall": m["rtd_recall"],
            "accuracy": m["rtd_accuracy"], "heldout_bce_all_real": m["rtd_all_loss"],
            "replaced_fraction": m["replaced_fraction"], "tokens": int(len(y)),
            "logit_mean": float(x.mean()), "logit_std": float(x.std())}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/tiny.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="config override (repeatable); model.position and "
                             "model.layer_norm are then forced to absolute / post")
    parser.add_argument("--steps", type=int, default=413,
                        help="optimizer steps for each model (= train.max_steps: the lr "
                             "schedule decays to 0 there)")
    parser.add_argument("--eval-sequences", type=int, default=2048,
                        help="held-out samples scored: the first of the last epoch")
    parser.add_argument("--untimed", type=int, default=3,
                        help="first steps left out of s/step (one-off costs)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--hf-zero-bias", action="store_true",
                        help="leave HF's RTD output bias at its stock init (0) instead of the "
                             "prior log-odds ours starts from")
    parser.add_argument("--json", metavar="OUT", help="also write the figures to this file")
    args = parser.parse_args()
    if not 0 <= args.untimed < args.steps:
        parser.error(f"--untimed must be in [0, --steps), got {args.untimed}")
    return args


def build_peer(cfg, prior: float, zero_bias: bool, transformers, device: torch.device
               ) -> tuple[HFLogits, float]:
    """ElectraForPreTraining of our shape, its RTD bias at the prior log-odds unless
    ``zero_bias`` -> (the model on ``device``, its starting bias)."""
    torch.manual_seed(cfg.train.seed)
    hf = transformers.ElectraForPreTraining(electra_config(EncoderConfig.main(cfg), transformers))
    head_bias = hf.discriminator_predictions.dense_prediction.bias
    if not zero_bias:
        with torch.no_grad():
            head_bias.fill_(math.log(prior / (1 - prior)))
    return HFLogits(hf).to(device), float(head_bias.item())


def train_both(task: RTDTask, setups: dict[str, StepSetup], steps: int, d: Dist
               ) -> tuple[dict[str, list[float]], dict[str, list[float]], float]:
    """``steps`` steps of each model on the same batches, alternating which goes first; each
    model's dropout draws from its own stream. -> (s/step and train loss per step per model,
    wall seconds)."""
    device = d.device
    # Each model's dropout stream starts where trainer.train starts it on rank 0.
    torch.manual_seed(dropout_seed(task.cfg.train.seed, d.rank))
    rngs = dict.fromkeys(setups, rng_state(device))
    times: dict[str, list[float]] = {k: [] for k in setups}
    losses: dict[str, list[float]] = {k: [] for k in setups}
    wall = time.perf_counter()
    for s in range(steps):
        batches = [{k: v.to(device) for k, v in task.micro_batch(s, micro, d).items()}
                   for micro in range(setups["ours"].accum)]
        for name in (("ours", "peer") if s % 2 == 0 else ("peer", "ours")):
            setup = setups[name]
            set_rng_state(rngs[name], device)
            sync(device)
            begin = time.perf_counter()
            out = train_step(setup, task.loss, batches)
            sync(device)
            times[name].append(time.perf_counter() - begin)
            losses[name].append(float(out.sums()["loss_sum"]) / setup.accum)
            rngs[name] = rng_state(device)
    return times, losses, time.perf_counter() - wall


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    transformers = require_transformers()

    overrides = ["train.mode=rtd", f"train.max_steps={args.steps}",
                 f"train.eval_sequences={args.eval_sequences}", *args.overrides, *FORCED]
    cfg = load_config(args.config, overrides)
    t = cfg.train
    device = pick_device(args.device, 0, "--device")
    d = Dist(0, 1, 0, device)
    accum = grad_accum_steps(cfg, 1)

    torch.manual_seed(t.seed)  # as trainer.train: seed, then build the task (and our model)
    task = RTDTask(cfg, d)
    ours = task.model.to(device)
    prior = task.replaced_fraction()
    N = task.samples_per_epoch
    heldout = task.num_epochs - 1
    if args.steps * t.global_batch_size > heldout * N:
        sys.exit(f"--steps {args.steps} x {t.global_batch_size} = "
                 f"{args.steps * t.global_batch_size:,} samples reach the last epoch "
                 f"({heldout} x {N:,} = {heldout * N:,} before it): nothing is held out")
    n_eval = min(args.eval_sequences, N)
    peer, hf_bias = build_peer(cfg, prior, args.hf_zero_bias, transformers, device)
    hf = peer.hf

    models = {"ours": ours, "peer": peer}
    # trainer.train's step: the same optimizer, schedule, clip and accumulation for both.
    setups = {k: StepSetup(m, build_optimized([("model", m, t.lr)], t), accum,
                           t.clip_grad_norm, t.precision, device) for k, m in models.items()}
    for m in models.values():
        m.train()
    times, losses, train_wall = train_both(task, setups, args.steps, d)

    first = heldout * N
    results = {}
    tail = max(1, args.steps // 10)
    for name, model in models.items():
        timed = times[name][args.untimed:]
        results[name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "s_per_step": statistics.median(timed), "s_per_step_mean": statistics.fmean(timed),
            "train_bce_tail": statistics.fmean(losses[name][-tail:]),
            **score(task, model, first, n_eval, device, t.precision)}
    ratio = results["ours"]["s_per_step"] / results["peer"]["s_per_step"]
    p_heldout = results["ours"]["replaced_fraction"]
    constant = binary_entropy(p_heldout)
    x0 = math.log(prior / (1 - prior))  # the prior's logit, scored on the held-out tokens
    constant_prior = math.log1p(math.exp(x0)) - p_heldout * x0

    omegas = sum(p.numel() for n, p in ours.named_parameters() if "omega" in n)
    token_type = hf.electra.embeddings.token_type_embeddings.weight.numel()
    command = "python bench/peer_hf.py " + shlex.join(sys.argv[1:])
    enc = ours.encoder.cfg
    print(f"command: {command}")
    print(f"config {args.config} + {overrides}; shards {task.rtd.root}: {task.num_epochs} "
          f"epochs x {N:,}; {args.steps} steps x {t.global_batch_size} sequences "
          f"({accum} micro-batches of {t.micro_batch_size_per_rank}), lr {t.lr} warm-up "
          f"{t.warmup_steps}, clip {t.clip_grad_norm}, wd {t.weight_decay}; held out: epoch "
          f"{heldout}, first {n_eval:,} samples ({results['ours']['tokens']:,} ordinary "
          f"tokens); {torch.get_num_threads()} torch threads, {os.cpu_count()} cores, "
          f"{device}; train wall {train_wall:.0f} s")
    print(f"shape: vocab {enc.vocab_size}, {enc.num_layers} layers x {enc.hidden_size} "
          f"({enc.num_heads} heads, ffn {enc.ffn_size}), {enc.max_seq_len} positions, post-LN, "
          f"absolute positions, dropout {enc.dropout}/{enc.attention_dropout}, LN eps "
          f"{enc.layer_norm_eps}; peer attention: {hf.config._attn_implementation}")
    print(f"RTD output bias at start: ours {x0:+.3f} (prior log-odds of {prior:.2%} "
          f"replaced), peer {hf_bias:+.3f} "
          f"({'stock zero init: --hf-zero-bias' if args.hf_zero_bias else 'the same prior'})")
    print(f"parameters differ by {results['ours']['params'] - results['peer']['params']:+,}: "
          f"ours has Admin omegas ({omegas:,}), the peer token_type_embeddings "
          f"({token_type:,}); the rest match")
    print()
    print("| model | params | train BCE (last "
          f"{tail}) | held-out BCE | AUC (ordinary) | F1@0.5 | s/step | vs peer |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, label in (("ours", "ours (Discriminator)"), ("peer", "HF ElectraForPreTraining")):
        r = results[name]
        vs = ratio if name == "ours" else 1.0
        print(f"| {label} | {r['params']:,} | {r['train_bce_tail']:.4f} | "
              f"{r['heldout_bce']:.4f} | {r['auc']:.4f} | {r['f1']:.4f} | "
              f"{r['s_per_step']:.4f} | {vs:.3f}x |")
    print()
    print(f"constant-guess BCE (held-out ordinary tokens, {p_heldout:.2%} replaced): "
          f"{constant:.4f}; at the training prior's logit ({prior:.2%}): {constant_prior:.4f}")
    print(f"s/step: median of steps {args.untimed + 1}-{args.steps} (means: ours "
          f"{results['ours']['s_per_step_mean']:.4f}, peer "
          f"{results['peer']['s_per_step_mean']:.4f}); ours/peer = {ratio:.3f}")

    if args.json:
        out = {"command": command, "config": args.config, "overrides": overrides,
               "steps": args.steps, "eval_sequences": n_eval, "heldout_epoch": heldout,
               "threads": torch.get_num_threads(), "device": str(device),
               "hf_zero_bias": args.hf_zero_bias, "prior_fraction": prior,
               "rtd_bias_start": {"ours": x0, "peer": hf_bias},
               "constant_bce": constant, "constant_bce_at_prior": constant_prior,
               "heldout_replaced_fraction": p_heldout, "s_per_step_ratio": ratio,
               "train_wall_s": train_wall, "models": results}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
