"""The correctness items of bench/gpu_check.py, each returning (passed, figures, notes), figures'
keys carrying their unit: corruption on CPU vs the device (draws differ only at near-ties),
bf16 vs fp32 training, generate with several workers, fast-online rows vs generate's, the
relative-bias gradient under the default SDPA backend, and a torch.compile smoke run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.gpu_check_fixtures import (
    COMPILE_REL_TOL,
    LOSS_REL_TOL,
    NEAR_TIE,
    SDPA_REL_TOL,
    TINY,
    Fixtures,
    in_memory_rtd,
    quiet,
    rtd_batch,
)

# ---------------------------------------------------------------------------------------------
# Items: each returns (passed, figures, notes); figures' keys carry their unit
# ---------------------------------------------------------------------------------------------

def _near_tie_distances(aux, masked, mask, selected, tokens, temperature, seq_ids, epoch,
                        seed, differ) -> list[float]:
    """For each draw flagged in ``differ`` (over the selected positions, batch-then-time
    order), with ``tokens`` (d,) the reference's draws: the signed distance of its keyed uniform
    to the nearest edge of that token's interval of the float64 CDF recomputed on the CPU from
    the aux's fp32 log-probs (positive inside; a reconstruction that matches corrupt_batch puts
    every reference draw inside, which tests/bench/test_gpu_check.py checks)."""
    from trainer.corruption.distributions import aux_logprobs
    from trainer.corruption.sampling import keyed_sample_uniform

    b_idx, t_idx = selected.nonzero(as_tuple=True)
    with torch.inference_mode():
        hidden = aux.encoder(masked, mask)[selected][differ]  # (d, H)
        lp = aux_logprobs(aux.head(hidden.float())).double()  # (d, V)
    t = temperature.double()[b_idx[differ]][:, None]
    p = (lp / t).softmax(-1)
    cdf = p.cumsum(-1)
    u = keyed_sample_uniform(seed, epoch, seq_ids[b_idx[differ]], t_idx[differ])  # (d,)
    hi = cdf.gather(1, tokens[:, None]).squeeze(1)
    lo = hi - p.gather(1, tokens[:, None]).squeeze(1)
    return torch.minimum(u - lo, hi - u).tolist()


def compare_aux_draws(aux_a, aux_b, device_b, ids, mask, seq_ids, u, c, seed: int, epoch: int,
                      autocast_b: bool = False) -> dict:
    """``corrupt_batch`` with aux ``aux_a`` on the CPU (the reference) and ``aux_b`` on
    ``device_b`` (under bf16 autocast if asked) over one batch: whether the integer decisions
    agree, how many aux draws differ and (fp32) the largest distance of a differing draw's
    uniform to its CPU CDF interval's edge (0 when none differ)."""
    from trainer.corruption.batch import KeyedBatch
    from trainer.corruption.corrupt import corrupt_batch
    from trainer.corruption.masking import mask_positions

    batch = KeyedBatch(ids, seq_ids, seed, epoch, attention_mask=mask)
    a = corrupt_batch(batch, u, c, aux=aux_a)
    auto = (torch.autocast(device_b.type, dtype=torch.bfloat16) if autocast_b
            else contextlib.nullcontext())
    with auto:
        b = corrupt_batch(KeyedBatch(ids.to(device_b), seq_ids, seed, epoch,
                                     attention_mask=mask.to(device_b)), u, c, aux=aux_b)
    sel, b_ids = a.selected, b.input_ids.cpu()
    differ = (a.input_ids != b_ids)[sel]  # (N,) over the selected positions
    out = {"selected_equal": torch.equal(sel, b.selected.cpu()),
           "temperature_equal": torch.equal(a.temperature, b.temperature.cpu()),
           "draws": int(sel.sum()), "differing_draws": int(differ.sum()),
           "differences_outside_selected": int(((a.input_ids != b_ids) & ~sel).sum()),
           "max_distance_to_cdf_edge": 0.0}
    if differ.any():
        masked = mask_positions(batch, c)[0]
        out["max_distance_to_cdf_edge"] = max(abs(x) for x in _near_tie_distances(
            aux_a, masked, mask, sel, a.input_ids[sel][differ], a.temperature, seq_ids, epoch,
            seed, differ))
    return out


def corruption_batch(fx: Fixtures, n: int = 256):
    """(ids, mask, seq_ids, u, corruption config, corpus) of the corpus's first n sequences,
    u spread over the whole schedule (T from 2 down to ~1)."""
    from trainer.config.load import load_config
    from trainer.data.corpus_shards import CorpusShards
    from trainer.data.corpus_tokens import CorpusTokens

    corpus = CorpusShards(str(fx.corpus()))
    n = min(corpus.num_sequences, n)
    ids, mask = CorpusTokens(corpus, str(fx.work / "cache")).batch(np.arange(n))
    u = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    return ids, mask, torch.arange(n), u, load_config(TINY, fx.sets()).corruption, corpus


