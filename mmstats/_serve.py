"""``mmstats serve``: the exporter and the JSON document over HTTP.

:class:`StatsApp` is a plain WSGI app (``/metrics``, ``/api/json``), so it
can be mounted in any WSGI server; :func:`serve_forever` runs it on the
standard library's threaded server, bound to loopback unless told otherwise.
"""

from __future__ import annotations

import logging
import os
import socketserver
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ._exporter import DEFAULT_PREFIX, MetricsApp
from ._reader import read_directory
from ._report import dumps, snapshot_to_json
from .exceptions import MmstatsError

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9301"
StartResponse = Callable[..., Any]

_INDEX = b"""<!doctype html><meta charset="utf-8"><title>mmstats</title>
<p>mmstats: <a href="metrics">/metrics</a> (Prometheus),
<a href="api/json">/api/json</a> (the schema of <code>mmstats json</code>).</p>
"""


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6) into host and port.

    :raises ValueError: the address is not of that form.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(
            f"--listen must be HOST:PORT such as {DEFAULT_LISTEN}, not {listen!r}"
        )
    return host.strip("[]"), int(port)


class StatsApp:
    """WSGI app: ``/metrics`` for Prometheus, ``/api/json`` for pages."""

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self.directory = directory
        self.metrics = MetricsApp(directory, prefix)

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        if path.rstrip("/") == "/metrics":
            return self.metrics(environ, start_response)
        if path.rstrip("/") == "/api/json":
            return self.json(start_response)
        if path == "/":
            return _respond(
                start_response, "200 OK", "text/html; charset=utf-8", _INDEX
            )
        return _respond(start_response, "404 Not Found", "text/plain", b"not found\n")

    def json(self, start_response: StartResponse) -> list[bytes]:
        """Answer with the JSON document; an unreadable directory is a 200 too."""
        try:
            doc: Any = snapshot_to_json(read_directory(self.directory))
        except MmstatsError as exc:
            doc = {"schema": 1, "error": str(exc)}
        body = dumps(doc, indent=None).encode()
        return _respond(start_response, "200 OK", "application/json", body)


def _respond(
    start_response: StartResponse, status: str, content_type: str, body: bytes
) -> list[bytes]:
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
    ]
    start_response(status, headers)
    return [body]


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def make_stats_server(
    host: str, port: int, directory: str | None, prefix: str = DEFAULT_PREFIX
) -> WSGIServer:
    """Return a threaded HTTP server for :class:`StatsApp` (not yet serving)."""
    server_class: type[WSGIServer] = _Server
    if ":" in host:
        server_class = type("_Server6", (_Server,), {"address_family": 10})
    return make_server(
        host,
        port,
        StatsApp(directory, prefix),
        server_class=server_class,
        handler_class=_QuietHandler,
    )
