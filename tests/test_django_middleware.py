"""The Django adapter: mmstats_django's middleware, settings and query hooks."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import django
import pytest
from asgiref.sync import async_to_sync
from django.apps import apps
from django.core.asgi import get_asgi_application
from django.core.exceptions import ImproperlyConfigured, MiddlewareNotUsed
from django.core.handlers.wsgi import WSGIHandler
from django.http import FileResponse, HttpRequest, HttpResponse
from django.test import AsyncClient, Client, RequestFactory

import mmstats
from mmstats_django import conf
from mmstats_django.middleware import StatsMiddleware, view_name
from tests import django_views
from tests.test_wsgi_threads import (
    MIX,
    check_mix,
    send_mix,
    settled_worker,
    threaded_server,
)

OURS = "mmstats_django.middleware.StatsMiddleware"
BOOM = "tests.django_views.Boom"
SettingsWrapper = Any  # pytest-django's settings fixture


def this_worker(directory: Path) -> mmstats.Worker:
    """Return the stats of this process in ``directory``."""
    snapshot = mmstats.read_directory(directory)
    assert snapshot.bad == []
    [worker] = [w for w in snapshot.workers if w.pid == os.getpid()]
    return worker


@pytest.fixture
def stats(settings: SettingsWrapper, stats_dir: Path) -> Path:
    """Record into a fresh stats directory, every request into the slow ring."""
    settings.MMSTATS = {
        "DIR": os.fspath(stats_dir),
        "NAME": "djangotests",
        "SLOW_REQUEST_SECONDS": 0,
    }
    return stats_dir


@pytest.fixture
def client() -> Client:
    """Return a test client that answers errors with 500 instead of raising."""
    return Client(raise_request_exception=False)


@pytest.fixture
def async_client() -> AsyncClient:
    """Return an ASGI test client that answers errors with 500."""
    return AsyncClient(raise_request_exception=False)


def asgi_scope(path: str, query_string: bytes = b"") -> dict[str, Any]:
    """Return the scope of a GET of ``path`` by a client on 127.0.0.1."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query_string,
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }


def disconnecting(
    until: Callable[[], Awaitable[Any]],
) -> Callable[[], Awaitable[dict[str, Any]]]:
    """Return an ASGI receive: the request's empty body, then, once
    ``until()`` is done, the client's disconnect."""
    calls = 0

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        await until()
        return {"type": "http.disconnect"}

    return receive


