"""Database and exception hooks that feed the current request's record.

Queries are timed by a query execution wrapper (Django's public
``execute_wrappers`` API) added to every connection when it connects, for
every alias and thread, with no change to Django and ``DEBUG = False``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from django.core.signals import got_request_exception
from django.db import connections
from django.db.backends.signals import connection_created

from mmstats import current_request

log = logging.getLogger("mmstats.django")

_perf = time.perf_counter
_installed = False


def execute_wrapper(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
) -> Any:
    """Time one query and count it into the request being recorded."""
    request = current_request()
    if request is None:
        return execute(sql, params, many, context)
    start = _perf()
    try:
        return execute(sql, params, many, context)
    finally:
        request.add_query(_perf() - start)


def wrap_connection(connection: Any) -> None:
    """Add the query wrapper to one connection, once."""
    wrappers = connection.execute_wrappers
    if execute_wrapper not in wrappers:
        # First in the list means outermost: it times the others too.
        wrappers.insert(0, execute_wrapper)


def _on_connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    wrap_connection(connection)


def _on_exception(sender: Any, request: Any = None, **kwargs: Any) -> None:
    """Note the unhandled exception Django is turning into a 500."""
    try:
        recorded = getattr(request, "_mmstats", None)
        exc = sys.exc_info()[1]
        if recorded is not None and exc is not None:
            recorded.set_exception(exc)
    except Exception:  # a hook must never break the error page
        log.exception("mmstats could not note a request's exception")


def install() -> None:
    """Connect the hooks; safe to call more than once."""
    global _installed
    if _installed:
        return
    _installed = True
    connection_created.connect(_on_connection_created, dispatch_uid="mmstats")
    got_request_exception.connect(_on_exception, dispatch_uid="mmstats")
    for connection in connections.all(initialized_only=True):
        wrap_connection(connection)
