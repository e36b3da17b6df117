"""The user docs name only what exists: README.md, docs/*.md and shards/README.md.

Checks, each a function over (name, markdown text) that returns a list of problems, run on
the real docs and, as a negative control, on a planted bad text:

(a) a repository path in backticks, in a fenced code block or in a markdown link exists
    (paths under the folders that commands create, GENERATED, are exempt);
(b) every `python -m X` / `torchrun -m X` module exists (find_spec), every `fast-electra CMD` too;
(c) every `make TARGET` is a target of the Makefile;
(d) every config key `section.key` in backticks or code is a field of the config dataclasses
    (trainer.config's run sections, and the [task] / [finetune] sections of a fine-tuning task
    file);
(e) every `--flag` after `-m MOD`, `python bench/X.py` or `fast-electra CMD` (MOD from its table)
    on a code line is an `add_argument("--flag"` in MOD or a project module it imports (static
    parsing); the Beam jobs in pipeline/ also accept Beam's own pipeline options;
(f) no phrase of history: "this version", "previous version", "earlier version", "issue N".
"""

from __future__ import annotations

import ast
import importlib.util
import re
from dataclasses import fields
from functools import cache
from pathlib import Path

import pytest

from trainer.tools.commands import COMMANDS

ROOT = Path(__file__).resolve().parents[1]

# Folders that commands create (run outputs, data sets, exported models, built packages):
# a path under them need not exist in the checkout.
GENERATED = ("runs/", "shards/", "hf/", "data/", "dist/", "wheels/", "build/")

# Modules run with `python -m` that are tools installed on demand, not project dependencies.
EXTERNAL_MODULES = {"build"}

HISTORY = re.compile(r"\b(this|previous|earlier) version\b|\bissue\s*#?\d+", re.IGNORECASE)

PROJECT_PACKAGES = ("pipeline", "trainer", "bench")
FILE_SUFFIXES = {"py", "md", "toml", "json", "jsonl", "txt", "tsv", "parquet", "pt", "png",
                 "npy", "safetensors", "model", "sh", "lock"}


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
            ROOT / "shards" / "README.md"]


# ---------------------------------------------------------------------------------------------
# Splitting markdown
# ---------------------------------------------------------------------------------------------

FENCE = re.compile(r"^(```|~~~)")


def split_markdown(text: str) -> tuple[list[str], list[str], list[str]]:
    """(code lines with continuations joined, inline backtick spans, prose lines)."""
    code, spans, prose = [], [], []
    in_fence, pending = False, ""
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            in_fence = not in_fence
            if pending:
                code.append(pending)
                pending = ""
            continue
        if in_fence:
            pending += " " + line.strip()
            if pending.endswith("\\"):
                pending = pending[:-1]
            else:
                code.append(pending.strip())
                pending = ""
        else:
            prose.append(line)
            spans += re.findall(r"`([^`\n]+)`", line)
    # a span broken over two lines: join lines of a paragraph and search again
    joined = re.sub(r"\n(?!\n)", " ", "\n".join(prose))
    spans += [s for s in re.findall(r"`([^`]+)`", joined) if "\n" not in s and s not in spans]
    return code, spans, prose


def strip_comment(line: str) -> str:
    return re.split(r"(?:^|\s)#", line, maxsplit=1)[0]


def code_and_spans(text: str) -> list[str]:
    code, spans, _ = split_markdown(text)
    return [strip_comment(c) for c in code] + spans


# ---------------------------------------------------------------------------------------------
# (a) paths
# ---------------------------------------------------------------------------------------------

@cache
def top_level() -> frozenset[str]:
    return frozenset(p.name for p in ROOT.iterdir() if p.name not in (".git", ".venv"))


PATH_TOKEN = re.compile(r"[\w.*-]+(?:/[\w.*=-]*)*")


def path_exists(path: str) -> bool:
    if any(ch in path for ch in "*?["):
        return any(ROOT.glob(path.rstrip("/")))
    return (ROOT / path).exists()


