"""The speed items of bench/gpu_check.py: the discriminator's model FLOPs utilisation, the
aux's tokens per second in generate's corruption step, and the attention kernels (CUDA only):
which SDPA kernel trains the relative bias, and model.attention flex vs sdpa.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time

import numpy as np
import torch

from bench.gpu_check_fixtures import PEAK_TFLOPS, REPO, Fixtures, in_memory_rtd, rtd_batch, sync


def _peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "no peak for a CPU"
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_TFLOPS.items():
        if key in name:
            return peak, f"{name}: {key} bf16 dense peak"
    return None, f"{name}: unknown peak (pass --peak-tflops)"


def rtd_mfu(fx: Fixtures):
    from trainer.config.load import load_config
    from trainer.model.encoder_config import EncoderConfig
    from trainer.model.heads import Discriminator
    from trainer.optim import build_optimizer
    from trainer.step import autocast_context
    from trainer.tools.cost import estimate

    dev, s = fx.device, fx.shapes
    cfg = load_config(s.base_config, ["train.mode=rtd"])
    T, B = cfg.data.max_seq_len, s.base_batch
    enc = EncoderConfig.main(cfg)
    torch.manual_seed(0)
    model = Discriminator(enc).to(dev).train()
    opt = build_optimizer(model, cfg.train)
    task = in_memory_rtd()
    batch = rtd_batch(B, T, cfg.tokenizer.vocab_size, dev)

    def step():
        with autocast_context(dev, "bf16"):
            loss, _ = task.loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(3):  # allocator, cuBLAS heuristics, fused AdamW state
        step()
    sync(dev)
    start = time.perf_counter()
    for _ in range(s.timed_steps):
        loss = step()
    sync(dev)
    loss = float(loss.detach())
    seconds = (time.perf_counter() - start) / s.timed_steps
    est = estimate(cfg)  # per sequence, forward + backward
    per_seq = est["model_flops"]["main_update_gflops"] * 1e9
    table1 = est["offline"]["main_gflops"] * 1e9
    peak, peak_src = _peak_tflops(dev, fx.peak_tflops)
    achieved = B * per_seq / seconds / 1e12
    figures = {"config": os.path.relpath(s.base_config, REPO), "micro_batch_seqs": B,
               "seq_len_tokens": T, "step_s": seconds, "tokens_per_s": B * T / seconds,
               "model_flops_per_seq_update_gflop": per_seq / 1e9,
               "achieved_tflop_per_s": achieved,
               "peak_tflop_per_s": peak, "peak_source": peak_src,
               "mfu": achieved / peak if peak else None,
               "table1_flops_per_seq_update_gflop": table1 / 1e9,
               "achieved_tflop_per_s_table1_flops": B * table1 / seconds / 1e12,
               "final_loss_finite": math.isfinite(loss)}
    notes = [f"mfu: model FLOPs ({est['model_flops']['convention']}); the Table-1 figures "
             "(Chinchilla app. F, embedding term 2*S*V*D included) are given for comparison "
             "only: the lookup is a gather, not a GEMM",
             "step = bf16 autocast forward + backward + clip + AdamW, full sequences"]
    return math.isfinite(loss), figures, notes


def aux_tokens_per_s(fx: Fixtures):
    from pipeline.corrupt_write import Corrupter
    from pipeline.layout import Layout
    from trainer.config.load import load_config
    from trainer.model.encoder_config import EncoderConfig
    from trainer.model.heads import MLMModel

    dev, s = fx.device, fx.shapes
    cfg = load_config(s.base_config, ["corruption.replacement=aux"])
    T, V = cfg.data.max_seq_len, cfg.tokenizer.vocab_size
    rows = Layout.plan(1 << 20, T, cfg.generate.batch_tokens, cfg.generate.part_rows).batch_rows
    rows = rows if dev.type == "cuda" else min(rows, 8)
    torch.manual_seed(0)
    aux = MLMModel(EncoderConfig.aux(cfg)).to(dev).eval().requires_grad_(False)
    corrupter = Corrupter(str(dev), aux, None, cfg, 1 << 20, V)
    rng = np.random.default_rng(0)
    lengths = np.full(rows, T, np.int64)
    tokens = rng.integers(5, V, rows * T).astype(np.int64)
    tokens[::T] = 2  # [CLS]
    tokens[T - 1::T] = 3  # [SEP]

    def batch(i: int):
        positions = np.arange(i * rows, (i + 1) * rows)
        return corrupter.corrupt(0, positions, positions, lengths, tokens)

    batch(0)
    sync(dev)
    n = max(2, s.timed_steps)
    start = time.perf_counter()
    replaced = 0
    for i in range(1, n + 1):
        replaced += int(batch(i)[1].sum())
    seconds = (time.perf_counter() - start) / n  # corrupt() ends with host copies: synced
    figures = {"config": os.path.relpath(s.base_config, REPO), "vocab": V, "seq_len_tokens": T,
               "aux_layers": cfg.aux.num_layers, "batch_rows_seqs": rows, "batch_s": seconds,
               "tokens_per_s": rows * T / seconds, "sequences_per_s": rows / seconds,
               "replaced_fraction": replaced / (n * rows * T)}
    notes = ["random-weight aux (speed does not depend on the weights); includes host copies"]
    return replaced > 0, figures, notes


# ---------------------------------------------------------------------------------------------
# Attention kernels (CUDA only): which SDPA kernel trains the relative bias, and flex vs sdpa
# ---------------------------------------------------------------------------------------------

class NotOnThisDevice(Exception):  # noqa: N818 (a verdict, not a failure: status "n/a")
    """Raised by an item that only means something on another device."""


# Full-run budgets of the CUDA-only items (n/a at once on a CPU).
BUDGETS_S = {"sdpa_kernels": 90, "flex_vs_sdpa": 240, "head_precision": 60}
ATTENTION_KERNEL = re.compile(r"fmha|attention|attn|flash|efficient|sdpa", re.IGNORECASE)
FLEX_REL_TOL = 5e-2  # flex vs sdpa under bf16 autocast, relative L2 (outputs, rel_bias.grad)


def _base_encoder(fx: Fixtures, attention: str, dropout: float):
    from trainer.config.load import load_config
    from trainer.model.encoder import Encoder
    from trainer.model.encoder_config import EncoderConfig

    cfg = load_config(fx.shapes.base_config, [f"model.dropout={dropout}",
                                              f"model.attention_dropout={dropout}",
                                              f"model.attention={attention}"])
    torch.manual_seed(0)
    return Encoder(EncoderConfig.main(cfg)).to(fx.device).train(), cfg


def _padded_batch(B: int, T: int, vocab: int, dev: torch.device):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (B, T), generator=gen)
    lengths = torch.full((B,), T)
    lengths[1::4] = T // 2 + 3  # a quarter of the rows padded
    mask = torch.arange(T)[None] < lengths[:, None]  # (B, T)
    return ids.to(dev), mask.to(dev)


def _train_step(model, ids, mask) -> torch.Tensor:
    """bf16 forward + backward of a loss over the real tokens' states (B, T, H) -> (B, T, H).
    A fixed random readout: a post-LN output's own mean square is constant, no gradient."""
    from trainer.step import autocast_context

    H = model.cfg.hidden_size
    w = torch.randn(H, generator=torch.Generator().manual_seed(1)).to(ids.device)  # (H,)
    with autocast_context(ids.device, "bf16"):
        out = model(ids, mask)  # (B, T, H)
    loss = (out.float()[mask] @ w).square().mean()
    loss.backward()
    return out.detach()


