"""The WSGI adapter under a threaded server: each request keeps its own record."""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from werkzeug.serving import make_server

import mmstats
from mmstats_wsgi import StatsMiddleware

# Never a proxy from the environment: requests go to 127.0.0.1 only.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# (queries, milliseconds) per request: fast and slow ones, interleaved.
MIX = [(q, ms) for q in (0, 1, 3, 10, 25) for ms in (0, 120, 5, 250)] * 2


def fetch(url: str) -> tuple[int, bytes]:
    """GET ``url``; return the status and body."""
    with _opener.open(url, timeout=30) as response:
        return response.status, response.read()


@contextmanager
def threaded_server(app: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 with a thread per request; yield the base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def send_mix(base: str, path: Callable[[int, int], str]) -> None:
    """Send every request of MIX at once from 10 client threads."""
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda qm: fetch(base + path(*qm)), MIX))
    assert [status for status, _ in results] == [200] * len(MIX)


def settled_worker(directory: Path, requests: int) -> mmstats.Worker:
    """Return this process's stats once ``requests`` requests have finished.

    A server thread finishes a request when it closes the response, which
    can be just after the client has read the whole body.
    """
    deadline = time.monotonic() + 15
    while True:
        snapshot = mmstats.read_directory(directory)
        [worker] = [w for w in snapshot.workers if w.pid == os.getpid()]
        if worker.value("requests") == requests or time.monotonic() > deadline:
            return worker
        time.sleep(0.02)


def check_mix(worker: mmstats.Worker) -> None:
    """Every slow entry has its own request's query count and at least its sleep."""
    assert worker.value("requests") == len(MIX)
    assert worker.value("in_flight") == 0
    assert worker.slots == []
    assert worker.value("db_queries").sum == sum(q for q, _ in MIX)
    assert len(worker.slow) == len(MIX)
    for entry in worker.slow:
        queries, ms = (int(part) for part in entry.path.strip("/").split("/")[-2:])
        assert entry.queries == queries, entry
        assert entry.duration >= ms / 1000, entry
        assert entry.status == 200
    seen = sorted(
        tuple(int(p) for p in e.path.strip("/").split("/")[-2:]) for e in worker.slow
    )
    assert seen == sorted(MIX)


def mixed(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    """Record half the queries, sleep, record the rest."""
    queries, ms = (int(part) for part in environ["PATH_INFO"].split("/")[2:4])
    environ["mmstats.view"] = "mixed"
    for _ in range(queries // 2):
        mmstats.record_query(0.0001)
    time.sleep(ms / 1000)
    for _ in range(queries - queries // 2):
        mmstats.record_query(0.0001)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]


def test_threaded_requests_each_keep_their_own_time_and_queries(
    stats_dir: Path,
) -> None:
    """Under a threaded server, overlapping fast and slow requests never mix records."""
    app = StatsMiddleware(mixed, stats_dir, "wsgithreads", slow_seconds=0)

    with threaded_server(app) as base:
        send_mix(base, lambda q, ms: f"/mixed/{q}/{ms}")

    worker = settled_worker(stats_dir, len(MIX))
    check_mix(worker)
    assert worker.value("view_requests", {"view": "mixed"}) == len(MIX)
