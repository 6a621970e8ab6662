"""A hello-world WSGI app, bare or wrapped in mmstats' middleware.

``BENCH_MIDDLEWARE=mmstats`` in the environment wraps the app served as
``hello_wsgi:app``; :func:`make_app` builds either kind in-process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

BODY = b"Hello, world!\n"


def hello(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    """Answer every request with a short text."""
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))],
    )
    return [BODY]


def make_app(middleware: str = "none") -> Callable[..., Iterable[bytes]]:
    """Return the hello app, wrapped when ``middleware`` is ``mmstats``."""
    if middleware == "none":
        return hello
    if middleware == "mmstats":
        from mmstats_wsgi import StatsMiddleware

        return StatsMiddleware(hello, name="bench-wsgi")
    raise ValueError(
        f"BENCH_MIDDLEWARE for WSGI is none or mmstats, not {middleware!r}"
    )


app = make_app(os.environ.get("BENCH_MIDDLEWARE", "none"))
