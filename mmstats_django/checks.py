"""System checks: the stats middleware is in ``MIDDLEWARE``, and first.

Registered by the app config, so ``manage.py check`` and ``runserver`` show
them; silence one as usual with ``SILENCED_SYSTEM_CHECKS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage
from django.core.checks import Warning as CheckWarning
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from . import conf
from .middleware import StatsMiddleware

MIDDLEWARE_PATH = "mmstats_django.middleware.StatsMiddleware"


def is_stats_middleware(entry: Any) -> bool:
    """Return whether a ``MIDDLEWARE`` entry is the stats middleware.

    A subclass counts too; an entry that cannot be imported does not (Django
    reports it when it loads the middleware).
    """
    if entry == MIDDLEWARE_PATH:
        return True
    if not isinstance(entry, str):
        return False
    try:
        middleware = import_string(entry)
    except Exception:  # any error of someone else's module, for Django to report
        return False
    return isinstance(middleware, type) and issubclass(middleware, StatsMiddleware)


def check_middleware(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Warn when the stats middleware is missing from ``MIDDLEWARE`` or not first.

    Nothing is said when ``MMSTATS['ENABLED']`` is False, nor about a bad
    ``MMSTATS``, which fails start-up on its own.
    """
    try:
        if not conf.get_config().enabled:
            return []
    except ImproperlyConfigured:
        return []

    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    positions = [i for i, entry in enumerate(middleware) if is_stats_middleware(entry)]
    if not positions:
        return [
            CheckWarning(
                "'mmstats_django' is in INSTALLED_APPS but its middleware is not "
                "in MIDDLEWARE, so no request is recorded.",
                hint=f"Add {MIDDLEWARE_PATH!r} as the first entry of MIDDLEWARE, "
                "or set MMSTATS['ENABLED'] = False.",
                id="mmstats_django.W001",
            )
        ]
    first = positions[0]
    if first != 0:
        return [
            CheckWarning(
                f"{middleware[first]!r} is entry {first + 1} of MIDDLEWARE, not "
                "the first.",
                hint="Move it to the top of MIDDLEWARE: a response made by a "
                "middleware above it, such as the redirects of CommonMiddleware "
                "and SecurityMiddleware or the 400 for a disallowed Host header, "
                "is not counted or is counted with the wrong status.",
                id="mmstats_django.W002",
            )
        ]
    return []
