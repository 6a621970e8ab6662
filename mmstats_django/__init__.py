"""Django integration: request middleware, ``manage.py mmstats`` and URLs.

Add ``"mmstats_django"`` to ``INSTALLED_APPS`` and
``"mmstats_django.middleware.StatsMiddleware"`` at the top of
``MIDDLEWARE``; settings live in one optional ``MMSTATS`` dict.
"""
