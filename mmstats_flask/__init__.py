"""Flask extension that records every request into the worker's stats file.

::

    from mmstats_flask import MmStats
    MmStats(app)            # or: stats = MmStats(); stats.init_app(app)

Config keys: ``MMSTATS_DIR``, ``MMSTATS_NAME``,
``MMSTATS_SLOW_REQUEST_SECONDS``, ``MMSTATS_SLOW_LOG_SIZE``,
``MMSTATS_LABEL_LIMIT`` and ``MMSTATS_ENABLED``; any other ``MMSTATS_`` key
is refused.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from flask import Flask, got_request_exception, request

from mmstats import RequestRecorder, current_request, resolve_directory
from mmstats._stats import broken_rule
from mmstats_wsgi import StatsMiddleware

from . import _sqlalchemy

__all__ = ["MmStats"]

log = logging.getLogger("mmstats.flask")

DEFAULTS: dict[str, Any] = {
    "MMSTATS_DIR": None,
    "MMSTATS_NAME": None,
    "MMSTATS_SLOW_REQUEST_SECONDS": 1.0,
    "MMSTATS_SLOW_LOG_SIZE": 256,
    "MMSTATS_LABEL_LIMIT": 100,
    "MMSTATS_ENABLED": True,
}

# The config keys checked by the recorder's rules (mmstats._stats.OPTION_RULES).
_OPTIONS = {
    "MMSTATS_DIR": "directory",
    "MMSTATS_NAME": "name",
    "MMSTATS_SLOW_REQUEST_SECONDS": "slow_seconds",
    "MMSTATS_SLOW_LOG_SIZE": "slow_log_size",
    "MMSTATS_LABEL_LIMIT": "label_limit",
}

# Environment variables of the command line, which a config loaded from
# the environment may hold: known, and unused by the extension.
IGNORED = ("MMSTATS_TRACEBACK",)

_recorders: dict[tuple[Any, ...], RequestRecorder] = {}


@dataclass
class _State:
    """What the extension keeps per app in ``app.extensions["mmstats"]``."""

    recorder: RequestRecorder | None
    directory: str | None


def _bad(key: str, value: Any, rule: str) -> ValueError:
    return ValueError(f"{key} must be {rule}, not {value!r}; fix it in app.config.")


def _check_keys(config: Any) -> None:
    """Refuse a ``MMSTATS_*`` key the extension does not know: a misspelt one
    would otherwise be ignored without a word."""
    for key in config:
        if not isinstance(key, str) or key in DEFAULTS or key in IGNORED:
            continue
        if key == "MMSTATS" or key.startswith("MMSTATS_"):
            raise ValueError(
                f"Unknown config key {key!r}; known MMSTATS keys are "
                f"{', '.join(DEFAULTS)}; fix it in app.config."
            )


def _recorder(
    directory: str | None, name: str | None, slow: float, size: int, limit: int
) -> RequestRecorder:
    """Return the process's recorder for these settings, shared by apps.

    Apps with the same settings share one recorder, so a worker file has one
    slow ring and one set of request slots however many apps feed it.
    """
    key = (
        resolve_directory(directory)[0],
        name or os.environ.get("MMSTATS_NAME"),
        slow,
        size,
        limit,
    )
    recorder = _recorders.get(key)
    if recorder is None:
        recorder = _recorders.setdefault(
            key,
            RequestRecorder(
                directory,
                name,
                slow_seconds=slow,
                slow_log_size=size,
                label_limit=limit,
                directory_source="app.config['MMSTATS_DIR']",
            ),
        )
    return recorder


class MmStats:
    """Record requests of a Flask app: works with app factories and many apps."""

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Wrap ``app.wsgi_app`` and connect the view and exception hooks.

        :raises ValueError: a ``MMSTATS_*`` config key is unknown or its
            value is bad.
        :raises RuntimeError: the extension is already set up on ``app``.
        """
        if "mmstats" in app.extensions:
            raise RuntimeError(
                f"MmStats is already set up on app {app.name!r}; call init_app "
                "once per app."
            )
        _check_keys(app.config)
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        config = app.config
        for key, option in _OPTIONS.items():
            rule = broken_rule(option, config[key])
            if rule is not None:
                raise _bad(key, config[key], rule)
        directory = config["MMSTATS_DIR"]
        directory = os.fspath(directory) if directory is not None else None
        name = config["MMSTATS_NAME"]
        slow = config["MMSTATS_SLOW_REQUEST_SECONDS"]
        size = config["MMSTATS_SLOW_LOG_SIZE"]
        limit = config["MMSTATS_LABEL_LIMIT"]
        enabled = config["MMSTATS_ENABLED"]
        if not isinstance(enabled, bool):
            raise _bad("MMSTATS_ENABLED", enabled, "True or False")

        from .cli import mmstats_command

        app.cli.add_command(mmstats_command)
        if not enabled:
            app.extensions["mmstats"] = _State(None, directory)
            return

        recorder = _recorder(directory, name, float(slow), size, limit)
        app.extensions["mmstats"] = _State(recorder, directory)
        # Outermost: status and time include every hook and error handler.
        app.wsgi_app = StatsMiddleware(app.wsgi_app, recorder=recorder)  # type: ignore[method-assign]
        # A URL value preprocessor gets the endpoint before any before_request
        # hook runs, for less than a request_started receiver costs.
        app.url_value_preprocessor(_name_view)
        got_request_exception.connect(_on_exception, app, weak=False)
        _sqlalchemy.install()


def _name_view(endpoint: str | None, values: dict[str, Any] | None) -> None:
    """Name the view of the request being recorded after its endpoint."""
    if not endpoint:
        return
    try:
        recorded = current_request()
        if recorded is not None:
            recorded.set_view(endpoint)
    except Exception:
        log.exception("mmstats could not name a view")


def _on_exception(sender: Flask, exception: BaseException, **extra: Any) -> None:
    """Note the unhandled exception Flask is turning into a 500."""
    try:
        recorded = request.environ.get("mmstats.request")
        if recorded is not None:
            recorded.set_exception(exception)
    except Exception:
        log.exception("mmstats could not note a request's exception")
