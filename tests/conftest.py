"""Shared fixtures: a private stats directory per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.workers import WORKER, Workers, populate


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


@pytest.fixture(scope="module")
def worker_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The worker program, in a file so that its command line stays short."""
    path = tmp_path_factory.mktemp("worker") / "worker.py"
    path.write_text(WORKER)
    return path


@pytest.fixture(scope="module")
def populated(
    tmp_path_factory: pytest.TempPathFactory, worker_script: Path
) -> Iterator[Workers]:
    """A stats directory shared by the read-only tests of this module."""
    directory = tmp_path_factory.mktemp("cli") / "stats"
    directory.mkdir(mode=0o700)
    workers = populate(directory, worker_script)
    try:
        yield workers
    finally:
        workers.stop()