class TestStatus:
    def test_each_request_counted_once_by_status_class(
        self, stats: Path, client: Client
    ) -> None:
        """Requests and responses per status class match the statuses sent."""
        paths = {
            "/status/103/": 103,
            "/ok/": 200,
            "/status/204/": 204,
            "/redirect/": 302,
            "/status/304/": 304,
            "/status/418/": 418,
            "/status/503/": 503,
        }
        for path, code in paths.items():
            assert client.get(path).status_code == code

        worker = this_worker(stats)
        assert worker.value("requests") == len(paths)
        for cls, expected in {"1xx": 1, "2xx": 2, "3xx": 2, "4xx": 1, "5xx": 1}.items():
            assert worker.value("responses", {"class": cls}) == expected
        assert worker.value("request_seconds").count == len(paths)
        assert worker.value("in_flight") == 0
        assert worker.slots == []

    @pytest.mark.parametrize(
        ("path", "extra", "code"),
        [
            ("/not-found/", {}, 404),
            ("/no-such-url/", {}, 404),
            ("/forbidden/", {}, 403),
            ("/ok/", {"HTTP_HOST": "evil.example"}, 400),
        ],
    )
    def test_django_errors_keep_their_status_and_are_no_exceptions(
        self, stats: Path, client: Client, path: str, extra: dict[str, str], code: int
    ) -> None:
        """Http404, an unknown URL, PermissionDenied and a bad Host are recorded
        with the status Django answers and no exception."""
        assert client.get(path, **extra).status_code == code  # type: ignore[arg-type]

        worker = this_worker(stats)
        assert worker.value("requests") == 1
        assert worker.value("responses", {"class": "4xx"}) == 1
        assert worker.value("exceptions") is None
        assert [e.status for e in worker.slow] == [code]

    def test_unhandled_error_is_a_500_counted_by_class(
        self, stats: Path, client: Client
    ) -> None:
        """An exception from a view is a 500 and counted under its dotted class."""
        assert client.get("/boom/").status_code == 500

        worker = this_worker(stats)
        assert worker.value("responses", {"class": "5xx"}) == 1
        assert worker.value("exceptions", {"exception": BOOM}) == 1
        [entry] = worker.slow
        assert (entry.status, entry.view) == (500, "tests.django_views.boom")

    def test_exception_from_a_middleware_below_is_a_500(
        self, stats: Path, client: Client, settings: SettingsWrapper
    ) -> None:
        """A middleware under ours that raises gives a 500 with its exception."""
        settings.MIDDLEWARE = [OURS, "tests.django_views.RaisingMiddleware"]
        assert client.get("/mw-raise/").status_code == 500
        assert client.get("/ok/").status_code == 200

        worker = this_worker(stats)
        name = "tests.django_views.MiddlewareError"
        assert worker.value("exceptions", {"exception": name}) == 1
        assert [(e.status, e.view) for e in worker.slow] == [
            (200, "tests.django_views.ok"),
            (500, ""),
        ]

    def test_response_returned_early_by_a_middleware_below(
        self, stats: Path, client: Client, settings: SettingsWrapper
    ) -> None:
        """A middleware under ours that answers itself is recorded with its status."""
        settings.MIDDLEWARE = [OURS, "tests.django_views.ShortCircuitMiddleware"]
        assert client.get("/mw-early/").status_code == 429

        worker = this_worker(stats)
        assert worker.value("responses", {"class": "4xx"}) == 1
        assert worker.value("exceptions") is None
        assert [(e.status, e.view) for e in worker.slow] == [(429, "")]

    def test_exception_escaping_get_response_is_recorded_and_raised(
        self, stats: Path
    ) -> None:
        """An exception that reaches the middleware is a 500 and goes on up."""

        def get_response(request: HttpRequest) -> HttpResponse:
            raise KeyboardInterrupt

        middleware = StatsMiddleware(get_response)
        with pytest.raises(KeyboardInterrupt):
            middleware(RequestFactory().get("/interrupted/"))

        worker = this_worker(stats)
        assert worker.value("exceptions", {"exception": "KeyboardInterrupt"}) == 1
        assert [(e.status, e.path) for e in worker.slow] == [(500, "/interrupted/")]
        assert worker.value("in_flight") == 0


class TestViews:
    def test_views_named_by_dotted_path(self, stats: Path, client: Client) -> None:
        """Function and class-based views are counted under their dotted paths."""
        client.get("/ok/")
        client.get("/ok/?page=2")
        client.get("/items/3/")
        client.get("/no-such-url/")

        worker = this_worker(stats)
        assert worker.value("view_requests", {"view": "tests.django_views.ok"}) == 2
        assert (
            worker.value("view_requests", {"view": "tests.django_views.ItemView"}) == 1
        )
        assert (
            worker.value("view_seconds", {"view": "tests.django_views.ok"}).count == 2
        )
        assert worker.total("view_requests") == 3

    def test_view_name_of_a_partial_or_callable(self) -> None:
        """Views without a __qualname__ are named by their class."""

        class Callable:
            def __call__(self, request: HttpRequest) -> HttpResponse:
                return HttpResponse()

        assert view_name(django_views.ok) == "tests.django_views.ok"
        assert view_name(Callable()).endswith("Callable")

    def test_unhashable_view_is_named_on_every_request(self, stats: Path) -> None:
        """A view object that cannot be a dict key is still named each time."""

        class Unhashable:
            __hash__ = None  # type: ignore[assignment]

            def __call__(self, request: HttpRequest) -> HttpResponse:
                return HttpResponse()

        view = Unhashable()

        def get_response(request: HttpRequest) -> HttpResponse:
            middleware.process_view(request, view, (), {})
            return view(request)

        middleware = StatsMiddleware(get_response)
        for _ in range(2):
            middleware(RequestFactory().get("/unhashable/"))

        worker = this_worker(stats)
        name = f"{__name__}.{Unhashable.__qualname__}"
        assert worker.value("view_requests", {"view": name}) == 2
        assert [e.view for e in worker.slow] == [name, name]

    def test_slot_and_entry_hold_no_query_string(
        self, stats: Path, client: Client
    ) -> None:
        """Paths are stored without the query string."""
        client.get("/ok/?password=hunter2")

        worker = this_worker(stats)
        assert [e.path for e in worker.slow] == ["/ok/"]
        assert b"hunter2" not in Path(worker.path).read_bytes()


