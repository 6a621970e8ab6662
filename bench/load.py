"""Section: requests per second under gunicorn (2 sync workers) and wrk.

Starts one gunicorn server per configuration on 127.0.0.1, all at once,
then loads them in interleaved rounds with wrk, so a busy spell of the
machine falls on every configuration alike.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

import _util

# (label, module:app, middleware, base label for the ratio)
CONFIGS = [
    ("WSGI", "hello_wsgi:app", "none", None),
    ("WSGI + mmstats", "hello_wsgi:app", "mmstats", "WSGI"),
    ("Flask", "hello_flask:app", "none", None),
    ("Flask + mmstats", "hello_flask:app", "mmstats", "Flask"),
    ("Django", "hello_django:application", "none", None),
    ("Django + mmstats", "hello_django:application", "mmstats", "Django"),
    (
        "Django + django-prometheus (multiprocess)",
        "hello_django:application",
        "prometheus",
        "Django",
    ),
]
QUICK_CONFIGS = ("Django", "Django + mmstats")
CONNECTIONS = 4


class Server:
    """One gunicorn server of ours, on a port of 127.0.0.1."""

    def __init__(self, label: str, target: str, middleware: str, workdir: str):
        self.label = label
        self.port = _util.free_port()
        slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
        stats = os.path.join(workdir, f"load-{slug}-mmstats")
        prom = os.path.join(workdir, f"load-{slug}-prom")
        os.makedirs(stats, mode=0o700, exist_ok=True)
        os.makedirs(prom, exist_ok=True)
        env = dict(os.environ)
        env.update(
            BENCH_MIDDLEWARE=middleware,
            MMSTATS_DIR=stats,
            PROMETHEUS_MULTIPROC_DIR=prom,
            PYTHONPATH=_util.APPS,
        )
        self.log = open(os.path.join(workdir, f"load-{slug}.log"), "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--workers",
                "2",
                "--worker-class",
                "sync",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--chdir",
                _util.APPS,
                "--log-level",
                "warning",
                target,
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}/"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.log.flush()
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"gunicorn for {self.label} did not answer:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True)
    words = (out.stdout + out.stderr).split()
    return " ".join(words[:2])


def run_wrk(wrk: str, url: str, seconds: float) -> dict[str, float]:
    """Load ``url`` for ``seconds``; return requests/s and error counts."""
    out = subprocess.run(
        [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    text = out.stdout
    rate = re.search(r"Requests/sec:\s*([\d.]+)", text)
    if out.returncode != 0 or rate is None:
        raise RuntimeError(f"wrk failed: {out.stdout}{out.stderr}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+)", text)
    return {
        "rps": float(rate.group(1)),
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": float(sum(int(x) for x in errors.groups())) if errors else 0,
    }


def main() -> None:
    args = _util.section_args(__doc__ or "")
    wrk = os.environ.get("BENCH_WRK") or shutil.which("wrk")
    if not wrk:
        _util.write_results(
            args.json,
            {
                "skipped": "wrk is not installed: install it with "
                "`apt-get install wrk` (or run bench/run.py as root with "
                "--install-wrk); the HTTP rows were not measured."
            },
        )
        return

    configs = [c for c in CONFIGS if not args.quick or c[0] in QUICK_CONFIGS]
    try:
        import django_prometheus  # noqa: F401
    except ImportError:
        configs = [c for c in configs if c[2] != "prometheus"]
    seconds = 1.0 if args.quick else 2.0
    rounds = 1 if args.quick else 8
    servers = [Server(label, t, m, args.workdir) for label, t, m, _ in configs]
    errors: dict[str, float] = {label: 0.0 for label, *_ in configs}
    try:
        for server in servers:
            server.wait_ready()
        _util.log(f"load: {len(servers)} gunicorn servers up; wrk rounds")

        def contender(server: Server) -> Any:
            def run() -> float:
                got = run_wrk(wrk, server.url, seconds)
                errors[server.label] += got["non2xx"] + got["socket_errors"]
                return got["rps"]

            return run

        samples = _util.interleave(
            {s.label: contender(s) for s in servers},
            rounds,
            warmup=0 if args.quick else 1,
        )
    finally:
        for server in servers:
            server.stop()

    rows = {}
    for label, _, _, base in configs:
        row: dict[str, Any] = {
            "rps": _util.summary(samples[label]),
            "errors": errors[label],
            "base": base,
        }
        if base is not None and base in samples:
            ratios = [
                a / b for a, b in zip(samples[label], samples[base], strict=False)
            ]
            row["ratio"] = _util.summary(ratios)
            row["ratio_of_medians"] = _util.median(samples[label]) / _util.median(
                samples[base]
            )
        rows[label] = row
    _util.write_results(
        args.json,
        {
            "wrk": wrk_version(wrk),
            "connections": CONNECTIONS,
            "seconds_per_run": seconds,
            "rounds": rounds,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
