"""docs/your-data.md runs as written: its bash blocks up to the "## Measured figures" heading
(after it come the measurement's commands, half an hour on a CPU), in order, in a scratch folder
with a copy of configs/.

The mechanism, and the only changes made to the page's commands:

- inputs the page assumes the user has are written first: ``data/my/*.jsonl.zst`` (documents
  from the docstrings of real Python standard-library modules) and
  ``data/my-task/{train,dev}.jsonl`` (a labelled task from the same text);
- every command line that runs ``-m MODULE`` or ``fast-electra COMMAND`` gets TOY[MODULE] or
  TOY[COMMAND] appended: ``--set`` overrides to toy sizes and 4 steps (the aux's last
  checkpoint then is step_00000004, so generate.aux_checkpoint follows). Lines inside
  heredocs are never changed.

Each block runs under ``bash -euo pipefail``; a failing command fails the test with its
output. The outputs each step should leave are then checked, and the export is loaded with
transformers. The negative controls run the same runner on planted blocks with a misspelled
flag and a misspelled config key.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "your-data.md"

_MODEL = ["model.num_layers=2", "model.hidden_size=64", "model.num_heads=2", "model.ffn_size=128",
          "aux.num_layers=1", "tokenizer.vocab_size=1000", "generate.epochs=3",
          "train.max_steps=4", "train.warmup_steps=1", "train.global_batch_size=8",
          "train.micro_batch_size_per_rank=8", "train.checkpoint_every=4",
          "train.eval_every=4", "train.log_every=1", "train.holdout_fraction=0.05",
          "generate.aux_checkpoint=runs/my/aux/checkpoints/step_00000004"]
_SETS = [arg for kv in _MODEL for arg in ("--set", kv)]
TOY = {
    "prepare": _SETS,
    "trainer.train": _SETS,
    "generate": _SETS,
    "evaluate": _SETS,
    "finetune": ["--set", "finetune.epochs=1", "--set", "finetune.batch_size=8"],
}

HEREDOC = re.compile(r"<<-?\s*'?\"?(\w+)'?\"?")
# What a line runs: `-m MODULE` (torchrun's trainer) or `fast-electra COMMAND`.
COMMAND = re.compile(r"-m\s+([\w.]+)|(?<![\w.-])fast-electra\s+([a-z][\w-]*)")


def commands_run(text: str) -> list[str]:
    return [module or command for module, command in COMMAND.findall(text)]


def bash_blocks(markdown: str) -> list[str]:
    """The fenced ```bash blocks of a markdown page, in order, up to its measurements."""
    walkthrough = markdown.split("\n## Measured figures", 1)[0]
    return re.findall(r"^```bash\n(.*?)^```", walkthrough, flags=re.MULTILINE | re.DOTALL)


def with_overrides(block: str, toy: dict[str, list[str]]) -> str:
    """``block`` with toy[X] appended to each command line running ``-m X`` or
    ``fast-electra X`` (continuation lines joined first); heredoc bodies are left as they
    are."""
    out, pending, end = [], "", None
    for line in block.splitlines():
        if end is not None:
            out.append(line)
            if line.strip() == end:
                end = None
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line, pending = pending + line, ""
        ran = commands_run(line)[:1]
        if ran and ran[0] in toy and not line.lstrip().startswith("#"):
            code, hash_, comment = line.partition(" #")
            line = " ".join([code.rstrip(), *toy[ran[0]]]) + (hash_ + comment if hash_ else "")
        heredoc = HEREDOC.search(line)
        if heredoc:
            end = heredoc.group(1)
        out.append(line)
    return "\n".join(out) + "\n"


def run_block(block: str, cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    """Run one bash block (toy overrides applied) in ``cwd``; its output, or AssertionError."""
    script = "set -euo pipefail\n" + with_overrides(block, TOY)
    proc = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, (f"block failed (exit {proc.returncode}):\n{script}\n"
                                  f"--- output ---\n{proc.stdout[-4000:]}{proc.stderr[-6000:]}")
    return proc.stdout


def _docstrings() -> list[tuple[str, str]]:
    """(docstring, "class" or "function") of real standard-library modules: English prose."""
    import argparse
    import email.message
    import logging
    import pathlib
    import string
    import tarfile
    import textwrap
    import zipfile

    found = []
    for mod in (textwrap, string, pathlib, email.message, json, shutil, subprocess, argparse,
                logging, tarfile, zipfile):
        for node in ast.walk(ast.parse(Path(mod.__file__).read_text())):
            if isinstance(node, ast.ClassDef | ast.FunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    found.append((doc, "class" if isinstance(node, ast.ClassDef) else "function"))
    return found


def write_inputs(root: Path) -> None:
    """The user's data the page starts from: a corpus of .jsonl.zst files and a labelled
    task (is the text a class's or a function's docstring?)."""
    import zstandard

    docs = _docstrings()
    assert len(docs) >= 200, len(docs)
    corpus = root / "data" / "my"
    corpus.mkdir(parents=True)
    for i in range(2):
        lines = "".join(json.dumps({"text": d, "id": j}) + "\n"
                        for j, (d, _) in enumerate(docs[i::2]))
        (corpus / f"part-{i:05d}.jsonl.zst").write_bytes(
            zstandard.ZstdCompressor().compress(lines.encode()))
    task = root / "data" / "my-task"
    task.mkdir(parents=True)
    rows = [{"text": d.split("\n\n")[0][:300], "label": kind} for d, kind in docs]
    for name, part in (("train", rows[0::3][:64]), ("dev", rows[1::3][:32])):
        buf = io.StringIO()
        for r in part:
            buf.write(json.dumps(r) + "\n")
        (task / f"{name}.jsonl").write_text(buf.getvalue())


def scratch(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A working folder with a copy of configs/, and an environment whose python / torchrun /
    fast-electra are this interpreter's and whose imports resolve to this checkout."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env["OMP_NUM_THREADS"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    return tmp_path, env


def test_overrides_skip_heredocs_and_join_continuations():
    block = ("cat > c.toml <<'EOF'\n[train]  # -m trainer.train inside a heredoc\nEOF\n"
             "fast-electra evaluate --config c \\\n    --epochs 2\n")
    got = with_overrides(block, {"evaluate": ["--set", "x.y=1"],
                                 "trainer.train": ["--bad"]})
    assert "--bad" not in got
    assert "fast-electra evaluate --config c      --epochs 2 --set x.y=1" in got


@pytest.mark.slow
def test_your_data_page_runs_as_written(tmp_path):
    blocks = bash_blocks(DOC.read_text())
    ran = set(commands_run("\n".join(blocks)))
    assert {*TOY, "hf"} <= ran, f"docs/your-data.md lost a step: runs only {ran}"
    cwd, env = scratch(tmp_path)
    write_inputs(cwd)
    outputs = "".join(run_block(b, cwd, env) for b in blocks)

    corpus = json.loads((cwd / "shards/my/corpus/manifest.json").read_text())
    assert corpus["num_sequences"] > 0 and corpus["config"]["data"]["format"] == "auto"
    assert (cwd / "shards/my/corpus/tokenizer.model").is_file()
    assert (cwd / "runs/my/aux/checkpoints/step_00000004").is_dir()
    assert (cwd / "shards/my/rtd").is_dir()
    assert any((cwd / "runs/my/rtd/checkpoints").iterdir())
    aux, rtd = json.loads((cwd / "runs/my/eval.json").read_text())["results"]
    assert aux["mlm"]["unigram_loss"] > 0 and aux["mlm"]["masked_tokens"] > 0
    held_out = rtd["rtd"]["epochs"]["2"]  # the page's --epochs 2: generated, never trained on
    assert held_out["trained_on"] is False and 0 <= held_out["rtd_auc"] <= 1
    results = json.loads((cwd / "runs/my/finetune/results.json").read_text())
    assert results["num_examples"] == {"train": 64, "dev": 32} and "dev_accuracy" in results["best"]
    assert "hf/my-rtd: (1, " in outputs  # the page's own transformers check printed a shape

    from transformers import AutoModel

    model = AutoModel.from_pretrained(cwd / "hf/my-rtd", trust_remote_code=True)
    assert model.config.hidden_size == 64  # the toy size: the export is the run's model


GOOD_BLOCK = "fast-electra cost --config my.toml\n"
PLANTED = [
    "fast-electra cost --confg my.toml\n",                           # a misspelled flag
    "fast-electra cost --config my.toml --set train.max_stepz=4\n",  # a misspelled key
    "fast-electra cost --config my.toml\nfalse\n",                   # a later command fails
]


@pytest.mark.slow
def test_runner_fails_on_a_planted_bad_block(tmp_path):
    cwd, env = scratch(tmp_path)
    (cwd / "my.toml").write_text('extends = "configs/small.toml"\n')
    run_block(GOOD_BLOCK, cwd, env, timeout=120)  # the same command, spelled right, runs
    for bad in PLANTED:
        with pytest.raises(AssertionError, match="block failed"):
            run_block(bad, cwd, env, timeout=120)
