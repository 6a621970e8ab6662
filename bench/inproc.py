"""Section: the cost per request, called in-process through the WSGI entry point.

Builds hello-world WSGI, Flask and Django apps with and without mmstats
(and Django with django-prometheus in multiprocess mode) in one process,
times them in interleaved rounds, and counts the files opened while
requests are served.  With ``--opens-only`` it serves requests between
marker opens, for bench/run.py to watch under strace.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import _util

sys.path.insert(0, _util.APPS)

ENVIRON: dict[str, Any] = {
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "",
    "PATH_INFO": "/",
    "QUERY_STRING": "",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "80",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": "127.0.0.1",
    "HTTP_HOST": "127.0.0.1",
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
    "wsgi.errors": sys.stderr,
    "wsgi.multithread": False,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
}
MARKER = "/nonexistent/mmstats-bench-marker"
WSGIApp = Callable[..., Iterable[bytes]]


def _start_response(status: str, headers: list[Any], exc_info: Any = None) -> Any:
    if not status.startswith("200"):
        raise RuntimeError(f"the benchmark app answered {status!r}")
    return None


def call(app: WSGIApp) -> None:
    """Serve one request the way a WSGI server does: call, iterate, close."""
    environ = dict(ENVIRON)
    environ["wsgi.input"] = io.BytesIO(b"")
    result = app(environ, _start_response)
    try:
        for _chunk in result:
            pass
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def build_apps() -> dict[str, WSGIApp]:
    """Return every app to compare, by name; Django's three share one process."""
    import hello_flask
    import hello_wsgi

    os.environ["DJANGO_SETTINGS_MODULE"] = "hello_django_settings"
    import django
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler

    django.setup(set_prefix=False)
    import hello_django_settings

    apps: dict[str, WSGIApp] = {
        "WSGI": hello_wsgi.make_app("none"),
        "WSGI + mmstats": hello_wsgi.make_app("mmstats"),
        "Flask": hello_flask.make_app("none"),
        "Flask + mmstats": hello_flask.make_app("mmstats"),
    }
    for key, label in (
        ("none", "Django"),
        ("mmstats", "Django + mmstats"),
        ("prometheus", "Django + django-prometheus (multiprocess)"),
    ):
        if key == "prometheus" and not have_django_prometheus():
            continue
        settings.MIDDLEWARE = hello_django_settings.MIDDLEWARE_SETS[key]
        apps[label] = WSGIHandler()
    for app in apps.values():
        for _ in range(50):
            call(app)
    return apps


def have_django_prometheus() -> bool:
    """Say whether django-prometheus is installed (the ``bench`` extra)."""
    try:
        import django_prometheus  # noqa: F401
    except ImportError:
        return False
    return True


def _contender(app: WSGIApp, seconds: float) -> Callable[[], float]:
    took = _util.timed(lambda: [call(app) for _ in range(50)])
    n = max(20, int(50 * seconds / max(took, 1e-9)))

    def run() -> float:
        start = _util.clock()
        for _ in range(n):
            call(app)
        return (_util.clock() - start) / n

    return run


PAIRS = [
    ("WSGI", "WSGI + mmstats"),
    ("Flask", "Flask + mmstats"),
    ("Django", "Django + mmstats"),
    ("Django", "Django + django-prometheus (multiprocess)"),
]


def measure(apps: dict[str, WSGIApp], quick: bool) -> dict[str, Any]:
    """Return µs per request of each app and what each middleware adds."""
    seconds = 0.005 if quick else 0.03
    rounds = 3 if quick else 31
    contenders = {name: _contender(app, seconds) for name, app in apps.items()}
    samples = _util.interleave(contenders, rounds)
    rows = {name: _util.summary(values, 1e6) for name, values in samples.items()}
    added = {}
    for base, other in PAIRS:
        if other not in samples:
            continue
        deltas = _util.paired_deltas(samples[other], samples[base])
        added[other] = {"base": base, "added_us": _util.summary(deltas, 1e6)}
    results = {"rounds": rounds, "us_per_request": rows, "added": added}
    if not have_django_prometheus():
        results["missing"] = (
            "django-prometheus is not installed (pip install mmstats[bench])"
        )
    return results


def count_opens(apps: dict[str, WSGIApp], n: int) -> dict[str, Any]:
    """Count open() audit events and open descriptors during ``n`` requests.

    The audit hook sees opens made from Python (``open``, ``os.open``); the
    strace run in bench/run.py also sees those made inside C libraries.
    """
    state = {"on": False, "paths": []}

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if state["on"] and event == "open":
            state["paths"].append(str(args[0]))

    sys.addaudithook(hook)
    results = {}
    for name in ("WSGI + mmstats", "Flask + mmstats", "Django + mmstats"):
        app = apps[name]
        for _ in range(20):
            call(app)
        fds_before = len(os.listdir("/proc/self/fd"))
        state["paths"] = []
        state["on"] = True
        start = time.perf_counter()
        for _ in range(n):
            call(app)
        took = time.perf_counter() - start
        state["on"] = False
        fds_after = len(os.listdir("/proc/self/fd"))
        results[name] = {
            "requests": n,
            "seconds": took,
            "opens": len(state["paths"]),
            "paths": sorted(set(state["paths"]))[:10],
            "fd_growth": fds_after - fds_before,
        }
    return results


def opens_only(n: int) -> None:
    """Serve ``n`` requests per mmstats app between marker opens (for strace)."""
    apps = build_apps()
    for name in ("WSGI + mmstats", "Flask + mmstats", "Django + mmstats"):
        app = apps[name]
        for _ in range(20):
            call(app)
        tag = name.split()[0].lower()
        _marker(f"{tag}-start")
        start = time.perf_counter()
        for _ in range(n):
            call(app)
        took = time.perf_counter() - start
        _marker(f"{tag}-end")
        print(f"{tag} {took:.6f}", flush=True)


def _marker(name: str) -> None:
    try:
        os.open(f"{MARKER}-{name}", os.O_RDONLY)
    except OSError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--workdir")
    parser.add_argument("--opens-only", type=int, metavar="N")
    args = parser.parse_args()
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR") or not os.environ.get(
        "MMSTATS_DIR"
    ):
        sys.exit("inproc.py needs PROMETHEUS_MULTIPROC_DIR and MMSTATS_DIR")
    if args.opens_only:
        opens_only(args.opens_only)
        return

    apps = build_apps()
    _util.log("per request: in-process")
    results = measure(apps, args.quick)
    _util.log("per request: files opened")
    results["opens"] = count_opens(apps, 200 if args.quick else 2000)
    _util.write_results(args.json, results)


if __name__ == "__main__":
    main()
