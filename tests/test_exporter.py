"""The Prometheus exposition of a directory written by real workers (#6)."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_classic
from werkzeug.test import Client

import mmstats
from mmstats_flask import MmStats
from mmstats_flask.blueprint import make_blueprint
from tests.system import ensure_program
from tests.workers import (
    ALIVE_REQUESTS,
    CLOSED_REQUESTS,
    HOSTILE_REQUESTS,
    HOSTILE_VIEW,
    KILLED_REQUESTS,
    Workers,
    populate,
)

ALL_REQUESTS = ALIVE_REQUESTS + KILLED_REQUESTS + CLOSED_REQUESTS + HOSTILE_REQUESTS


def samples(text: str, openmetrics: bool = False) -> dict[tuple[str, Any], float]:
    """Parse an exposition with prometheus_client: {(name, labels): value}."""
    parse = parse_openmetrics if openmetrics else parse_classic
    found: dict[tuple[str, Any], float] = {}
    for family in parse(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(found: dict[tuple[str, Any], float], name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def totals(found: dict[tuple[str, Any], float]) -> dict[tuple[str, Any], float]:
    """Keep the counter and histogram samples: the totals over all workers."""
    return {
        k: v
        for k, v in found.items()
        if k[0].endswith(("_total", "_bucket", "_count", "_sum"))
        and not k[0].endswith("_all_workers")
    }


@pytest.fixture(scope="module")
def exposed(populated: Workers) -> dict[tuple[str, Any], float]:
    return samples(mmstats.scrape(populated.directory).decode())


class TestContent:
    def test_counters_are_summed_over_all_workers(
        self, exposed: dict[tuple[str, Any], float]
    ) -> None:
        """Requests and responses by class are the exact sums of what was written."""
        assert value(exposed, "mmstats_requests_total") == len(ALL_REQUESTS)
        for cls in ("2xx", "3xx", "4xx", "5xx"):
            expected = sum(1 for r in ALL_REQUESTS if f"{r[3] // 100}xx" == cls)
            assert (
                value(exposed, "mmstats_responses_total", **{"class": cls}) == expected
            )
        assert value(exposed, "mmstats_exceptions_total", exception="ValueError") == 1

    def test_histograms_have_cumulative_buckets_and_exact_sum_and_count(
        self, exposed: dict[tuple[str, Any], float]
    ) -> None:
        """le buckets rise to +Inf, which equals _count; _sum is exact."""
        queries = sum(r[4] for r in ALL_REQUESTS)
        assert value(exposed, "mmstats_db_queries_count") == len(ALL_REQUESTS)
        assert value(exposed, "mmstats_db_queries_sum") == queries
        buckets = sorted(
            (float(dict(labels)["le"]), v)
            for (name, labels), v in exposed.items()
            if name == "mmstats_request_seconds_bucket"
        )
        counts = [v for _, v in buckets]
        assert counts == sorted(counts)
        assert buckets[-1] == (float("inf"), len(ALL_REQUESTS))
        assert 30 <= len(buckets) <= 45

    def test_le_bounds_are_exact_powers_of_two(self, stats_dir: Path) -> None:
        """The le buckets are the bounds that end each doubling: powers of two
        (a query for le="0.25" or le="4" works), and a value equal to a bound
        is counted under it, as le means."""
        stats = mmstats.Stats(stats_dir, "bounds")
        seconds = stats.histogram("took_seconds", "t")
        for v in (0.25, 0.25, 0.2500001, 1.0, 3.0):
            seconds.observe(v)
        rows = stats.histogram("rows", "r", unit="count")
        for v in (0, 1, 2, 3, 4, 5, 8):
            rows.observe(v)
        found = samples(mmstats.scrape(stats_dir).decode())

        def les(name: str) -> dict[float, float]:
            return {
                float(dict(labels)["le"]): v
                for (n, labels), v in found.items()
                if n == name + "_bucket"
            }

        took, counted = les("mmstats_took_seconds"), les("mmstats_rows")
        assert {math.log2(le) % 1 for le in took if le != math.inf} == {0.0}
        assert (
            min(took) == 2.0**-20 and max(le for le in took if le < math.inf) == 65536
        )
        assert (took[0.125], took[0.25], took[0.5], took[1.0], took[2.0]) == (
            0,
            2,
            3,
            4,
            4,
        )
        assert took[4.0] == took[math.inf] == 5
        assert [counted[le] for le in (0.5, 1, 2, 4, 8, 16)] == [1, 2, 3, 5, 7, 7]

    def test_dropped_labels_are_exported_under_their_documented_name(
        self, stats_dir: Path
    ) -> None:
        """Values past a metric's label cap are counted by mmstats' own
        ``mmstats_dropped_labels``: exported with the prefix once."""
        stats = mmstats.Stats(stats_dir, "capped", label_limit=2)
        for queue in ("a", "b", "c", "d", "e"):
            stats.counter("jobs", "Jobs", {"queue": queue}).incr()
        found = samples(mmstats.scrape(stats_dir).decode())
        assert value(found, "mmstats_dropped_labels_total", metric="jobs") == 3
        assert not [name for name, _ in found if name.startswith("mmstats_mmstats")]
        assert value(found, "mmstats_jobs_total", queue="a") == 1

    def test_names_that_would_clash_get_another_and_prometheus_takes_it_all(
        self, stats_dir: Path
    ) -> None:
        """A metric named like one of mmstats' own families (``workers``),
        or like another family's samples (a gauge ``x_total`` beside a
        counter ``x``, ``h_count`` beside a histogram ``h``, ``g_all_workers``
        beside a gauge ``g``), is exported under ``mmstats_app_...``: a name
        written by two families makes Prometheus refuse the whole scrape, as
        promtool does."""
        stats = mmstats.Stats(stats_dir, "clash")
        stats.gauge("workers", "Celery workers").set(5)
        stats.counter("x", "x").incr(2)
        stats.gauge("x_total", "x total").set(3)
        stats.histogram("h_seconds", "h").observe(0.5)
        stats.gauge("h_seconds_count", "h count").set(4)
        stats.gauge("g", "g").set(6)
        stats.gauge("g_all_workers", "g sum").set(7)
        pid = str(os.getpid())
        for openmetrics in (False, True):
            text = mmstats.scrape(stats_dir, openmetrics=openmetrics).decode()
            if not openmetrics:  # promtool reads the classic format
                checked = promtool_check(text)
                said = checked.stdout + checked.stderr
                # 3: naming advice on the names this test chose; 1: refused
                assert checked.returncode in (0, 3), said
                assert "error while linting" not in said
            found = samples(text, openmetrics)
            assert value(found, "mmstats_workers", state="alive") == 1
            assert value(found, "mmstats_app_workers", pid=pid) == 5
            assert value(found, "mmstats_x_total") == 2
            assert value(found, "mmstats_app_x_total", pid=pid) == 3
            assert value(found, "mmstats_h_seconds_count") == 1
            assert value(found, "mmstats_app_h_seconds_count", pid=pid) == 4
            assert value(found, "mmstats_g", pid=pid) == 6
            assert value(found, "mmstats_g_all_workers") == 6
            assert value(found, "mmstats_app_g_all_workers", pid=pid) == 7
            helps = [
                line.split()[2] for line in text.splitlines() if line[:6] == "# HELP"
            ]
            assert len(helps) == len(set(helps))

    def test_promtool_has_no_advice_on_the_names_mmstats_makes(
        self, populated: Workers
    ) -> None:
        """The request recorder's metrics and mmstats' own families, gauge
        sums included, pass ``promtool check metrics`` without a word."""
        text = mmstats.scrape(populated.directory).decode()
        assert "_all_workers " in text  # the sums are there to be checked
        checked = promtool_check(text)
        assert checked.returncode == 0, checked.stdout + checked.stderr

    def test_gauges_are_per_live_worker_and_summed(
        self, populated: Workers, exposed: dict[tuple[str, Any], float]
    ) -> None:
        """Only the live worker's gauges appear, with a pid label, and a sum."""
        alive = str(populated.pids["alive"])
        assert value(exposed, "mmstats_in_flight", pid=alive) == 1
        assert value(exposed, "mmstats_in_flight_all_workers") == 1
        pids = {
            dict(labels)["pid"]
            for (name, labels), _ in exposed.items()
            if name == "mmstats_memory_rss_bytes"
        }
        assert pids == {alive}
        # The host's load average is per worker only: a sum of it means nothing.
        assert ("mmstats_load1", frozenset({("pid", alive)})) in exposed
        assert not [name for name, _ in exposed if name == "mmstats_load1_all_workers"]

    def test_workers_by_state_and_unreadable_files(
        self, exposed: dict[tuple[str, Any], float]
    ) -> None:
        """Workers are counted by state; no file was skipped."""
        states = {"alive": 1, "dead": 1, "closed": 2, "unknown": 0}
        for state, n in states.items():
            assert value(exposed, "mmstats_workers", state=state) == n
        assert value(exposed, "mmstats_unreadable_files") == 0
        assert value(exposed, "mmstats_scrape_error") == 0

    def test_hostile_label_values_survive_escaping(
        self, exposed: dict[tuple[str, Any], float]
    ) -> None:
        """A view with quotes, newline, escapes and markup parses back intact."""
        views = {
            dict(labels)["view"]
            for (name, labels), _ in exposed.items()
            if name == "mmstats_view_requests_total"
        }
        assert HOSTILE_VIEW in views
        assert value(exposed, "mmstats_view_requests_total", view=HOSTILE_VIEW) == 1

    def test_openmetrics_parses_to_the_same_values(self, populated: Workers) -> None:
        """The OpenMetrics form has the same samples and ends with # EOF."""
        text = mmstats.scrape(populated.directory, openmetrics=True).decode()
        assert text.endswith("# EOF\n")
        assert "# TYPE mmstats_requests counter" in text
        found = samples(text, openmetrics=True)
        assert value(found, "mmstats_requests_total") == len(ALL_REQUESTS)
        assert value(found, "mmstats_db_queries_count") == len(ALL_REQUESTS)


