"""``mmstats serve``: the live page, the exporter and the JSON document over HTTP.

:class:`StatsApp` is a plain WSGI app (``/`` the live page, ``/metrics``,
``/api/json``), so it can be mounted in any WSGI server; :func:`make_stats_server`
runs it on the standard library's threaded server, bound to loopback unless
told otherwise.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socketserver
import sys
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ._exporter import DEFAULT_PREFIX, MetricsApp
from ._page import JSON_TYPE, json_document, live_page

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:9301"
StartResponse = Callable[..., Any]
# Polls within this many seconds share one directory read: the page polls
# every 2 s, so however many tabs are open, the directory is read once a poll.
JSON_MAX_AGE = 2.0


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:PORT`` for IPv6) into host and port.

    :raises ValueError: the address is not of that form.
    """
    host, sep, port = listen.rpartition(":")
    # Checked without its brackets: an empty host ("[]:9301") would listen on
    # every interface.
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(
            f"the address must be HOST:PORT such as {DEFAULT_LISTEN}, not {listen!r}"
        )
    return host, int(port)


class StatsApp:
    """WSGI app: the live page at ``/``, ``/metrics`` and ``/api/json``."""

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
        path = environ.get("PATH_INFO", "")
        if path.rstrip("/") == "/metrics":
            return self.metrics(environ, start_response)
        if path.rstrip("/") == "/api/json":
            return self.json(environ, start_response)
        if path == "/":
            body, headers = live_page()
            return _send(start_response, "200 OK", headers, body)
        if path == "":
            # Mounted under a prefix and asked without the trailing slash:
            # the page's relative URLs need it.
            where = urllib.parse.quote(environ.get("SCRIPT_NAME", "")) + "/"
            return _send(
                start_response, "301 Moved Permanently", [("Location", where)], b""
            )
        return _respond(start_response, "404 Not Found", "text/plain", b"not found\n")

    def json(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> list[bytes]:
        """Answer with the JSON document; an unreadable directory is a 200 too."""
        query = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
        try:
            body = json_document(self.directory, query, max_age=JSON_MAX_AGE)
        except ValueError as exc:
            message = f"{exc}\n".encode()
            return _respond(start_response, "400 Bad Request", "text/plain", message)
        return _respond(start_response, "200 OK", JSON_TYPE, body)


def _respond(
    start_response: StartResponse, status: str, content_type: str, body: bytes
) -> list[bytes]:
    headers = [
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
    ]
    return _send(start_response, status, headers, body)


def _send(
    start_response: StartResponse,
    status: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> list[bytes]:
    start_response(status, [*headers, ("Content-Length", str(len(body)))])
    return [body]


def is_loopback(host: str) -> bool:
    """Return whether a host name or address is this machine's loopback."""
    name = host.lower().rstrip(".")  # names are case-blind; a root dot is allowed
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return name == "localhost" or name.endswith(".localhost")
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return bool((mapped or address).is_loopback)


# A Host header: a name or IPv4 address, or an IPv6 one in brackets, and
# an optional port; anything else is refused.
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\[\]:]+)(:[0-9]*)?")


class LoopbackHostsOnly:
    """Answer only requests whose Host header names the loopback.

    A server on 127.0.0.1 is still reachable from a browser visiting
    another site, if that site makes its own name resolve to 127.0.0.1
    (DNS rebinding); the browser then sends that name as the Host, and the
    page of the site could read the paths and views of every worker.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST", "")
        parsed = _HOST.fullmatch(host)
        if not host or (parsed and is_loopback(parsed.group(1).strip("[]"))):
            return self.app(environ, start_response)
        message = (
            f"Host {host!r} is not this machine's loopback; mmstats serve listens"
            " on loopback and answers only requests addressed to it.\n"
        )
        return _respond(
            start_response, "421 Misdirected Request", "text/plain", message.encode()
        )


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client dropped for idling, or gone away: not worth a traceback.
        if isinstance(sys.exc_info()[1], OSError):
            log.debug("connection from %s ended: %s", client_address, sys.exc_info()[1])
            return
        super().handle_error(request, client_address)


class _QuietHandler(WSGIRequestHandler):
    # A client that connects and sends nothing, or stops halfway, is
    # dropped after this long instead of holding a thread for ever.
    timeout = 30.0

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def make_stats_server(
    host: str, port: int, directory: str | None, prefix: str = DEFAULT_PREFIX
) -> WSGIServer:
    """Return a threaded HTTP server for :class:`StatsApp` (not yet serving).

    On a loopback address it answers only requests addressed to the
    loopback (:class:`LoopbackHostsOnly`).
    """
    server_class: type[WSGIServer] = _Server
    if ":" in host:
        server_class = type("_Server6", (_Server,), {"address_family": 10})
    app = StatsApp(directory, prefix)
    server = make_server(
        host,
        port,
        app,
        server_class=server_class,
        handler_class=_QuietHandler,
    )
    # Judged by the address bound, however --listen spelled it (127.1,
    # LOCALHOST, a host name in /etc/hosts).
    if is_loopback(str(server.server_address[0])):
        server.set_app(LoopbackHostsOnly(app))
    return server
