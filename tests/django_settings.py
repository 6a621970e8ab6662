"""Django settings for the adapter tests (pytest-django)."""

from __future__ import annotations

import os
import tempfile

SECRET_KEY = "mmstats-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
USE_TZ = True
ROOT_URLCONF = "tests.django_urls"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "mmstats_django",
]
MIDDLEWARE = [
    "mmstats_django.middleware.StatsMiddleware",
    "django.middleware.common.CommonMiddleware",
]
_db_dir = tempfile.mkdtemp(prefix="mmstats-django-db-")
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(_db_dir, "default.sqlite3"),
    },
    "other": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(_db_dir, "other.sqlite3"),
    },
}
MMSTATS = {
    "DIR": os.environ.get("MMSTATS_TEST_DJANGO_DIR")
    or tempfile.mkdtemp(prefix="mmstats-django-stats-"),
    "NAME": "djangotests",
    "SLOW_REQUEST_SECONDS": 0,
}
