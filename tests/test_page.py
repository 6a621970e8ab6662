"""The live page and the JSON it polls, served by every mount (#8).

The page itself runs in a browser in test_page_browser.py; here it is
checked as a document, and its JSON as the ``mmstats json`` document.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import Client

import mmstats
from mmstats import _page
from mmstats_flask import MmStats
from mmstats_flask.blueprint import make_blueprint
from tests.workers import HOSTILE_PATH, HOSTILE_VIEW, Workers

ROOT = Path(__file__).resolve().parent.parent
PAGE_QUERY = "metrics=requests,in_flight&slow=1"


@pytest.fixture(autouse=True)
def fresh_reads() -> Iterator[None]:
    """Each test reads its directory afresh, whatever an earlier test read."""
    _page._cache.clear()
    yield
    _page._cache.clear()


def inline(html: str, tag: str) -> str:
    [text] = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
    return text


def csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


def policy(headers: Any) -> dict[str, str]:
    """Split a Content-Security-Policy into {directive: sources}."""
    found = {}
    for part in headers["Content-Security-Policy"].split(";"):
        name, _, sources = part.strip().partition(" ")
        found[name] = sources
    return found


def cli_json(directory: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "mmstats._cli", "json", "--dir", os.fspath(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def without_read_at(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "read_at"}


class TestDocument:
    def test_page_allows_only_its_own_script_and_style(self) -> None:
        """The policy names the inline script and style by hash; nothing else
        runs, no inline handler or style attribute, requests only to 'self'."""
        response = Client(mmstats.StatsApp()).get("/")
        html = response.get_data(as_text=True)
        found = policy(response.headers)

        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert found["default-src"] == "'none'"
        assert found["script-src"] == csp_hash(inline(html, "script"))
        assert found["style-src"] == csp_hash(inline(html, "style"))
        assert found["connect-src"] == "'self'"
        assert "unsafe" not in response.headers["Content-Security-Policy"]
        assert not re.search(r"\son\w+=|\sstyle=", html)

    def test_page_loads_nothing_from_anywhere_else(self) -> None:
        """No URL in the page leaves the origin: it works offline."""
        html = mmstats.live_page()[0].decode()

        assert not re.search(r"https?:|//[a-z]", html)
        assert re.findall(r'(?:src|href)="([^"]*)"', html) == [
            "data:,",
            "api/json",
            "metrics",
        ]

    def test_script_writes_text_never_markup(self) -> None:
        """Strings reach the page through textContent; the script has no way
        to parse markup or code."""
        script = inline(mmstats.live_page()[0].decode(), "script")

        for sink in (
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "Function(",
            "DOMParser",
            "createContextualFragment",
        ):
            assert sink not in script
        assert script.isascii()

    def test_page_is_served_with_headers_against_framing_and_caching(self) -> None:
        """The page may not be framed, sniffed, cached or leak its URL."""
        headers = dict(mmstats.live_page()[1])

        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cache-Control"] == "no-store"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


class TestJson:
    def test_api_json_is_the_document_of_mmstats_json(self, populated: Workers) -> None:
        """Without a query, /api/json is what ``mmstats json`` prints."""
        response = Client(mmstats.StatsApp(populated.directory)).get("/api/json")

        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json"
        assert without_read_at(response.get_json()) == without_read_at(
            cli_json(populated.directory)
        )

    def test_query_leaves_things_out_but_keeps_the_schema(
        self, populated: Workers
    ) -> None:
        """?metrics= keeps the named metrics and ?slow= the newest entries;
        every object keeps every field."""
        full = json.loads(mmstats.json_document(populated.directory))
        part = json.loads(
            mmstats.json_document(
                populated.directory, {"metrics": "requests,in_flight", "slow": "1"}
            )
        )

        assert part.keys() == full.keys()
        assert [w.keys() for w in part["workers"]] == [
            w.keys() for w in full["workers"]
        ]
        for got, whole in zip(part["workers"], full["workers"], strict=True):
            assert {m["name"] for m in got["metrics"]} <= {"requests", "in_flight"}
            assert got["slow"] == whole["slow"][:1]
            assert got["slots"] == whole["slots"]
        assert {t["name"] for t in part["totals"]} == {"requests", "in_flight"}
        requests = [t for t in full["totals"] if t["name"] == "requests"]
        assert [t for t in part["totals"] if t["name"] == "requests"] == requests

    @pytest.mark.parametrize("slow", ["-1", "x", "1e3", "99999999"])
    def test_bad_query_is_a_400_with_the_value(
        self, populated: Workers, slow: str
    ) -> None:
        """A bad ?slow= is refused in one line naming the value."""
        response = Client(mmstats.StatsApp(populated.directory)).get(
            "/api/json", query_string={"slow": slow}
        )

        assert response.status_code == 400
        assert repr(slow) in response.get_data(as_text=True)

    def test_unreadable_directory_is_a_200_with_the_reason(
        self, tmp_path: Path
    ) -> None:
        """The page always gets a document; a missing directory says why."""
        missing = tmp_path / "nope"
        response = Client(mmstats.StatsApp(missing)).get("/api/json")

        assert response.status_code == 200
        doc = response.get_json()
        assert doc["schema"] == 1
        assert os.fspath(missing) in doc["error"]
        # Every field of the schema is there, empty: a client reads it as is.
        full = json.loads(mmstats.json_document(tmp_path))
        assert set(doc) == set(full) | {"error"}
        assert doc["workers"] == doc["totals"] == doc["bad_files"] == []
        assert doc["problems"] == [doc["error"]]
        assert doc["archive"].keys() == full["archive"].keys()

    def test_hostile_strings_are_escaped_and_come_back_exact(
        self, populated: Workers
    ) -> None:
        """No raw <, > or & in the body; parsing gives back the exact strings."""
        body = mmstats.json_document(populated.directory)
        doc = json.loads(body)

        assert not set(body.decode()) & set("<>&")
        [worker] = [w for w in doc["workers"] if w["pid"] == populated.pids["hostile"]]
        assert worker["slow"][0]["view"] == HOSTILE_VIEW
        assert HOSTILE_PATH.startswith(worker["slow"][0]["path"])


class TestSharedReads:
    @pytest.fixture
    def reads(self, monkeypatch: pytest.MonkeyPatch) -> list[float]:
        calls: list[float] = []
        real = _page.read_directory

        def counting(directory: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return real(directory, **kwargs)

        monkeypatch.setattr(_page, "read_directory", counting)
        return calls

    def test_pages_polling_together_share_one_read(
        self, populated: Workers, reads: list[float]
    ) -> None:
        """Within max_age, requests for the same document (and those arriving
        during the read) are answered from one read of the directory."""
        bodies: list[bytes] = []

        def poll() -> None:
            bodies.append(mmstats.json_document(populated.directory, max_age=60))

        threads = [threading.Thread(target=poll) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert len(reads) == 1
        assert len(set(bodies)) == 1

    def test_each_query_and_max_age_zero_read_afresh(
        self, populated: Workers, reads: list[float]
    ) -> None:
        """Another query is another document; max_age=0 always reads."""
        mmstats.json_document(populated.directory, max_age=60)
        mmstats.json_document(populated.directory, {"slow": "1"}, max_age=60)
        mmstats.json_document(populated.directory)
        mmstats.json_document(populated.directory)

        assert len(reads) == 4


@contextlib.contextmanager
def _served(directory: str, host: str = "127.0.0.1") -> Iterator[int]:
    """Run mmstats serve's server on ``host`` (port 0) in a thread; yield the port."""
    from mmstats import _serve

    server = _serve.make_stats_server(host, 0, directory)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _status(port: int, host: bytes | None) -> bytes:
    """Return the status line of ``GET /api/json`` sent with this Host."""
    request = b"GET /api/json HTTP/1.0\r\n"
    if host is not None:
        request += b"Host: " + host + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request + b"\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


