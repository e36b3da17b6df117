"""The offline GPU image plan (bench/gpu_image.toml) against what bench/gpu_check.sh needs there,
without network: the image's package list plus the wheelhouse that `make gpu-wheels` builds
must hold, for the image's Python,

(a) every third-party module that gpu_check's code imports: bench/gpu_check*.py and the project
    modules they import, followed through pipeline.* and trainer.* (``ast``; imports inside
    functions count, since gpu_check's items import lazily);
(b) every requirement of pyproject.toml's [project] dependencies, and every hard requirement
    (no extras) of apache-beam and of each wheelhouse package in turn, read from this
    environment's installed metadata and evaluated for the image's Python;

and (c) the wheelhouse never holds an image package; (d) each wheelhouse package has a pin in
constraints.txt; (e) the image's torch and numpy satisfy pyproject's ranges and
constraints.txt's pins do too. Each check runs on the real plan and, as a negative control, on a
planted bad one. bench/gpu_check.sh's install step runs on a throwaway venv with hand-made
wheels. Building the real wheelhouse needs network: FAST_ELECTRA_NETWORK_TESTS=1 runs it.
"""

from __future__ import annotations

import ast
import base64
import copy
import hashlib
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import parse_wheel_filename

from bench import gpu_wheels
from bench.gpu_wheels import canon, image_names, load_plan, read_pins

ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("bench", "pipeline", "trainer")


def marker_env(python: str) -> dict[str, str]:
    """PEP 508 marker values of the image: CPython ``python`` on Linux x86_64."""
    return {"python_version": ".".join(python.split(".")[:2]), "python_full_version": python,
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "os_name": "posix", "extra": ""}


# ---------------------------------------------------------------------------------------------
# (a) what gpu_check's code imports
# ---------------------------------------------------------------------------------------------

def _module_file(root: Path, name: str) -> Path | None:
    path = root.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def third_party_imports(root: Path, entries: list[str]) -> dict[str, set[str]]:
    """Top-level module -> the project modules that import it, over every project module
    reachable from ``entries`` by imports (also those inside functions)."""
    found: dict[str, set[str]] = {}
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(root, name)
        if path is None:  # a name imported from a module, not a module
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{parent}.{base}" if base else parent
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                top = target.split(".")[0]
                if top in PROJECT_PACKAGES:
                    parts = target.split(".")
                    todo += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, set()).add(name)
    return found


def gpu_check_entries(root: Path) -> list[str]:
    return [f"bench.{p.stem}" for p in sorted((root / "bench").glob("gpu_check*.py"))]


@cache
def _module_to_dists() -> dict[str, list[str]]:
    return md.packages_distributions()


def module_dist(module: str) -> str:
    """The distribution that installs ``module`` here, else the module's own name."""
    dists = _module_to_dists().get(module)
    return canon(dists[0]) if dists else canon(module)


# ---------------------------------------------------------------------------------------------
# (b) requirements, read from this environment's metadata
# ---------------------------------------------------------------------------------------------

def hard_requirements(dist: str, env: dict[str, str]) -> list[str] | None:
    """Names of ``dist``'s requirements that apply on the image without extras; None when
    ``dist`` is not installed here."""
    try:
        reqs = md.requires(dist) or []
    except md.PackageNotFoundError:
        return None
    out = []
    for text in reqs:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            out.append(canon(req.name))
    return out


def project_dependencies(root: Path) -> list[Requirement]:
    with open(root / "pyproject.toml", "rb") as f:
        return [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]


def plan_gaps(plan: dict, modules: dict[str, set[str]], roots: list[str]) -> list[str]:
    """Problems of ``plan``: a module of ``modules`` (module -> importers) or a requirement of
    ``roots`` and of the wheelhouse's packages, followed through them, in neither list; a
    package in both."""
    env = marker_env(plan["image"]["python"])
    image = image_names(plan)
    wheelhouse = {canon(n) for n in plan["wheelhouse"]["packages"]}
    exempt = plan.get("not_on_gpu_check_path", {})
    problems = [f"{d}: in [image] and in [wheelhouse]" for d in sorted(image & wheelhouse)]
    for module, importers in sorted(modules.items()):
        dist = module_dist(module)
        if module not in exempt and dist not in image | wheelhouse:
            problems.append(f"module {module} (distribution {dist}, imported by "
                            f"{', '.join(sorted(importers))}): in neither list")
    todo = [(canon(r), "pyproject.toml") for r in roots] + [(d, "[wheelhouse]") for d in wheelhouse]
    seen: set[str] = set()
    while todo:
        dist, why = todo.pop()
        if dist not in image | wheelhouse:
            problems.append(f"{dist} (required by {why}): in neither list")
            continue
        if dist in seen or dist in image:  # the image's packages come with their requirements
            continue
        seen.add(dist)
        reqs = hard_requirements(dist, env)
        if reqs is None:
            problems.append(f"{dist}: not installed here, so its requirements cannot be read "
                            f"(`make install`)")
            continue
        todo += [(r, dist) for r in reqs]
    return problems


