"""The ``MMSTATS`` settings dict, read and checked once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from mmstats._stats import broken_rule

KNOWN = (
    "DIR",
    "NAME",
    "SLOW_REQUEST_SECONDS",
    "SLOW_LOG_SIZE",
    "LABEL_LIMIT",
    "ENABLED",
)

# The settings checked by the recorder's rules (mmstats._stats.OPTION_RULES),
# with their defaults.
_OPTIONS = {
    "DIR": "directory",
    "NAME": "name",
    "SLOW_REQUEST_SECONDS": "slow_seconds",
    "SLOW_LOG_SIZE": "slow_log_size",
    "LABEL_LIMIT": "label_limit",
}
_DEFAULTS = {
    "DIR": None,
    "NAME": None,
    "SLOW_REQUEST_SECONDS": 1.0,
    "SLOW_LOG_SIZE": 256,
    "LABEL_LIMIT": 100,
}


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

    values = {key: raw.get(key, default) for key, default in _DEFAULTS.items()}
    for key, option in _OPTIONS.items():
        rule = broken_rule(option, values[key])
        if rule is not None:
            raise _fail(key, values[key], rule)
    directory, name = values["DIR"], values["NAME"]
    slow, size, limit = (
        values[key] for key in ("SLOW_REQUEST_SECONDS", "SLOW_LOG_SIZE", "LABEL_LIMIT")
    )
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
