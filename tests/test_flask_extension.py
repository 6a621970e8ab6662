"""The Flask adapter: mmstats_flask.MmStats with init_app, hooks and SQLAlchemy."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, abort, stream_with_context
from flask.testing import FlaskClient
from werkzeug.wrappers import Response as WerkzeugResponse

import mmstats
from mmstats._recorder import Request
from mmstats_flask import MmStats, _sqlalchemy
from tests.test_wsgi_threads import (
    MIX,
    check_mix,
    send_mix,
    settled_worker,
    threaded_server,
)


def this_worker(directory: Path) -> mmstats.Worker:
    """Return the stats of this process in ``directory``."""
    snapshot = mmstats.read_directory(directory)
    assert snapshot.bad == []
    [worker] = [w for w in snapshot.workers if w.pid == os.getpid()]
    return worker


class Boom(Exception):
    """The error the failing views raise."""


class Handled(Exception):
    """An error an error handler turns into a response."""


def create_app(stats_dir: Path | None, **config: Any) -> Flask:
    """Build the test app the way an app factory does."""
    app = Flask(__name__)
    app.config.update(
        {
            "MMSTATS_DIR": os.fspath(stats_dir) if stats_dir else None,
            "MMSTATS_NAME": "flasktests",
            "MMSTATS_SLOW_REQUEST_SECONDS": 0,
            **config,
        }
    )

    @app.before_request
    def guard() -> Any:
        from flask import request

        if request.path.startswith("/private"):
            abort(401)  # before any view; MmStats hooks run even earlier
        return None

    MmStats().init_app(app)

    @app.route("/")
    def index() -> str:
        return "ok"

    @app.route("/items/<int:pk>")
    def item(pk: int) -> str:
        return f"item {pk}"

    @app.route("/status/<int:code>")
    def status(code: int) -> tuple[str, int]:
        return "status", code

    @app.route("/boom")
    def boom() -> str:
        raise Boom("view failed")

    @app.route("/abort500")
    def abort500() -> str:
        abort(500)

    @app.route("/handled")
    def handled() -> str:
        raise Handled("teapot")

    @app.errorhandler(Handled)
    def on_handled(exc: Handled) -> tuple[str, int]:
        return "handled", 418

    @app.route("/private/data")
    def private() -> str:
        return "secret"

    @app.route("/queries/<int:count>")
    def queries(count: int) -> str:
        for _ in range(count):
            mmstats.record_query(0.001)
        return f"{count} queries"

    @app.route("/sleep/<int:ms>", methods=["GET", "POST"])
    def sleep(ms: int) -> str:
        time.sleep(ms / 1000)
        return "slept"

    @app.route("/mixed/<int:count>/<int:ms>")
    def mixed(count: int, ms: int) -> str:
        for _ in range(count // 2):
            mmstats.record_query(0.0001)
        time.sleep(ms / 1000)
        for _ in range(count - count // 2):
            mmstats.record_query(0.0001)
        return "mixed"

    @app.route("/stream/<int:chunks>")
    def stream(chunks: int) -> WerkzeugResponse:
        def body() -> Iterator[str]:
            for i in range(chunks):
                mmstats.record_query(0.001)
                time.sleep(0.05)
                yield f"chunk {i}\n"

        return app.response_class(stream_with_context(body()))

    return app


@pytest.fixture
def app(stats_dir: Path) -> Flask:
    """Return the test app, recording every request into the slow ring."""
    return create_app(stats_dir)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def get(client: FlaskClient, path: str, **kwargs: Any) -> int:
    """Send a request, read and close the response; return its status."""
    return client.get(path, buffered=True, **kwargs).status_code


class TestRequests:
    def test_each_request_counted_once_by_status_class(
        self, client: FlaskClient, stats_dir: Path
    ) -> None:
        """Requests and responses per status class match the statuses sent."""
        codes = [103, 200, 201, 302, 404, 404, 500, 503]
        for code in codes:
            assert get(client, f"/status/{code}") == code

        worker = this_worker(stats_dir)
        assert worker.value("requests") == len(codes)
        for cls, expected in {"1xx": 1, "2xx": 2, "3xx": 1, "4xx": 2, "5xx": 2}.items():
            assert worker.value("responses", {"class": cls}) == expected
        assert worker.value("in_flight") == 0
        assert worker.hostname == socket.gethostname()

    def test_views_named_by_endpoint(
        self, client: FlaskClient, stats_dir: Path
    ) -> None:
        """Each request is counted under its endpoint; unknown URLs under none."""
        get(client, "/items/1")
        get(client, "/items/2?x=1")
        get(client, "/")
        assert get(client, "/no-such-url") == 404

        worker = this_worker(stats_dir)
        assert worker.value("view_requests", {"view": "item"}) == 2
        assert worker.value("view_requests", {"view": "index"}) == 1
        assert worker.value("view_seconds", {"view": "item"}).count == 2
        assert worker.total("view_requests") == 3
        assert [e.view for e in worker.slow] == ["", "index", "item", "item"]
        assert [e.path for e in worker.slow][-2:] == ["/items/2", "/items/1"]

    def test_slot_shows_the_endpoint_while_the_view_runs(
        self, app: Flask, client: FlaskClient, stats_dir: Path
    ) -> None:
        """The in-flight slot names the endpoint and holds no query string."""
        seen: list[mmstats.Worker] = []

        @app.route("/look")
        def look() -> str:
            mmstats.record_query(0.001)
            seen.append(this_worker(stats_dir))
            return "looked"

        get(client, "/look?token=secret")

        [slot] = seen[0].slots
        assert (slot.method, slot.path, slot.view, slot.queries) == (
            "GET",
            "/look",
            "look",
            1,
        )
        assert this_worker(stats_dir).slots == []

    def test_slow_entry_carries_every_field(
        self, client: FlaskClient, stats_dir: Path
    ) -> None:
        """A slow entry has time, host, pid, request line, view, status and deltas."""
        before = time.time()
        client.post("/sleep/300?next=/x", buffered=True)

        [entry] = this_worker(stats_dir).slow
        assert before <= entry.start < entry.end <= time.time()
        assert entry.duration >= 0.3
        assert (entry.pid, entry.hostname) == (os.getpid(), socket.gethostname())
        assert (entry.method, entry.path, entry.view) == ("POST", "/sleep/300", "sleep")
        assert entry.status == 200
        assert (entry.queries, entry.db_seconds) == (0, 0.0)
        assert isinstance(entry.memory_delta, int)
        assert isinstance(entry.load_delta, float)

    def test_slow_threshold_and_ring_size_from_config(self, stats_dir: Path) -> None:
        """MMSTATS_SLOW_REQUEST_SECONDS picks entries; MMSTATS_SLOW_LOG_SIZE
        caps them."""
        app = create_app(
            stats_dir,
            MMSTATS_SLOW_REQUEST_SECONDS=0.1,
            MMSTATS_SLOW_LOG_SIZE=2,
            MMSTATS_NAME="flaskring",
        )
        client = app.test_client()
        for ms in (0, 150, 0, 120, 110):
            get(client, f"/sleep/{ms}")

        worker = this_worker(stats_dir)
        assert worker.value("requests") == 5
        assert [e.path for e in worker.slow] == ["/sleep/110", "/sleep/120"]

    def test_record_query_counts_into_the_request(
        self, client: FlaskClient, stats_dir: Path
    ) -> None:
        """mmstats.record_query from a view adds to that request's queries."""
        get(client, "/queries/6")

        worker = this_worker(stats_dir)
        assert [e.queries for e in worker.slow] == [6]
        assert worker.value("db_seconds").sum == pytest.approx(0.006)

    def test_streamed_body_is_timed_and_counted_to_its_end(
        self, client: FlaskClient, stats_dir: Path
    ) -> None:
        """Time and queries of a streamed response include its whole body."""
        response = client.get("/stream/3")
        assert response.get_data() == b"chunk 0\nchunk 1\nchunk 2\n"
        response.close()

        worker = this_worker(stats_dir)
        [entry] = worker.slow
        assert (entry.status, entry.view, entry.queries) == (200, "stream", 3)
        assert entry.duration >= 0.15
        assert worker.slots == []


