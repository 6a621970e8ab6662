"""The ``mmstats_django`` app: checks settings and hooks signals at start-up."""

from __future__ import annotations

from django.apps import AppConfig


class MmstatsConfig(AppConfig):
    """Check ``MMSTATS`` and connect the exception and database hooks."""

    name = "mmstats_django"
    verbose_name = "mmstats"

    def ready(self) -> None:
        from . import conf, instrument

        conf.get_config()
        instrument.install()
