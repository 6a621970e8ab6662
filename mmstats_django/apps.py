"""The ``mmstats_django`` app: checks settings and hooks signals at start-up."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks


class MmstatsConfig(AppConfig):
    """Check ``MMSTATS``, register the system checks and connect the hooks."""

    name = "mmstats_django"
    verbose_name = "mmstats"

    def ready(self) -> None:
        from . import conf, instrument
        from .checks import check_middleware

        conf.get_config()
        checks.register(check_middleware)
        instrument.install()