def corrupt_cpu_vs_device(fx: Fixtures):
    from trainer.config.run import MLMConfig
    from trainer.corruption.batch import KeyedBatch
    from trainer.corruption.corrupt import corrupt_batch
    from trainer.corruption.masking import mask_positions
    from trainer.pretrained import load_generator

    dev = fx.device
    ids, mask, seq_ids, u, c, corpus = corruption_batch(fx)
    seed, epoch, vocab = 7, 1, fx.shapes.vocab
    ckpt = fx.aux_checkpoint()
    aux_cpu, aux_dev = load_generator(ckpt, "cpu"), load_generator(ckpt, dev)
    figures, notes, ok = {"sequences": len(ids)}, [], True

    # BERT's recipe (random tokens too), so every integer path of the masking runs.
    bert = MLMConfig(mask_prob=c.mask_prob, mask_token_prob=0.8, random_token_prob=0.1)
    batch = KeyedBatch(ids, seq_ids, seed, epoch, attention_mask=mask)
    batch_dev = KeyedBatch(ids.to(dev), seq_ids.to(dev), seed, epoch,
                           attention_mask=mask.to(dev))
    m_cpu = mask_positions(batch, bert, vocab)
    m_dev = mask_positions(batch_dev, bert, vocab)
    same_mask = all(torch.equal(a, b.cpu()) for a, b in zip(m_cpu, m_dev, strict=True))
    figures["mask_positions_equal"] = same_mask
    ok &= same_mask

    counts = corpus.unigram_counts()
    for rep in ("uniform", "unigram"):  # closed forms in float64: exact on every device
        cc = dataclasses.replace(c, replacement=rep)
        a = corrupt_batch(batch, u, cc, unigram_counts=counts)
        b = corrupt_batch(batch_dev, u, cc, unigram_counts=counts)
        diff = int((a.input_ids != b.input_ids.cpu()).sum())
        figures[f"{rep}_differing_tokens"] = diff
        ok &= diff == 0

    r = compare_aux_draws(aux_cpu, aux_dev, dev, ids, mask, seq_ids, u, c, seed, epoch)
    figures.update({f"aux_fp32_{k}": v for k, v in r.items()})
    ok &= (r["selected_equal"] and r["temperature_equal"]
           and r["differences_outside_selected"] == 0 and r["max_distance_to_cdf_edge"] < NEAR_TIE)
    notes.append(f"pass: integer decisions equal, model-free draws equal, every differing aux "
                 f"draw a near-tie (its uniform within {NEAR_TIE:g} of an edge of the CPU "
                 "token's float64 CDF interval)")
    if dev.type == "cuda":  # pipeline.generate's setting on CUDA: information only
        r = compare_aux_draws(aux_cpu, aux_dev, dev, ids, mask, seq_ids, u, c, seed, epoch,
                              autocast_b=True)
        figures["aux_bf16_autocast_differing_draws"] = r["differing_draws"]
        figures["aux_bf16_autocast_max_distance_to_cdf_edge"] = r["max_distance_to_cdf_edge"]
        notes.append("aux_bf16_*: the encoder under bf16 autocast, as generate runs on CUDA "
                     "(information: not near-ties, the hidden states differ)")
    return ok, figures, notes


def _last_losses(out_dir: Path) -> list[float]:
    with open(out_dir / "metrics.jsonl") as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def bf16_training(fx: Fixtures):
    from trainer.train import run

    rtd_dir, _ = fx.device_shards()
    s = fx.shapes
    losses = {}
    for precision in ("fp32", "bf16"):
        out = fx.work / f"train_{precision}"
        quiet(run, fx.argv(TINY, fx.sets(
            "train.mode=rtd", f"train.rtd_dir={rtd_dir}", f"train.max_steps={s.train_steps}",
            "train.warmup_steps=5", f"train.log_every={s.log_every}", "train.eval_every=0",
            f"train.checkpoint_every={s.train_steps}", f"train.global_batch_size={s.train_batch}",
            f"train.micro_batch_size_per_rank={s.train_batch}", "model.dropout=0.0",
            "model.attention_dropout=0.0", f"train.precision={precision}",
            f"train.device={fx.device.type}", f"train.out_dir={out}")))
        losses[precision] = _last_losses(out)
    finite = all(math.isfinite(x) for v in losses.values() for x in v)
    f32, b16 = losses["fp32"][-1], losses["bf16"][-1]
    rel = abs(b16 - f32) / abs(f32)
    figures = {"steps": s.train_steps, "batch_seqs": s.train_batch,
               "fp32_final_loss_nats": f32, "bf16_final_loss_nats": b16,
               "bf16_vs_fp32_rel_diff": rel, "all_losses_finite": finite}
    notes = [f"final loss = mean BCE of the last {s.log_every} steps; pass: rel diff "
             f"< {LOSS_REL_TOL:.0%}"]
    return finite and rel < LOSS_REL_TOL, figures, notes


