"""Folders are trust boundaries: medfl imports no side and no app; the sides never import each other or the apps.

The full set of contracts (roles, native at the bottom, smpc's layers, no cycles at any depth)
is in pyproject.toml's ``[tool.importlinter]``; ``test_import_linter_contracts`` runs them.
"""

from __future__ import annotations

import ast
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FORBIDDEN = {"medfl": {"agent", "coordinator", "apps"}, "agent": {"coordinator", "apps"},
             "coordinator": {"agent", "apps"}}
FIRST_PARTY = {"medfl", "agent", "coordinator", "apps"}


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    bad = {str(f.relative_to(ROOT)): sorted(_imports(f) & FORBIDDEN[package]) for f in files}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{package}/ must not import {sorted(FORBIDDEN[package])}: {bad}"


def _type_checking_imports(path: pathlib.Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and sub.module and sub.module.split(".")[0] in FIRST_PARTY:
                    out.append(f"line {sub.lineno}: {sub.module}")
    return out


@pytest.mark.parametrize("package", sorted(FIRST_PARTY))
def test_no_type_checking_imports_of_our_own_modules(package):
    """An import of our own code under ``if TYPE_CHECKING:`` is how a loop hides; there are none."""
    bad = {str(f.relative_to(ROOT)): _type_checking_imports(f) for f in sorted((ROOT / package).rglob("*.py"))}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"TYPE_CHECKING imports of medfl/agent/coordinator/apps modules: {bad}"


def test_import_linter_contracts():
    exe = shutil.which("lint-imports", path=str(pathlib.Path(sys.executable).parent))
    assert exe, "lint-imports is not installed (pip install -e '.[test]' installs import-linter)"
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert ", 0 broken." in proc.stdout, proc.stdout[-6000:]
