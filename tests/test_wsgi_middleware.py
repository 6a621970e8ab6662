"""The WSGI adapter: mmstats_wsgi.StatsMiddleware around small WSGI apps."""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client, EnvironBuilder

import mmstats
from mmstats_wsgi import StatsMiddleware
from tests.workers import held_elsewhere

Environ = dict[str, Any]
_kept: list[bytes] = []  # memory a view holds past the end of its request


def this_worker(directory: Path) -> mmstats.Worker:
    """Return the stats of this process in ``directory``."""
    snapshot = mmstats.read_directory(directory)
    assert snapshot.bad == []
    [worker] = [w for w in snapshot.workers if w.pid == os.getpid()]
    return worker


def hello(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def by_path(environ: Environ, start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer /status/<code>, name /view/<name>, run /queries/<n>, /sleep/<ms>."""
    parts = environ["PATH_INFO"].strip("/").split("/")
    code = 200
    if parts[0] == "status":
        code = int(parts[1])
    elif parts[0] == "view":
        environ["mmstats.view"] = parts[1]
    elif parts[0] == "queries":
        for _ in range(int(parts[1])):
            mmstats.record_query(0.01)
    elif parts[0] == "sleep":
        time.sleep(int(parts[1]) / 1000)
    elif parts[0] == "raise":
        raise {"value": ValueError, "key": KeyError, "type": TypeError}.get(
            parts[1], LookupError
        )(parts[1])
    start_response(f"{code} X", [("Content-Type", "text/plain")])
    return [b"body"]


def make_environ(path: str = "/", method: str = "GET") -> Environ:
    """Return a WSGI environ for one request, as a server prepares it."""
    return EnvironBuilder(path=path, method=method).get_environ()


class Server:
    """A minimal WSGI server: keeps status and headers, calls close() once."""

    def __init__(self, headers_sent: bool = False) -> None:
        self.status: str | None = None
        self.headers_sent = headers_sent
        self.calls = 0

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        self.calls += 1
        if exc_info is not None and self.headers_sent:
            raise exc_info[1].with_traceback(exc_info[2])
        self.status = status
        return lambda data: None

    def run(self, app: Any, path: str = "/") -> list[bytes]:
        result = app(make_environ(path), self.start_response)
        try:
            return list(result)
        finally:
            result.close()


@pytest.fixture
def record(stats_dir: Path) -> Callable[..., StatsMiddleware]:
    """Return a factory that wraps an app, slow ring recording every request."""

    def wrap(app: Any, **options: Any) -> StatsMiddleware:
        options.setdefault("slow_seconds", 0)
        return StatsMiddleware(app, stats_dir, "wsgitests", **options)

    return wrap


class TestCounts:
    def test_each_request_counted_once_by_status_class(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """Requests and responses per status class match what was sent."""
        client = Client(record(by_path))
        codes = [101, 200, 201, 204, 302, 304, 404, 418, 500, 503, 503]
        for code in codes:
            assert client.get(f"/status/{code}", buffered=True).status_code == code

        worker = this_worker(stats_dir)
        assert worker.value("requests") == len(codes)
        for cls, expected in {"1xx": 1, "2xx": 3, "3xx": 2, "4xx": 2, "5xx": 3}.items():
            assert worker.value("responses", {"class": cls}) == expected
        assert worker.value("request_seconds").count == len(codes)
        assert worker.value("db_queries").count == len(codes)
        assert worker.value("in_flight") == 0
        assert worker.slots == []

    def test_header_names_host_pid_and_start_time(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """The worker file says which host and process wrote it, and when it began."""
        Client(record(hello)).get("/", buffered=True)

        worker = this_worker(stats_dir)
        assert worker.hostname == socket.gethostname()
        assert worker.pid == os.getpid()
        assert 0 < worker.start_time <= time.time()
        assert worker.state == "alive"
        assert worker.value("memory_rss_bytes") > 1_000_000
        assert worker.value("load1") >= 0

    def test_view_named_by_environ_key(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """environ["mmstats.view"] names the view; without it there is no view."""
        client = Client(record(by_path))
        client.get("/view/reports", buffered=True)
        client.get("/view/reports", buffered=True)
        client.get("/view/home", buffered=True)
        client.get("/status/200", buffered=True)

        worker = this_worker(stats_dir)
        assert worker.value("view_requests", {"view": "reports"}) == 2
        assert worker.value("view_requests", {"view": "home"}) == 1
        assert worker.value("view_seconds", {"view": "reports"}).count == 2
        assert worker.total("view_requests") == 3
        assert [e.view for e in worker.slow] == ["", "home", "reports", "reports"]

    def test_views_past_the_label_cap_share_the_overflow_series(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """Past label_limit views, requests go to view="_overflow", counted as
        dropped."""
        client = Client(record(by_path, label_limit=3))
        for name in ["a", "b", "c", "d", "e", "d"]:
            client.get(f"/view/{name}", buffered=True)

        worker = this_worker(stats_dir)
        assert worker.value("view_requests", {"view": "c"}) == 1
        assert worker.value("view_requests", {"view": "d"}) is None
        assert worker.value("view_requests", {"view": "_overflow"}) == 3
        assert worker.value("mmstats_dropped_labels", {"metric": "view_requests"}) == 3
        assert worker.value("mmstats_dropped_labels", {"metric": "view_seconds"}) == 3
        assert worker.total("view_requests") == 6

    def test_a_view_past_the_label_cap_takes_no_lock_once_seen(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """A view seen past the cap before is recorded (and its dropped use
        counted) with the series registry locked by another thread: its
        requests take no lock, as every other view's do."""
        middleware = record(by_path, label_limit=1)
        client = Client(middleware)
        for name in ["a", "b", "b"]:
            client.get(f"/view/{name}", buffered=True)
        with held_elsewhere(middleware.recorder.stats._registry.lock):
            started = time.monotonic()
            client.get("/view/b", buffered=True)
            took = time.monotonic() - started
        assert took < 5, "the request waited for the registry's lock"
        worker = this_worker(stats_dir)
        assert worker.value("view_requests", {"view": "_overflow"}) == 3
        assert worker.value("mmstats_dropped_labels", {"metric": "view_requests"}) == 3

    def test_record_query_counts_into_the_current_request(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """mmstats.record_query adds a query and its time to the request it runs in."""
        mmstats.record_query(5.0)  # outside any request: ignored
        client = Client(record(by_path))
        client.get("/queries/3", buffered=True)
        client.get("/queries/0", buffered=True)

        worker = this_worker(stats_dir)
        assert worker.value("db_queries").sum == 3
        assert worker.value("db_queries").count == 2
        assert worker.value("db_seconds").sum == pytest.approx(0.03)
        assert [(e.queries, e.db_seconds) for e in worker.slow] == [
            (0, 0.0),
            (3, pytest.approx(0.03)),
        ]


class TestSlowRing:
    def test_entry_carries_every_field(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """A slow entry holds time, host, pid, request line, view, status, queries
        and the memory and load deltas."""

        def app(
            environ: Environ, start_response: Callable[..., Any]
        ) -> Iterable[bytes]:
            environ["mmstats.view"] = "reports.heavy"
            for _ in range(4):
                mmstats.record_query(0.005)
            _kept.append(b"x" * (48 << 20))  # resident until the test ends
            time.sleep(0.3)
            start_response("201 Created", [])
            return [b"done"]

        before = time.time()
        try:
            Client(record(app)).post("/reports/run?token=secret", buffered=True)
            [entry] = this_worker(stats_dir).slow
        finally:
            _kept.clear()

        assert before <= entry.start < entry.end <= time.time()
        assert entry.duration >= 0.3
        assert entry.end - entry.start == pytest.approx(entry.duration, abs=0.01)
        assert entry.pid == os.getpid()
        assert entry.hostname == socket.gethostname()
        assert entry.method == "POST"
        assert entry.path == "/reports/run"
        assert entry.view == "reports.heavy"
        assert entry.status == 201
        assert entry.queries == 4
        assert entry.db_seconds == pytest.approx(0.02)
        assert entry.memory_delta >= 32 << 20
        assert math.isfinite(entry.load_delta)

    def test_query_string_is_never_stored(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """Neither the slot nor the slow entry keeps the query string."""
        seen: list[mmstats.Slot] = []

        def app(
            environ: Environ, start_response: Callable[..., Any]
        ) -> Iterable[bytes]:
            seen.extend(this_worker(stats_dir).slots)
            return hello(environ, start_response)

        Client(record(app)).get("/search?q=password&key=secret", buffered=True)

        [slot] = seen
        [entry] = this_worker(stats_dir).slow
        assert slot.path == entry.path == "/search"
        assert b"secret" not in Path(this_worker(stats_dir).path).read_bytes()

    def test_script_name_is_part_of_the_path(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """The stored path is SCRIPT_NAME plus PATH_INFO, the path the client sent."""
        environ = make_environ("/users/7")
        environ["SCRIPT_NAME"] = "/app"
        result = record(hello)(environ, Server().start_response)
        list(result)
        result.close()  # type: ignore[attr-defined]

        assert this_worker(stats_dir).slow[0].path == "/app/users/7"

    def test_long_paths_are_cut(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """A path longer than the field keeps its start, cut on a character boundary."""
        path = "/" + "ü" * 2000
        Client(record(hello)).get(path, buffered=True)

        [entry] = this_worker(stats_dir).slow
        assert 400 < len(entry.path.encode()) <= 510
        assert path.startswith(entry.path)

    @pytest.mark.parametrize("value", [-1.0, math.nan, "1"])
    def test_a_bad_threshold_fails_at_start_up(
        self, stats_dir: Path, value: Any
    ) -> None:
        """A threshold that no request could reach (NaN: every comparison is
        false) or that is not a number >= 0 is refused when the app is
        wrapped, as Flask's and Django's settings are, not silently kept."""
        with pytest.raises(ValueError, match=r"^slow_seconds must be a number >= 0"):
            StatsMiddleware(hello, stats_dir, "bad", slow_seconds=value)

    def test_only_requests_over_the_threshold_are_kept(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """With slow_seconds=0.25 a fast request is counted but not kept."""
        client = Client(record(by_path, slow_seconds=0.25))
        client.get("/sleep/0", buffered=True)
        client.get("/sleep/300", buffered=True)

        worker = this_worker(stats_dir)
        assert worker.value("requests") == 2
        [entry] = worker.slow
        assert entry.path == "/sleep/300"
        assert entry.duration >= 0.3

    def test_ring_keeps_the_newest_entries(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """A ring of 4 entries holds the last 4 of 10 requests, newest first."""
        client = Client(record(by_path, slow_log_size=4))
        for i in range(10):
            client.get(f"/status/{200 + i}", buffered=True)

        worker = this_worker(stats_dir)
        assert [e.status for e in worker.slow] == [209, 208, 207, 206]
        assert worker.value("requests") == 10


class TestSlots:
    def test_slot_shows_the_request_while_it_runs(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """An in-flight request has a slot: method, path, view, start, queries."""
        seen: list[mmstats.Worker] = []

        def app(
            environ: Environ, start_response: Callable[..., Any]
        ) -> Iterable[bytes]:
            mmstats.record_query(0.001)
            mmstats.record_query(0.001)
            seen.append(this_worker(stats_dir))
            return hello(environ, start_response)

        wrapped = record(app)

        def router(environ: Environ, start_response: Callable[..., Any]) -> Any:
            environ["mmstats.view"] = "live.view"  # known before the request starts
            return wrapped(environ, start_response)

        before = time.time()
        Client(router).put("/live/1?x=1", buffered=True)

        [slot] = seen[0].slots
        assert seen[0].value("in_flight") == 1
        assert (slot.method, slot.path, slot.view) == ("PUT", "/live/1", "live.view")
        assert before <= slot.started <= time.time()
        assert slot.queries == 2
        assert slot.db_seconds == pytest.approx(0.002)
        after = this_worker(stats_dir)
        assert after.slots == []
        assert after.value("in_flight") == 0

    def test_set_view_names_the_view_of_a_request_still_served(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """An app that routes by itself names its view in the slot at once
        with mmstats.set_view; outside a request the call does nothing."""
        mmstats.set_view("nowhere")  # no request: nothing to name
        seen: list[mmstats.Worker] = []

        def app(
            environ: Environ, start_response: Callable[..., Any]
        ) -> Iterable[bytes]:
            mmstats.set_view("reports.slow")
            seen.append(this_worker(stats_dir))
            return hello(environ, start_response)

        Client(record(app)).get("/reports/slow", buffered=True)

        [slot] = seen[0].slots
        assert (slot.path, slot.view) == ("/reports/slow", "reports.slow")
        after = this_worker(stats_dir)
        assert after.value("view_requests", {"view": "reports.slow"}) == 1
        assert after.value("view_requests", {"view": "nowhere"}) is None

    def test_a_view_that_is_not_a_str_is_refused_and_the_request_kept(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """set_view(5) raises a TypeError naming the value, and the request
        is recorded whole (count, class, time, slow entry); a non-str
        environ["mmstats.view"] is logged and left out the same way."""
        refused: list[str] = []

        def app(
            environ: Environ, start_response: Callable[..., Any]
        ) -> Iterable[bytes]:
            try:
                mmstats.set_view(5)  # type: ignore[arg-type]
            except TypeError as exc:
                refused.append(str(exc))
            environ["mmstats.view"] = 6
            return hello(environ, start_response)

        Client(record(app)).get("/numbered", buffered=True)

        assert refused == ["view must be a str, not 5"]
        worker = this_worker(stats_dir)
        assert worker.value("requests") == 1
        assert worker.value("responses", {"class": "2xx"}) == 1
        assert worker.value("request_seconds").count == 1
        assert [(e.path, e.view) for e in worker.slow] == [("/numbered", "")]


class TestStreaming:
    def test_list_body_goes_to_the_server_unwrapped_and_ends_on_close(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """The server iterates a list body itself; close() still ends the request."""
        result = record(hello)(make_environ("/listed"), Server().start_response)
        chunks = iter(result)
        assert type(chunks) is type(iter([]))
        assert list(chunks) == [b"hello"]
        assert [s.path for s in this_worker(stats_dir).slots] == ["/listed"]

        result.close()  # type: ignore[attr-defined]
        worker = this_worker(stats_dir)
        assert worker.slots == []
        assert [(e.path, e.status) for e in worker.slow] == [("/listed", 200)]

    def test_streamed_body_is_timed_and_counted_to_its_end(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """Time and queries include the body; the slot lives until close()."""

        def app(
            environ: Environ, start_response: Callable[..., Any]
        ) -> Iterator[bytes]:
            start_response("200 OK", [])
            for i in range(3):
                mmstats.record_query(0.001)
                time.sleep(0.1)
                yield b"chunk %d" % i

        result = record(app)(make_environ("/stream"), Server().start_response)
        chunks = iter(result)
        assert next(chunks) == b"chunk 0"
        during = this_worker(stats_dir)
        assert [s.path for s in during.slots] == ["/stream"]
        assert during.slots[0].queries == 1
        assert list(chunks) == [b"chunk 1", b"chunk 2"]
        assert this_worker(stats_dir).value("requests") is None  # not closed yet
        result.close()  # type: ignore[attr-defined]

        worker = this_worker(stats_dir)
        assert worker.slots == []
        assert worker.value("requests") == 1
        [entry] = worker.slow
        assert entry.duration >= 0.3
        assert entry.queries == 3
        assert worker.value("request_seconds").sum >= 0.3

    def test_body_dropped_mid_stream_ends_on_close_with_its_status(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """A server that stops iterating (a client gone) and drops the body
        records the request once, with the status sent and no exception."""

        def app(
            environ: Environ, start_response: Callable[..., Any]
        ) -> Iterator[bytes]:
            start_response("200 OK", [])
            yield from [b"a", b"b", b"c"]

        result = record(app)(make_environ("/gone"), Server().start_response)
        chunks = iter(result)
        assert next(chunks) == b"a"
        del chunks  # the body's generator is closed here
        result.close()  # type: ignore[attr-defined]

        worker = this_worker(stats_dir)
        assert worker.value("requests") == 1
        assert worker.value("exceptions") is None
        assert [(e.path, e.status) for e in worker.slow] == [("/gone", 200)]

    def test_wrapped_close_called_exactly_once(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """The app's iterable is closed once, even if the server closes twice."""
        closes: list[int] = []

        class Body:
            def __iter__(self) -> Iterator[bytes]:
                yield b"a"

            def close(self) -> None:
                closes.append(1)

        def app(environ: Environ, start_response: Callable[..., Any]) -> Body:
            start_response("200 OK", [])
            return Body()

        result = record(app)(make_environ(), Server().start_response)
        list(result)
        result.close()  # type: ignore[attr-defined]
        result.close()  # type: ignore[attr-defined]

        assert closes == [1]
        assert this_worker(stats_dir).value("requests") == 1

    def test_failing_close_still_finishes_the_request(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """An error from the app's close() reaches the server; the request counts."""

        class Body(list[bytes]):
            def close(self) -> None:
                raise OSError("cleanup failed")

        def app(environ: Environ, start_response: Callable[..., Any]) -> Body:
            start_response("200 OK", [])
            return Body([b"a"])

        with pytest.raises(OSError, match="cleanup failed"):
            Server().run(record(app))

        worker = this_worker(stats_dir)
        assert worker.value("requests") == 1
        assert worker.value("responses", {"class": "2xx"}) == 1
        assert worker.value("in_flight") == 0

    @pytest.mark.parametrize(("chunks_before", "status"), [(0, 500), (2, 200)])
    def test_error_while_streaming_is_counted_and_reaches_the_server(
        self,
        record: Callable[..., StatsMiddleware],
        stats_dir: Path,
        chunks_before: int,
        status: int,
    ) -> None:
        """An error in the body is counted once and re-raised; the status is what
        the client got: 500 before the first chunk, else the one already sent."""
        closes: list[int] = []

        class Body:
            def __iter__(self) -> Iterator[bytes]:
                yield from [b"x"] * chunks_before
                raise KeyError("gone")

            def close(self) -> None:
                closes.append(1)

        def app(environ: Environ, start_response: Callable[..., Any]) -> Body:
            start_response("200 OK", [])
            return Body()

        with pytest.raises(KeyError, match="gone"):
            Server().run(record(app))

        assert closes == [1]
        worker = this_worker(stats_dir)
        assert worker.value("requests") == 1
        assert worker.value("exceptions", {"exception": "KeyError"}) == 1
        assert [e.status for e in worker.slow] == [status]
        assert worker.value("in_flight") == 0


class TestErrors:
    def test_error_from_the_app_is_a_500_and_reaches_the_server(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """An exception from the app call is counted by class and re-raised."""

        class PaymentError(Exception):
            pass

        def app(
            environ: Environ, start_response: Callable[..., Any]
        ) -> Iterable[bytes]:
            environ["mmstats.view"] = "pay"
            start_response("200 OK", [])
            raise PaymentError("declined")

        with pytest.raises(PaymentError):
            Server().run(record(app), "/pay")

        worker = this_worker(stats_dir)
        name = f"{__name__}.{PaymentError.__qualname__}"
        assert worker.value("exceptions", {"exception": name}) == 1
        assert worker.value("responses", {"class": "5xx"}) == 1
        [entry] = worker.slow
        assert (entry.status, entry.view, entry.path) == (500, "pay", "/pay")
        assert worker.value("in_flight") == 0

    def test_exception_classes_past_the_cap_are_overflow(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """Exception class labels are capped like any label."""
        wrapped = record(by_path, label_limit=2)
        for kind in ["value", "key", "type", "value"]:
            with pytest.raises(Exception, match=kind):
                Server().run(wrapped, f"/raise/{kind}")

        worker = this_worker(stats_dir)
        assert worker.value("exceptions", {"exception": "ValueError"}) == 2
        assert worker.value("exceptions", {"exception": "KeyError"}) == 1
        assert worker.value("exceptions", {"exception": "_overflow"}) == 1
        assert worker.value("requests") == 4

    def test_second_start_response_sets_the_final_status(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """start_response again with exc_info before the body: its status counts."""

        def app(
            environ: Environ, start_response: Callable[..., Any]
        ) -> Iterable[bytes]:
            start_response("200 OK", [])
            try:
                raise RuntimeError("late failure")
            except RuntimeError:
                start_response("503 Unavailable", [], sys.exc_info())
            return [b"try later"]

        server = Server()
        assert server.run(record(app)) == [b"try later"]

        assert server.calls == 2
        assert server.status == "503 Unavailable"
        [entry] = this_worker(stats_dir).slow
        assert entry.status == 503

    def test_exc_info_after_headers_sent_keeps_the_first_status(
        self, record: Callable[..., StatsMiddleware], stats_dir: Path
    ) -> None:
        """When the server re-raises exc_info, the status the client got is recorded."""

        def app(
            environ: Environ, start_response: Callable[..., Any]
        ) -> Iterator[bytes]:
            start_response("200 OK", [])
            yield b"first"
            try:
                raise RuntimeError("mid-body failure")
            except RuntimeError:
                start_response("500 Error", [], sys.exc_info())
            yield b"never"

        server = Server(headers_sent=True)
        with pytest.raises(RuntimeError, match="mid-body"):
            server.run(record(app))

        worker = this_worker(stats_dir)
        assert [e.status for e in worker.slow] == [200]
        assert worker.value("exceptions", {"exception": "RuntimeError"}) == 1


class TestArguments:
    @pytest.mark.parametrize(
        ("argument", "value", "rule"),
        [
            ("directory", 5, "a non-empty path"),
            ("directory", b"/run/stats", "a non-empty path"),
            ("directory", "", "a non-empty path"),
            ("name", "", "a non-empty str"),
            ("name", 3, "a non-empty str"),
            ("slow_seconds", -1, "a number >= 0"),
            ("slow_seconds", "1", "a number >= 0"),
            ("slow_seconds", True, "a number >= 0"),
            ("slow_log_size", 0, "an int from 1 to 100000"),
            ("slow_log_size", 100_001, "an int from 1 to 100000"),
            ("slow_log_size", 2.5, "an int from 1 to 100000"),
            ("label_limit", 0, "an int >= 1"),
            ("label_limit", True, "an int >= 1"),
            ("label_limit", "100", "an int >= 1"),
        ],
    )
    def test_bad_argument_is_a_value_error_naming_it(
        self, stats_dir: Path, argument: str, value: Any, rule: str
    ) -> None:
        """A bad argument fails at once, in one line naming it, its rule and
        its value; no stats file is made."""
        options: dict[str, Any] = {"directory": stats_dir, argument: value}
        with pytest.raises(ValueError) as bad:
            StatsMiddleware(hello, **options)

        assert str(bad.value) == (
            f"{argument} must be {rule}, not {value!r}; fix this argument of "
            "StatsMiddleware."
        )
        assert list(stats_dir.iterdir()) == []

    def test_app_and_recorder_are_checked(self) -> None:
        """An app that is not callable, or a recorder that is not a
        RequestRecorder, is named."""
        with pytest.raises(ValueError, match=r"^app must be a WSGI application, "):
            StatsMiddleware(None)  # type: ignore[arg-type]
        with pytest.raises(
            ValueError,
            match=r"^recorder must be a RequestRecorder, not '/run/stats'; fix ",
        ):
            StatsMiddleware(hello, recorder="/run/stats")  # type: ignore[arg-type]

    def test_limits_and_a_path_object_are_accepted(self, stats_dir: Path) -> None:
        """The bounds of each range are allowed, and so is a Path directory."""
        wrapped = StatsMiddleware(
            hello, stats_dir, "edges", slow_seconds=0, slow_log_size=1, label_limit=1
        )
        assert Client(wrapped).get("/", buffered=True).status_code == 200
        assert this_worker(stats_dir).value("requests") == 1
        # Constructed only: a request would allocate the whole ring.
        StatsMiddleware(hello, stats_dir, "edges", slow_log_size=100_000)


class TestStatsFailures:
    def test_unusable_directory_never_fails_a_request(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With the stats directory unusable, requests succeed and no file appears."""
        not_a_dir = tmp_path / "file"
        not_a_dir.write_text("")
        client = Client(StatsMiddleware(by_path, not_a_dir, "broken", slow_seconds=0))

        for _ in range(3):
            assert client.get("/queries/2", buffered=True).status_code == 200

        assert not_a_dir.read_text() == ""
        assert "Stats are off" in caplog.text
        with pytest.raises(mmstats.DirectoryError):
            mmstats.read_directory(not_a_dir)

    @pytest.mark.parametrize(
        ("given", "advice"),
        [
            ("argument", "set StatsMiddleware's directory argument to"),
            ("environment", "set the MMSTATS_DIR environment variable to"),
        ],
    )
    def test_warning_names_where_the_directory_came_from(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
        given: str,
        advice: str,
    ) -> None:
        """The warning says to fix what gave the directory: the argument, or
        MMSTATS_DIR when no argument was given."""
        not_a_dir = tmp_path / "file"
        not_a_dir.write_text("")
        monkeypatch.setenv("MMSTATS_DIR", os.fspath(not_a_dir))
        directory = not_a_dir if given == "argument" else None
        client = Client(StatsMiddleware(hello, directory, "advice"))

        assert client.get("/", buffered=True).status_code == 200
        [warning] = [
            r.getMessage() for r in caplog.records if "Stats are off" in r.getMessage()
        ]
        path = os.fspath(not_a_dir)
        assert warning == (
            f"Stats are off for pid {os.getpid()}: cannot use {path!r}: {path!r} is "
            f"not a directory; {advice} a writable directory you own."
        )

    def test_warning_names_the_private_default(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Without argument and MMSTATS_DIR, the warning says the directory
        is the private default and that MMSTATS_DIR chooses another."""
        runtime = tmp_path / "runtime"
        runtime.write_text("")
        monkeypatch.delenv("MMSTATS_DIR", raising=False)
        monkeypatch.setenv("XDG_RUNTIME_DIR", os.fspath(runtime))
        client = Client(StatsMiddleware(hello, name="advice"))

        assert client.get("/", buffered=True).status_code == 200
        default = os.fspath(runtime / "mmstats")
        assert (
            f"cannot use {default!r}, the private default: Not a directory; set "
            "MMSTATS_DIR to a writable directory you own." in caplog.text
        )

    def test_full_disk_while_growing_never_fails_a_request(
        self,
        record: Callable[..., StatsMiddleware],
        stats_dir: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """When the file cannot grow, requests go on; what was written stays."""
        client = Client(record(by_path, label_limit=1000))
        client.get("/view/first", buffered=True)

        def full(fd: int, offset: int, length: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "posix_fallocate", full)
        for i in range(300):  # enough new views to need a second chunk
            assert client.get(f"/view/v{i}", buffered=True).status_code == 200

        worker = this_worker(stats_dir)
        assert worker.value("view_requests", {"view": "first"}) == 1
        assert worker.value("requests") == 301  # its cell existed before