def check_paths(name: str, text: str) -> list[str]:
    problems = []
    for chunk in code_and_spans(text):
        for raw in re.split(r"[\s=,;()\"'<>\[\]{}|]+", chunk):
            if "://" in raw or raw.startswith(("/", "~", "$", "-")):
                continue
            token = raw.rstrip(".:")
            if "/" not in token and token not in top_level():
                continue
            if not PATH_TOKEN.fullmatch(token) or token.split("/")[0] not in top_level():
                continue
            if token.startswith(GENERATED) and not path_exists(token):
                continue
            if not path_exists(token):
                problems.append(f"{name}: `{token}` does not exist")
    base = (ROOT / name).parent
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        if path and not (base / path).exists():
            problems.append(f"{name}: link ({target}) does not exist")
        elif anchor and (not path or path.endswith(".md")):
            page = (base / path).read_text() if path else text
            if anchor not in heading_anchors(page):
                problems.append(f"{name}: link ({target}): no such heading")
    return problems


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings (fenced code left out)."""
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.MULTILINE | re.DOTALL)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, re.MULTILINE)}


# ---------------------------------------------------------------------------------------------
# (b) modules, (e) flags
# ---------------------------------------------------------------------------------------------

MODULE_RUN = re.compile(r"(?:\bpython3?|/python3?|\btorchrun\b[^;&|]*?)\s+-m\s+([\w.]+)")
SCRIPT_RUN = re.compile(r"(?:\bpython3?|/python3?)\s+((?:bench|pipeline|trainer)/[\w/]+\.py)")
# The console script, bare or by path (not `pip install fast-electra[hf]`, `fast-electra --help`).
COMMAND_RUN = re.compile(r"(?<![\w.-])fast-electra\s+([a-z][\w-]*)")
COMMAND_MODULES = {name: t.partition(":")[0] for name, (t, _) in COMMANDS.items()}


def check_modules(name: str, text: str) -> list[str]:
    problems = []
    for module in sorted({m.rstrip(".") for m in MODULE_RUN.findall(text)}):
        if module in EXTERNAL_MODULES:
            continue
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            problems.append(f"{name}: `python -m {module}`: no such module")
    return problems + [f"{name}: `fast-electra {c}`: no such command"
                       for chunk in code_and_spans(text) for c in COMMAND_RUN.findall(chunk)
                       if c not in COMMAND_MODULES]


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path, module: str) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                stem = f"{base}.{node.module}" if node.module else base
            else:
                stem = node.module or ""
            out.add(stem)
            out |= {f"{stem}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in PROJECT_PACKAGES}


ADD_ARGUMENT = re.compile(r"add_argument\(\s*((?:[rbf]?[\"'][^\"']*[\"']\s*,\s*)*)")


def flags_in_source(source: str) -> set[str]:
    out = set()
    for head in ADD_ARGUMENT.findall(source):
        out |= set(re.findall(r"[\"'](--[\w-]+)[\"']", head))
    return out


@cache
def beam_flags() -> frozenset[str]:
    """Beam's own pipeline options (and its Dask runner's): the pipeline jobs pass them on."""
    spec = importlib.util.find_spec("apache_beam")
    root = Path(spec.origin).parent
    files = [root / "options" / "pipeline_options.py",
             *sorted((root / "runners" / "dask").glob("*.py"))]
    return frozenset().union(*(flags_in_source(f.read_text()) for f in files if f.is_file()))


@cache
def module_flags(module: str) -> frozenset[str]:
    """Flags defined in ``module`` and, transitively, in the project modules it imports."""
    seen, todo, flags = set(), [module], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path is None:
            continue
        flags |= flags_in_source(path.read_text())
        todo += sorted(imported_modules(path, name))
    if module.split(".")[0] == "pipeline":
        flags |= beam_flags()
    return frozenset(flags)


def script_module(script: str) -> str:
    return script.removesuffix(".py").replace("/", ".")


RUNS = {MODULE_RUN: str, SCRIPT_RUN: script_module,  # what runs -> its module ("": unknown)
        COMMAND_RUN: lambda command: COMMAND_MODULES.get(command, "")}


def check_flags(name: str, text: str) -> list[str]:
    problems = []
    for line in code_and_spans(text):
        for segment in re.split(r"&&|;|\|\|?", line):
            m = next(filter(None, (run.search(segment) for run in RUNS)), None)
            if not m:
                continue
            module = RUNS[m.re](m.group(1))
            if module.split(".")[0] not in PROJECT_PACKAGES:
                continue
            known = module_flags(module)
            for flag in re.findall(r"(?<![\w-])(--[a-zA-Z][\w-]*)", segment[m.end():]):
                if flag not in known:
                    problems.append(f"{name}: `{flag}` is not a flag of {module}")
    return problems


# ---------------------------------------------------------------------------------------------
# (c) make targets
# ---------------------------------------------------------------------------------------------

@cache
def make_targets() -> frozenset[str]:
    text = (ROOT / "Makefile").read_text()
    return frozenset(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", text, re.MULTILINE))


def check_make(name: str, text: str) -> list[str]:
    problems = []
    for chunk in code_and_spans(text):
        for target in re.findall(r"(?:^|[;&|]\s*)make\s+([A-Za-z][\w-]*)", chunk.strip()):
            if target not in make_targets():
                problems.append(f"{name}: `make {target}`: no such target in the Makefile")
    return problems


# ---------------------------------------------------------------------------------------------
# (d) config keys
# ---------------------------------------------------------------------------------------------

@cache
def config_sections() -> dict[str, frozenset[str]]:
    from trainer.config.run import SECTIONS
    from trainer.tools.finetune.config import FinetuneConfig, TaskConfig

    out = {name: frozenset(f.name for f in fields(cls)) for name, cls in SECTIONS.items()}
    out["task"] = frozenset(f.name for f in fields(TaskConfig))
    out["finetune"] = frozenset(f.name for f in fields(FinetuneConfig))
    return out


def check_keys(name: str, text: str) -> list[str]:
    sections = config_sections()
    pattern = re.compile(r"(?<![\w./-])(" + "|".join(sorted(sections)) + r")\.([A-Za-z_]\w*)")
    problems = []
    for chunk in code_and_spans(text):
        for section, key in pattern.findall(chunk):
            if key in FILE_SUFFIXES or key in sections[section]:
                continue
            problems.append(f"{name}: `{section}.{key}` is not a config key")
    return problems


# ---------------------------------------------------------------------------------------------
# (f) history
# ---------------------------------------------------------------------------------------------

def check_history(name: str, text: str) -> list[str]:
    return [f"{name}:{i}: history phrase {m.group(0)!r}"
            for i, line in enumerate(text.splitlines(), 1) for m in HISTORY.finditer(line)]


CHECKS = [check_paths, check_modules, check_make, check_keys, check_flags, check_history]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_docs(check):
    problems = []
    for path in doc_files():
        problems += check(str(path.relative_to(ROOT)), path.read_text())
    assert not problems, "\n".join(problems)


def test_docs_index_links_every_page():
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md"))
               if f"docs/{p.name}" not in readme]
    assert not missing, f"README.md's docs index lacks {missing}"


def test_readme_is_short_and_keeps_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert "make demo" in readme and "make test" in readme


# ---------------------------------------------------------------------------------------------
# Negative controls: a planted bad reference fails the same check
# ---------------------------------------------------------------------------------------------

GOOD = """
Run `make demo`, then see [the paper bench](docs/paper.md) and `configs/tiny.toml`.

