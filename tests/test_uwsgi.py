"""Real uWSGI workers, forked from a preloading master or loading lazily.

uWSGI forks from C, so Python's at-fork hooks do not run in its workers;
each worker must still write a file of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import mmstats
from tests.test_wsgi_threads import fetch

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


def uwsgi_binary() -> str:
    """Return the uwsgi program, building it from PyPI if needed."""
    found = shutil.which("uwsgi", path=os.path.dirname(sys.executable)) or shutil.which(
        "uwsgi"
    )
    if found:
        return found
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "uwsgi"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    found = shutil.which("uwsgi", path=os.path.dirname(sys.executable))
    if not found:
        pytest.skip(f"uWSGI could not be built here: {build.stderr[-300:]}")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def uwsgi(stats_dir: Path, tmp_path: Path, *args: str) -> Iterator[str]:
    port = free_port()
    log = tmp_path / "uwsgi.log"
    command = [
        uwsgi_binary(),
        "--master",
        "--processes=2",
        f"--http-socket=127.0.0.1:{port}",
        "--module=tests.preload_app:app",
        f"--pythonpath={ROOT}",
        "--die-on-term",
        f"--logto={log}",
        *args,
    ]
    env = {**os.environ, "MMSTATS_DIR": os.fspath(stats_dir)}
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                fetch(base + "/")
                break
            except OSError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.mark.parametrize("mode", [(), ("--lazy-apps",)], ids=["preload", "lazy"])
def test_each_uwsgi_worker_writes_its_own_file(
    stats_dir: Path, tmp_path: Path, mode: tuple[str, ...]
) -> None:
    """Worker files hold only their own requests; the master's only its import."""
    with uwsgi(stats_dir, tmp_path, *mode) as base:
        for _ in range(40):
            assert fetch(base + "/")[0] == 200
        workers = mmstats.read_directory(stats_dir).workers

    serving = [w for w in workers if w.value("requests")]
    assert serving, "no worker file holds requests"
    assert len({w.pid for w in serving}) == len(serving)
    assert sum(w.value("requests") for w in serving) == 41  # with the probe
    assert sum(w.value("hellos") for w in serving) == 41
    if mode:
        # Lazy apps: each worker imports the app itself, into its own file.
        assert all(w.value("imports") == 1 for w in serving)
    else:
        # Preloaded: the master's import stays in the master's file.
        assert all(w.value("imports") is None for w in serving)
        [master] = [w for w in workers if w.value("imports")]
        assert master.value("requests") is None
