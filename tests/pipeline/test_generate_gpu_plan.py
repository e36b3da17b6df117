"""generate on GPU hosts, without a GPU: the local runner's default worker count, where one
local worker runs, the generate.head_precision setting (validation, CPU refusal, fingerprint)
and that fp32, the default, writes the very bytes it always did on a CPU."""

from __future__ import annotations

import pytest

from pipeline import corrupt_write, generate
from pipeline.errors import GenerateError
from pipeline.generate import fingerprint, on_cpu, plan_local_gpus, run
from pipeline.gpu_slots import explicit_workers, local_workers
from pipeline.head_precision import with_head_precision
from pipeline.layout import Layout
from tests.helpers import gen_argv
from trainer.config.load import build_config
from trainer.config.sections import ConfigError


@pytest.mark.parametrize("gpus, copies, cpus, explicit, want", [
    (0, 0, 16, None, None),  # no GPU: Beam's default, one worker per core
    (1, 0, 16, None, 1),  # each process loads its own aux: one per GPU
    (4, 0, 16, None, 4),
    (2, 3, 16, None, 6),  # M shared copies: M processes per GPU
    (8, 4, 16, None, 16),  # at most one per core
    (4, 0, 2, None, 2),
    (4, 0, 16, 7, 7),  # an explicit --direct_num_workers wins
    (0, 0, 16, 3, 3),
])
def test_local_worker_default(gpus, copies, cpus, explicit, want):
    assert local_workers(gpus, copies, cpus, explicit) == want


def test_local_worker_default_is_not_one_per_core():
    """Negative control: on a 16-core, 2-GPU host the old default (16 workers, each loading
    the aux on a GPU) is not what the local runner gets."""
    assert local_workers(2, 0, 16, None) == 2 != 16


def test_explicit_workers_parsed():
    assert explicit_workers(["--direct_num_workers=3"]) == 3
    assert explicit_workers(["--foo", "--direct_num_workers", "5"]) == 5
    assert explicit_workers(["--direct_running_mode=multi_processing"]) is None


def _cfg(**generate_keys):
    return build_config({"generate": generate_keys})


def test_plan_local_gpus(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(generate.os, "cpu_count", lambda: 16)
    cfg = _cfg(device="cuda", model_copies=2)
    assert plan_local_gpus(cfg, ["--x"])[0] == "--direct_num_workers=4"
    assert plan_local_gpus(cfg, ["--direct_num_workers=1"]) == ["--direct_num_workers=1"]
    model_free = build_config({"generate": {"device": "cuda", "model_copies": 2},
                               "corruption": {"replacement": "uniform"}})
    assert plan_local_gpus(model_free, [])[0] == "--direct_num_workers=2"  # no copies loaded
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert plan_local_gpus(_cfg(device="auto"), ["--x"]) == ["--x"]  # CPU: Beam's default
    with pytest.raises(GenerateError, match="generate.head_precision"):
        plan_local_gpus(_cfg(device="auto", head_precision="bf16"), [])


def test_only_a_cpu_worker_runs_in_the_launcher(monkeypatch):
    """generate lets one local worker run in the launcher only on the CPU: a GPU worker
    claims a device slot per model load for its process's life (one per epoch job)."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert on_cpu("cpu") and not on_cpu("auto") and not on_cpu("cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert on_cpu("auto")


def test_head_precision_validation():
    assert _cfg().generate.head_precision == "fp32"
    for value in ("tf32", "bf16"):
        assert _cfg(device="cuda", head_precision=value).generate.head_precision == value
    with pytest.raises(ConfigError, match="generate.head_precision.*'fp16'.*'bf16'"):
        _cfg(head_precision="fp16")
    with pytest.raises(ConfigError, match="generate.head_precision.*generate.device"):
        _cfg(device="cpu", head_precision="bf16")


def test_head_precision_refused_by_a_cpu_worker():
    class Loaded:  # what CorruptionHandler.load_model returns, on a CPU worker
        device, aux = "cpu", object()

    loaded = Loaded()
    assert with_head_precision(loaded, "fp32") is loaded
    with pytest.raises(GenerateError, match="generate.head_precision = 'tf32' needs a GPU"):
        with_head_precision(loaded, "tf32")


def test_head_precision_in_fingerprint_only_when_not_fp32():
    layout = Layout(10, 2, 5)
    fp32 = fingerprint(_cfg(), "c", None, layout, "uint16")
    assert "aux_head_precision" not in fp32  # sets made before the setting keep theirs
    bf16 = fingerprint(_cfg(device="cuda", head_precision="bf16"), "c", None, layout, "uint16")
    assert bf16 != fp32 and bf16["aux_head_precision"] == "bf16"


def _shas(manifest) -> dict[str, str]:
    return {f["name"]: f["sha256"] for f in manifest["files"]}


@pytest.mark.slow
def test_fp32_head_writes_the_same_cpu_bytes(prepared, aux_checkpoint, aux_rtd, tmp_path,
                                             monkeypatch):
    """generate.head_precision = fp32, set explicitly, through the corruption handler:
    the same part sha256s as the session's aux shard set (same corpus, aux, seed, epochs).
    Negative control: the head fed bf16-rounded hidden states (what a bf16 head does to its
    input) changes the bytes, so the comparison sees a change of head precision."""
    argv = [f"generate.aux_checkpoint={aux_checkpoint}", "generate.epochs=2",
            "generate.seed=7", "generate.device=cpu"]
    same = run(gen_argv(prepared[0], tmp_path / "fp32", *argv, "generate.head_precision=fp32"))
    assert _shas(same) == _shas(aux_rtd[1])

    real = corrupt_write.with_head_precision

    def rounded(corrupter, precision):
        corrupter.aux.head.register_forward_pre_hook(
            lambda module, args: (args[0].bfloat16().float(), *args[1:]))
        return real(corrupter, precision)

    monkeypatch.setattr(corrupt_write, "with_head_precision", rounded)
    other = run(gen_argv(prepared[0], tmp_path / "rounded", *argv))
    assert _shas(other) != _shas(aux_rtd[1])