class TestErrors:
    def test_unhandled_error_is_a_500_counted_once(
        self, client: FlaskClient, stats_dir: Path
    ) -> None:
        """An exception from a view is one 500 and one exception of its class."""
        assert get(client, "/boom") == 500

        worker = this_worker(stats_dir)
        assert worker.value("requests") == 1
        assert worker.value("exceptions", {"exception": f"{__name__}.Boom"}) == 1
        assert [(e.status, e.view) for e in worker.slow] == [(500, "boom")]

    def test_propagated_error_is_a_500_counted_once(self, stats_dir: Path) -> None:
        """With PROPAGATE_EXCEPTIONS the error reaches the server, counted once."""
        app = create_app(stats_dir, PROPAGATE_EXCEPTIONS=True)
        with pytest.raises(Boom):
            app.test_client().get("/boom")

        worker = this_worker(stats_dir)
        assert worker.value("requests") == 1
        assert worker.value("exceptions", {"exception": f"{__name__}.Boom"}) == 1
        assert [(e.status, e.view) for e in worker.slow] == [(500, "boom")]
        assert worker.value("in_flight") == 0

    def test_abort_500_is_a_500_without_exception(
        self, client: FlaskClient, stats_dir: Path
    ) -> None:
        """abort(500) is an answer, not an unhandled exception."""
        assert get(client, "/abort500") == 500

        worker = this_worker(stats_dir)
        assert worker.value("responses", {"class": "5xx"}) == 1
        assert worker.value("exceptions") is None

    def test_error_handler_response_is_recorded(
        self, client: FlaskClient, stats_dir: Path
    ) -> None:
        """An error handler's response is the status recorded."""
        assert get(client, "/handled") == 418

        worker = this_worker(stats_dir)
        assert [(e.status, e.view) for e in worker.slow] == [(418, "handled")]
        assert worker.value("exceptions") is None

    def test_before_request_abort_is_recorded_once(
        self, client: FlaskClient, stats_dir: Path
    ) -> None:
        """A before_request hook set up before MmStats aborts: one 401, view named."""
        assert get(client, "/private/data") == 401

        worker = this_worker(stats_dir)
        assert worker.value("requests") == 1
        assert [(e.status, e.view) for e in worker.slow] == [(401, "private")]

    def test_failing_hooks_never_fail_a_request(
        self, client: FlaskClient, stats_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If naming the view or noting the exception fails, requests still succeed."""

        def broken(self: Request, value: Any) -> None:
            raise RuntimeError("stats broke")

        monkeypatch.setattr(Request, "set_view", broken)
        monkeypatch.setattr(Request, "set_exception", broken)
        assert get(client, "/items/1") == 200
        assert get(client, "/boom") == 500

        worker = this_worker(stats_dir)
        assert worker.value("requests") == 2
        assert [e.status for e in worker.slow] == [500, 200]


class TestSetup:
    def test_app_factory_and_two_apps_share_one_worker_file(
        self, stats_dir: Path
    ) -> None:
        """Two apps with one configuration write into one file and one slow ring."""
        first, second = create_app(stats_dir), create_app(stats_dir)
        get(first.test_client(), "/items/1")
        get(second.test_client(), "/")
        get(second.test_client(), "/")

        assert (
            first.extensions["mmstats"].recorder
            is second.extensions["mmstats"].recorder
        )
        worker = this_worker(stats_dir)
        assert worker.value("requests") == 3
        assert worker.value("view_requests", {"view": "index"}) == 2
        assert len(worker.slow) == 3

    def test_apps_with_their_own_directories(self, tmp_path: Path) -> None:
        """Each app writes where its MMSTATS_DIR says."""
        dirs = [tmp_path / "a", tmp_path / "b"]
        for directory, count in zip(dirs, (1, 2), strict=True):
            client = create_app(directory).test_client()
            for _ in range(count):
                get(client, "/")

        assert [this_worker(d).value("requests") for d in dirs] == [1, 2]

    def test_directory_from_the_environment(
        self, env_stats_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without MMSTATS_DIR in the config, $MMSTATS_DIR is used."""
        get(create_app(None).test_client(), "/")

        assert this_worker(env_stats_dir).value("requests") == 1

    def test_init_app_twice_is_refused(self, app: Flask) -> None:
        """A second init_app on one app would count requests twice; it raises."""
        with pytest.raises(RuntimeError, match="already set up on app"):
            MmStats(app)

    @pytest.mark.parametrize(
        ("key", "value", "rule"),
        [
            ("MMSTATS_DIR", 3, "a non-empty path"),
            ("MMSTATS_DIR", "", "a non-empty path"),
            ("MMSTATS_NAME", "", "a non-empty str"),
            ("MMSTATS_SLOW_REQUEST_SECONDS", -0.5, "a number >= 0"),
            ("MMSTATS_SLOW_REQUEST_SECONDS", "1", "a number >= 0"),
            ("MMSTATS_SLOW_REQUEST_SECONDS", float("nan"), "a number >= 0"),
            ("MMSTATS_SLOW_LOG_SIZE", 0, "an int from 1 to 100000"),
            ("MMSTATS_SLOW_LOG_SIZE", 100_001, "an int from 1 to 100000"),
            ("MMSTATS_LABEL_LIMIT", True, "an int >= 1"),
            ("MMSTATS_ENABLED", "no", "True or False"),
        ],
    )
    def test_bad_config_value_is_named(
        self, stats_dir: Path, key: str, value: Any, rule: str
    ) -> None:
        """A bad MMSTATS_* value fails init_app with a message naming the key."""
        with pytest.raises(
            ValueError, match=rf"^{key} must be {rule}, not {value!r}; "
        ):
            create_app(stats_dir, **{key: value})

    @pytest.mark.parametrize(
        "key", ["MMSTATS_SLOW_SECONDS", "MMSTATS_DIRECTORY", "MMSTATS_enabled"]
    )
    def test_unknown_config_key_is_named_with_the_known_ones(
        self, stats_dir: Path, key: str
    ) -> None:
        """A misspelt MMSTATS_* key fails init_app in one line that names it
        and lists the known keys."""
        with pytest.raises(ValueError) as refused:
            create_app(stats_dir, **{key: 1})

        message = str(refused.value)
        assert message == (
            f"Unknown config key {key!r}; known MMSTATS keys are MMSTATS_DIR, "
            "MMSTATS_NAME, MMSTATS_SLOW_REQUEST_SECONDS, MMSTATS_SLOW_LOG_SIZE, "
            "MMSTATS_LABEL_LIMIT, MMSTATS_ENABLED; fix it in app.config."
        )

    def test_django_style_settings_dict_is_refused(self, stats_dir: Path) -> None:
        """A Django-style MMSTATS dict in app.config is named, not ignored."""
        with pytest.raises(ValueError, match=r"^Unknown config key 'MMSTATS'; "):
            create_app(stats_dir, MMSTATS={"DIR": os.fspath(stats_dir)})

    def test_keys_from_the_environment_are_accepted(
        self, stats_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Keys loaded with from_prefixed_env, and the command line's
        MMSTATS_TRACEBACK, pass init_app; the documented ones take effect."""
        monkeypatch.setenv("FLASK_MMSTATS_DIR", os.fspath(stats_dir))
        monkeypatch.setenv("FLASK_MMSTATS_SLOW_LOG_SIZE", "7")
        monkeypatch.setenv("FLASK_MMSTATS_TRACEBACK", "1")
        app = Flask(__name__)
        app.config.from_prefixed_env()
        MmStats(app)

        assert app.config["MMSTATS_TRACEBACK"] == 1
        assert app.extensions["mmstats"].directory == os.fspath(stats_dir)
        assert app.extensions["mmstats"].recorder.slow_log_size == 7

    def test_disabled_extension_records_nothing(self, stats_dir: Path) -> None:
        """MMSTATS_ENABLED False leaves the app alone; no stats file appears."""
        app = create_app(stats_dir, MMSTATS_ENABLED=False)
        assert get(app.test_client(), "/") == 200

        assert app.extensions["mmstats"].recorder is None
        assert mmstats.read_directory(stats_dir).workers == []

    def test_unusable_directory_never_fails_a_request(self, tmp_path: Path) -> None:
        """With MMSTATS_DIR a file, stats are off and requests still succeed."""
        not_a_dir = tmp_path / "file"
        not_a_dir.write_text("")
        client = create_app(not_a_dir).test_client()

        assert [get(client, p) for p in ("/", "/boom", "/stream/1")] == [200, 500, 200]
        assert not_a_dir.read_text() == ""

    def test_unusable_directory_warning_names_the_config_key(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The warning says to fix app.config['MMSTATS_DIR'], even with
        MMSTATS_DIR set in the environment."""
        not_a_dir = tmp_path / "file"
        not_a_dir.write_text("")
        monkeypatch.setenv("MMSTATS_DIR", os.fspath(tmp_path))
        app = create_app(not_a_dir)

        assert app.test_client().get("/").status_code == 200
        assert (
            f"cannot use {os.fspath(not_a_dir)!r}: {os.fspath(not_a_dir)!r} is not a "
            "directory; set app.config['MMSTATS_DIR'] to a writable directory you "
            "own." in caplog.text
        )

    def test_flask_mmstats_command_is_registered(self, app: Flask) -> None:
        """init_app adds the ``flask mmstats`` command group."""
        assert "mmstats" in app.cli.commands


class TestSQLAlchemy:
    def test_queries_counted_and_timed(self, stats_dir: Path, tmp_path: Path) -> None:
        """Flask-SQLAlchemy queries count into the request, including failed ones."""
        from flask_sqlalchemy import SQLAlchemy
        from sqlalchemy import text
        from sqlalchemy.exc import OperationalError

        app = create_app(
            stats_dir, SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'app.db'}"
        )
        db = SQLAlchemy(app)

        @app.route("/sql/<int:count>")
        def sql(count: int) -> str:
            for i in range(count):
                db.session.execute(text("SELECT :i"), {"i": i})
            try:
                db.session.execute(text("SELECT * FROM no_such_table"))
            except OperationalError:
                db.session.rollback()
            return "sql"

        with app.app_context():
            db.session.execute(text("SELECT 1"))  # outside requests: not counted
        client = app.test_client()
        assert get(client, "/sql/25") == 200
        assert get(client, "/sql/2") == 200

        worker = this_worker(stats_dir)
        assert [e.queries for e in worker.slow] == [3, 26]
        assert worker.value("db_queries").sum == 29
        assert 0 < worker.slow[1].db_seconds <= worker.slow[1].duration

    def test_no_sqlalchemy_no_import_error(
        self, stats_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without SQLAlchemy installed the extension works and times no queries."""
        monkeypatch.setitem(sys.modules, "sqlalchemy", None)
        monkeypatch.setattr(_sqlalchemy, "_installed", False)

        assert _sqlalchemy.install() is False
        client = create_app(stats_dir).test_client()
        assert get(client, "/queries/2") == 200
        assert this_worker(stats_dir).value("requests") == 1


def test_threaded_requests_each_keep_their_own_time_and_queries(
    stats_dir: Path,
) -> None:
    """Under a threaded server, overlapping fast and slow views never mix records."""
    with threaded_server(create_app(stats_dir, MMSTATS_NAME="flaskthreads")) as base:
        send_mix(base, lambda q, ms: f"/mixed/{q}/{ms}")

    worker = settled_worker(stats_dir, len(MIX))
    check_mix(worker)
    assert worker.value("view_requests", {"view": "mixed"}) == len(MIX)
