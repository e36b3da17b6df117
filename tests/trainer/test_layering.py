"""DESIGN.md's dependency rule: a training node needs no Beam."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import trainer
from tests.conftest import REPO


def test_trainer_never_imports_beam():
    modules = [f"trainer.{m.name}" for m in pkgutil.iter_modules(trainer.__path__)]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('apache_beam', 'pipeline')))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