@pytest.mark.django_db(databases=["default", "other"])
class TestQueries:
    def test_ten_thousand_queries_counted_exactly(
        self, stats: Path, client: Client
    ) -> None:
        """A view running 10,000 queries records exactly 10,000, with their time."""
        assert client.get("/queries/10000/").status_code == 200

        worker = this_worker(stats)
        [entry] = worker.slow
        assert entry.queries == 10_000
        assert 0 < entry.db_seconds <= entry.duration
        assert worker.value("db_queries").sum == 10_000
        assert worker.value("db_seconds").sum == pytest.approx(entry.db_seconds)

    def test_queries_on_every_alias_are_counted(
        self, stats: Path, client: Client, settings: SettingsWrapper
    ) -> None:
        """Queries on "default" and "other" both count, with DEBUG off."""
        assert settings.DEBUG is False
        client.get("/queries-on-both/7/")

        assert [e.queries for e in this_worker(stats).slow] == [14]

    def test_queries_of_a_failing_view_are_counted(
        self, stats: Path, client: Client
    ) -> None:
        """Queries run before a view raises still count."""
        assert client.get("/queries-then-boom/5/").status_code == 500

        worker = this_worker(stats)
        [entry] = worker.slow
        assert (entry.status, entry.queries) == (500, 5)
        assert worker.value("exceptions", {"exception": BOOM}) == 1

    def test_queries_outside_requests_are_not_counted(
        self, stats: Path, client: Client
    ) -> None:
        """A query between requests belongs to no request."""
        client.get("/queries/2/")
        django_views.run_queries(3)
        client.get("/ok/")

        worker = this_worker(stats)
        assert [e.queries for e in worker.slow] == [0, 2]
        assert worker.value("db_queries").sum == 2


class TestSlowRing:
    def test_entry_carries_every_field(self, stats: Path, client: Client) -> None:
        """A slow entry has time, host, pid, request line, view, status and deltas."""
        before = time.time()
        client.post("/sleep/300/?next=/home/")

        [entry] = this_worker(stats).slow
        assert before <= entry.start < entry.end <= time.time()
        assert entry.duration >= 0.3
        assert entry.pid == os.getpid()
        assert entry.hostname == socket.gethostname()
        assert (entry.method, entry.path) == ("POST", "/sleep/300/")
        assert entry.view == "tests.django_views.sleep"
        assert entry.status == 200
        assert (entry.queries, entry.db_seconds) == (0, 0.0)
        assert isinstance(entry.memory_delta, int)
        assert isinstance(entry.load_delta, float)

    def test_threshold_and_size_come_from_settings(
        self, stats: Path, client: Client, settings: SettingsWrapper
    ) -> None:
        """SLOW_REQUEST_SECONDS picks the entries, SLOW_LOG_SIZE caps the ring."""
        settings.MMSTATS = {
            **settings.MMSTATS,
            "SLOW_REQUEST_SECONDS": 0.1,
            "SLOW_LOG_SIZE": 2,
        }
        for ms in (0, 150, 0, 120, 110):
            client.get(f"/sleep/{ms}/")

        worker = this_worker(stats)
        assert worker.value("requests") == 5
        assert [e.path for e in worker.slow] == ["/sleep/110/", "/sleep/120/"]


