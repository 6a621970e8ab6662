"""A WSGI app that writes stats at import time, for gunicorn --preload tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import mmstats
from mmstats_wsgi import StatsMiddleware

boot = mmstats.Stats(name="preload")
boot.counter("imports", "Imports of the app module").incr()  # in the master


def hello(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    boot.counter("hellos").incr()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


app = StatsMiddleware(hello, name="preload")
