"""The live web page and the JSON document it polls.

The page is one HTML document put together from ``mmstats/static``: the
style sheet and the script are inlined, and the Content-Security-Policy
allows exactly those two (by hash) and requests to the page's own origin.
The script polls ``api/json``, relative to the page, and draws everything
with ``textContent`` and a canvas, so it works offline and under a prefix.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
import threading
import time
from collections.abc import Mapping
from importlib import resources
from typing import Any

from ._archive import Archive
from ._reader import read_directory
from ._report import (
    SCHEMA_VERSION,
    archive_to_json,
    dumps,
    filtered,
    snapshot_json_text,
)
from .exceptions import MmstatsError

log = logging.getLogger(__name__)

PAGE_TYPE = "text/html; charset=utf-8"
JSON_TYPE = "application/json"
Headers = list[tuple[str, str]]

# Documents shared by polls: one lock per directory and query, so a poll
# waits for a read of the same document in progress, never for another.
_MAX_KEYS = 64
_KEEP = 60.0  # seconds a document stays in memory after its read
_guard = threading.Lock()
_locks: dict[Any, threading.Lock] = {}
_cache: dict[Any, tuple[float, bytes]] = {}


def _asset(name: str) -> str:
    return resources.files("mmstats").joinpath("static", name).read_text("utf-8")


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


@functools.cache
def _page() -> tuple[bytes, str]:
    """Return the page and its Content-Security-Policy, built once."""
    style, script = _asset("page.css"), _asset("page.js")
    if "</" in style or "</" in script:
        raise RuntimeError("mmstats/static must not contain '</' in page.css/.js")
    html = _asset("page.html").replace("/*STYLE*/", style).replace("/*SCRIPT*/", script)
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_csp_hash(script)}",
            f"style-src {_csp_hash(style)}",
            "connect-src 'self'",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return html.encode("utf-8"), policy


def live_page() -> tuple[bytes, Headers]:
    """Return the live page and the headers to send it with.

    The headers include the Content-Type and a Content-Security-Policy that
    lets the page run only its own inline script and reach only its origin.
    Serve it at a URL ending in ``/``, with :func:`json_document` at
    ``api/json`` under the same URL.
    """
    body, policy = _page()
    headers = [
        ("Content-Type", PAGE_TYPE),
        ("Content-Security-Policy", policy),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Frame-Options", "DENY"),
    ]
    return body, headers


def json_document(
    directory: str | os.PathLike[str] | None,
    query: Mapping[str, str] | None = None,
    max_age: float = 0.0,
) -> bytes:
    """Read a directory and return the ``mmstats json`` document, compact.

    ``query`` holds the request's query parameters; two of them leave
    things out and keep the schema.  ``metrics`` (names separated by
    commas) keeps those metrics in the workers, the archive and the totals;
    ``slow`` (a count) keeps the newest entries of each slow ring.

    A document read less than ``max_age`` seconds ago for the same directory
    and query is answered again, and requests that arrive while it is being
    read wait for that read, so pages open in several tabs cost one read.

    Never raises for a bad directory: the answer is then the document with
    no workers and no totals, the reason in ``problems`` and ``error``.

    :raises ValueError: a query parameter has a bad value.
    """
    names, slow = _parse_query(query or {})
    key = (os.fspath(directory) if directory is not None else None, names, slow)
    if max_age <= 0:
        return _build(directory, names, slow)

    with _guard:
        if len(_locks) > _MAX_KEYS:  # many queries: start afresh
            _locks.clear()
            _cache.clear()
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        hit = _cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < max_age:
            return hit[1]
        body = _build(directory, names, slow)
        now = time.monotonic()
        with _guard:
            for old in [k for k, (t, _) in _cache.items() if now - t > _KEEP]:
                del _cache[old]
            _cache[key] = (now, body)
        return body


def _parse_query(query: Mapping[str, str]) -> tuple[frozenset[str] | None, int | None]:
    names = None
    raw = query.get("metrics")
    if raw is not None:
        names = frozenset(n.strip() for n in raw.split(",") if n.strip())
    slow = None
    raw = query.get("slow")
    if raw is not None:
        if not raw.isdigit() or int(raw) > 1_000_000:
            raise ValueError(
                f"slow must be a count of slow entries from 0 to 1000000, not {raw!r}"
            )
        slow = int(raw)
    return names, slow


def _build(
    directory: str | os.PathLike[str] | None,
    names: frozenset[str] | None,
    slow: int | None,
) -> bytes:
    try:
        snapshot = read_directory(
            directory, slow=True if slow is None else slow, names=names
        )
        if names is not None or slow is not None:
            snapshot = filtered(snapshot, names, slow)
        return snapshot_json_text(snapshot).encode("ascii")
    except MmstatsError as exc:
        reason = str(exc)
    except Exception as exc:  # the page must always get an answer
        log.exception("mmstats could not read %r for the page", directory)
        reason = f"internal error: {exc!r}"
    return dumps(_error_document(directory, reason), indent=None).encode("ascii")


def _error_document(
    directory: str | os.PathLike[str] | None, reason: str
) -> dict[str, Any]:
    """Return the document of a directory that could not be read: the same
    fields, empty, and the reason in ``problems`` and ``error``."""
    return {
        "schema": SCHEMA_VERSION,
        "directory": os.fspath(directory) if directory is not None else "",
        "read_at": time.time(),
        "workers": [],
        "bad_files": [],
        "problems": [reason],
        "archive": archive_to_json(Archive()),
        "totals": [],
        "error": reason,
    }
