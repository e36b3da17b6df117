#!/usr/bin/env bash
# GPU acceptance checks, at most ~8 minutes on one GPU: CPU vs CUDA corrupt_batch, bf16 vs fp32
# training, generate on CUDA with 1 and 2 workers, fast-online rows vs shards, SDPA with the
# learnable relative bias, torch.compile, rtd MFU and aux tokens/s at the base shape. What each
# item checks: bench/gpu_check.py's docstring.
#
#   bash bench/gpu_check.sh [OUT_DIR] [extra gpu_check.py args]   # OUT_DIR default: $OUT,
#                                                                 # else runs/gpu_check
# Writes OUT_DIR/gpu_check.json (every item's status and figures) and OUT_DIR/gpu_check.log
# (the jobs' progress output); prints the table. Exit 0 = every item passed, 1 = some did not,
# 2 = no usable environment.
#
# Environment: the Python is .venv/bin/python when that has torch, else python3 (set
# GPU_CHECK_PYTHON to choose another); its torch (a CUDA build) and numpy are used as they are.
# Offline images with torch but without Apache Beam or zstandard: `make gpu-wheels` on a machine
# with network builds wheels/ (what such an image lacks, bench/gpu_image.toml; the project's own
# wheel too); copy it along with the repo. When apache_beam or zstandard does not import and
# wheels/ is there, every wheel in it is installed with `pip --no-index --no-deps --target
# build/gpu_site` (on PYTHONPATH, so also in Beam's worker processes): the image's packages
# stay untouched, and Beam's own bounds (numpy < 2.5) do not replace the image's numpy; `pip
# check` is printed for information. The project itself is found from the repo root (also on
# PYTHONPATH); its package metadata, which pipeline.generate records in its manifest, comes from
# that wheel, from `make install`, or else from `pip install --no-deps --no-build-isolation -e .`
# (offline).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT_DIR="${1:-${OUT:-runs/gpu_check}}"
shift || true

PY="${GPU_CHECK_PYTHON:-python3}"
if [ -z "${GPU_CHECK_PYTHON:-}" ] && [ -x .venv/bin/python ] \
    && .venv/bin/python -c 'import torch' 2>/dev/null; then
    PY=.venv/bin/python
fi
echo "gpu_check.sh: $($PY -c 'import sys; print(sys.executable, sys.version.split()[0])')"

SITE=build/gpu_site
if ! $PY -c 'import apache_beam, zstandard' 2>/dev/null; then
    if ! compgen -G 'wheels/*.whl' >/dev/null; then
        echo "gpu_check.sh: apache_beam or zstandard does not import in $PY and there is no" \
            "wheels/ folder. Run \`make gpu-wheels\` on a machine with network to PyPI and" \
            "copy wheels/ along with the repo (or \`make install\` where there is network)." >&2
        exit 2
    fi
    echo "gpu_check.sh: installing wheels/ into $SITE (--no-index --no-deps)"
    rm -rf "$SITE"
    if ! $PY -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
        --target "$SITE" wheels/*.whl; then
        echo "gpu_check.sh: installing wheels/ failed (above); rebuild it with" \
            "\`make gpu-wheels\` for this image's Python (bench/gpu_image.toml)" >&2
        exit 2
    fi
    export PYTHONPATH="$PYTHONPATH:$PWD/$SITE"
    echo "gpu_check.sh: pip check (for information; Beam's numpy bound is expected):"
    $PY -m pip check --disable-pip-version-check 2>&1 | sed 's/^/    /'
fi
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
          "network), or set GPU_CHECK_PYTHON to a Python that has torch, numpy, pyarrow and "
          "sentencepiece (an image's, bench/gpu_image.toml) and copy along wheels/ from `make "
          "gpu-wheels` for the rest.", file=sys.stderr)
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

# The Python-side budget (520 s) leaves time for start-up and the report; the
# timeout is the backstop (the JSON is rewritten after every item).
timeout --signal=INT --kill-after=15 550 \
    $PY bench/gpu_check.py --device cuda --out "$OUT_DIR" --budget-s 520 "$@"
rc=$?
[ "$rc" -eq 124 ] && echo "gpu_check.sh: killed at 550 s; partial results in $OUT_DIR/gpu_check.json"
exit "$rc"
