"""GPU acceptance checks in one run of at most ~8 minutes (issue 14): the CUDA code paths that
the CPU-only test suite cannot reach, each compared with the CPU or eager reference.

    bash bench/gpu_check.sh [OUT_DIR]                       # the GPU run (wraps the line below)
    python bench/gpu_check.py --device cuda --out OUT_DIR [--budget-s 440] [--only a,b]
    python bench/gpu_check.py --device cpu --quick --out /tmp/gc   # smoke run on a CPU (~40 s)

Items (each in its own try block with its own time budget; the JSON file
``OUT_DIR/gpu_check.json`` is rewritten after every item, so a killed run keeps what it had):

corrupt_cpu_vs_device  ``corrupt_batch`` on CPU and on the device over the same batch with a
    trained aux, in fp32: the integer decisions (selected positions, [MASK] choices, schedule
    values) must be equal, and so must the model-free samplers' tokens (float64 closed forms);
    aux-sampled tokens may differ only at near-ties: fp32 logits from a GPU GEMM and a CPU GEMM
    differ in their last bits, which moves each CDF boundary by ~1e-6, so a keyed uniform that
    lands within that distance of a boundary picks the neighbouring token. Every differing
    draw is measured (its uniform's distance to the CPU CDF interval's nearest edge) and must
    be < NEAR_TIE. The same batch under bf16 autocast (what ``pipeline.generate`` uses on CUDA)
    is counted too, for information: that is not a near-tie effect, the encoder itself differs.
bf16_training          the real trainer (``trainer.train``), rtd mode, 50 steps, on the device's
    shard set, ``train.precision`` bf16 and fp32, dropout off: losses finite, the last logged
    loss (mean of the last 10 steps) of bf16 within 2% of fp32's.
generate_workers       ``pipeline.generate`` with ``generate.device`` = the device, 1 and 2
    worker processes (Beam multi_processing): the same part sha256s; vs the CPU's bytes (one
    in-process worker): rows and tokens that differ, counted (expected on CUDA: the encoder
    runs under bf16 autocast there, so more than near-ties; 0 on CPU).
fast_online_rows       ``FastOnlineTask`` on the device (the trainer's autocast) vs the rows of
    the shard set generated on the same device (``RTDTask.rows``), as
    tests/trainer/test_fast_online.py does on CPU: rows aligned with generate's batches must be
    equal; unaligned starts (other batch shapes) are counted, equal on CPU.
rel_bias_sdpa          SDPA with the learnable relative bias at T % 128 == 64 with padding:
    ``rel_bias.grad`` finite and non-zero with dropout 0 and 0.1 (train mode, bf16 autocast on
    CUDA), and with dropout 0 equal to the math-backend reference (relative L2 error).
compile_smoke          ``torch.compile`` of the discriminator: a few AdamW steps, losses match
    eager's (same initial weights and batches, dropout off) to a relative 1e-3.
rtd_mfu                rtd training step at the base shape (configs/base.toml: 12 x 768, seq
    512, micro-batch 32, bf16): tokens/s and MFU, FLOPs per sequence per update from
    ``trainer.cost.estimate`` (Chinchilla convention, embedding term included; also given
    without it), over the peak in ``PEAK_TFLOPS`` (H200/H100 SXM bf16 dense: 989 TFLOP/s).
aux_tokens_per_s       ``pipeline.generate.Corrupter.corrupt`` (generate's per-batch masking,
    aux forward in bf16 autocast on CUDA, fp32 masked-position LM head, sampling, host copy) at
    the base shape (4-layer aux, 128K vocabulary, seq 512, generate.batch_tokens), random
    weights: corpus tokens/s.

``--quick`` (for ``--device cpu``): tiny shapes and few steps, the same code paths, so that
tests/bench/test_gpu_check.py exercises the whole module on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

TINY = os.path.join(REPO, "configs", "tiny.toml")
BASE = os.path.join(REPO, "configs", "base.toml")
# The corpus: docstrings of a few standard-library modules (no download; the tests' choice).
PROSE_MODULES = ["argparse.py", "dataclasses.py", "textwrap.py", "json/__init__.py",
                 "logging/__init__.py", "subprocess.py", "tarfile.py", "zipfile.py"]
NEAR_TIE = 1e-4  # a differing draw's uniform must lie this close to a CDF boundary
LOSS_REL_TOL = 0.02  # bf16 vs fp32 final loss
COMPILE_REL_TOL = 1e-3  # compiled vs eager loss per step
SDPA_REL_TOL = {"fp32": 1e-3, "bf16": 5e-2}  # default SDPA backend vs math backend, rel_bias.grad
# Dense bf16 peak per GPU name fragment, TFLOP/s (NVIDIA datasheets, SXM, without sparsity).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}
ORDER = ("corrupt_cpu_vs_device", "bf16_training", "generate_workers", "fast_online_rows",
         "rel_bias_sdpa", "rtd_mfu", "aux_tokens_per_s", "compile_smoke")  # compile last: slow


@dataclass(frozen=True)
class Shapes:
    """Sizes of one mode (full on a GPU, quick on a CPU)."""

    vocab: int
    seq: int
    model: tuple[str, ...]
    aux_steps: int
    train_steps: int
    log_every: int
    batch: int
    train_batch: int  # train_steps x train_batch <= the 2-epoch shard set
    sdpa_seq: int  # % 128 == 64
    timed_steps: int
    base_config: str
    base_batch: int
    compile_backend: str
    budgets: dict = field(default_factory=dict)


FULL = Shapes(vocab=2000, seq=128, model=("model.num_layers=2", "model.hidden_size=128",
                                           "model.num_heads=4", "model.ffn_size=512",
                                           "aux.num_layers=2"),
              aux_steps=150, train_steps=50, log_every=10, batch=32, train_batch=16,
              sdpa_seq=192,
              timed_steps=10, base_config=BASE, base_batch=32, compile_backend="inductor",
              budgets={"corrupt_cpu_vs_device": 120, "bf16_training": 90,
                       "generate_workers": 150, "fast_online_rows": 45, "rel_bias_sdpa": 45,
                       "rtd_mfu": 90, "aux_tokens_per_s": 60, "compile_smoke": 150})
QUICK = Shapes(vocab=600, seq=64, model=("model.num_layers=2", "model.hidden_size=32",
                                          "model.num_heads=2", "model.ffn_size=64",
                                          "aux.num_layers=2"),
               aux_steps=4, train_steps=6, log_every=2, batch=8, train_batch=8, sdpa_seq=64,
               timed_steps=2,
               base_config=TINY, base_batch=2, compile_backend="aot_eager",
               budgets={"corrupt_cpu_vs_device": 60, "bf16_training": 45,
                        "generate_workers": 60, "fast_online_rows": 30, "rel_bias_sdpa": 20,
                        "rtd_mfu": 30, "aux_tokens_per_s": 30, "compile_smoke": 60})


class ItemTimeout(BaseException):  # not caught by libraries' `except Exception`
    pass


def _alarm(signum, frame):
    raise ItemTimeout()


def quiet(fn, *args, **kwargs):
    """Call fn with its stdout (progress lines of prepare/generate/train) in a log, not ours."""
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        try:
            return fn(*args, **kwargs)
        finally:
            Fixtures.log.append(buf.getvalue())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# Shared inputs, made on first use (inside the first item that needs them, on its budget)
# ---------------------------------------------------------------------------------------------

class Fixtures:
    log: list[str] = []

    def __init__(self, work: Path, device: torch.device, shapes: Shapes):
        self.work, self.device, self.shapes = work, device, shapes
        self._corpus = self._aux = None
        self._shards: dict[tuple[str, int], tuple[Path, dict]] = {}
        self.peak_tflops: float | None = None
        self.seconds: dict[tuple[str, int], float] = {}  # each shard set's generate time

    def sets(self, *extra: str) -> list[str]:
        """Config overrides of this run's small models and corpus (on top of tiny.toml)."""
        return [*self.shapes.model, f"tokenizer.vocab_size={self.shapes.vocab}",
                f"data.max_seq_len={self.shapes.seq}", "data.row_group_rows=64",
                f"data.corpus_dir={self.corpus()}", *extra]

    @staticmethod
    def argv(config: str, sets: list[str], *extra: str) -> list[str]:
        out = ["--config", config]
        for s in sets:
            out += ["--set", s]
        return [*out, *extra]

    def corpus(self) -> Path:
        if self._corpus is None:
            import sysconfig

            from pipeline.prepare import run

            stdlib = sysconfig.get_paths()["stdlib"]
            files = [os.path.join(stdlib, m) for m in PROSE_MODULES]
            corpus_dir = self.work / "corpus"
            quiet(run, self.argv(TINY, [
                f"data.input={json.dumps(files)}", "data.format=pydoc",
                f"data.corpus_dir={corpus_dir}", f"data.max_seq_len={self.shapes.seq}",
                "data.part_text_bytes=20000", "data.row_group_rows=64",
                f"tokenizer.vocab_size={self.shapes.vocab}"],
                "--direct_running_mode=in_memory", "--direct_num_workers=1"))
            self._corpus = corpus_dir
        return self._corpus

    def aux_checkpoint(self) -> str:
        """A real MLM checkpoint trained by trainer.train on the device (so its distribution is
        peaked enough for the sampling comparisons to mean something)."""
        if self._aux is None:
            from trainer.checkpoint import find_latest
            from trainer.train import run

            out = self.work / "aux"
            steps = self.shapes.aux_steps
            quiet(run, self.argv(TINY, self.sets(
                "train.mode=mlm", f"train.max_steps={steps}", "train.warmup_steps=1",
                f"train.log_every={steps}", "train.eval_every=0",
                f"train.checkpoint_every={steps}", f"train.global_batch_size={self.shapes.batch}",
                f"train.micro_batch_size_per_rank={self.shapes.batch}",
                "train.holdout_fraction=0.05", f"train.device={self.device.type}",
                f"train.out_dir={out}")))
            self._aux = find_latest(str(out))
        return self._aux

    def gen_sets(self, device: str, rtd_dir: Path) -> list[str]:
        return self.sets(f"generate.aux_checkpoint={self.aux_checkpoint()}", "generate.epochs=2",
                         "generate.seed=7", f"generate.device={device}",
                         f"generate.rtd_dir={rtd_dir}", "generate.batch_tokens=1024",
                         "generate.part_rows=200")

    def shards(self, device: str, workers: int) -> tuple[Path, dict]:
        """A 2-epoch aux shard set made by pipeline.generate on ``device`` with ``workers``
        worker processes (0: Beam's in-process runner). Returns (rtd_dir, manifest)."""
        key = (device, workers)
        if key not in self._shards:
            from pipeline.generate import run

            rtd_dir = self.work / f"rtd_{device}_{workers}"
            beam = (["--direct_running_mode=in_memory", "--direct_num_workers=1"] if not workers
                    else ["--direct_running_mode=multi_processing",
                          f"--direct_num_workers={workers}"])
            start = time.perf_counter()
            manifest = quiet(run, self.argv(TINY, self.gen_sets(device, rtd_dir), *beam))
            self.seconds[key] = time.perf_counter() - start
            self._shards[key] = rtd_dir, manifest
        return self._shards[key]

    def device_shards(self) -> tuple[Path, dict]:
        """The device's shard set: 1 worker process (on CPU the in-process runner, cheaper)."""
        return self.shards(self.device.type, 0 if self.device.type == "cpu" else 1)


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
    from trainer.corruption.corrupt import corrupt_batch
    from trainer.corruption.masking import mask_positions

    a = corrupt_batch(ids, mask, seq_ids, epoch, u, c, seed, aux=aux_a)
    auto = (torch.autocast(device_b.type, dtype=torch.bfloat16) if autocast_b
            else contextlib.nullcontext())
    with auto:
        b = corrupt_batch(ids.to(device_b), mask.to(device_b), seq_ids, epoch, u, c, seed,
                          aux=aux_b)
    sel, b_ids = a.selected, b.input_ids.cpu()
    differ = (a.input_ids != b_ids)[sel]  # (N,) over the selected positions
    out = {"selected_equal": torch.equal(sel, b.selected.cpu()),
           "temperature_equal": torch.equal(a.temperature, b.temperature.cpu()),
           "draws": int(sel.sum()), "differing_draws": int(differ.sum()),
           "differences_outside_selected": int(((a.input_ids != b_ids) & ~sel).sum()),
           "max_distance_to_cdf_edge": 0.0}
    if differ.any():
        masked = mask_positions(ids, seq_ids, seed, epoch, c.mask_prob, c.mask_token_prob,
                                attention_mask=mask)[0]
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
    m_cpu = mask_positions(ids, seq_ids, seed, epoch, c.mask_prob, 0.8, 0.1, vocab, mask)
    m_dev = mask_positions(ids.to(dev), seq_ids.to(dev), seed, epoch, c.mask_prob, 0.8, 0.1,
                           vocab, mask.to(dev))
    same_mask = all(torch.equal(a, b.cpu()) for a, b in zip(m_cpu, m_dev, strict=True))
    figures["mask_positions_equal"] = same_mask
    ok &= same_mask

    counts = corpus.unigram_counts()
    for rep in ("uniform", "unigram"):  # closed forms in float64: exact on every device
        cc = dataclasses.replace(c, replacement=rep)
        a = corrupt_batch(ids, mask, seq_ids, epoch, u, cc, seed, unigram_counts=counts)
        b = corrupt_batch(ids.to(dev), mask.to(dev), seq_ids, epoch, u, cc, seed,
                          unigram_counts=counts)
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
    from trainer.train import autocast_context

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