def _row_differences(dir_a: Path, dir_b: Path) -> tuple[int, int, int]:
    """(rows, rows that differ, tokens that differ) over every epoch of two shard sets."""
    from trainer.data.rtd_shards import RTDShards

    a, b = RTDShards(str(dir_a)), RTDShards(str(dir_b))
    rows = rows_diff = tokens_diff = 0
    for e in range(a.num_epochs):
        for x, y in zip(a.rows(epoch=e), b.rows(epoch=e), strict=True):
            rows += 1
            d = int((x.input_ids != y.input_ids).sum()) + int(x.seq_id != y.seq_id)
            rows_diff += d > 0
            tokens_diff += d
    return rows, rows_diff, tokens_diff


def generate_workers(fx: Fixtures):
    dev = fx.device.type
    sha, t = {}, {}
    for workers in (1, 2):
        key = (dev, workers if dev == "cuda" or workers > 1 else 0)
        _, manifest = fx.shards(*key)
        t[workers] = fx.seconds[key]  # the job's wall time, whichever item made it first
        sha[workers] = [f["sha256"] for f in manifest["files"]]
    cpu_dir, cpu_manifest = fx.shards("cpu", 0)
    dev_dir, dev_manifest = fx.device_shards()
    rows, rows_diff, tokens_diff = _row_differences(cpu_dir, dev_dir)
    same = sha[1] == sha[2]
    figures = {"parts": len(sha[1]), "1_vs_2_workers_same_sha256": same,
               "1_worker_seconds_s": t[1], "2_workers_seconds_s": t[2],
               "devices_in_manifest": dev_manifest["devices"],
               "vs_cpu_same_sha256": [f["sha256"] for f in cpu_manifest["files"]] == sha[1],
               "vs_cpu_rows": rows, "vs_cpu_differing_rows": rows_diff,
               "vs_cpu_differing_tokens": tokens_diff,
               "vs_cpu_differing_token_fraction": tokens_diff / max(dev_manifest["num_tokens"],
                                                                    1)}
    notes = ["pass: 1 and 2 workers write the same bytes; the CPU comparison is information "
             "(on CUDA the aux encoder runs under bf16 autocast)"]
    return same, figures, notes


def fast_online_rows(fx: Fixtures):
    from trainer.config.load import load_config
    from trainer.distributed import Dist
    from trainer.modes.fast_online import FastOnlineTask
    from trainer.modes.rtd import RTDTask
    from trainer.step import autocast_context

    rtd_dir, manifest = fx.device_shards()
    cfg = load_config(TINY, fx.sets(
        f"generate.aux_checkpoint={fx.aux_checkpoint()}", "generate.epochs=2", "generate.seed=7",
        f"train.rtd_dir={rtd_dir}", "train.max_steps=10", "train.warmup_steps=0",
        "train.global_batch_size=8", "train.micro_batch_size_per_rank=8"))
    d = Dist(0, 1, 0, fx.device)
    online, offline = quiet(FastOnlineTask, cfg, d), quiet(RTDTask, cfg, d)
    n, batch_rows = online.samples_per_epoch, manifest["layout"]["batch_rows"]
    # Aligned: exactly one of generate's batches (same rows, same padded shape); unaligned:
    # the fast-online test's starts (other batch shapes; the last straddles an epoch).
    cases = {"aligned_0": (0, min(batch_rows, n)), "aligned_epoch1": (n, min(batch_rows, n)),
             "start_37": (37, 11), "straddle": (n - 5, 11)}
    figures, ok = {"rows_per_epoch": n, "generate_batch_rows": batch_rows}, True
    for name, (start, count) in cases.items():
        want = offline.rows(start, count)
        with autocast_context(fx.device, "auto"):
            got = online.ready({k: v.to(fx.device) for k, v in online.rows(start, count).items()})
        diff = int((got["input_ids"].cpu() != want["input_ids"]).sum())
        same = diff == 0 and all(torch.equal(got[k].cpu(), want[k]) for k in
                                 ("attention_mask", "labels", "temperature"))
        figures[f"{name}_differing_tokens"] = diff
        figures[f"{name}_equal"] = same
        if name.startswith("aligned") or fx.device.type == "cpu":
            ok &= same
    # Both tasks start the RTD head at the replaced fraction of the first global batch:
    # FastOnlineTask corrupts it in setup, outside the trainer's autocast (fp32 on CUDA),
    # RTDTask reads it from the bf16-made shards. Information: unequal means a fast-online run
    # on a GPU does not start from the very model of an rtd run on its shards.
    figures["head_prior_equal"] = torch.equal(online.model.head.out.bias,
                                              offline.model.head.out.bias)
    notes = ["pass: batches aligned with generate's are equal (and every case on CPU); "
             "unaligned counts and head_prior_equal on CUDA are information"]
    return ok, figures, notes