@pytest.mark.django_db
class TestStreaming:
    def test_streamed_body_is_timed_and_counted_to_its_end(
        self, stats: Path, client: Client
    ) -> None:
        """The slot lives while the body streams; time and queries include it."""
        response = client.get("/stream/3/?x=1")
        chunks = iter(response.streaming_content)
        assert next(chunks) == b"chunk 0\n"
        during = this_worker(stats)
        [slot] = during.slots
        assert (slot.path, slot.view, slot.queries) == (
            "/stream/3/",
            "tests.django_views.stream",
            1,
        )
        assert b"".join(chunks) == b"chunk 1\nchunk 2\n"

        worker = this_worker(stats)
        assert worker.slots == []
        [entry] = worker.slow
        assert (entry.status, entry.queries) == (200, 3)
        assert entry.duration >= 0.15
        assert worker.value("requests") == 1

    def test_file_response_keeps_its_file_for_sendfile(self, stats: Path) -> None:
        """A FileResponse still offers its file to wsgi.file_wrapper; its request
        ends when the server closes it."""
        with open(django_views.__file__, "rb") as source:
            data = source.read()

        def get_response(request: HttpRequest) -> FileResponse:
            return FileResponse(open(django_views.__file__, "rb"))  # noqa: SIM115

        response = StatsMiddleware(get_response)(RequestFactory().get("/file/"))
        assert response.file_to_stream is not None
        assert b"".join(response) == data
        assert this_worker(stats).value("requests") is None
        response.close()

        worker = this_worker(stats)
        assert worker.value("requests") == 1
        assert [(e.path, e.status) for e in worker.slow] == [("/file/", 200)]

    @pytest.mark.parametrize(("after", "status"), [(0, 500), (2, 200)])
    def test_error_while_streaming_is_counted(
        self, stats: Path, client: Client, after: int, status: int
    ) -> None:
        """An error in a streamed body is counted and reaches the server; the status
        is 500 before the first chunk, else the one already sent."""
        response = client.get(f"/stream-boom/{after}/")
        with pytest.raises(django_views.Boom):
            b"".join(response.streaming_content)

        worker = this_worker(stats)
        assert worker.value("requests") == 1
        assert worker.value("exceptions", {"exception": BOOM}) == 1
        assert [e.status for e in worker.slow] == [status]
        assert worker.slots == []