def sdpa_kernels(fx: Fixtures):
    """One bf16 training step (forward + backward) of the base-shape encoder with the relative
    bias, padding and dropout 0.1, inside sdpa_kernel([EFFICIENT_ATTENTION]) (raises if that
    kernel cannot take the inputs) and again with the default backend choice; the CUDA kernels
    whose names look like attention, from torch.profiler."""
    from collections import Counter

    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    dev = fx.device
    if dev.type != "cuda":
        raise NotOnThisDevice("CUDA only: names the CUDA SDPA kernels")
    model, cfg = _base_encoder(fx, "sdpa", 0.1)
    ids, mask = _padded_batch(4, cfg.data.max_seq_len, cfg.tokenizer.vocab_size, dev)
    figures = {"seq_len_tokens": cfg.data.max_seq_len, "batch_seqs": 4}
    for name, kernel in (("efficient_only", sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION])),
                         ("default", contextlib.nullcontext())):
        with kernel:
            _train_step(model, ids, mask)  # warm-up outside the profile
            model.zero_grad(set_to_none=True)
            sync(dev)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                _train_step(model, ids, mask)
                sync(dev)
        model.zero_grad(set_to_none=True)
        names = Counter(e.name for e in prof.events()
                        if e.device_type == torch.autograd.DeviceType.CUDA
                        and ATTENTION_KERNEL.search(e.name))
        figures[f"{name}_attention_kernels"] = dict(names)
    ok = bool(figures["efficient_only_attention_kernels"])
    notes = ["pass: the step runs under EFFICIENT_ATTENTION only and its attention kernels are "
             "named; 'default' shows what SDPA picks on its own (per layer and step: counts)"]
    return ok, figures, notes