@pytest.fixture(scope="module")
def plan() -> dict:
    return load_plan()


@pytest.fixture(scope="module")
def gpu_modules() -> dict[str, set[str]]:
    return third_party_imports(ROOT, gpu_check_entries(ROOT))


def _roots() -> list[str]:
    return [r.name for r in project_dependencies(ROOT)]


def test_import_scan_reaches_the_pipeline_and_the_trainer(gpu_modules):
    # gpu_check.py itself imports only torch: the rest is reached through the project modules,
    # most of them imported inside functions.
    assert {"torch", "numpy", "pyarrow", "apache_beam", "sentencepiece"} <= set(gpu_modules)
    assert any(m.startswith("pipeline.") for m in gpu_modules["apache_beam"])
    assert any(m.startswith("trainer.") for m in gpu_modules["sentencepiece"])


def test_plan_covers_what_gpu_check_needs(plan, gpu_modules):
    assert md.version("apache-beam") == read_pins()["apache-beam"], \
        "the Requires-Dist read here must be those of the pinned apache-beam: `make install`"
    assert plan_gaps(plan, gpu_modules, _roots()) == []


def test_plan_gaps_negative_controls(plan, gpu_modules):
    def gaps_without(section: str, name: str) -> list[str]:
        bad = copy.deepcopy(plan)
        if section == "not_on_gpu_check_path":
            del bad[section][name]
        else:
            bad[section]["packages"] = [p for p in bad[section]["packages"]
                                        if canon(p.split("==")[0]) != name]
        return plan_gaps(bad, gpu_modules, _roots())

    # zstandard: a requirement of pyproject and of apache-beam, imported by no module
    assert any(g.startswith("zstandard") for g in gaps_without("wheelhouse", "zstandard"))
    # cffi: reached only through cryptography's requirements
    assert any(g.startswith("cffi (required by cryptography)")
               for g in gaps_without("wheelhouse", "cffi"))
    # the image's sentencepiece: imported by trainer.tokenizer, inside a function
    assert any("module sentencepiece" in g for g in gaps_without("image", "sentencepiece"))
    # dask is on an import path gpu_check does not take only because the plan says so
    assert any("module dask" in g for g in gaps_without("not_on_gpu_check_path", "dask"))
    both = copy.deepcopy(plan)
    both["wheelhouse"]["packages"].append("numpy")
    assert "numpy: in [image] and in [wheelhouse]" in plan_gaps(both, gpu_modules, _roots())


def test_import_scan_negative_control(tmp_path, plan):
    """A module in neither list, imported inside a function of a project module that a
    gpu_check file reaches by a relative import, is reported."""
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "gpu_check_x.py").write_text("from pipeline.sub import helper\n")
    (tmp_path / "pipeline" / "sub").mkdir(parents=True)
    (tmp_path / "pipeline" / "__init__.py").write_text("")
    (tmp_path / "pipeline" / "sub" / "__init__.py").write_text("from .helper import run\n")
    (tmp_path / "pipeline" / "sub" / "helper.py").write_text(
        "import os\n\ndef run():\n    import not_in_any_list.sub\n    import numpy\n")
    modules = third_party_imports(tmp_path, gpu_check_entries(tmp_path))
    assert modules == {"not_in_any_list": {"pipeline.sub.helper"}, "numpy": {"pipeline.sub.helper"}}
    gaps = plan_gaps(plan, modules, [])
    assert len(gaps) == 1 and gaps[0].startswith("module not_in_any_list"), gaps


# ---------------------------------------------------------------------------------------------
# (d) pins, (e) ranges
# ---------------------------------------------------------------------------------------------

def test_every_wheelhouse_package_is_pinned(plan):
    reqs = gpu_wheels.requirements(plan, read_pins())
    assert len(reqs) == len(plan["wheelhouse"]["packages"])
    bad = copy.deepcopy(plan)
    bad["wheelhouse"]["packages"].append("not-pinned-anywhere")
    with pytest.raises(SystemExit) as e:
        gpu_wheels.requirements(bad, read_pins())
    assert e.value.code == 2


def range_misses(requirements: list[Requirement], versions: dict[str, str]) -> list[str]:
    """``name version`` for each of ``versions`` that its requirement's range excludes."""
    by_name = {canon(r.name): r.specifier for r in requirements}
    return [f"{n} {v}" for n, v in versions.items()
            if not by_name.get(n, SpecifierSet()).contains(v, prereleases=True)]