@pytest.mark.django_db
class TestAsync:
    def test_async_view_under_asgi(
        self, stats: Path, async_client: AsyncClient
    ) -> None:
        """An async view served over ASGI is named, timed and its queries counted."""

        async def request() -> int:
            return (await async_client.get("/async/4/?q=1")).status_code

        assert async_to_sync(request)() == 200

        worker = this_worker(stats)
        [entry] = worker.slow
        assert (entry.path, entry.view) == (
            "/async/4/",
            "tests.django_views.async_view",
        )
        assert (entry.status, entry.queries) == (200, 4)
        assert worker.value("in_flight") == 0

    def test_sync_view_and_errors_under_asgi(
        self, stats: Path, async_client: AsyncClient
    ) -> None:
        """Over ASGI, sync views, 404s and errors are recorded like under WSGI."""

        async def requests() -> list[int]:
            paths = ["/queries/3/", "/not-found/", "/async-boom/", "/boom/"]
            return [(await async_client.get(p)).status_code for p in paths]

        assert async_to_sync(requests)() == [200, 404, 500, 500]

        worker = this_worker(stats)
        assert [(e.status, e.queries) for e in reversed(worker.slow)] == [
            (200, 3),
            (404, 0),
            (500, 0),
            (500, 0),
        ]
        assert worker.value("exceptions", {"exception": BOOM}) == 2
        assert (
            worker.value("view_requests", {"view": "tests.django_views.queries"}) == 1
        )

    def test_async_stream_under_asgi(
        self, stats: Path, async_client: AsyncClient
    ) -> None:
        """An async streamed body is counted to its end over ASGI."""

        async def get_body() -> bytes:
            response = await async_client.get("/async-stream/3/")
            return b"".join([chunk async for chunk in response.streaming_content])

        assert async_to_sync(get_body)() == b"chunk 0\nchunk 1\nchunk 2\n"

        worker = this_worker(stats)
        [entry] = worker.slow
        assert (entry.status, entry.queries) == (200, 3)
        assert entry.view == "tests.django_views.async_stream"
        assert worker.slots == []
        assert worker.value("in_flight") == 0

    def test_client_gone_mid_stream_still_finishes_the_request(
        self, stats: Path
    ) -> None:
        """Over ASGI, a client that disconnects during a streamed body leaves no
        request in flight: it is recorded once with the status it was sent."""
        application = get_asgi_application()
        scope = asgi_scope("/async-stream/50/", b"token=secret")

        async def run() -> list[dict[str, Any]]:
            body_started = asyncio.Event()
            messages: list[dict[str, Any]] = []
            receive = disconnecting(body_started.wait)

            async def send(message: dict[str, Any]) -> None:
                messages.append(message)
                if message.get("body"):
                    body_started.set()
                    await asyncio.sleep(0.01)

            await application(scope, receive, send)
            return messages

        messages = async_to_sync(run)()

        assert messages[0] == {
            "type": "http.response.start",
            "status": 200,
            "headers": ANY,
        }
        worker = this_worker(stats)
        assert worker.value("requests") == 1
        assert worker.value("in_flight") == 0
        assert worker.slots == []
        [entry] = worker.slow
        assert (entry.path, entry.status) == ("/async-stream/50/", 200)
        assert 1 <= entry.queries <= 50

    @pytest.mark.skipif(
        django.VERSION < (5, 0),
        reason="Django 4.2 runs a view to its end when its client disconnects",
    )
    def test_client_gone_before_the_response_is_no_server_error(
        self, stats: Path
    ) -> None:
        """Over ASGI, Django cancels a view whose client disconnected: the
        request is recorded once, as 499 (nothing was sent), with no
        exception and nothing left in flight."""
        application = get_asgi_application()
        scope = asgi_scope("/async-sleep/5000/")

        async def run() -> tuple[list[dict[str, Any]], float]:
            messages: list[dict[str, Any]] = []
            receive = disconnecting(lambda: asyncio.sleep(0.05))

            async def send(message: dict[str, Any]) -> None:
                messages.append(message)

            start = time.monotonic()
            await application(scope, receive, send)
            return messages, time.monotonic() - start

        messages, took = async_to_sync(run)()

        assert messages == [] and took < 4  # cancelled, not slept out
        worker = this_worker(stats)
        assert worker.value("requests") == 1
        assert worker.value("responses", {"class": "4xx"}) == 1
        assert worker.find("responses", {"class": "5xx"}) is None
        assert [s for s in worker.series if s.name == "exceptions"] == []
        assert worker.value("in_flight") == 0
        assert worker.slots == []
        [entry] = worker.slow
        assert (entry.path, entry.status) == ("/async-sleep/5000/", 499)
        assert entry.view == "tests.django_views.async_sleep"


@pytest.mark.django_db(transaction=True)
def test_threaded_requests_each_keep_their_own_time_and_queries(stats: Path) -> None:
    """Under a threaded server, overlapping fast and slow views never mix records."""
    with threaded_server(WSGIHandler()) as base:
        send_mix(base, lambda q, ms: f"/mixed/{q}/{ms}/")

    worker = settled_worker(stats, len(MIX))
    check_mix(worker)
    assert worker.value("view_requests", {"view": "tests.django_views.mixed"}) == len(
        MIX
    )


