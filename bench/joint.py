"""Cost of one update in each training mode at the same discriminator and batch, in one run.

    make demo                                   # the corpus and RTD shards it reads
    .venv/bin/python bench/joint.py [--config configs/small.toml] [--steps 6] [--batch 16]

Prints seconds per step and peak memory of ``electra``, ``decoupled``, ``fast-online`` and
offline ``rtd``, each as a ratio to ``electra`` (Fast-ELECTRA paper: online Fast-ELECTRA at
0.71-0.81 of ELECTRA's time per update and 0.83-0.85 of its memory; offline should approach
the discriminator alone). The model sizes are the config's; the data is the demo corpus and
shard set (vocabulary and sequence length are taken from them). Each mode runs in its own
process (the same task, loss, backward, clip and AdamW step as trainer.train); the first step
is a warm-up and not timed. Peak memory: torch.cuda.max_memory_allocated on GPU; on CPU the
process's peak resident memory above what it held once the data was loaded (libraries and
corpus are the same for every mode), so the ratios compare what training itself adds.
The fast-online aux is a randomly initialised generator of the config's [aux] sizes: its cost
does not depend on its weights.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from trainer import checkpoint  # noqa: E402
from trainer.config.load import load_config, to_dict  # noqa: E402
from trainer.data.corpus_shards import CorpusShards  # noqa: E402
from trainer.distributed import Dist, pick_device  # noqa: E402
from trainer.model.encoder_config import EncoderConfig
from trainer.model.heads import MLMModel  # noqa: E402
from trainer.modes.registry import build_task  # noqa: E402
from trainer.optim import build_optimizer  # noqa: E402
from trainer.step import autocast_context  # noqa: E402

MODES = ("electra", "decoupled", "fast-online", "rtd")


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def overrides(args, corpus: CorpusShards, aux_dir: str, mode: str) -> list[str]:
    return [f"data.corpus_dir={args.corpus}", f"data.max_seq_len={corpus.max_seq_len}",
            f"tokenizer.vocab_size={corpus.vocab_size}", f"train.rtd_dir={args.rtd}",
            f"generate.aux_checkpoint={aux_dir}", f"train.mode={mode}",
            f"train.global_batch_size={args.batch}",
            f"train.micro_batch_size_per_rank={args.batch}", "train.grad_accum=1",
            f"train.max_steps={args.steps}", "train.warmup_steps=0",
            "joint.embedding_sharing=shared", "generate.epochs=1"]


def child(args) -> dict:
    """One mode in this process: seconds per timed step and peak memory."""
    corpus = CorpusShards(args.corpus)
    cfg = load_config(args.config, overrides(args, corpus, args.aux, args.mode))
    device = pick_device(args.device, 0, "--device")
    d = Dist(0, 1, 0, device)
    torch.manual_seed(0)
    base = rss_gb()
    task = build_task(cfg, d)
    model = task.model.to(device)
    opts = [build_optimizer(m, cfg.train, lr) for _, m, lr in task.optimized(model)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(args.steps):
        batch = {k: v.to(device) for k, v in task.micro_batch(step, 0, d).items()}
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast_context(device, cfg.train.precision):
            loss, _ = task.loss(model, batch)
        loss.backward()
        for _, m, _ in task.optimized(model):
            torch.nn.utils.clip_grad_norm_(m.parameters(), cfg.train.clip_grad_norm)
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    memory = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
              else rss_gb() - base)
    return {"mode": args.mode, "seconds_per_step": sum(times[1:]) / (len(times) - 1),
            "memory_gb": memory, "device": str(device),
            "discriminator_params": task.model.num_parameters()
            if args.mode in ("rtd", "fast-online")
            else task.model.discriminator.num_parameters()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/small.toml")
    parser.add_argument("--corpus", default="shards/tiny/corpus")
    parser.add_argument("--rtd", default="shards/tiny/rtd")
    parser.add_argument("--steps", type=int, default=6, help="steps per mode (first untimed)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--aux", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(child(args)))
        return
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is not timed)")

    corpus = CorpusShards(args.corpus)
    cfg = load_config(args.config, overrides(args, corpus, "", "electra"))
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        meta = {"step": 0, "mode": "mlm", "config": to_dict(cfg), "model_kind": "mlm"}
        aux = checkpoint.save(tmp, 0, {"model": MLMModel(EncoderConfig.aux(cfg)).state_dict()},
                              meta, checkpoint.SaveContext.single_process())
        results = {}
        for mode in MODES:
            cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--mode", mode,
                   "--aux", aux]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])

    ref = results["electra"]
    print(f"config {args.config} (vocab {corpus.vocab_size}, seq {corpus.max_seq_len}), batch "
          f"{args.batch}, {args.steps - 1} timed steps per mode on {ref['device']}; "
          f"discriminator {ref['discriminator_params']:,} parameters")
    print(f"{'mode':<12} {'s/step':>8} {'x electra':>10} {'memory GB':>10} {'x electra':>10}")
    for mode, r in results.items():
        print(f"{mode:<12} {r['seconds_per_step']:>8.3f} "
              f"{r['seconds_per_step'] / ref['seconds_per_step']:>10.2f} "
              f"{r['memory_gb']:>10.3f} {r['memory_gb'] / max(ref['memory_gb'], 1e-9):>10.2f}")


if __name__ == "__main__":
    main()
