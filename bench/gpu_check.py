"""GPU acceptance checks in one run of at most ~8 minutes: the CUDA code paths that
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
    tests/trainer/modes/test_fast_online.py does on CPU: rows aligned with generate's batches
    must be equal; unaligned starts (other batch shapes) are counted, equal on CPU.
rel_bias_sdpa          SDPA with the learnable relative bias at T % 128 == 64 with padding:
    ``rel_bias.grad`` finite and non-zero with dropout 0 and 0.1 (train mode, bf16 autocast on
    CUDA), and with dropout 0 equal to the math-backend reference (relative L2 error).
compile_smoke          ``torch.compile`` of the discriminator: a few AdamW steps, losses match
    eager's (same initial weights and batches, dropout off) to a relative 1e-3.
rtd_mfu                rtd training step at the base shape (configs/base.toml: 12 x 768, seq
    512, micro-batch 32, bf16): tokens/s and MFU, FLOPs per sequence per update from
    ``trainer.tools.cost`` in model FLOPs (PaLM's MFU convention: no embedding lookup; the
    paper's Table-1 count, embedding term included, alongside), over the peak in
    ``PEAK_TFLOPS`` (H200/H100 SXM bf16 dense: 989 TFLOP/s).
aux_tokens_per_s       ``pipeline.generate.Corrupter.corrupt`` (generate's per-batch masking,
    aux forward in bf16 autocast on CUDA, fp32 masked-position LM head, sampling, host copy) at
    the base shape (4-layer aux, 128K vocabulary, seq 512, generate.batch_tokens), random
    weights: corpus tokens/s.

sdpa_kernels           (CUDA; n/a elsewhere) one bf16 training step (forward + backward) of the
    base-shape encoder with the relative bias, padding and dropout 0.1 under
    ``sdpa_kernel([EFFICIENT_ATTENTION])`` (raises if that kernel cannot take the inputs), and
    again with SDPA's own choice: the attention kernels' names from ``torch.profiler``.
flex_vs_sdpa           (CUDA; n/a elsewhere) ``model.attention`` "sdpa" vs "flex" (compiled
    flex_attention) at the base shape, bf16, attention dropout 0, a quarter of the rows padded:
    encoder forward + backward tokens/s, peak memory, flex's first (compiling) step, and the
    outputs and ``rel_bias.grad`` of the two within 5e-2 (relative L2).

head_precision         (CUDA; n/a elsewhere) ``generate.head_precision`` fp32 / tf32 / bf16 at
    the base shape: aux tokens/s of ``Corrupter.corrupt`` per precision and the share of output
    tokens that differ from fp32's (same seeds, same random-weight aux).

An item that only means something on CUDA reports status ``n/a`` on a CPU (exit status 0).

``--quick`` (for ``--device cpu``): tiny shapes and few steps, the same code paths, so that
tests/bench/test_gpu_check.py exercises the whole module on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.gpu_check_correctness import (
    bf16_training,
    compile_smoke,
    corrupt_cpu_vs_device,
    fast_online_rows,
    generate_workers,
    rel_bias_sdpa,
)
from bench.gpu_check_fixtures import FULL, QUICK, Fixtures
from bench.gpu_check_speed import (
    BUDGETS_S,
    NotOnThisDevice,
    aux_tokens_per_s,
    flex_vs_sdpa,
    head_precision,
    rtd_mfu,
    sdpa_kernels,
)

ORDER = ("corrupt_cpu_vs_device", "bf16_training", "generate_workers", "fast_online_rows",
         "rel_bias_sdpa", "sdpa_kernels", "rtd_mfu", "aux_tokens_per_s", "head_precision",
         "flex_vs_sdpa", "compile_smoke")  # compile last: slow


class ItemTimeout(BaseException):  # not caught by libraries' `except Exception`
    pass


def _alarm(signum, frame):
    raise ItemTimeout()


ITEMS = {f.__name__: f for f in (corrupt_cpu_vs_device, bf16_training, generate_workers,
                                 fast_online_rows, rel_bias_sdpa, compile_smoke, rtd_mfu,
                                 aux_tokens_per_s, sdpa_kernels, flex_vs_sdpa,
                                 head_precision)}


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
            budget = min(shapes.budgets.get(name, BUDGETS_S.get(name, 60)), left)
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
            except NotOnThisDevice as e:  # a CUDA-only item on a CPU: says so, fails nothing
                r.update(status="n/a", notes=[str(e)])
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
                                  ("pass", "n/a", "fail", "error", "timeout", "skipped")
                                  if statuses.count(s))
    path.write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu_check.log").write_text("\n".join(Fixtures.log))
    print_table(report)
    print(f"gpu_check: {path}; progress output of the jobs in {out / 'gpu_check.log'}")
    return 0 if all(s in ("pass", "n/a") for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