class TestSettings:
    @pytest.mark.parametrize(
        ("key", "value", "rule"),
        [
            ("DIR", 3, "a non-empty path"),
            ("DIR", "", "a non-empty path"),
            ("NAME", "", "a non-empty str"),
            ("SLOW_REQUEST_SECONDS", -1, "a number >= 0"),
            ("SLOW_REQUEST_SECONDS", "1", "a number >= 0"),
            ("SLOW_REQUEST_SECONDS", float("nan"), "a number >= 0"),
            ("SLOW_LOG_SIZE", 0, "an int from 1 to 100000"),
            ("SLOW_LOG_SIZE", 2.5, "an int from 1 to 100000"),
            ("LABEL_LIMIT", True, "an int >= 1"),
            ("ENABLED", "yes", "True or False"),
        ],
    )
    def test_bad_value_fails_at_start_up_naming_the_setting(
        self, settings: SettingsWrapper, key: str, value: Any, rule: str
    ) -> None:
        """A bad MMSTATS value stops start-up with a message naming the setting."""
        settings.MMSTATS = {key: value}
        match = rf"MMSTATS\['{key}'\] must be {rule}, not {value!r}"
        with pytest.raises(ImproperlyConfigured, match=match):
            apps.get_app_config("mmstats_django").ready()
        with pytest.raises(ImproperlyConfigured, match=match):
            StatsMiddleware(lambda request: HttpResponse())

    def test_unknown_setting_fails_at_start_up(self, settings: SettingsWrapper) -> None:
        """A misspelt key is named, with the known keys."""
        settings.MMSTATS = {"SLOW_SECONDS": 1}
        with pytest.raises(
            ImproperlyConfigured, match="Unknown MMSTATS setting 'SLOW_SECONDS'"
        ):
            conf.get_config()

    @pytest.mark.parametrize("value", [[], "DIR=/tmp", ("DIR",)])
    def test_setting_that_is_not_a_dict_fails(
        self, settings: SettingsWrapper, value: Any
    ) -> None:
        """MMSTATS must be a dict; anything else is named in the error."""
        settings.MMSTATS = value
        with pytest.raises(
            ImproperlyConfigured, match=r"^MMSTATS must be a dict, not "
        ):
            conf.get_config()

    def test_defaults_without_the_setting(self, settings: SettingsWrapper) -> None:
        """Without MMSTATS: 1 s threshold, 256 entries, stats on."""
        del settings.MMSTATS
        config = conf.get_config()
        assert (config.slow_seconds, config.slow_log_size, config.enabled) == (
            1.0,
            256,
            True,
        )

    def test_disabled_middleware_records_nothing(
        self, stats: Path, client: Client, settings: SettingsWrapper
    ) -> None:
        """ENABLED False takes the middleware out; requests are served as usual."""
        settings.MMSTATS = {**settings.MMSTATS, "ENABLED": False}
        with pytest.raises(MiddlewareNotUsed):
            StatsMiddleware(lambda request: HttpResponse())
        assert client.get("/ok/").status_code == 200

        assert mmstats.read_directory(stats).workers == []

    def test_unusable_directory_never_fails_a_request(
        self, settings: SettingsWrapper, tmp_path: Path, client: Client
    ) -> None:
        """With DIR a file, stats are off and every request still succeeds."""
        not_a_dir = tmp_path / "file"
        not_a_dir.write_text("")
        settings.MMSTATS = {"DIR": os.fspath(not_a_dir), "SLOW_REQUEST_SECONDS": 0}

        statuses = [client.get(p).status_code for p in ("/ok/", "/boom/", "/stream/1/")]

        assert statuses == [200, 500, 200]
        assert not_a_dir.read_text() == ""

    def test_unusable_directory_warning_names_the_setting(
        self,
        settings: SettingsWrapper,
        tmp_path: Path,
        client: Client,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The warning says to fix MMSTATS['DIR'], which overrides MMSTATS_DIR
        in the environment."""
        not_a_dir = tmp_path / "file"
        not_a_dir.write_text("")
        monkeypatch.setenv("MMSTATS_DIR", os.fspath(tmp_path))
        settings.MMSTATS = {"DIR": os.fspath(not_a_dir)}

        assert client.get("/ok/").status_code == 200
        assert (
            f"cannot use {os.fspath(not_a_dir)!r}: {os.fspath(not_a_dir)!r} is not a "
            "directory; set MMSTATS['DIR'] in your settings to a writable directory "
            "you own." in caplog.text
        )


def test_recorder_shared_per_configuration(stats: Path) -> None:
    """Middleware built twice with one configuration shares one recorder."""

    def get_response(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    assert (
        StatsMiddleware(get_response).recorder is StatsMiddleware(get_response).recorder
    )
