"""The core package `durably` never imports an adapter from `durably_dialects`.

Checked three ways: statically over the source with `ast`, with import-linter's contract
from pyproject.toml, and at run time in a fresh interpreter. The static checker and the
contract are also run on a copy with a planted violation, to show that they can fail.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ADAPTERS = "durably_dialects"
DYNAMIC_IMPORTERS = {"import_module", "__import__", "find_spec"}


def is_adapter_module(name: str | None) -> bool:
    return name is not None and (name == ADAPTERS or name.startswith(ADAPTERS + "."))


def adapter_imports_in(package_dir: Path) -> list[str]:
    """`file:line: statement` of every import of `durably_dialects` under `package_dir`."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                hit = any(is_adapter_module(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                hit = node.level == 0 and is_adapter_module(node.module)
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                hit = name in DYNAMIC_IMPORTERS and any(
                    isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str)
                    and is_adapter_module(arg.value)
                    for arg in node.args
                )
            else:
                continue
            if hit:
                found.append(
                    f"{path.relative_to(package_dir.parent)}:{node.lineno}: {ast.unparse(node)}"
                )
    return found


def lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    executable = Path(sys.executable).parent / "lint-imports"
    assert executable.exists(), "import-linter is a dev dependency: pip install -e '.[dev]'"
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(executable), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def violating_copy(tmp_path: Path) -> Path:
    """A copy of the project whose core imports the sqlite3 adapter."""
    for package in ("durably", ADAPTERS):
        shutil.copytree(
            REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "durably" / "shortcut.py").write_text(
        "from durably_dialects.sqlite3 import SqliteDialect\n\n__all__ = ['SqliteDialect']\n"
    )
    return tmp_path


def test_core_source_has_no_import_of_the_adapters() -> None:
    assert adapter_imports_in(REPO / "durably") == []


def test_static_check_finds_an_adapter_import_planted_in_the_core(violating_copy: Path) -> None:
    (violating_copy / "durably" / "dynamic.py").write_text(
        "import importlib\n\nimportlib.import_module('durably_dialects.sqlite3')\n"
    )
    found = adapter_imports_in(violating_copy / "durably")
    assert any(entry.startswith(os.path.join("durably", "shortcut.py")) for entry in found)
    assert any(entry.startswith(os.path.join("durably", "dynamic.py")) for entry in found)


def test_import_linter_contract_in_pyproject_is_kept() -> None:
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "The core never imports a dialect adapter" in proc.stdout
    assert "KEPT" in proc.stdout


def test_import_linter_contract_breaks_when_the_core_imports_an_adapter(
    violating_copy: Path,
) -> None:
    proc = lint_imports(violating_copy, pythonpath=violating_copy)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "BROKEN" in proc.stdout
    assert "durably.shortcut" in proc.stdout


def test_importing_the_core_loads_no_adapter() -> None:
    script = (
        "import sys, durably\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'durably_dialects'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
