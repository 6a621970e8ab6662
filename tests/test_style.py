"""The code base stays formatted, linted and typed, in CI as locally."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_ruff_finds_nothing() -> None:
    """ruff check passes on the whole repository (rules in pyproject.toml)."""
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_changes_nothing() -> None:
    """Every file is as ruff format writes it."""
    result = run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_core_passes_strict_type_check() -> None:
    """mmstats/ passes mypy --strict."""
    result = run("mypy", "--strict", "mmstats/")
    assert result.returncode == 0, result.stdout + result.stderr