class TestCounterNeverGoesBackwards:
    def test_clean_keeps_every_counter_and_histogram(
        self, stats_dir: Path, worker_script: Path
    ) -> None:
        """Folding dead and closed workers into the archive changes no total."""
        workers = populate(stats_dir, worker_script, hostile=False)
        try:
            before = samples(mmstats.scrape(stats_dir).decode())
            result = mmstats.clean(os.fspath(stats_dir))
            assert len(result.folded) == 2
            after = samples(mmstats.scrape(stats_dir).decode())
        finally:
            workers.stop()
        states = ("mmstats_workers", "mmstats_archived_workers")
        kept = [k for k in before if not k[0].startswith(states)]
        kept = [
            k for k in kept if "pid" not in dict(k[1]) and "_all_workers" not in k[0]
        ]
        changed = {
            k: (before[k], after.get(k)) for k in kept if before[k] != after.get(k)
        }
        assert changed == {}
        assert value(after, "mmstats_archived_workers") == 2
        # The killed worker, serving one request, still counts once clean
        # has folded it: deaths are counters too.
        assert value(before, "mmstats_worker_deaths_total") == 1
        assert value(after, "mmstats_worker_deaths_total") == 1
        assert value(after, "mmstats_requests_cut_by_deaths_total") == 1
        archive = mmstats.read_directory(stats_dir).archive
        assert (archive.died, archive.died_serving) == (1, 1)


