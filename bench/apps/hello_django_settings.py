"""Settings and URLs of a hello-world Django site, for the benchmarks.

``BENCH_MIDDLEWARE`` picks the middleware: ``none``, ``mmstats`` (our
middleware first) or ``prometheus`` (django-prometheus's pair around the
rest).  :data:`MIDDLEWARE_SETS` lets one process build all three handlers.
"""

from __future__ import annotations

import os

from django.http import HttpRequest, HttpResponse
from django.urls import path

BASE_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
MIDDLEWARE_SETS = {
    "none": BASE_MIDDLEWARE,
    "mmstats": ["mmstats_django.middleware.StatsMiddleware", *BASE_MIDDLEWARE],
    "prometheus": [
        "django_prometheus.middleware.PrometheusBeforeMiddleware",
        *BASE_MIDDLEWARE,
        "django_prometheus.middleware.PrometheusAfterMiddleware",
    ],
}

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "hello_django_settings"
INSTALLED_APPS = ["mmstats_django"]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
MIDDLEWARE = MIDDLEWARE_SETS[os.environ.get("BENCH_MIDDLEWARE", "none")]
MMSTATS = {"NAME": "bench-django"}


def hello(request: HttpRequest) -> HttpResponse:
    """Answer with a short text."""
    return HttpResponse("Hello, world!\n", content_type="text/plain")


urlpatterns = [path("", hello)]