def test_ranges_admit_the_image_and_the_pins(plan):
    deps = project_dependencies(ROOT)
    pins = read_pins()
    assert pins["torch"] == "2.13.0"  # the local CPU build: any other torch is a large download
    image = {canon(p.split("==")[0]): p.split("==")[1] for p in plan["image"]["packages"]
             if "==" in p}
    assert range_misses(deps, {"torch": image["torch"]}) == []
    # numpy: the image's 2.5 is outside apache-beam's range, so only the project's range counts
    assert range_misses(deps, {"numpy": image["numpy"]}) == []
    assert range_misses(deps, {canon(r.name): pins[canon(r.name)] for r in deps}) == []
    exact = [Requirement("torch==2.13.0"), Requirement("numpy<2.5")]
    assert range_misses(exact, {"torch": image["torch"], "numpy": image["numpy"]}) == [
        "torch 2.11.0", "numpy 2.5.2"]


# ---------------------------------------------------------------------------------------------
# bench/gpu_check.sh's install step
# ---------------------------------------------------------------------------------------------

def _wheel(folder: Path, dist: str, module: str) -> Path:
    """A minimal pure-Python wheel of ``dist`` holding an empty module ``module``."""
    info = f"{dist.replace('-', '_')}-0.0.1.dist-info"
    files = {f"{module}/__init__.py": b"",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n"}
    record = [f"{name},sha256="
              f"{base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for name, data in files.items()]
    files[f"{info}/RECORD"] = ("\n".join(record + [f"{info}/RECORD,,"]) + "\n").encode()
    path = folder / f"{dist.replace('-', '_')}-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def _run_gpu_check_sh(root: Path, python: str) -> subprocess.CompletedProcess:
    (root / "bench").mkdir(exist_ok=True)
    shutil.copy(ROOT / "bench" / "gpu_check.sh", root / "bench" / "gpu_check.sh")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["GPU_CHECK_PYTHON"] = python
    return subprocess.run(["bash", str(root / "bench" / "gpu_check.sh"), str(root / "out")],
                          capture_output=True, text=True, env=env, timeout=240)


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A venv with pip and nothing else: no torch, no Beam."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    return str(venv / "bin" / "python")


@pytest.mark.slow
def test_gpu_check_sh_needs_a_wheelhouse(tmp_path, bare_python):
    r = _run_gpu_check_sh(tmp_path, bare_python)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "make gpu-wheels" in r.stderr and "Traceback" not in r.stderr
    # control: a Python that has Beam and zstandard passes this step without a wheelhouse (and
    # stops later: the copy holds no gpu_check.py)
    r = _run_gpu_check_sh(tmp_path, sys.executable)
    assert "make gpu-wheels" not in r.stderr and "torch" in r.stdout, r.stdout + r.stderr


@pytest.mark.slow
def test_gpu_check_sh_installs_the_wheelhouse(tmp_path, bare_python):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "apache-beam", "apache_beam")
    _wheel(wheels, "zstandard", "zstandard")
    r = _run_gpu_check_sh(tmp_path, bare_python)
    # Beam and zstandard now import (from build/gpu_site, on PYTHONPATH); torch, which only the
    # image brings, is what is missing
    assert r.returncode == 2, r.stdout + r.stderr
    assert "installing wheels/" in r.stdout
    assert "cannot import torch" in r.stderr
    assert "apache_beam (" not in r.stderr and "zstandard (" not in r.stderr, r.stderr
    assert (tmp_path / "build" / "gpu_site" / "apache_beam" / "__init__.py").is_file()
    # control: a wheelhouse without zstandard leaves it missing
    (wheels / "zstandard-0.0.1-py3-none-any.whl").unlink()
    r = _run_gpu_check_sh(tmp_path, bare_python)
    assert r.returncode == 2 and "zstandard (" in r.stderr, r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------
# The real wheelhouse (network)
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(os.environ.get("FAST_ELECTRA_NETWORK_TESTS") != "1",
                    reason="builds the wheelhouse from PyPI: FAST_ELECTRA_NETWORK_TESTS=1")
def test_make_gpu_wheels_builds_the_plan(tmp_path, plan):
    assert gpu_wheels.main(["--out", str(tmp_path)]) == 0
    version = tuple(int(v) for v in plan["image"]["python"].split(".")[:2])
    cp = f"cp{version[0]}{version[1]}"
    platforms = list(gpu_wheels.PLATFORMS)
    supported = {*cpython_tags(version, [cp], platforms),
                 *compatible_tags(version, cp, platforms)}
    built = {}
    for w in tmp_path.glob("*.whl"):
        name, _, _, tags = parse_wheel_filename(w.name)
        assert tags & supported, f"{w.name} is not for {cp} manylinux x86_64"
        built[canon(name)] = w
    wanted = {canon(n) for n in plan["wheelhouse"]["packages"]} | {"fast-electra"}
    assert set(built) == wanted