class TestHttp:
    def test_metrics_app_negotiates_the_format(self, populated: Workers) -> None:
        """The classic format by default, OpenMetrics when Accept asks for it."""
        client = Client(mmstats.MetricsApp(populated.directory))
        classic = client.get("/metrics")
        assert classic.status_code == 200
        assert classic.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        om = client.get(
            "/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        )
        assert om.headers["Content-Type"].startswith("application/openmetrics-text")
        assert om.get_data(as_text=True).endswith("# EOF\n")

    @pytest.mark.parametrize("case", ["missing", "file", "bad-files-only"])
    def test_broken_directory_is_a_200_with_an_error_gauge(
        self, tmp_path: Path, case: str
    ) -> None:
        """A missing, wrong or rotten directory still answers 200, with a reason."""
        directory = tmp_path / "stats"
        if case == "file":
            directory.write_text("not a directory")
        elif case == "bad-files-only":
            directory.mkdir()
            (directory / "x.1.a.mmstats").write_bytes(b"garbage" * 1000)
        response = Client(mmstats.MetricsApp(directory)).get("/metrics")
        assert response.status_code == 200
        found = samples(response.get_data(as_text=True))
        if case == "bad-files-only":
            assert value(found, "mmstats_unreadable_files") == 1
            assert value(found, "mmstats_scrape_error") == 0
        else:
            [(key, v)] = [
                (k, v) for k, v in found.items() if k[0] == "mmstats_scrape_error"
            ]
            assert v == 1
            assert os.fspath(directory) in dict(key[1])["error"]

    def test_serve_binds_loopback_by_default(self) -> None:
        """mmstats serve listens on 127.0.0.1 unless --listen says otherwise."""
        from mmstats._cli import cli

        listen = next(p for p in cli.commands["serve"].params if p.name == "listen")
        assert listen.default == "127.0.0.1:9301"

    @pytest.mark.parametrize(
        "bad", ["nonsense", "127.0.0.1:", ":9301", "[]:9301", "h:99999"]
    )
    def test_serve_refuses_an_address_that_is_not_host_port(
        self, stats_dir: Path, bad: str
    ) -> None:
        """A bad --listen is a usage error (2) whose last line names the
        option once and shows the form it wants."""
        result = serve(stats_dir, "--listen", bad)
        assert result.returncode == 2
        last = result.stderr.strip().splitlines()[-1]
        assert last == (
            "Error: Invalid value for --listen: the address must be HOST:PORT "
            f"such as 127.0.0.1:9301, not {bad!r}"
        )

    def test_serve_on_a_busy_port_says_so_in_one_line(self, stats_dir: Path) -> None:
        """An address already in use is a usage error (2) told in one line,
        without click's usage text."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            listen = f"127.0.0.1:{taken.getsockname()[1]}"
            result = serve(stats_dir, "--listen", listen)
        assert result.returncode == 2
        assert result.stderr.splitlines() == [
            f"Error: cannot listen on {listen}: Address already in use; pass"
            " --listen HOST:PORT with a free port."
        ]

    def test_serve_on_an_address_not_of_this_machine_says_so(
        self, stats_dir: Path
    ) -> None:
        """Binding an address this machine does not have (TEST-NET-1: no
        packet leaves) is not a busy port, and the hint does not say it is."""
        result = serve(stats_dir, "--listen", "192.0.2.1:0")
        assert result.returncode == 2
        assert result.stderr.splitlines() == [
            "Error: cannot listen on 192.0.2.1:0: Cannot assign requested address;"
            " pass --listen HOST:PORT with an address of this machine."
        ]

    @pytest.mark.parametrize("bad", ["my-app_", "1x_", "a b_", "é_"])
    def test_serve_refuses_a_prefix_that_cannot_start_a_metric_name(
        self, stats_dir: Path, bad: str
    ) -> None:
        """A --prefix that mmstats' own families (workers, scrape_error)
        would carry into invalid names, failing every scrape, is a usage
        error; MetricsApp refuses it with a ValueError."""
        result = serve(stats_dir, "--listen", "127.0.0.1:0", "--prefix", bad)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines()[-1] == (
            "Error: Invalid value for --prefix: the prefix must be letters, "
            "digits, '_' and ':', not starting with a digit, such as "
            f"'mmstats_', not {bad!r}"
        )
        with pytest.raises(ValueError, match="the prefix must be"):
            mmstats.MetricsApp(stats_dir, prefix=bad)

    @pytest.mark.parametrize("good", ["", "app:", "_x1_"])
    def test_every_name_of_a_valid_prefix_parses(
        self, stats_dir: Path, good: str
    ) -> None:
        """With any prefix allowed, the whole exposition parses."""
        body = mmstats.scrape(stats_dir, prefix=good).decode()
        names = {f.name for f in parse_classic(body)}
        assert f"{good}scrape_error" in names


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    """Run ``promtool check metrics`` on an exposition (classic format)."""
    promtool = ensure_program("promtool", "prometheus")
    return subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )


def serve(stats_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``mmstats serve`` on the directory (for its errors: it serves until
    interrupted otherwise)."""
    return subprocess.run(
        [sys.executable, "-m", "mmstats._cli", "serve", "--dir", stats_dir, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


class TestInApp:
    @pytest.fixture
    def flask_app(self, stats_dir: Path) -> Iterator[Flask]:
        app = Flask("exporter_test")
        app.config.update(MMSTATS_DIR=os.fspath(stats_dir), MMSTATS_NAME="flaskexp")
        MmStats(app)
        app.register_blueprint(make_blueprint(), url_prefix="/stats")

        @app.route("/hello")
        def hello() -> str:
            return "hi"

        yield app

    def test_flask_blueprint_scrapes_show_the_same_totals(
        self, flask_app: Flask
    ) -> None:
        """Scrapes are not counted, so repeated scrapes show the same totals."""
        client = flask_app.test_client()
        for _ in range(3):
            with client.get("/hello") as response:
                assert response.status_code == 200
        scrapes = []
        for _ in range(3):
            with client.get("/stats/metrics") as response:
                scrapes.append(totals(samples(response.get_data(as_text=True))))
        assert scrapes[0] == scrapes[1] == scrapes[2]
        assert scrapes[0][("mmstats_requests_total", frozenset())] == 3

    def test_django_urlconf_serves_the_directory(
        self, client: Any, settings: Any
    ) -> None:
        """mmstats_django.urls serves metrics of the configured directory."""
        client.get("/ok/")
        first = client.get("/stats/metrics")
        second = client.get(
            "/stats/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0"
        )
        assert first.status_code == second.status_code == 200
        classic = samples(first.content.decode())
        om = samples(second.content.decode(), openmetrics=True)
        assert value(classic, "mmstats_requests_total") >= 1
        assert value(classic, "mmstats_requests_total") == value(
            om, "mmstats_requests_total"
        )