def rel_bias_sdpa(fx: Fixtures):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from trainer.config.load import load_config
    from trainer.model.encoder_config import EncoderConfig
    from trainer.model.heads import Discriminator

    dev, T = fx.device, fx.shapes.sdpa_seq
    assert T % 128 == 64
    gen = torch.Generator().manual_seed(0)
    B = 4
    ids = torch.randint(5, fx.shapes.vocab, (B, T), generator=gen)
    lengths = torch.tensor([T, T - 1, T // 2 + 3, 17])
    mask = torch.arange(T)[None] < lengths[:, None]  # padding in 3 rows
    labels = (torch.rand(B, T, generator=gen) < 0.15).float()
    figures, ok = {"seq_len": T}, True

    def grad(p: float, precision: str, backend=None) -> torch.Tensor:
        cfg = load_config(TINY, [*fx.shapes.model, f"tokenizer.vocab_size={fx.shapes.vocab}",
                                 f"data.max_seq_len={T}", f"model.dropout={p}",
                                 f"model.attention_dropout={p}"])
        torch.manual_seed(0)
        model = Discriminator(EncoderConfig.main(cfg)).to(dev).train()
        auto = (torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
        kernel = sdpa_kernel(backend) if backend is not None else contextlib.nullcontext()
        with auto, kernel:
            logits = model(ids.to(dev), mask.to(dev)).float()
        real = mask.to(dev)
        loss = F.binary_cross_entropy_with_logits(logits[real], labels.to(dev)[real])
        loss.backward()
        return model.encoder.rel_bias.grad.detach().float().cpu()

    precisions = ("fp32", "bf16") if dev.type == "cuda" else ("fp32",)
    for precision in precisions:
        for p in (0.0, 0.1):
            g = grad(p, precision)
            finite, nonzero = bool(torch.isfinite(g).all()), bool((g != 0).any())
            figures[f"{precision}_dropout{p}_grad_finite"] = finite
            figures[f"{precision}_dropout{p}_grad_nonzero_fraction"] = float((g != 0).float()
                                                                             .mean())
            ok &= finite and nonzero
        ref = grad(0.0, precision, SDPBackend.MATH)
        g = grad(0.0, precision)
        rel = float((g - ref).norm() / ref.norm())
        figures[f"{precision}_dropout0_rel_err_vs_math_backend"] = rel
        ok &= rel < SDPA_REL_TOL[precision]
    notes = [f"B={B}, 3 rows padded; tolerance vs math backend {SDPA_REL_TOL}"]
    return ok, figures, notes


def compile_smoke(fx: Fixtures):
    from trainer.config.load import load_config
    from trainer.model.encoder_config import EncoderConfig
    from trainer.model.heads import Discriminator
    from trainer.optim import build_optimizer

    dev, steps = fx.device, 3
    cfg = load_config(TINY, [*fx.shapes.model, f"tokenizer.vocab_size={fx.shapes.vocab}",
                             f"data.max_seq_len={fx.shapes.seq}", "model.dropout=0.0",
                             "model.attention_dropout=0.0"])
    torch.manual_seed(0)
    eager = Discriminator(EncoderConfig.main(cfg)).to(dev).train()
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, backend=fx.shapes.compile_backend)
    task = in_memory_rtd()
    batches = [rtd_batch(fx.shapes.batch, fx.shapes.seq, fx.shapes.vocab, dev, s)
               for s in range(steps)]
    losses, seconds = {}, {}
    for name, model, params in (("eager", eager, eager), ("compiled", compiled, twin)):
        opt = build_optimizer(params, cfg.train)
        out = []
        start = time.perf_counter()
        for b in batches:
            loss, _ = task.loss(model, b)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            out.append(float(loss.detach()))
        seconds[name] = time.perf_counter() - start
        losses[name] = out
    rel = max(abs(a - b) / abs(a) for a, b in zip(losses["eager"], losses["compiled"],
                                                   strict=True))
    figures = {"backend": fx.shapes.compile_backend, "steps": steps,
               "max_rel_loss_diff": rel, "compiled_first_steps_s": seconds["compiled"],
               "eager_steps_s": seconds["eager"], "eager_losses_nats": losses["eager"],
               "compiled_losses_nats": losses["compiled"]}
    return rel < COMPILE_REL_TOL, figures, [f"fp32, dropout off; pass: < {COMPILE_REL_TOL:g}"]
