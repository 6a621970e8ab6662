"""The request recorder: what it reads from the system, and how often."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from pathlib import Path

import pytest

import mmstats
from mmstats import _recorder, _writer

MiB = 1 << 20


class Clock:
    """A perf_counter that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Drive the recorder's request times from a clock the test moves."""
    clock = Clock()
    monkeypatch.setattr(_recorder, "_perf", clock)
    return clock


def this_worker(directory: Path) -> mmstats.Worker:
    """Return the stats of this process in ``directory``."""
    snapshot = mmstats.read_directory(directory)
    assert snapshot.bad == []
    [worker] = [w for w in snapshot.workers if w.pid == os.getpid()]
    return worker


class FakeMemory:
    """Stands in for RequestRecorder.rss: counts reads, returns a set size."""

    def __init__(self) -> None:
        self.size = 100 * MiB
        self.reads = 0
        self.last = 0

    def __call__(self) -> int:
        self.reads += 1
        self.last = self.size
        return self.size


class TestMemory:
    def test_read_at_most_every_10_ms_while_requests_are_fast(
        self, stats_dir: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A thousand 1 ms requests read the resident size about a hundred
        times, and the gauge shows the newest reading."""
        recorder = mmstats.RequestRecorder(stats_dir, "recorder", slow_seconds=1.0)
        memory = FakeMemory()
        monkeypatch.setattr(recorder, "rss", memory)

        for i in range(1000):
            request = recorder.start("GET", "/")
            clock.now += 0.001
            memory.size = (100 + i) * MiB
            recorder.finish(request, 200)

        assert 90 <= memory.reads <= 101
        assert memory.last >= 1088 * MiB
        assert this_worker(stats_dir).value("memory_rss_bytes") == memory.last

    def test_slow_request_reads_it_at_its_end(
        self, stats_dir: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A slow entry's memory delta runs from the reading before the
        request to a reading at its end, which the gauge shows too."""
        recorder = mmstats.RequestRecorder(stats_dir, "recorder", slow_seconds=0.5)
        memory = FakeMemory()
        monkeypatch.setattr(recorder, "rss", memory)
        recorder.finish(recorder.start("GET", "/fast"), 200)

        clock.now += 0.002
        request = recorder.start("GET", "/slow")
        memory.size += 48 * MiB
        clock.now += 0.6
        recorder.finish(request, 200)

        worker = this_worker(stats_dir)
        [entry] = worker.slow
        assert entry.path == "/slow"
        assert entry.memory_delta == 48 * MiB
        assert worker.value("memory_rss_bytes") == 148 * MiB
        assert memory.reads == 2


class TestLoad:
    def test_read_at_most_once_a_second(
        self, stats_dir: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Three seconds of 10 ms requests read the load average three times."""
        reads = []

        def getloadavg() -> tuple[float, float, float]:
            reads.append(clock.now)
            return (float(len(reads)), 0.0, 0.0)

        monkeypatch.setattr(os, "getloadavg", getloadavg)
        recorder = mmstats.RequestRecorder(stats_dir, "recorder")
        for _ in range(299):
            request = recorder.start("GET", "/")
            clock.now += 0.01
            recorder.finish(request, 200)

        assert len(reads) == 3
        assert this_worker(stats_dir).value("load1") == 3.0


def serve(recorder: mmstats.RequestRecorder, n: int) -> None:
    for _ in range(n):
        request = recorder.start("GET", "/x", "v")
        recorder.finish(request, 200)


class TestThreadBindings:
    def test_series_methods_and_requests_share_the_thread_cell(
        self, stats_dir: Path
    ) -> None:
        """Writes through the recorder's series between requests add to the
        same cells as the requests: nothing is counted twice or lost."""
        recorder = mmstats.RequestRecorder(stats_dir, "bindings")
        serve(recorder, 3)
        recorder.requests.incr(5)
        recorder.request_seconds.observe(2.0)
        serve(recorder, 2)

        worker = this_worker(stats_dir)
        assert worker.value("requests") == 10
        assert worker.value("request_seconds").count == 6
        assert worker.value("view_requests", {"view": "v"}) == 5

    def test_every_thread_counts_into_the_file_that_replaced_its_own(
        self, stats_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Threads that served requests before their file was removed count
        every later request in the new file."""
        monkeypatch.setattr(_writer, "FILE_CHECK_SECONDS", 0.0)
        recorder = mmstats.RequestRecorder(stats_dir, "bindings")
        barrier = threading.Barrier(5)

        def work() -> None:
            serve(recorder, 5)
            barrier.wait()  # the file is removed and replaced
            barrier.wait()
            serve(recorder, 5)

        threads = [threading.Thread(target=work) for _ in range(4)]
        serve(recorder, 1)
        for t in threads:
            t.start()
        barrier.wait()
        first = recorder.stats.path or ""
        os.unlink(first)
        serve(recorder, 1)  # notices the removal once its writes are done
        assert recorder.stats.path != first
        barrier.wait()
        for t in threads:
            t.join()

        worker = this_worker(stats_dir)
        assert worker.value("requests") == 20
        assert worker.value("responses", {"class": "2xx"}) == 20
        assert worker.value("request_seconds").count == 20
        assert worker.value("db_queries").count == 20
        assert worker.value("view_seconds", {"view": "v"}).count == 20
        assert worker.value("in_flight") == 0


class TestCurrentRequest:
    # Each test runs in a new, empty context: a request another test left
    # unfinished in this thread's context would be current again here.

    def test_none_once_the_request_finished(self, stats_dir: Path) -> None:
        """After its finish a request is no longer current in the thread,
        and a query reported then counts nowhere."""
        contextvars.Context().run(self._finish_one, stats_dir)

    def _finish_one(self, stats_dir: Path) -> None:
        recorder = mmstats.RequestRecorder(stats_dir, "current")
        request = recorder.start("GET", "/a")
        assert mmstats.current_request() is request
        recorder.finish(request, 200)

        assert mmstats.current_request() is None
        mmstats.record_query(1.0)
        assert request.queries == 0
        worker = this_worker(stats_dir)
        assert worker.value("db_queries").sum == 0

    def test_inner_request_gives_the_context_back_to_the_outer_one(
        self, stats_dir: Path
    ) -> None:
        """A request started inside a running one is current until it
        finishes; then the outer one is again, and counts later queries."""
        contextvars.Context().run(self._nest, stats_dir)

    def _nest(self, stats_dir: Path) -> None:
        recorder = mmstats.RequestRecorder(stats_dir, "current")
        outer = recorder.start("GET", "/outer")
        inner = recorder.start("GET", "/inner")
        mmstats.record_query(0.5)
        recorder.finish(inner, 200)

        assert mmstats.current_request() is outer
        mmstats.record_query(0.25)
        recorder.finish(outer, 200)
        assert (inner.queries, outer.queries) == (1, 1)
        assert mmstats.current_request() is None

    def test_each_asyncio_task_sees_its_own_request(self, stats_dir: Path) -> None:
        """Requests served by tasks of one thread at once are each current
        in their own task, before and after the others finish."""
        recorder = mmstats.RequestRecorder(stats_dir, "current")
        seen: list[bool] = []

        async def serve(i: int, gate: asyncio.Event) -> None:
            request = recorder.start("GET", f"/task/{i}")
            await gate.wait()
            seen.append(mmstats.current_request() is request)
            mmstats.record_query(0.001)
            await asyncio.sleep(0.001 * i)
            seen.append(mmstats.current_request() is request)
            recorder.finish(request, 200)
            seen.append(mmstats.current_request() is None)
            assert request.queries == 1

        async def main() -> None:
            gate = asyncio.Event()
            tasks = [asyncio.create_task(serve(i, gate)) for i in range(5)]
            await asyncio.sleep(0)
            gate.set()
            await asyncio.gather(*tasks)

        contextvars.Context().run(asyncio.run, main())
        assert seen == [True] * 15
        assert this_worker(stats_dir).value("db_queries").sum == 5
