"""The test suite's own layering: shared helpers have one home each (tests/helpers.py and the
packages' helpers.py modules for plain code, tests/conftest.py for fixtures), so no file under
tests/ imports a test module or a conftest.py. Importing a test module runs its module-level
code and drags its fixtures into a second namespace, where pytest sees each as a second
definition with its own cache (a session fixture would be built twice); importing a conftest.py
does the same. The imports come from the source (ast), function-level ones included."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

TESTS = Path(REPO) / "tests"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(TESTS.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_test_module(name: str) -> bool:
    """tests.test_x, tests.a.b.test_x or a conftest: modules no other file may import."""
    parts = name.split(".")
    last = parts[-1]
    return parts[0] == "tests" and (last.startswith("test_") or last == "conftest")


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """(line, module) for every module ``source`` (the module named ``module``) imports, at
    any depth; ``from a import b`` counts as importing both a and a.b, since b may be either a
    name in a or a submodule of it."""
    package = module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def imports_of_test_modules(source: str, module: str) -> list[str]:
    """'module:line imports name' for each test module or conftest that ``source`` imports."""
    return [f"{module}:{line} imports {name}"
            for line, name in sorted(imported_modules(source, module))
            if is_test_module(name) and name != module]


def defined_names(source: str) -> set[str]:
    """The names a module binds at its top level by def, class or assignment (not by import)."""
    out = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return out


def reexported_names(source: str, module: str, sources: dict[str, str]) -> list[str]:
    """'module:line: name from m' for each ``from m import name`` of ``source`` where m is a
    module of ``sources`` ({module: source}) that does not itself define name: a re-export,
    so the name would have two import paths."""
    package = module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, *([base] if base else [])])
        if base not in sources:
            continue
        defined = defined_names(sources[base])
        out += [f"{module}:{node.lineno}: {a.name} from {base}" for a in node.names
                if a.name not in defined and f"{base}.{a.name}" not in sources]
    return sorted(out)


def suite_sources() -> dict[str, str]:
    return {module_name(p): p.read_text() for p in sorted(TESTS.rglob("*.py"))}


def test_no_file_under_tests_imports_a_test_module_or_a_conftest():
    sources = suite_sources()
    assert len(sources) > 50 and "tests.trainer.test_train" in sources  # the walk sees the suite
    assert [v for mod, src in sources.items() for v in imports_of_test_modules(src, mod)] == []


def test_each_shared_name_is_imported_from_where_it_is_defined():
    """A helper module that imports a name and passes it on would give that name a second
    import path; each name comes from the module that defines it."""
    sources = suite_sources()
    assert [v for mod, src in sources.items() for v in reexported_names(src, mod, sources)] == []


def test_the_import_check_flags_planted_test_module_imports():
    """Negative control: each way of importing a test module or a conftest is flagged, at the
    top or inside a function; the helper modules and non-test packages are not."""
    planted = "\n".join([
        "from tests.trainer.test_train import SMALL",
        "import tests.test_docs",
        "from tests.pipeline import test_generate",
        "from tests import conftest",
        "from tests.conftest import TINY",
        "from .test_rtd import metrics",
        "def f():",
        "    from tests.pipeline.test_generate import gen_argv",
        "from tests.helpers import SMALL, gen_argv",
        "from tests.trainer.model.helpers import VARIANTS",
        "from tests.reference_metrics import rtd_reference",
        "import pytest",
        "from trainer.tools import test_like_name",
    ])
    got = imports_of_test_modules(planted, "tests.trainer.modes.test_fast_online")
    assert got == [
        "tests.trainer.modes.test_fast_online:1 imports tests.trainer.test_train",
        "tests.trainer.modes.test_fast_online:2 imports tests.test_docs",
        "tests.trainer.modes.test_fast_online:3 imports tests.pipeline.test_generate",
        "tests.trainer.modes.test_fast_online:4 imports tests.conftest",
        "tests.trainer.modes.test_fast_online:5 imports tests.conftest",
        "tests.trainer.modes.test_fast_online:6 imports tests.trainer.modes.test_rtd",
        "tests.trainer.modes.test_fast_online:8 imports tests.pipeline.test_generate",
    ]


def test_the_reexport_check_flags_a_name_passed_on():
    """Negative control: a name a helper module only imports is flagged; names it defines by
    def, class or assignment (tuple targets included), and submodules, are not."""
    sources = {
        "tests.helpers": "from os import sep\nA, B = 1, 2\nC: int = 3\ndef f(): ...\n"
                         "class K: ...\n",
        "tests.pkg": "",
        "tests.pkg.helpers": "",
    }
    user = "from tests.helpers import A, B, C, f, K, sep\nfrom tests.pkg import helpers\n"
    assert reexported_names(user, "tests.pkg.test_x", sources) == [
        "tests.pkg.test_x:1: sep from tests.helpers"]