class TestMounts:
    @pytest.mark.parametrize("listen", ["127.0.0.1", "LOCALHOST", "127.1"])
    def test_serve_on_loopback_answers_only_requests_addressed_to_it(
        self, populated: Workers, listen: str
    ) -> None:
        """A browser led to the server by another site's name resolving to
        127.0.0.1 (DNS rebinding) sends that name as the Host: refused with
        421, while 127.0.0.1, localhost and a Host-less request are served;
        however the loopback address to listen on was spelled."""
        directory = os.fspath(populated.directory)
        with _served(directory, listen) as port:
            here = str(port).encode()
            for host in (
                *(b"127.0.0.1:" + here, b"localhost:" + here, b"[::1]", None),
                *(b"LocalHost", b"localhost.:" + here, b"127.0.0.2"),
            ):
                assert _status(port, host) == b"HTTP/1.0 200 OK", host
            for host in (
                *(b"attacker.example:" + here, b"attacker.example", b"10.0.0.1"),
                *(b"[::1]evil.example", b"localhost:evil", b"[::1]:evil.example"),
            ):
                assert _status(port, host) == b"HTTP/1.0 421 Misdirected Request", host

    def test_serve_drops_a_client_that_sends_nothing(
        self,
        stats_dir: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A connection that never sends its request is closed after the
        handler's timeout (30 s; shortened here) instead of holding one of
        the server's threads for ever, without a traceback for it; other
        clients are served meanwhile."""
        from mmstats import _serve

        monkeypatch.setattr(_serve._QuietHandler, "timeout", 0.5)
        with _served(os.fspath(stats_dir)) as port:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
                assert _status(port, None) == b"HTTP/1.0 200 OK"
                started = time.monotonic()
                assert idle.recv(64) == b""  # closed by the server
                assert time.monotonic() - started < 5
        assert "Traceback" not in capsys.readouterr().err

    def test_stats_app_serves_page_json_and_metrics(self, populated: Workers) -> None:
        """/ is the page, /api/json its data, /metrics stays for Prometheus."""
        client = Client(mmstats.StatsApp(populated.directory))

        assert b"<canvas>" in client.get("/").data
        assert client.get(f"/api/json?{PAGE_QUERY}").get_json()["schema"] == 1
        assert b"mmstats_requests_total" in client.get("/metrics").data
        assert client.get("/nothing").status_code == 404

    def test_stats_app_under_a_prefix_adds_the_trailing_slash(
        self, populated: Workers
    ) -> None:
        """Mounted at /stats and asked for /stats, it redirects to /stats/, so
        the page's relative api/json resolves under the prefix."""
        app = mmstats.StatsApp(populated.directory)
        seen: list[str] = []

        def start_response(status: str, headers: list[tuple[str, str]]) -> None:
            seen.append(status)
            seen.append(dict(headers)["Location"])

        app({"SCRIPT_NAME": "/stats", "PATH_INFO": ""}, start_response)

        assert seen == ["301 Moved Permanently", "/stats/"]

    @pytest.fixture
    def flask_app(self, stats_dir: Path) -> Flask:
        app = Flask("page_test")
        app.config.update(MMSTATS_DIR=os.fspath(stats_dir), MMSTATS_NAME="flaskpage")
        MmStats(app)
        app.register_blueprint(make_blueprint(), url_prefix="/stats")

        @app.route("/hello")
        def hello() -> str:
            return "hi"

        return app

    def test_flask_blueprint_serves_the_page_under_its_prefix(
        self, flask_app: Flask
    ) -> None:
        """/stats/ is the page with its policy, /stats/api/json the document,
        /stats redirects to /stats/; none of them is counted."""
        client = flask_app.test_client()
        for _ in range(3):
            client.get("/hello").close()

        with client.get("/stats/") as response:
            assert response.status_code == 200
            assert "script-src 'sha256-" in response.headers["Content-Security-Policy"]
        docs = []
        for _ in range(3):
            _page._cache.clear()
            with client.get(f"/stats/api/json?{PAGE_QUERY}") as response:
                docs.append(response.get_json())

        totals = [{t["name"]: t["value"] for t in d["totals"]} for d in docs]
        assert [t["requests"] for t in totals] == [3, 3, 3]
        # The poll being answered is not a request in flight either.
        assert [t["in_flight"]["sum"] for t in totals] == [0, 0, 0]
        with client.get("/stats/metrics") as response:
            assert b"\nmmstats_in_flight_all_workers 0.0\n" in response.data
        with client.get("/stats/api/json?slow=x") as response:
            assert response.status_code == 400
        with client.get("/stats") as response:  # Flask's redirect is counted
            assert response.status_code == 308
            assert response.headers["Location"].endswith("/stats/")

    def test_django_urlconf_serves_the_page_and_json(
        self, client: Any, settings: Any
    ) -> None:
        """stats/ is the page, stats/api/json the document; polls not counted."""
        client.get("/ok/")
        page = client.get("/stats/")
        first = json.loads(client.get("/stats/api/json").content)
        _page._cache.clear()
        second = json.loads(client.get("/stats/api/json").content)

        assert page.status_code == 200
        assert page["Content-Security-Policy"].startswith("default-src 'none'")
        assert b"<canvas>" in page.content
        assert os.path.samefile(first["directory"], settings.MMSTATS["DIR"])

        def requests(doc: dict[str, Any]) -> int:
            return next(t["value"] for t in doc["totals"] if t["name"] == "requests")

        assert requests(first) == requests(second) >= 1
        assert client.get("/stats/api/json?slow=-1").status_code == 400
        # The poll being answered is not a request in flight either.
        in_flight = next(t for t in second["totals"] if t["name"] == "in_flight")
        assert in_flight["value"]["sum"] == 0