def flex_vs_sdpa(fx: Fixtures):
    """model.attention sdpa vs flex at the base shape, bf16 autocast, attention dropout 0 (flex
    has none), a quarter of the rows padded: forward + backward tokens/s, peak memory, flex's
    compile time, and the two paths' outputs and rel_bias.grad compared (same weights)."""
    dev, s = fx.device, fx.shapes
    if dev.type != "cuda":
        raise NotOnThisDevice("CUDA only: flex_attention has no CPU backward")
    figures: dict = {}
    outs, grads = {}, {}
    for attention in ("sdpa", "flex"):
        model, cfg = _base_encoder(fx, attention, 0.0)
        T, B = cfg.data.max_seq_len, s.base_batch
        ids, mask = _padded_batch(B, T, cfg.tokenizer.vocab_size, dev)
        start = time.perf_counter()
        outs[attention] = _train_step(model, ids, mask).float()  # flex: compiles here
        sync(dev)
        grads[attention] = model.rel_bias.grad.detach().float().clone()
        figures[f"{attention}_first_step_s"] = time.perf_counter() - start
        for _ in range(2):
            model.zero_grad(set_to_none=True)
            _train_step(model, ids, mask)
        model.zero_grad(set_to_none=True)
        sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        start = time.perf_counter()
        for _ in range(s.timed_steps):
            _train_step(model, ids, mask)
            model.zero_grad(set_to_none=True)
        sync(dev)
        seconds = (time.perf_counter() - start) / s.timed_steps
        figures[f"{attention}_step_s"] = seconds
        figures[f"{attention}_tokens_per_s"] = B * T / seconds
        figures[f"{attention}_peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        del model
        torch.cuda.empty_cache()
    real = mask
    figures["flex_over_sdpa_speed"] = figures["flex_tokens_per_s"] / figures["sdpa_tokens_per_s"]
    figures["output_rel_err"] = float((outs["flex"] - outs["sdpa"])[real].norm()
                                      / outs["sdpa"][real].norm())
    figures["rel_bias_grad_rel_err"] = float((grads["flex"] - grads["sdpa"]).norm()
                                             / grads["sdpa"].norm())
    figures.update(micro_batch_seqs=B, seq_len_tokens=T,
                   config=os.path.relpath(s.base_config, REPO))
    ok = (figures["output_rel_err"] < FLEX_REL_TOL
          and figures["rel_bias_grad_rel_err"] < FLEX_REL_TOL)
    notes = [f"step = encoder forward + backward (no head, no optimizer); pass: flex within "
             f"{FLEX_REL_TOL:g} (relative L2, bf16) of sdpa in outputs at real tokens and "
             f"rel_bias.grad; speed and memory are information"]
    return ok, figures, notes


def head_precision(fx: Fixtures):
    """generate.head_precision on CUDA: aux tokens/s of ``Corrupter.corrupt`` at the base shape
    per precision, and the share of sampled tokens that differ from fp32's (same seeds, same
    random-weight aux). A CPU computes the head in fp32 only: n/a there."""
    if fx.device.type != "cuda":
        raise NotOnThisDevice("CUDA only: a CPU computes the head in fp32 only")
    from pipeline.corrupt_write import Corrupter
    from pipeline.head_precision import with_head_precision
    from pipeline.layout import Layout
    from trainer.config.load import load_config
    from trainer.model.encoder_config import EncoderConfig
    from trainer.model.heads import MLMModel

    dev, s = fx.device, fx.shapes
    cfg = load_config(s.base_config, ["corruption.replacement=aux", "generate.device=cuda"])
    T, V = cfg.data.max_seq_len, cfg.tokenizer.vocab_size
    rows = Layout.plan(1 << 20, T, cfg.generate.batch_tokens, cfg.generate.part_rows).batch_rows
    rng = np.random.default_rng(0)
    lengths = np.full(rows, T, np.int64)
    tokens = rng.integers(5, V, rows * T).astype(np.int64)
    tokens[::T], tokens[T - 1::T] = 2, 3  # [CLS], [SEP]
    n = max(2, s.timed_steps)
    figures, draws = {"vocab": V, "seq_len_tokens": T, "batch_rows_seqs": rows}, {}
    for precision in ("fp32", "tf32", "bf16"):
        torch.manual_seed(0)  # the same weights for every precision
        aux = MLMModel(EncoderConfig.aux(cfg)).to(dev).eval().requires_grad_(False)
        corrupter = with_head_precision(Corrupter(str(dev), aux, None, cfg, 1 << 20, V),
                                        precision)

        def batch(i: int, c=corrupter):
            positions = np.arange(i * rows, (i + 1) * rows)
            return c.corrupt(0, positions, positions, lengths, tokens)

        batch(0)
        sync(dev)
        start = time.perf_counter()
        draws[precision] = [batch(i)[0] for i in range(1, n + 1)]
        figures[f"{precision}_tokens_per_s"] = n * rows * T / (time.perf_counter() - start)
    for precision in ("tf32", "bf16"):
        differ = sum(int((a != b).sum()) for a, b in zip(draws["fp32"], draws[precision],
                                                          strict=True))
        total = sum(len(a) for a in draws["fp32"])
        figures[f"{precision}_differing_token_share"] = differ / total
        figures[f"{precision}_speedup_vs_fp32"] = (figures[f"{precision}_tokens_per_s"]
                                                   / figures["fp32_tokens_per_s"])
    notes = ["differing share over all output tokens (unselected ones never differ); the "
             "encoder runs in bf16 autocast in every case, only the head changes"]
    return figures["fp32_tokens_per_s"] > 0, figures, notes
