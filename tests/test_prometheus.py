"""A real Prometheus scrapes ``mmstats serve`` in front of the example app (#6).

The Django example runs under gunicorn with two workers.  Prometheus (the
Debian package, installed here when absent) scrapes ``mmstats serve`` every
second, and the assertions go through its HTTP query API.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.system import ensure_program
from tests.test_exporter import samples, totals
from tests.test_gunicorn_servers import gunicorn

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "example_projects" / "django_site"
FAST, SLOW = 60, 6
SLOW_SECONDS = 0.35


def ensure_prometheus() -> str:
    """Return the prometheus binary, installing Debian's package if needed."""
    return ensure_program("prometheus", "prometheus")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(url: str, timeout: float = 30) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            get(url, timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextmanager
def running(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[None]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def migrate(tmp_path: Path) -> dict[str, str]:
    """Migrate a fresh example database; return the app's environment."""
    stats = tmp_path / "stats"
    stats.mkdir(mode=0o700)
    env = {
        "DJANGO_SITE_DB": os.fspath(tmp_path / "site.sqlite3"),
        "MMSTATS_DIR": os.fspath(stats),
        "PYTHONPATH": os.fspath(SITE),
        "DJANGO_SETTINGS_MODULE": "django_site.settings",
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"],
        cwd=SITE,
        env={**os.environ, **env},
        check=True,
        timeout=120,
    )
    return env


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = get(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}")
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def scalar(self, expr: str, at: float | None = None) -> float:
        [row] = self.query(expr, at)
        return float(row["value"][1])


def prometheus_rate(
    points: list[tuple[float, float]], start: float, end: float
) -> float:
    """Prometheus' extrapolated rate() of one counter series (no resets)."""
    (t0, v0), (t1, v1) = points[0], points[-1]
    sampled = t1 - t0
    average = sampled / (len(points) - 1)
    to_start, to_end = t0 - start, end - t1
    threshold = average * 1.1
    if v0 > 0 and v1 - v0 > 0:
        to_start = min(to_start, sampled * (v0 / (v1 - v0)))
    extended = sampled
    extended += to_start if to_start < threshold else average / 2
    extended += to_end if to_end < threshold else average / 2
    return (v1 - v0) * (extended / sampled) / (end - start)


@pytest.mark.stress
def test_prometheus_reads_totals_rates_and_quantiles(tmp_path: Path) -> None:
    """Prometheus' total, rate() and histogram_quantile() match what was sent."""
    binary = ensure_prometheus()
    env = migrate(tmp_path)
    serve_port, prom_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: mmstats\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{serve_port}']\n"
    )
    serve = [
        sys.executable,
        "-m",
        "mmstats._cli",
        "serve",
        "--dir",
        env["MMSTATS_DIR"],
        "--listen",
        f"127.0.0.1:{serve_port}",
    ]
    prometheus = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    ]
    with (
        gunicorn("django_site.wsgi", tmp_path, env, f"--chdir={SITE}") as base,
        running(serve, tmp_path / "serve.log"),
        running(prometheus, tmp_path / "prometheus.log"),
    ):
        wait_for(f"http://127.0.0.1:{serve_port}/metrics")
        wait_for(f"http://127.0.0.1:{prom_port}/-/ready")
        prom = Prometheus(f"http://127.0.0.1:{prom_port}")

        get(f"{base}/fast/")  # the series appears before the burst
        deadline = time.monotonic() + 30
        while prom.query("mmstats_requests_total") == []:
            assert time.monotonic() < deadline, "Prometheus never scraped mmstats"
            time.sleep(0.5)
        time.sleep(2)
        slow = f"{base}/slow/?s={SLOW_SECONDS}"
        slow_count = 'mmstats_view_seconds_count{view="shop.views.slow"}'
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(get, [f"{base}/fast/"] * (FAST - 1)))
            # Half the slow requests, scraped, then the rest: the slow
            # view's series must grow within the window for rate() to see
            # it (all at once between two scrapes would make it flat).
            list(pool.map(get, [slow] * (SLOW // 2)))
            deadline = time.monotonic() + 30
            while prom.query(slow_count) == []:
                assert time.monotonic() < deadline, "Prometheus never saw /slow/"
                time.sleep(0.5)
            list(pool.map(get, [slow] * (SLOW - SLOW // 2)))
        expected = FAST + SLOW
        deadline = time.monotonic() + 30
        while (
            prom.query("mmstats_requests_total") == []
            or prom.scalar("mmstats_requests_total") < expected
        ):
            assert time.monotonic() < deadline, "Prometheus never saw every request"
            time.sleep(0.5)
        time.sleep(2)
        at = round(time.time(), 3)

        assert prom.scalar("mmstats_requests_total", at) == expected
        assert prom.scalar('mmstats_responses_total{class="2xx"}', at) == expected

        window = 60.0
        [raw] = prom.query(f"mmstats_requests_total[{int(window)}s]", at)
        points = [(float(t), float(v)) for t, v in raw["values"]]
        assert points[-1][1] - points[0][1] == expected - 1
        rate = prom.scalar(f"rate(mmstats_requests_total[{int(window)}s])", at)
        assert rate == pytest.approx(prometheus_rate(points, at - window, at), rel=1e-6)
        assert rate > 0

        view = 'view="shop.views.slow"'
        q50 = prom.scalar(
            "histogram_quantile(0.5, sum by (le) "
            f"(rate(mmstats_view_seconds_bucket{{{view}}}[{int(window)}s])))",
            at,
        )
        bounds = sorted(
            float(row["metric"]["le"])
            for row in prom.query(f"mmstats_view_seconds_bucket{{{view}}}", at)
        )
        upper = next(b for b in bounds if b >= SLOW_SECONDS)
        lower = bounds[bounds.index(upper) - 1]
        # All slow requests fall in one bucket: the median is its middle.
        assert q50 == pytest.approx(lower + (upper - lower) / 2, rel=1e-9)
        assert lower < SLOW_SECONDS <= q50 * 2


def test_in_app_endpoint_shows_the_same_totals_from_every_worker(
    tmp_path: Path,
) -> None:
    """Under gunicorn with 2 workers, every in-app scrape gives the same totals."""
    env = migrate(tmp_path)
    with gunicorn("django_site.wsgi", tmp_path, env, f"--chdir={SITE}") as base:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(get, [f"{base}/fast/"] * 40))
        with ThreadPoolExecutor(4) as pool:
            bodies = list(pool.map(get, [f"{base}/stats/metrics"] * 12))
    seen = [totals(samples(body.decode())) for body in bodies]
    assert all(s == seen[0] for s in seen)
    assert seen[0][("mmstats_requests_total", frozenset())] == 40
    assert not math.isnan(seen[0][("mmstats_request_seconds_count", frozenset())])
