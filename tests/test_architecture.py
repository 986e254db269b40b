"""The package's architecture holds: layers import downwards only, no cycles, no Lightning where
generation runs (the contracts in pyproject.toml, checked by import-linter as `make lint` does)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.is_file():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", *args], cwd=cwd, capture_output=True, text=True)


def test_the_import_contracts_are_kept() -> None:
    done = lint_imports()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "3 kept, 0 broken" in done.stdout


def test_an_upward_import_or_a_cycle_breaks_a_contract(tmp_path: Path) -> None:
    """The contracts can fail: a copy of the package where core imports Lightning and two modules of
    generation import each other breaks both."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "sdm", copy / "sdm", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    with open(copy / "sdm" / "core" / "seeding.py", "a") as handle:
        handle.write("\nimport lightning  # noqa: E402,F401\n")
    with open(copy / "sdm" / "generation" / "run.py", "a") as handle:
        handle.write("\nfrom sdm.generation.processes import run_in_processes  # noqa: E402,F401\n")
    done = lint_imports(cwd=copy)
    assert done.returncode != 0
    assert "sdm.core.seeding -> lightning" in done.stdout
    assert ".run -> .processes" in done.stdout
