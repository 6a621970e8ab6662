"""The live page in headless Chromium, in front of the example app (#8).

The Django example runs under gunicorn with two workers; ``mmstats serve``
serves the page, and the app serves it too at /stats/.  Chromium comes from
Debian's ``chromium`` and ``chromium-driver`` packages (installed here when
absent, as root) and is driven by Playwright.  A screenshot is saved in
test-artifacts/.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import mmstats
from tests.system import ensure_program
from tests.test_gunicorn_servers import gunicorn, serve_from_both_workers
from tests.test_prometheus import SITE, free_port, migrate, running, wait_for
from tests.workers import (
    HOSTILE_ARG,
    HOSTILE_PATH,
    HOSTILE_REQUESTS,
    HOSTILE_VIEW,
    Workers,
    kill,
    start_worker,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--no-pings",
]
HOSTILE_404 = "/not-found/" + urllib.parse.quote("<script>alert(1)</script>")


def ensure_chromium() -> str:
    """Return Chromium, installing Debian's packages if needed."""
    return ensure_program("chromium", "chromium", "chromium-driver")


def status_of(url: str) -> int:
    """GET ``url`` without a proxy; return the status, errors included."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=30) as response:
            response.read()
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def eventually(check: Callable[[], Any], seconds: float = 20, what: str = "") -> Any:
    """Call ``check`` until it returns something true; return that."""
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"gave up waiting for {what or check}"
        time.sleep(0.25)


class Browser:
    """One page in Chromium that records console errors and every request."""

    def __init__(self, context: Any) -> None:
        self.page = context.new_page()
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror {exc}"))
        self.page.on("request", lambda request: self.urls.append(request.url))
        self.page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.errors.append(f"dialog {dialog.type}: {dialog.message}")
        dialog.dismiss()

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"{message.type}: {message.text}")

    def js(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def texts(self, selector: str) -> list[str]:
        return [str(t) for t in self.page.locator(selector).all_text_contents()]

    def live_pids(self) -> set[int]:
        found = self.js(
            "[...document.querySelectorAll('#grid .cell')]"
            ".filter(c => c.dataset.state !== 'dead').map(c => c.dataset.pid)"
        )
        return {int(pid) for pid in found}

    def total_requests(self) -> int:
        return int(self.page.locator("#total-requests").inner_text().replace(",", ""))

    def slow_rows(self) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = self.js(
            """() => {
              const keys = [...document.querySelectorAll('#slow thead th')]
                .map(th => th.dataset.key);
              return [...document.querySelectorAll('#slow tbody tr')].map(tr =>
                Object.fromEntries([...tr.cells].map((td, i) =>
                  [keys[i], td.textContent])));
            }"""
        )
        return rows


@pytest.fixture(scope="module")
def chromium() -> Iterator[tuple[Any, str]]:
    """A Playwright instance and the Chromium binary it launches."""
    binary = ensure_chromium()
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is in the test extra"
    )
    with sync_api.sync_playwright() as playwright:
        yield playwright, binary


@pytest.fixture
def context(chromium: tuple[Any, str], tmp_path: Path) -> Iterator[Any]:
    """A browser with a fresh profile, sending nothing to the internet."""
    playwright, binary = chromium
    ctx = playwright.chromium.launch_persistent_context(
        os.fspath(tmp_path / "chromium-profile"),
        executable_path=binary,
        args=CHROMIUM_ARGS,
        headless=True,
        viewport={"width": 1400, "height": 1000},
    )
    try:
        yield ctx
    finally:
        ctx.close()


def drive(base: str, stop: threading.Event) -> None:
    """Send a mix of requests until stopped, so the charts have lines."""
    mix = ["/fast/", "/fast/", "/many-queries/?n=8", "/fast/", "/not-found/"]
    mix += ["/boom/", "/fast/", "/slow/?s=0.15", "/many-queries/?n=30", "/fast/"]
    i = 0
    while not stop.is_set():
        status_of(base + mix[i % len(mix)])
        i += 1
        time.sleep(0.04)


def test_live_page_in_chromium(
    tmp_path: Path, context: Any, worker_script: Path
) -> None:
    """The page shows both workers, what they serve, the rising request
    count, a slow request, dead workers and unreadable files, and hostile
    strings as text, without a console error; in the app at /stats/ too."""
    env = migrate(tmp_path)
    stats = Path(env["MMSTATS_DIR"])
    port = free_port()
    serve = [sys.executable, "-m", "mmstats._cli", "serve", "--dir", os.fspath(stats)]
    serve += ["--listen", f"127.0.0.1:{port}"]
    url = f"http://127.0.0.1:{port}/"
    hostile = Workers(stats, worker_script)
    with (
        gunicorn("django_site.wsgi", tmp_path, env, f"--chdir={SITE}") as base,
        running(serve, tmp_path / "serve.log"),
    ):
        try:
            check_the_page(base, url, stats, hostile, context)
        finally:
            hostile.stop()


def check_the_page(
    base: str, url: str, stats: Path, hostile: Workers, context: Any
) -> None:
    """Check the page of ``mmstats serve`` at ``url``, then the in-app one."""
    # Both workers write a file on their first request.
    serve_from_both_workers(base, "/slow/?s=0.2", stats)
    app_pids = {w.pid for w in mmstats.read_directory(stats).workers}
    # A killed worker that was serving a hostile path, and a rotten file.
    held = ("GET", HOSTILE_PATH, HOSTILE_VIEW, 1)
    killed = start_worker(
        hostile, "hostile", HOSTILE_REQUESTS, held, block=True, extra=(HOSTILE_ARG,)
    )
    kill(killed)
    (stats / "rotten.1.a.mmstats").write_bytes(b"not a stats file" * 100)
    assert status_of(base + HOSTILE_404) == 404
    wait_for(url + "metrics")

    browser = Browser(context)
    browser.page.goto(url)
    eventually(lambda: browser.live_pids() == app_pids, what="both workers")

    # The dead worker: in the grid and apart, with the reason; its
    # path is text, not markup.
    dead = browser.texts("#grid .cell.dead")
    assert len(dead) == 1 and "<script>x</script>" in dead[0]
    [gone] = browser.texts("#gone tbody tr")
    assert "killed or crashed" in gone and "<script>x</script>" in gone
    assert any("<script>x</script>" in r["path"] for r in browser.slow_rows())
    # Bidirectional overrides are escaped as the command line escapes them.
    views = [r["view"] for r in browser.slow_rows()]
    assert any("\\u202egnp.exe\\u2066\\u061c\\U000e0041" in v for v in views), views
    assert not any("\u202e" in v or "\u2066" in v for v in views)
    [bad] = browser.texts("#bad tbody tr")
    [reason] = [b.reason for b in mmstats.read_directory(stats).bad]
    assert "rotten.1.a.mmstats" in bad and reason in bad
    assert browser.js("document.querySelectorAll('body script').length") == 1

    # The request counter rises as requests are sent.
    before = browser.total_requests()
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(status_of, [base + "/fast/"] * 20)) == {200}
    eventually(lambda: browser.total_requests() >= before + 20, what="counter")

    # A request in flight is shown with its path and age; then it is
    # in the slow log, with every field.
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(status_of, base + "/slow/?s=3")
        eventually(
            lambda: any("/slow/" in t for t in browser.texts("#grid .cell.slow")),
            what="the slow request in the grid",
        )
        assert pending.result() == 200
    assert status_of(base + "/slow/?s=1.2") == 200

    def slow_row() -> dict[str, str] | None:
        rows = [r for r in browser.slow_rows() if r["path"] == "/slow/"]
        return next((r for r in rows if r["duration_seconds"][:3] == "1.2"), None)

    row = eventually(slow_row, what="the slow request in the slow log")
    assert row["method"] == "GET" and row["status"] == "200"
    assert row["view"] == "shop.views.slow"
    assert int(row["pid"]) in app_pids and row["hostname"]
    assert {"end", "start", "queries", "db_seconds", "memory_delta_bytes"} <= set(row)
    assert browser.slow_rows()[0]["path"] == "/slow/"  # newest first

    # Sorting by duration puts the longest first.
    browser.page.locator("#slow th[data-key=duration_seconds] button").click()
    first = browser.slow_rows()[0]
    assert first["path"] == "/slow/" and first["duration_seconds"][0] == "3"

    # Charts: rates by status class and percentiles from bucket deltas.
    stop = threading.Event()
    driver = threading.Thread(target=drive, args=(base, stop))
    driver.start()
    try:
        time.sleep(12)
    finally:
        stop.set()
        driver.join()
    history = browser.js("mmstatsPage.history()")
    assert any(s["rps"] and s["rps"]["2xx"] > 0 for s in history)
    assert any(s["rps"] and s["rps"]["5xx"] > 0 for s in history)
    assert any(s["p99"] and s["p50"] <= s["p99"] for s in history)
    assert any(s["qmean"] for s in history)
    assert all(set(s["rss"]) <= {str(p) for p in app_pids} for s in history)
    legend = browser.texts("#chart-rss .legend li")
    named = {int(t.split()[1]) for t in legend if t.startswith("pid ")}
    assert named == app_pids, legend
    check_quantiles_match_the_reader(browser, stats)

    ARTIFACTS.mkdir(exist_ok=True)
    browser.page.screenshot(path=ARTIFACTS / "page.png", full_page=True)
    assert browser.errors == []
    origin = url.rstrip("/")
    assert all(u.startswith(origin) or u.startswith("data:") for u in browser.urls)

    # The same page mounted in the app under /stats/ polls /stats/api/json.
    in_app = Browser(context)
    in_app.page.goto(base + "/stats/")
    eventually(lambda: in_app.live_pids() == app_pids, what="workers in-app")
    assert any(u.startswith(base + "/stats/api/json?") for u in in_app.urls)
    in_app.page.screenshot(path=ARTIFACTS / "page-in-app.png")
    assert in_app.errors == []


def check_quantiles_match_the_reader(browser: Browser, stats: Path) -> None:
    """The page's percentiles of a histogram are the reader's."""
    doc = json_doc(stats)
    [total] = [t for t in doc["totals"] if t["name"] == "request_seconds"]
    hist = mmstats.HistogramValue.from_json(total["value"])
    for q in (0.5, 0.9, 0.99):
        got = browser.js("([h, q]) => mmstatsPage.quantile(h, q)", [total["value"], q])
        expected = hist.quantile(q)
        assert expected is not None and math.isclose(got, expected, rel_tol=1e-12)


def json_doc(stats: Path) -> dict[str, Any]:
    import json

    doc: dict[str, Any] = json.loads(mmstats.json_document(stats))
    return doc
