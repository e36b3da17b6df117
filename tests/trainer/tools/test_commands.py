"""The `fast-electra` command (trainer/tools/commands.py): its help lists every command, each
command's --help is its module's own, every dispatch entry resolves, every module with a
command line has a command, the installed console script runs, and --help imports neither
torch nor Beam. Negative controls: an unknown command and a bare `fast-electra` exit 2 with the
list of commands; a target whose third-party package is missing is a one-line error, a missing
project module a traceback; the coverage check reports a module left out of the table."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, TINY
from trainer.tools import commands
from trainer.tools.commands import COMMANDS, main, resolve


def test_help_lists_every_command_with_its_line(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (_, summary) in COMMANDS.items():
        assert f"  {name.ljust(max(map(len, COMMANDS)))}  {summary}\n" in out
    assert "torchrun --nproc_per_node N -m trainer.train" in out  # the multi-process path


def test_every_entry_resolves_to_a_main():
    for name in COMMANDS:
        assert callable(resolve(name)), name


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_help_is_its_modules_own(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and "-h, --help" in out
    assert "commands:\n  prepare" not in out  # not the dispatcher's own help


def test_the_rest_of_the_line_reaches_the_command(capsys):
    assert main(["cost", "--config", TINY, "--set", "train.global_batch_size=32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["global_batch_size"] == 32  # the --set arrived


def test_an_unknown_command_exits_2_with_the_list(capsys):
    with pytest.raises(SystemExit) as e:
        main(["evalute", "--config", TINY])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'evalute'" in err
    assert all(name in err for name in COMMANDS)


def test_no_command_exits_2_with_the_list(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert all(f"  {name} " in err for name in COMMANDS)


def test_a_missing_package_is_one_line_and_a_missing_module_a_traceback(monkeypatch, capsys):
    monkeypatch.setitem(COMMANDS, "needs-pkg", ("no_such_package_xyz.tool:main", "x"))
    assert main(["needs-pkg"]) == 2
    assert "needs the package 'no_such_package_xyz'" in capsys.readouterr().err
    # A table entry naming a project module that does not exist is a bug: not hidden.
    monkeypatch.setitem(COMMANDS, "typo", ("trainer.tools.no_such_tool:main", "x"))
    with pytest.raises(ModuleNotFoundError):
        main(["typo"])


def command_modules(root: Path, packages: tuple[str, ...]) -> set[str]:
    """Modules with a module-level ``if __name__ == "__main__":`` (a command line), package
    ``__main__.py`` files aside (they run a module that has one)."""
    found = set()
    for pkg in packages:
        for path in (root / pkg).rglob("*.py"):
            if path.name == "__main__.py":
                continue
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                    found.add(".".join(path.relative_to(root).with_suffix("").parts))
    return found


def uncovered(modules: set[str], table: dict[str, tuple[str, str]]) -> list[str]:
    targets = {target.partition(":")[0] for target, _ in table.values()}
    return sorted(modules - targets - {commands.__name__})


def test_every_command_line_has_a_command():
    modules = command_modules(Path(REPO), ("pipeline", "trainer"))
    assert {"pipeline.prepare", "trainer.train", "trainer.tools.hf.cli"} <= modules
    assert uncovered(modules, COMMANDS) == []
    # Negative control: a module the table leaves out is reported.
    smaller = {k: v for k, v in COMMANDS.items() if k != "plot"}
    assert uncovered(modules, smaller) == ["trainer.tools.plot"]


def test_help_imports_neither_torch_nor_beam():
    """In a fresh interpreter; the same process then runs a command's --help, which does
    import torch (the check sees an import when there is one)."""
    code = (
        "import sys\n"
        "from trainer.tools.commands import main\n"
        "assert main(['--help']) == 0\n"
        "print('HELP', sorted(m for m in ('torch', 'apache_beam') if m in sys.modules))\n"
        "try:\n"
        "    main(['cost', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('COST', sorted(m for m in ('torch', 'apache_beam') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert "HELP []" in out and "COST ['torch']" in out


def test_the_installed_console_script_runs():
    script = Path(sys.executable).parent / "fast-electra"
    assert script.is_file(), ("the fast-electra console script is not installed: "
                              "pip install -e . (make install does)")
    p = subprocess.run([str(script), "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert all(f"  {name} " in p.stdout for name in COMMANDS)
    bad = subprocess.run([str(script), "no-such-command"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "unknown command 'no-such-command'" in bad.stderr
