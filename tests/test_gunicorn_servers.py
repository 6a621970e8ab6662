"""Real gunicorn servers with two workers: one stats file per worker, exact totals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from flask import Flask

import mmstats
from tests.test_wsgi_threads import fetch

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


def flask_app() -> Flask:
    """Build the Flask test app for gunicorn; the directory is $MMSTATS_DIR."""
    from tests.test_flask_extension import create_app

    return create_app(None, MMSTATS_NAME="gunicornflask")


@contextmanager
def gunicorn(
    app: str, tmp_path: Path, env: dict[str, str], *args: str
) -> Iterator[str]:
    """Run ``gunicorn -w 2`` on a free port of 127.0.0.1; yield its base URL.

    The server is stopped with SIGTERM, and has exited, when the block ends.
    """
    log = tmp_path / "gunicorn.log"
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers=2",
        "--bind=127.0.0.1:0",
        "--graceful-timeout=10",
        f"--chdir={ROOT}",
        f"--error-logfile={log}",
        *args,
        app,
    ]
    # TMPDIR keeps what the apps create (the Django test databases) in tmp_path.
    full_env = {**os.environ, "TMPDIR": os.fspath(tmp_path), **env}
    process = subprocess.Popen(command, env=full_env, stdin=subprocess.DEVNULL)
    try:
        port = _wait_for_port(log, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            raise
    assert process.returncode == 0, log.read_text()


def _wait_for_port(log: Path, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", text)
        if found:
            return int(found.group(1))
        if process.poll() is not None:
            raise AssertionError(f"gunicorn exited with {process.returncode}:\n{text}")
        time.sleep(0.05)
    raise AssertionError(f"gunicorn did not start in 60 s:\n{log.read_text()}")


def serve_from_both_workers(base: str, slow_path: str, directory: Path) -> int:
    """Send concurrent slow requests until both workers wrote; return how many.

    A sync worker serves one request at a time, so while one sleeps the
    other has to take the next; a stats file appears on a worker's first
    request.
    """
    sent = 0
    for _ in range(10):
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda _: fetch(base + slow_path)[0], range(4)))
        assert statuses == [200] * 4
        sent += 4
        if len(mmstats.read_directory(directory).workers) == 2:
            return sent
    raise AssertionError("one gunicorn worker served every request")


def check_workers(directory: Path, requests: int, queries: int) -> list[mmstats.Worker]:
    """Check the two worker files after shutdown; return the workers."""
    snapshot = mmstats.read_directory(directory)
    assert snapshot.bad == []
    workers = snapshot.workers
    assert len({w.pid for w in workers}) == len(workers) == 2
    assert os.getpid() not in {w.pid for w in workers}
    assert all(w.closed for w in workers)  # each worker exited cleanly
    assert sum(w.value("requests") for w in workers) == requests
    assert sum(w.value("db_queries").sum for w in workers) == queries
    assert sum(w.value("in_flight") for w in workers) == 0
    assert sum(len(w.slow) for w in workers) == requests
    assert all(w.slots == [] for w in workers)
    for worker in workers:
        assert {e.pid for e in worker.slow} == {worker.pid}
        assert all("?" not in e.path for e in worker.slow)
    return workers


def test_flask_app_under_gunicorn(stats_dir: Path, tmp_path: Path) -> None:
    """Two gunicorn workers of a Flask app: exact totals over both files."""
    env = {"MMSTATS_DIR": os.fspath(stats_dir)}
    with gunicorn("tests.test_gunicorn_servers:flask_app()", tmp_path, env) as base:
        sent = serve_from_both_workers(base, "/sleep/300", stats_dir)
        for i in range(20):
            assert fetch(f"{base}/queries/{i % 4}?secret={i}") == (
                200,
                f"{i % 4} queries".encode(),
            )
        assert fetch(f"{base}/stream/2")[1] == b"chunk 0\nchunk 1\n"
        sent += 21

    workers = check_workers(stats_dir, sent, sum(i % 4 for i in range(20)) + 2)
    total = mmstats.aggregate(workers)
    assert total[("view_requests", (("view", "queries"),))].value == 20
    assert total[("responses", (("class", "2xx"),))].value == sent


def test_django_app_under_gunicorn(tmp_path: Path, stats_dir: Path) -> None:
    """Two gunicorn workers forked from a preloaded Django app: exact totals."""
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.django_settings",
        "MMSTATS_TEST_DJANGO_DIR": os.fspath(stats_dir),
    }
    app = "django.core.wsgi:get_wsgi_application()"
    with gunicorn(app, tmp_path, env, "--preload") as base:
        sent = serve_from_both_workers(base, "/sleep/300/", stats_dir)
        for i in range(20):
            status, _ = fetch(f"{base}/queries/{i % 5}/?page={i}")
            assert status == 200
        assert fetch(f"{base}/stream/2/")[1] == b"chunk 0\nchunk 1\n"
        sent += 21

    workers = check_workers(stats_dir, sent, sum(i % 5 for i in range(20)) + 2)
    total = mmstats.aggregate(workers)
    view = ("view_requests", (("view", "tests.django_views.queries"),))
    assert total[view].value == 20


def test_preloaded_master_stats_stay_out_of_the_workers(
    stats_dir: Path, tmp_path: Path
) -> None:
    """A master that wrote before forking keeps its file; workers start at zero."""
    env = {"MMSTATS_DIR": os.fspath(stats_dir)}
    with gunicorn("tests.preload_app:app", tmp_path, env, "--preload") as base:
        for _ in range(30):
            assert fetch(f"{base}/")[0] == 200
        live = mmstats.read_directory(stats_dir).workers
        masters = [w for w in live if w.value("imports") == 1]
        assert len(masters) == 1
        assert masters[0].value("requests") is None

    snapshot = mmstats.read_directory(stats_dir)
    workers = [w for w in snapshot.workers if w.pid != masters[0].pid]
    assert workers and all(w.value("imports") is None for w in workers)
    assert sum(w.value("requests") for w in workers) == 30
    assert sum(w.value("hellos") for w in workers) == 30
