"""Build wheels/: what the offline GPU image lacks for bench/gpu_check.sh, as cp312 manylinux
x86_64 wheels, so that gpu_check.sh can install them there with ``pip --no-index --no-deps``.

    make gpu-wheels                                   # = python bench/gpu_wheels.py --out wheels

The packages are ``[wheelhouse] packages`` of bench/gpu_image.toml at the versions pinned in
constraints.txt, plus a wheel of this project (for its package metadata, which
``pipeline.generate`` records). Needs network to PyPI; the image's own packages (torch, numpy,
pyarrow, ...) are never downloaded. Fails (exit 2) past ``max_mib``: the device tool carries at
most 64 MiB of ignored files with the working tree.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "bench" / "gpu_image.toml"
CONSTRAINTS = REPO / "constraints.txt"
# What setuptools needs to build fast-electra: pyproject.toml packages pipeline* and trainer*.
PROJECT_FILES = ("pyproject.toml", "README.md", "pipeline", "trainer")

# The tags a wheel for the image may carry (its glibc is 2.28 or newer); a wheel is found by
# any one of them.
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")


def fail(message: str) -> None:
    print(f"gpu_wheels: {message}", file=sys.stderr)
    raise SystemExit(2)


def canon(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def load_plan(path: Path = PLAN) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def image_names(plan: dict) -> set[str]:
    return {canon(p.split("==")[0]) for p in plan["image"]["packages"]}


def read_pins(path: Path = CONSTRAINTS) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canon(name)] = version.strip()
    return pins


def requirements(plan: dict, pins: dict[str, str]) -> list[str]:
    """``name==version`` for every wheelhouse package; exit 2 naming those without a pin."""
    names = [canon(n) for n in plan["wheelhouse"]["packages"]]
    unpinned = [n for n in names if n not in pins]
    if unpinned:
        fail(f"no version for {', '.join(unpinned)} in {CONSTRAINTS.name}: pin "
                 f"them there (the versions `make install` installs: pip freeze)")
    return [f"{n}=={pins[n]}" for n in names]


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("gpu_wheels:", " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode:
        fail("pip failed (see above); this needs network to PyPI")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "wheels")
    args = ap.parse_args(argv)
    plan = load_plan()
    reqs = requirements(plan, read_pins())
    py = plan["image"]["python"]
    args.out.mkdir(parents=True, exist_ok=True)
    # A fresh wheelhouse: gpu_check.sh installs every wheel in it, so a stale second version
    # of a package would be installed too.
    for old in args.out.glob("*.whl"):
        old.unlink()
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    pip("download", "--quiet", "--only-binary=:all:", "--no-deps", "--dest", str(args.out),
        "--python-version", ".".join(py.split(".")[:2]), "--implementation", "cp",
        "--abi", "cp" + "".join(py.split(".")[:2]), *platforms, *reqs)
    # Built from a copy of what the wheel holds: setuptools leaves build/ in the source tree
    # and reuses it, so a module deleted since the last build would ship again.
    with tempfile.TemporaryDirectory() as tmp:
        for name in PROJECT_FILES:
            src, dst = REPO / name, Path(tmp) / name
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(src, dst)
        pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(args.out.resolve()), tmp)

    wheels = sorted(args.out.glob("*.whl"))
    clash = sorted({w.name for w in wheels if canon(w.name.split("-")[0]) in image_names(plan)})
    if clash:
        fail(f"{', '.join(clash)} would replace the image's own package: take "
                 f"it out of [wheelhouse] in {PLAN.name}")
    total = sum(w.stat().st_size for w in wheels)
    for w in wheels:
        print(f"  {w.stat().st_size / 2**20:7.2f} MiB  {w.name}")
    print(f"gpu_wheels: {len(wheels)} wheels, {total / 2**20:.1f} MiB in {args.out}")
    if total > plan["wheelhouse"]["max_mib"] * 2**20:
        fail(f"over {plan['wheelhouse']['max_mib']} MiB: the device tool could "
                 f"not carry it; drop packages from [wheelhouse] in {PLAN.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
