"""The GPU acceptance run (bench/gpu_check.py --device cuda, every item) as a
test: every item must pass. Marker ``gpu``; skipped where torch sees no CUDA device (a
skipif, not importorskip: CI's FAST_ELECTRA_REQUIRE_EXTRAS=1 turns importorskip skips into
failures). Run it alone: ``pytest -m gpu``; it takes up to ~8 minutes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from bench.gpu_check import ORDER
from tests.helpers import REPO

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_gpu_check_every_item_passes(tmp_path):
    """Catches any CUDA-path regression the CPU suite cannot see: CPU/GPU corruption beyond
    near-ties, bf16 divergence, worker-count-dependent bytes, fast-online rows that are not the
    shards', a zero or non-finite rel_bias gradient, compile/eager mismatch, a base-shape step
    that does not run."""
    p = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cuda", "--out",
                        str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    items = json.loads((tmp_path / "gpu_check.json").read_text())["items"]
    assert list(items) == list(ORDER)
    bad = {n: (r["status"], r.get("error"), r.get("figures")) for n, r in items.items()
           if r["status"] != "pass"}
    assert p.returncode == 0 and not bad, (bad, p.stdout[-4000:])
