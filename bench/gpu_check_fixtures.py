"""What the items of bench/gpu_check.py share: the shapes of a full (GPU) and a quick (CPU
smoke) run, the tolerances and peak-FLOPS table, and the inputs made on first use (corpus,
aux checkpoint, shard sets), each inside the first item that needs it, on its budget.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
                         "generate.part_rows=200",
                         # The items train on these shards with their own [train] settings:
                         # generate's sizing check reads a one-step run.
                         "train.max_steps=1", "train.warmup_steps=0", "train.eval_every=0")

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


def in_memory_rtd():
    """RTDTask's real loss, for batches made in memory (no shard set at the base shape)."""
    from trainer.modes.rtd import RTDTask

    class InMemoryRTD(RTDTask):
        def __init__(self):  # noqa: D107 (no shards to open: loss() needs only ready())
            pass

    return InMemoryRTD()


def rtd_batch(B: int, T: int, vocab: int, device, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (B, T), generator=gen)
    ids[:, 0] = 2  # [CLS]
    return {"input_ids": ids.to(device), "attention_mask": torch.ones(B, T, dtype=torch.bool,
                                                                      device=device),
            "labels": (torch.rand(B, T, generator=gen) < 0.15).float().to(device),
            "temperature": torch.ones(B, device=device),
            "sample_ids": torch.arange(B, device=device)}