```bash
python -m pipeline.prepare --config configs/tiny.toml --set data.input='["x.txt"]' --overwrite \\
    --runner DaskRunner --dask_workers 2
torchrun --standalone --nproc_per_node 2 -m trainer.train --config configs/tiny.toml --resume
fast-electra evaluate --config configs/tiny.toml --checkpoint runs/tiny/rtd --epochs 3
fast-electra finetune --checkpoint runs/x --task configs/finetune/sst2.toml \\
    --set finetune.lr=1e-4
.venv/bin/fast-electra hf export runs/tiny/rtd hf/tiny-rtd --overwrite && fast-electra --help
.venv/bin/python bench/rtd.py --set train.rtd_dir=shards/tiny/rtd
```
"""

PLANTED = [
    (check_paths, "See `configs/nonexistent.toml`."),
    (check_paths, "See `bench/not_a_bench.py`."),
    (check_paths, "See [the page](docs/not-a-page.md)."),
    (check_paths, "See [the page](docs/paper.md#no-such-heading)."),
    (check_paths, "```\ncat trainer/tools/no_such_tool.py\n```"),
    (check_modules, "```\npython -m trainer.no_such_module --config c\n```"),
    (check_modules, "`torchrun --nproc_per_node 2 -m trainer.nope`"),
    (check_make, "Run `make gpu-wheels-never`."),
    (check_make, "```\nmake demo && make no-such-target\n```"),
    (check_keys, "Set `train.no_such_key`."),
    (check_keys, "```\npython -m pipeline.generate --set generate.not_a_key=1\n```"),
    (check_keys, "Set `finetune.no_such_key = 3`."),
    (check_modules, "```\nfast-electra no-such-command --config c\n```"),
    (check_modules, "`.venv/bin/fast-electra evalute --config c`"),
    (check_flags, "```\nfast-electra evaluate --config c --no-such-flag\n```"),
    (check_flags, "```\ntorchrun --nproc_per_node 2 -m trainer.train --config c \\\n"
                  "    --resume --no-such-flag\n```"),
    (check_flags, "```\npython -m pipeline.prepare --config c --dask_wrokers 2\n```"),
    (check_flags, "```\n.venv/bin/python bench/rtd.py --no-such-flag\n```"),
    (check_history, "Unlike the previous version, it is fast."),
    (check_history, "Fixed in issue 12."),
    (check_history, "In this version the reader is fast."),
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_good_text_passes(check):
    assert check("README.md", GOOD) == []


@pytest.mark.parametrize("check,text", PLANTED, ids=[f"{c.__name__}-{i}"
                                                     for i, (c, _) in enumerate(PLANTED)])
def test_planted_reference_fails(check, text):
    assert check("README.md", GOOD + text), f"{check.__name__} missed: {text!r}"
