#!/usr/bin/env bash
# GPU acceptance checks (issue 14), at most ~8 minutes on one GPU: CPU vs CUDA corrupt_batch,
# bf16 vs fp32 training, generate on CUDA with 1 and 2 workers, fast-online rows vs shards,
# SDPA with the learnable relative bias, torch.compile, rtd MFU and aux tokens/s at the base
# shape. What each item checks: bench/gpu_check.py's docstring.
#
#   bash bench/gpu_check.sh [OUT_DIR] [extra gpu_check.py args]   # OUT_DIR default: $OUT,
#                                                                 # else runs/gpu_check
# Writes OUT_DIR/gpu_check.json (every item's status and figures) and OUT_DIR/gpu_check.log
# (the jobs' progress output); prints the table. Exit 0 = every item passed, 1 = some did not,
# 2 = no usable environment.
#
# Environment: no `make install` is needed where torch (a CUDA build) and the project's
# dependencies (pyproject.toml [project] dependencies: apache-beam, pyarrow, sentencepiece,
# zstandard, ...) are importable: it uses .venv/bin/python when that has torch, else python3.
# With no network, `make install` cannot run; the project itself is found from the repo root
# (on PYTHONPATH, so also in Beam's worker processes), and so is its package metadata, which
# pipeline.generate records in its manifest, when fast_electra.egg-info (git-ignored, made by
# `make install`) is there: copy it along (the device tool's carry). Else it is registered with
# `pip install --no-deps --no-build-isolation -e .` (offline).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT_DIR="${1:-${OUT:-runs/gpu_check}}"
shift || true

PY=python3
if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then
    PY=.venv/bin/python
fi
echo "gpu_check.sh: $($PY -c 'import sys; print(sys.executable, sys.version.split()[0])')"
if ! $PY - <<'PY'
import sys
missing = []
for name in ("torch", "numpy", "pyarrow", "apache_beam", "sentencepiece", "zstandard"):
    try:
        __import__(name)
    except Exception as e:  # noqa: BLE001 (report every missing module at once)
        missing.append(f"{name} ({e.__class__.__name__}: {e})")
if missing:
    print("gpu_check.sh: cannot import " + "; ".join(missing) + ". Run `make install` (needs "
          "network) or use a Python with the project's dependencies.", file=sys.stderr)
    sys.exit(2)
import torch
print(f"gpu_check.sh: torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"GPUs {torch.cuda.device_count()}: "
      f"{[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}")
PY
then
    exit 2
fi
if ! $PY -c 'from importlib.metadata import version; version("fast-electra")' 2>/dev/null; then
    echo "gpu_check.sh: fast-electra is not installed in $PY; registering it (offline, editable)"
    $PY -m pip install --quiet --no-deps --no-build-isolation -e . \
        || echo "gpu_check.sh: that failed: generate_workers and the items that need shards will error"
fi

# The Python-side budget (440 s) leaves time for start-up and the report; the
# timeout is the backstop (the JSON is rewritten after every item).
timeout --signal=INT --kill-after=15 470 \
    $PY bench/gpu_check.py --device cuda --out "$OUT_DIR" --budget-s 440 "$@"
rc=$?
[ "$rc" -eq 124 ] && echo "gpu_check.sh: killed at 470 s; partial results in $OUT_DIR/gpu_check.json"
exit "$rc"
