"""The speed items of bench/gpu_check.py: the discriminator's model FLOPs utilisation and the
aux's tokens per second in generate's corruption step.
"""

from __future__ import annotations

import math
import os
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
    from trainer.tools.cost import estimate, forward_flops
    from trainer.train import autocast_context

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
    per_seq = estimate(cfg)["offline"]["main_gflops"] * 1e9  # forward + backward, per sequence
    no_emb = 3 * forward_flops(enc, T, embeddings=False)["total"]
    peak, peak_src = _peak_tflops(dev, fx.peak_tflops)
    achieved = B * per_seq / seconds / 1e12
    figures = {"config": os.path.relpath(s.base_config, REPO), "micro_batch_seqs": B,
               "seq_len_tokens": T, "step_s": seconds, "tokens_per_s": B * T / seconds,
               "flops_per_seq_update_gflop": per_seq / 1e9,
               "achieved_tflop_per_s": achieved,
               "achieved_tflop_per_s_without_embedding_term": B * no_emb / seconds / 1e12,
               "peak_tflop_per_s": peak, "peak_source": peak_src,
               "mfu": achieved / peak if peak else None,
               "mfu_without_embedding_term": B * no_emb / seconds / 1e12 / peak if peak
               else None, "final_loss_finite": math.isfinite(loss)}
    notes = ["FLOPs: trainer.tools.cost.estimate (Chinchilla app. F; backward = 2 x forward; the "
             "2*S*V*D embedding term is a lookup, not a GEMM, hence the second figure)",
             "step = bf16 autocast forward + backward + clip + AdamW, full sequences"]
    return math.isfinite(loss), figures, notes


def aux_tokens_per_s(fx: Fixtures):
    from pipeline.corrupt_write import Corrupter
    from pipeline.generate_fns import Layout
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
