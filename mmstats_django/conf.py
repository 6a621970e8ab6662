"""The ``MMSTATS`` settings dict, read and checked once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from mmstats._writer import DIRECTORY_RULE, is_directory

KNOWN = (
    "DIR",
    "NAME",
    "SLOW_REQUEST_SECONDS",
    "SLOW_LOG_SIZE",
    "LABEL_LIMIT",
    "ENABLED",
)


@dataclass(frozen=True)
class Config:
    """Checked values of ``settings.MMSTATS``."""

    directory: str | None
    name: str | None
    slow_seconds: float
    slow_log_size: int
    label_limit: int
    enabled: bool


def _fail(key: str, value: Any, rule: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(
        f"MMSTATS[{key!r}] must be {rule}, not {value!r}; fix it in your settings."
    )


def get_config() -> Config:
    """Return the checked ``MMSTATS`` settings.

    :raises ImproperlyConfigured: a key is unknown or a value is bad; the
        message names the setting.
    """
    raw = getattr(settings, "MMSTATS", None)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ImproperlyConfigured(
            f"MMSTATS must be a dict, not {raw!r}; fix it in your settings."
        )
    unknown = sorted(set(raw) - set(KNOWN))
    if unknown:
        raise ImproperlyConfigured(
            f"Unknown MMSTATS setting {unknown[0]!r}; known settings are "
            f"{', '.join(KNOWN)}."
        )

    directory = raw.get("DIR")
    if directory is not None and not is_directory(directory):
        raise _fail("DIR", directory, DIRECTORY_RULE)
    name = raw.get("NAME")
    if name is not None and (not isinstance(name, str) or not name):
        raise _fail("NAME", name, "a non-empty str")
    slow = raw.get("SLOW_REQUEST_SECONDS", 1.0)
    # "not slow >= 0" refuses NaN too, with which no request would be slow.
    if isinstance(slow, bool) or not isinstance(slow, int | float) or not slow >= 0:
        raise _fail("SLOW_REQUEST_SECONDS", slow, "a number >= 0")
    size = raw.get("SLOW_LOG_SIZE", 256)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 100_000:
        raise _fail("SLOW_LOG_SIZE", size, "an int from 1 to 100000")
    limit = raw.get("LABEL_LIMIT", 100)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise _fail("LABEL_LIMIT", limit, "an int >= 1")
    enabled = raw.get("ENABLED", True)
    if not isinstance(enabled, bool):
        raise _fail("ENABLED", enabled, "True or False")

    return Config(
        directory=os.fspath(directory) if directory is not None else None,
        name=name,
        slow_seconds=float(slow),
        slow_log_size=size,
        label_limit=limit,
        enabled=enabled,
    )
