"""Worker processes that fill stats directories for the reading benchmarks.

Each worker is a forked process that serves a planned mix of requests
(10 views, several statuses, database queries, now and then an exception)
through mmstats' WSGI middleware, and records the same request metrics
with prometheus_client in multiprocess mode, so both libraries hold the
same data from the same processes.  Request durations are drawn from a
log-normal distribution and fed through a stand-in clock, so histograms
spread over realistic buckets without the benchmark sleeping.
"""

from __future__ import annotations

import atexit
import os
import random
import sys
from collections.abc import Callable
from typing import Any

VIEWS = [
    f"shop.views.{name}"
    for name in (
        "product_list",
        "product_detail",
        "cart",
        "checkout",
        "search",
        "account",
        "login",
        "orders",
        "api_stock",
        "home",
    )
]
# Zipf-like weights: a few views take most of the traffic.
VIEW_WEIGHTS = [1 / (i + 1) for i in range(len(VIEWS))]
STATUSES = [(200, 0.85), (302, 0.05), (404, 0.05), (403, 0.02), (500, 0.03)]
SLOW_SECONDS = 0.1
MEDIAN_SECONDS = 0.03


class Clock:
    """A stand-in for time.perf_counter that moves when a request is served."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _PromRequestMetrics:
    """The request metrics mmstats records, made with prometheus_client."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter("requests", "Requests finished", registry=None)
        self.responses = Counter(
            "responses", "Responses by status class", ["class"], registry=None
        )
        self.exceptions = Counter(
            "exceptions", "Unhandled exceptions", ["exception"], registry=None
        )
        self.in_flight = Gauge(
            "in_flight",
            "Requests in flight",
            multiprocess_mode="livesum",
            registry=None,
        )
        self.request_seconds = Histogram(
            "request_seconds", "Request time", registry=None
        )
        self.db_queries = Histogram(
            "db_queries",
            "Queries per request",
            buckets=(0, 1, 2, 5, 10, 20, 50, 100, float("inf")),
            registry=None,
        )
        self.db_seconds = Histogram("db_seconds", "Database time", registry=None)
        self.view_requests = Counter(
            "view_requests", "Requests per view", ["view"], registry=None
        )
        self.view_seconds = Histogram(
            "view_seconds", "Request time per view", ["view"], registry=None
        )
        self.memory = Gauge(
            "memory_rss_bytes",
            "Resident memory",
            multiprocess_mode="all",
            registry=None,
        )
        self.load1 = Gauge(
            "load1", "Load average", multiprocess_mode="all", registry=None
        )

    def record(self, plan: tuple[Any, ...], rss: int, load: float) -> None:
        view, status, queries, db_seconds, duration = plan
        self.in_flight.inc()
        self.in_flight.dec()
        self.requests.inc()
        self.responses.labels(f"{status // 100}xx").inc()
        if status == 500:
            self.exceptions.labels("RuntimeError").inc()
        self.request_seconds.observe(duration)
        self.db_queries.observe(queries)
        self.db_seconds.observe(db_seconds)
        if view:
            self.view_requests.labels(view).inc()
            self.view_seconds.labels(view).observe(duration)
        self.memory.set(rss)
        self.load1.set(load)


def plan_requests(seed: int, count: int) -> list[tuple[Any, ...]]:
    """Return ``count`` requests: (view, status, queries, db seconds, seconds)."""
    rng = random.Random(seed)
    plans = []
    codes = [code for code, _ in STATUSES]
    weights = [w for _, w in STATUSES]
    for _ in range(count):
        status = rng.choices(codes, weights)[0]
        view = None if status == 404 else rng.choices(VIEWS, VIEW_WEIGHTS)[0]
        duration = rng.lognormvariate(0.0, 0.9) * MEDIAN_SECONDS
        queries = 0 if status in (302, 404) else rng.randrange(0, 12)
        db_seconds = sum(rng.expovariate(1 / 0.002) for _ in range(queries))
        plans.append((view, status, queries, db_seconds, duration + db_seconds))
    return plans


def serve(mm_dir: str, prom_dir: str, seed: int, count: int) -> None:
    """Serve ``count`` planned requests in this process, into both directories."""
    import mmstats
    from mmstats import _recorder
    from mmstats_wsgi import StatsMiddleware

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = prom_dir
    clock = Clock()
    _recorder._perf = clock  # durations come from the plan, not the real clock
    prom = _PromRequestMetrics()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        view, status, queries, db_seconds, duration = environ["bench.plan"]
        for _ in range(queries):
            mmstats.record_query(db_seconds / queries)
        clock.now += duration
        environ["mmstats.view"] = view
        if status == 500:
            raise RuntimeError("planned failure")
        start_response(f"{status} X", [("Content-Type", "text/plain")])
        return [b"ok"]

    middleware = StatsMiddleware(
        app, mm_dir, "bench", slow_seconds=SLOW_SECONDS, slow_log_size=256
    )
    recorder = middleware.recorder
    for plan in plan_requests(seed, count):
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/shop/", "bench.plan": plan}
        try:
            result = middleware(environ, lambda status, headers, exc=None: None)
            for _chunk in result:
                pass
            result.close()  # type: ignore[attr-defined]
        except RuntimeError:
            pass
        prom.record(plan, recorder.rss(), recorder.load(clock.now))


def fork_worker(
    mm_dir: str,
    prom_dir: str,
    seed: int,
    count: int,
    hold: tuple[int, int, int] | None = None,
) -> int:
    """Fork a worker that serves ``count`` requests; return its pid.

    Without ``hold`` the worker then exits the way an interpreter does,
    running the exit handlers, so its stats file is marked closed (a
    recycled worker).  With ``hold = (ready_w, release_r, release_w)`` it
    writes a byte to ``ready_w`` and stays alive until ``release_w`` is
    closed by the parent.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 0
    try:
        serve(mm_dir, prom_dir, seed, count)
        if hold is None:
            atexit._run_exitfuncs()  # what a normal interpreter exit runs
        else:
            ready_w, release_r, release_w = hold
            os.close(release_w)
            os.write(ready_w, b"r")
            while os.read(release_r, 1):
                pass
    except BaseException:
        code = 1
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)