def _in_memory_rtd():
    """RTDTask's real loss, for batches made in memory (no shard set at the base shape)."""
    from trainer.modes.rtd import RTDTask

    class InMemoryRTD(RTDTask):
        def __init__(self):  # noqa: D107 (no shards to open: loss() needs only ready())
            pass

    return InMemoryRTD()


def _rtd_batch(B: int, T: int, vocab: int, device, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (B, T), generator=gen)
    ids[:, 0] = 2  # [CLS]
    return {"input_ids": ids.to(device), "attention_mask": torch.ones(B, T, dtype=torch.bool,
                                                                      device=device),
            "labels": (torch.rand(B, T, generator=gen) < 0.15).float().to(device),
            "temperature": torch.ones(B, device=device),
            "sample_ids": torch.arange(B, device=device)}


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
    task = _in_memory_rtd()
    batches = [_rtd_batch(fx.shapes.batch, fx.shapes.seq, fx.shapes.vocab, dev, s)
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
    task = _in_memory_rtd()
    batch = _rtd_batch(B, T, cfg.tokenizer.vocab_size, dev)

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
    notes = ["FLOPs: trainer.cost.estimate (Chinchilla app. F; backward = 2 x forward; the "
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


ITEMS = {f.__name__: f for f in (corrupt_cpu_vs_device, bf16_training, generate_workers,
                                 fast_online_rows, rel_bias_sdpa, compile_smoke, rtd_mfu,
                                 aux_tokens_per_s)}


# ---------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------

def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, list) and len(v) > 4:
        return "[" + ", ".join(_fmt(x) for x in v[:4]) + ", ...]"
    return str(v)


def print_table(report: dict) -> None:
    print(f"\n{'item':<24}{'status':<10}{'seconds':>8}  figures (units in the key names)")
    print("-" * 100)
    for name, r in report["items"].items():
        figs = "; ".join(f"{k}={_fmt(v)}" for k, v in r.get("figures", {}).items())
        print(f"{name:<24}{r['status']:<10}{r.get('seconds', 0.0):>8.1f}  {figs}")
        for note in r.get("notes", []):
            print(f"{'':<42}  note: {note}")
        if r.get("error"):
            print(f"{'':<42}  error: {r['error'].strip().splitlines()[-1]}")
    print("-" * 100)
    print(f"total {report['total_seconds']:.1f} s on {report['device_name']} "
          f"(torch {report['torch']}); {report['summary']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few steps")
    parser.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_check",
                        help="folder of gpu_check.json (default $OUT, else runs/gpu_check)")
    parser.add_argument("--budget-s", type=float, default=440.0,
                        help="overall time limit, seconds; an item starts only with time left")
    parser.add_argument("--only", default="", help="comma-separated item names")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak, TFLOP/s (default: by GPU name)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch.cuda.is_available() is False "
              f"(torch {torch.__version__}); use a CUDA build of torch on a GPU machine, or "
              "--device cpu --quick for the smoke run", file=sys.stderr)
        return 2
    names = [n for n in ORDER if not args.only or n in args.only.split(",")]
    unknown = set(filter(None, args.only.split(","))) - set(ITEMS)
    if unknown:
        print(f"gpu_check: unknown --only item(s) {sorted(unknown)}; valid: {', '.join(ORDER)}",
              file=sys.stderr)
        return 2
    device = torch.device(args.device)
    shapes = QUICK if args.quick else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    xdg = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(work / "xdg")  # corpus token caches: not the home
    fx = Fixtures(work, device, shapes)
    fx.peak_tflops = args.peak_tflops
    report = {"device": args.device, "quick": args.quick,
              "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                              else platform.processor() or "cpu"),
              "torch": torch.__version__, "cuda": torch.version.cuda, "host_cpus": os.cpu_count(),
              "budget_s": args.budget_s, "items": {n: {"status": "pending"} for n in names}}
    path = out / "gpu_check.json"
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for name in names:
            left = args.budget_s - (time.perf_counter() - t0)
            budget = min(shapes.budgets[name], left)
            r = report["items"][name] = {"status": "skipped", "budget_s": round(budget, 1)}
            if budget < 5:
                r["notes"] = ["no time left in --budget-s"]
                continue
            print(f"gpu_check: {name} (budget {budget:.0f} s) ...", flush=True)
            start = time.perf_counter()
            signal.alarm(max(1, int(budget)))
            try:
                ok, figures, notes = ITEMS[name](fx)
                r.update(status="pass" if ok else "fail", figures=figures, notes=notes)
            except ItemTimeout:
                r.update(status="timeout", error=f"over its budget of {budget:.0f} s")
            except Exception:  # one failure must not hide the other items
                r.update(status="error", error=traceback.format_exc(limit=-8))
            finally:
                signal.alarm(0)
            r["seconds"] = time.perf_counter() - start
            report["total_seconds"] = time.perf_counter() - t0
            path.write_text(json.dumps(report, indent=2, default=str))
    finally:
        signal.signal(signal.SIGALRM, old)
        if xdg is None:
            del os.environ["XDG_CACHE_HOME"]
        else:
            os.environ["XDG_CACHE_HOME"] = xdg
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["total_seconds"] = time.perf_counter() - t0
    statuses = [r["status"] for r in report["items"].values()]
    report["summary"] = ", ".join(f"{statuses.count(s)} {s}" for s in
                                  ("pass", "fail", "error", "timeout", "skipped")
                                  if statuses.count(s))
    path.write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu_check.log").write_text("\n".join(Fixtures.log))
    print_table(report)
    print(f"gpu_check: {path}; progress output of the jobs in {out / 'gpu_check.log'}")
    return 0 if all(s == "pass" for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
