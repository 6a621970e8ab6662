"""SQLAlchemy query timing, when SQLAlchemy is installed."""

from __future__ import annotations

import logging
import time
from typing import Any

from mmstats import current_request

log = logging.getLogger("mmstats.flask")

_perf = time.perf_counter
_installed = False
_ATTR = "_mmstats_started"


def _before(
    conn: Any, cursor: Any, statement: Any, params: Any, context: Any, many: bool
) -> None:
    if context is not None and current_request() is not None:
        setattr(context, _ATTR, _perf())


def _after(
    conn: Any, cursor: Any, statement: Any, params: Any, context: Any, many: bool
) -> None:
    started = getattr(context, _ATTR, None)
    request = current_request()
    if started is not None and request is not None:
        request.add_query(_perf() - started)


def _error(exception_context: Any) -> None:
    context = exception_context.execution_context
    started = getattr(context, _ATTR, None)
    request = current_request()
    if started is not None and request is not None:
        request.add_query(_perf() - started)  # a failed query is a query too


def install() -> bool:
    """Listen to every SQLAlchemy engine; False when SQLAlchemy is absent."""
    global _installed
    if _installed:
        return True
    try:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine
    except ImportError:
        return False
    event.listen(Engine, "before_cursor_execute", _before)
    event.listen(Engine, "after_cursor_execute", _after)
    event.listen(Engine, "handle_error", _error)
    _installed = True
    return True
