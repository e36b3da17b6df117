"""bench/gpu_check.py on a CPU: the whole module in its ``--device cpu --quick`` smoke mode (every
item, the CPU standing in for the device), and the near-tie measure of its corrupt_batch
comparison, which the smoke run cannot exercise (CPU against CPU never differs). The real GPU
run is tests/bench/test_gpu_check_cuda.py (marker ``gpu``)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from bench.gpu_check import ORDER
from bench.gpu_check_correctness import _near_tie_distances, compare_aux_draws
from bench.gpu_check_fixtures import NEAR_TIE
from tests.helpers import REPO, TINY
from trainer.config.load import load_config
from trainer.corruption.batch import KeyedBatch
from trainer.corruption.corrupt import corrupt_batch
from trainer.corruption.masking import mask_positions
from trainer.model.encoder_config import EncoderConfig
from trainer.model.heads import MLMModel

pytestmark = pytest.mark.usefixtures("one_thread")

# What each item must report on a CPU (figure -> value): the comparisons a GPU can fail are
# trivially exact here, so a wrong figure means the item compared the wrong things.
EXPECTED = {
    "corrupt_cpu_vs_device": {"mask_positions_equal": True, "uniform_differing_tokens": 0,
                              "unigram_differing_tokens": 0, "aux_fp32_selected_equal": True,
                              "aux_fp32_differing_draws": 0},
    "bf16_training": {"all_losses_finite": True, "steps": 6},
    "generate_workers": {"1_vs_2_workers_same_sha256": True, "vs_cpu_differing_rows": 0},
    "fast_online_rows": {"aligned_0_equal": True, "start_37_equal": True,
                         "straddle_equal": True, "head_prior_equal": True},
    "rel_bias_sdpa": {"fp32_dropout0.0_grad_finite": True,
                      "fp32_dropout0.1_grad_finite": True, "seq_len": 64},
    "rtd_mfu": {"final_loss_finite": True, "mfu": None},
    "aux_tokens_per_s": {"vocab": 8000},
    "compile_smoke": {"backend": "aot_eager"},
}


CUDA_ONLY = {"sdpa_kernels", "flex_vs_sdpa", "head_precision"}


@pytest.mark.slow
def test_cpu_smoke_run_reports_every_item(tmp_path):
    """The CLI as the GPU script calls it, on a CPU with tiny shapes. Catches: an item that
    errors (status error, with its traceback in the JSON), one left out of the JSON or the
    table, and figures that disagree with what a CPU must give (EXPECTED)."""
    p = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--quick",
                        "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    items = report["items"]
    assert list(items) == list(ORDER)
    errors = {n: r.get("error") for n, r in items.items() if r["status"] not in ("pass", "n/a")}
    assert p.returncode == 0 and not errors, (errors, p.stdout[-2000:], p.stderr[-3000:])
    for name, want in EXPECTED.items():
        got = items[name]["figures"]
        assert {k: got[k] for k in want} == want, name
        assert f"{name:<24}pass" in p.stdout  # one table row per item
    assert items["bf16_training"]["figures"]["bf16_vs_fp32_rel_diff"] < 0.02
    assert items["aux_tokens_per_s"]["figures"]["tokens_per_s"] > 0
    assert items["rtd_mfu"]["figures"]["tokens_per_s"] > 0
    # The CUDA-only items say so on a CPU instead of passing vacuously.
    assert {n for n, r in items.items() if r["status"] == "n/a"} == CUDA_ONLY
    assert report["total_seconds"] > 0 and report["summary"] == "8 pass, 3 n/a"


def _random_batch(vocab: int, B: int = 16, T: int = 48):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (B, T), generator=gen)
    ids[:, 0] = 2  # [CLS]
    return ids, torch.ones(B, T, dtype=torch.bool), torch.arange(B), torch.full((B,), 0.0,
                                                                                 dtype=torch.float64)


def test_near_tie_measure_has_power():
    """The measure item 1 applies to every draw that differs between CPU and GPU, run on CPU
    draws with a random-weight aux over 300 tokens (wide CDF intervals): (1) rebuilt from the
    aux, the uniform of every draw corrupt_batch made lies inside its token's interval, and
    with a wrong temperature it does not (a reconstruction that used other positions, keys or
    temperature would make every distance meaningless); (2) the same aux on both sides: no
    difference; a perturbed aux: differing draws that are far from any edge, which the item
    must count as failures (> NEAR_TIE)."""
    vocab = 300
    cfg = load_config(TINY, ["model.num_layers=1", "model.hidden_size=32", "model.num_heads=2",
                             "model.ffn_size=64", "aux.num_layers=1",
                             f"tokenizer.vocab_size={vocab}", "data.max_seq_len=64"])
    torch.manual_seed(0)
    aux = MLMModel(EncoderConfig.aux(cfg)).eval()
    ids, mask, seq_ids, u = _random_batch(vocab)
    c, seed, epoch = cfg.corruption, 7, 0
    batch = KeyedBatch(ids, seq_ids, seed, epoch, attention_mask=mask)
    out = corrupt_batch(batch, u, c, aux=aux)
    assert float(out.temperature[0]) == pytest.approx(2.0)  # u = 0: the start of the schedule
    sel = out.selected
    masked = mask_positions(batch, c)[0]
    every = torch.ones(int(sel.sum()), dtype=torch.bool)
    dist = _near_tie_distances(aux, masked, mask, sel, out.input_ids[sel], out.temperature,
                               seq_ids, epoch, seed, every)
    assert min(dist) >= -1e-12  # inside: the reconstruction is corrupt_batch's draw
    wrong = _near_tie_distances(aux, masked, mask, sel, out.input_ids[sel],
                                torch.ones_like(out.temperature), seq_ids, epoch, seed, every)
    assert min(wrong) < -1e-3  # negative control: T = 1 instead of 2 puts draws outside

    same = compare_aux_draws(aux, aux, torch.device("cpu"), ids, mask, seq_ids, u, c, seed,
                             epoch)
    assert same["differing_draws"] == 0 and same["max_distance_to_cdf_edge"] == 0.0
    other = copy.deepcopy(aux)
    with torch.no_grad():
        other.head.bias.add_(torch.randn(vocab))
    far = compare_aux_draws(aux, other, torch.device("cpu"), ids, mask, seq_ids, u, c, seed,
                            epoch)
    assert far["selected_equal"] and far["differing_draws"] > 10
    assert far["max_distance_to_cdf_edge"] > 10 * NEAR_TIE


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_requested_without_a_gpu_is_refused(tmp_path):
    """Without CUDA the GPU run stops at once with exit 2 and says why, instead of 8 items of
    tracebacks."""
    p = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cuda", "--out",
                        str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "torch.cuda.is_available() is False" in p.stderr
    assert "Traceback" not in p.stderr
