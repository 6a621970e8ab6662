"""The writer and the request recorder under forks and process exits.

Every test here runs real processes: children made with ``os.fork()`` and
with each start method of :mod:`multiprocessing`.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

import mmstats
from mmstats_wsgi import StatsMiddleware
from tests.workers import fork


def wait_for(pid: int, seconds: float = 30) -> int:
    """Return the exit code of child ``pid``, failing if it hangs."""
    deadline = time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        assert time.monotonic() < deadline, "a forked child hangs"
        time.sleep(0.01)


def count_a_job(directory: str) -> None:
    """Count one job in this process's stats file and return: a clean exit."""
    mmstats.Stats(directory, "jobs").counter("jobs").incr()


def serve_with_status(app: StatsMiddleware, status: str) -> None:
    """Serve one request whose app answers with the status line ``status``."""
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/" + status.split()[0]}
    response = app(environ, lambda status, headers: None)
    list(response)
    response.close()  # type: ignore[attr-defined]


class TestSlowRing:
    def test_a_status_the_ring_cannot_hold_leaves_no_entry_half_written(
        self, stats_dir: Path
    ) -> None:
        """A status line whose code does not fit the entry's 8-byte field
        (a broken app's) costs that request its slow entry, and nothing
        more: the entry is not left odd for good, which made every read of
        the live worker wait for it and give up after half a second."""

        def hello(environ: dict[str, str], start_response: Any) -> list[bytes]:
            start_response(environ["PATH_INFO"][1:] + " Whatever", [])
            return [b"hello"]

        app = StatsMiddleware(hello, stats_dir, "status", slow_seconds=0)
        for status in ("200 OK", "99999999999999999999 Huge", "201 Created"):
            serve_with_status(app, status)

        started = time.perf_counter()
        [worker] = mmstats.read_directory(stats_dir).workers
        assert time.perf_counter() - started < 0.25
        assert worker.state == "alive"
        assert worker.value("requests") == 3
        assert [(e.status, e.path) for e in worker.slow] == [
            (201, "/201"),
            (200, "/200"),
        ]

    def test_a_float_status_is_recorded_whole_as_its_integer(
        self, stats_dir: Path
    ) -> None:
        """An app that sets ``status_code = 201.0`` gets the request counted
        in full (its class, its time, its slow entry), not cut short by an
        error halfway through finish."""
        recorder = mmstats.RequestRecorder(stats_dir, "floaty", slow_seconds=0)
        recorder.finish(recorder.start("GET", "/made"), 201.0)  # type: ignore[arg-type]
        [worker] = mmstats.read_directory(stats_dir).workers
        assert worker.value("requests") == 1
        assert worker.value("responses", {"class": "2xx"}) == 1
        assert worker.value("request_seconds").count == 1
        assert [(e.status, e.path) for e in worker.slow] == [(201, "/made")]


class TestForkedChild:
    def test_ignoring_an_inherited_request_leaves_the_parents_slot(
        self, stats_dir: Path
    ) -> None:
        """A child forked in the middle of a request that ignores it (as the
        stats endpoints do), names its view, reports a query and finishes it
        writes none of that into the parent's file: the parent's slot still
        shows the request, with its view and queries, in flight."""
        recorder = mmstats.RequestRecorder(stats_dir, "ignore", slow_seconds=0)
        warm = recorder.start("GET", "/warm")
        recorder.finish(warm, 200)
        held = recorder.start("GET", "/held", "v.held")
        mmstats.record_query(0.25)

        pid = fork()
        if pid == 0:  # the child
            code = 1
            try:
                request = mmstats.current_request()
                assert request is held
                request.ignore()
                mmstats.set_view("child.view")
                mmstats.record_query(0.5)
                recorder.finish(held, 200)
                code = 0
            finally:
                os._exit(code)
        assert wait_for(pid) == 0

        [parent] = [
            w for w in mmstats.read_directory(stats_dir).workers if w.pid == os.getpid()
        ]
        [slot] = parent.slots
        assert (slot.path, slot.view, slot.queries) == ("/held", "v.held", 1)
        assert parent.value("in_flight") == 1
        assert parent.value("requests") == 1
        recorder.finish(held, 200)


class TestMultiprocessing:
    @pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
    def test_a_child_that_returns_closes_its_file(
        self, stats_dir: Path, method: str
    ) -> None:
        """A multiprocessing child whose target returns, and a pool that is
        closed and joined, exit cleanly, whatever the start method: their
        files read closed, as a clean exit marks them, not dead like a
        killed worker's. (fork and forkserver children end with os._exit(),
        which runs no atexit function.)"""
        context = multiprocessing.get_context(method)
        children = [
            context.Process(target=count_a_job, args=(str(stats_dir),))
            for _ in range(3)
        ]
        for child in children:
            child.start()
        for child in children:
            child.join(60)
        assert [child.exitcode for child in children] == [0] * 3
        pool = context.Pool(2)
        pool.map(count_a_job, [str(stats_dir)] * 6)
        pool.close()
        pool.join()

        snapshot = mmstats.read_directory(stats_dir)
        assert snapshot.totals()[("jobs", ())].value == 9
        # The three children, and the pool's workers that took a job.
        states = [w.state for w in snapshot.workers]
        assert states in (["closed"] * 4, ["closed"] * 5)
