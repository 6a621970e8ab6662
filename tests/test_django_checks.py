"""The Django adapter's system checks: the stats middleware is there, first."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.checks import run_checks
from django.core.management import CommandError, call_command
from django.test import Client

import mmstats
from mmstats_django.middleware import StatsMiddleware
from tests.workers import ROOT

OURS = "mmstats_django.middleware.StatsMiddleware"
COMMON = "django.middleware.common.CommonMiddleware"
SECURITY = "django.middleware.security.SecurityMiddleware"
SettingsWrapper = Any  # pytest-django's settings fixture


class MyStatsMiddleware(StatsMiddleware):
    """A project's own subclass of the stats middleware."""


def ids() -> list[str]:
    """Return the ids of the mmstats checks that the settings fail."""
    return [m.id for m in run_checks() if m.id and m.id.startswith("mmstats_django.")]


def manage_py(
    tmp_path: Path, middleware: list[str], *args: str
) -> subprocess.Popen[str]:
    """Start ``python -m django ARGS`` with the test settings and ``middleware``."""
    (tmp_path / "checks_settings.py").write_text(
        "from tests.django_settings import *  # noqa: F403\n"
        f"MIDDLEWARE = {middleware!r}\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "checks_settings",
        "PYTHONPATH": os.pathsep.join([os.fspath(tmp_path), os.fspath(ROOT)]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "django", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )


class TestChecks:
    def test_middleware_first_passes(self, settings: SettingsWrapper) -> None:
        """The stats middleware as the first entry gives no warning."""
        settings.MIDDLEWARE = [OURS, SECURITY, COMMON]
        assert ids() == []

    def test_missing_middleware_is_w001(self, settings: SettingsWrapper) -> None:
        """The app installed without its middleware warns that nothing is
        recorded, and says what to add."""
        settings.MIDDLEWARE = [SECURITY, COMMON]
        err = io.StringIO()
        call_command("check", stdout=io.StringIO(), stderr=err)

        assert ids() == ["mmstats_django.W001"]
        assert "mmstats_django.W001" in err.getvalue()
        assert f"HINT: Add {OURS!r} as the first entry of MIDDLEWARE" in err.getvalue()

    def test_middleware_below_another_is_w002(self, settings: SettingsWrapper) -> None:
        """The stats middleware below another warns, and the hint says why."""
        settings.MIDDLEWARE = [SECURITY, COMMON, OURS]
        err = io.StringIO()
        call_command("check", stdout=io.StringIO(), stderr=err)

        assert ids() == ["mmstats_django.W002"]
        text = err.getvalue()
        assert f"{OURS!r} is entry 3 of MIDDLEWARE, not the first." in text
        assert "redirects of CommonMiddleware and SecurityMiddleware" in text
        assert "the 400 for a disallowed Host header" in text

    def test_subclass_counts_as_the_middleware(self, settings: SettingsWrapper) -> None:
        """A subclass of StatsMiddleware is found by its dotted path."""
        subclass = f"{__name__}.MyStatsMiddleware"
        settings.MIDDLEWARE = [subclass, COMMON]
        assert ids() == []
        settings.MIDDLEWARE = [COMMON, subclass]
        assert ids() == ["mmstats_django.W002"]

    def test_entries_that_do_not_import_are_tolerated(
        self, settings: SettingsWrapper
    ) -> None:
        """An entry that cannot be imported is not ours; the check runs on."""
        settings.MIDDLEWARE = ["no_such_module.Middleware", "os.path.nothing"]
        assert ids() == ["mmstats_django.W001"]
        settings.MIDDLEWARE = ["no_such_module.Middleware", OURS]
        assert ids() == ["mmstats_django.W002"]

    @pytest.mark.parametrize(
        ("middleware", "silenced"),
        [([COMMON], "mmstats_django.W001"), ([COMMON, OURS], "mmstats_django.W002")],
    )
    def test_warnings_can_be_silenced(
        self, settings: SettingsWrapper, middleware: list[str], silenced: str
    ) -> None:
        """SILENCED_SYSTEM_CHECKS silences either warning as usual."""
        settings.MIDDLEWARE = middleware
        settings.SILENCED_SYSTEM_CHECKS = [silenced]
        out, err = io.StringIO(), io.StringIO()
        call_command("check", stdout=out, stderr=err)

        assert "mmstats_django" not in out.getvalue() + err.getvalue()
        assert "no issues (1 silenced)" in out.getvalue()

    def test_disabled_stats_need_no_middleware(self, settings: SettingsWrapper) -> None:
        """With MMSTATS['ENABLED'] False a missing middleware is intended."""
        settings.MMSTATS = {"ENABLED": False}
        settings.MIDDLEWARE = [COMMON]
        assert ids() == []

    def test_manage_py_check_shows_the_warning(self, tmp_path: Path) -> None:
        """``manage.py check`` in a fresh process shows W002 and succeeds."""
        process = manage_py(tmp_path, [COMMON, OURS], "check")
        out, err = process.communicate(timeout=120)

        assert process.returncode == 0, err
        assert "(mmstats_django.W002)" in err
        assert "1 issue" in out + err

    def test_runserver_shows_the_warning(self, tmp_path: Path) -> None:
        """``runserver`` shows W001 before it serves."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        process = manage_py(
            tmp_path, [COMMON], "runserver", "--noreload", f"127.0.0.1:{port}"
        )
        try:
            deadline = time.monotonic() + 60
            lines: list[str] = []
            assert process.stderr is not None
            while time.monotonic() < deadline:
                line = process.stderr.readline()
                if not line:
                    break
                lines.append(line)
                if "mmstats_django.W001" in line:
                    break
        finally:
            process.terminate()
            process.communicate(timeout=30)

        assert any("(mmstats_django.W001)" in line for line in lines), lines


class TestWhyFirst:
    """What W002's hint says: responses made above the middleware."""

    @pytest.fixture
    def stats(self, settings: SettingsWrapper, stats_dir: Path) -> Path:
        settings.MMSTATS = {"DIR": os.fspath(stats_dir), "NAME": "checks"}
        return stats_dir

    def responses(self, stats: Path) -> dict[str, int]:
        snapshot = mmstats.read_directory(stats)
        [worker] = [w for w in snapshot.workers if w.pid == os.getpid()]
        return {
            s.labels["class"]: s.value for s in worker.series if s.name == "responses"
        }

    @pytest.mark.parametrize(
        ("middleware", "expected"),
        [([OURS, COMMON], {"3xx": 1, "4xx": 1}), ([COMMON, OURS], {"4xx": 1})],
    )
    def test_responses_of_common_middleware(
        self,
        stats: Path,
        settings: SettingsWrapper,
        middleware: list[str],
        expected: dict[str, int],
    ) -> None:
        """First, the middleware counts CommonMiddleware's 301 and the 400 for
        a bad Host; below it, the 301 is counted as the 404 it replaced and
        the 400 is not counted."""
        settings.MIDDLEWARE = middleware
        client = Client(raise_request_exception=False)

        assert client.get("/ok").status_code == 301
        assert client.get("/ok/", HTTP_HOST="evil.example").status_code == 400
        assert self.responses(stats) == expected


def test_missing_directory_error_points_at_middleware(
    settings: SettingsWrapper, tmp_path: Path
) -> None:
    """``manage.py mmstats show`` on a missing directory says, in its one
    line, to check that the middleware is in MIDDLEWARE."""
    settings.MMSTATS = {"DIR": os.fspath(tmp_path / "missing")}
    with pytest.raises(CommandError) as missing:
        call_command("mmstats", "show", stdout=io.StringIO(), stderr=io.StringIO())

    message = str(missing.value)
    assert "\n" not in message
    assert "does not exist; workers create it when they record their first " in message
    assert f"(check that {OURS!r} is in MIDDLEWARE);" in message
