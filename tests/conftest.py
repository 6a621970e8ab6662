"""Shared fixtures: a private stats directory per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def stats_dir(tmp_path: Path) -> Path:
    """Return a fresh, private (0700) stats directory."""
    path = tmp_path / "stats"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def env_stats_dir(stats_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point ``MMSTATS_DIR`` at the test's stats directory."""
    monkeypatch.setenv("MMSTATS_DIR", os.fspath(stats_dir))
    yield stats_dir
