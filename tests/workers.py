"""Real worker processes that write stats directories for the reader tests.

A worker records a planned list of requests through the request recorder,
then optionally holds one request in flight and blocks, so that a test can
kill it mid-request or let it exit cleanly.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mmstats

ROOT = Path(__file__).resolve().parent.parent

WORKER = textwrap.dedent(
    """
    import json, sys, mmstats
    plan = json.loads(sys.argv[-1])
    recorder = mmstats.RequestRecorder(plan["dir"], plan["name"], slow_seconds=0)
    for method, path, view, status, queries, fails in plan["requests"]:
        request = recorder.start(method, path, view)
        for _ in range(queries):
            mmstats.record_query(0.001)
        recorder.finish(request, status, ValueError("boom") if fails else None)
    if plan["hold"]:
        method, path, view, queries = plan["hold"]
        request = recorder.start(method, path, view)
        for _ in range(queries):
            mmstats.record_query(0.001)
    print("ready", flush=True)
    if plan["block"]:
        sys.stdin.read()
    """
)

# Ends with a right-to-left override and an isolate: shown raw, the view
# would read "exe.png".
HOSTILE_VIEW = "[bold]v[/bold]<script>\x1b[31m\n\u202egnp.exe\u2066\u061c\U000e0041"
HOSTILE_PATH = "/h/\x1b[31mred\x1b[0m\n[bold]b[/bold]<script>x</script>" + "A" * 10_000
HOSTILE_ARG = "\x1b[2J\x1b]0;owned\x07[red]arg[/red]"
# (method, path, view, status, queries, raises)
ALIVE_REQUESTS = [
    ("GET", "/items/", "shop.items", 200, 2, False),
    ("GET", "/items/", "shop.items", 200, 2, False),
    ("GET", "/items/", "shop.items", 200, 2, False),
    ("POST", "/items/", "shop.create", 302, 3, False),
    ("GET", "/missing", None, 404, 0, False),
    ("GET", "/missing", None, 404, 0, False),
    ("GET", "/boom", "shop.boom", 500, 0, True),
]
KILLED_REQUESTS = [("GET", "/b/", "shop.b", 200, 1, False)] * 2
CLOSED_REQUESTS = [("GET", "/c/", "shop.c", 200, 0, False)] * 4 + [
    ("GET", "/c/fail", "shop.c", 503, 0, False)
]
HOSTILE_REQUESTS = [("GET", HOSTILE_PATH, HOSTILE_VIEW, 200, 0, False)]


@dataclass
class Workers:
    """A stats directory and the pids of the workers that wrote it."""

    directory: Path
    script: Path
    pids: dict[str, int] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


def start_worker(
    workers: Workers,
    role: str,
    requests: list[tuple[Any, ...]],
    hold: tuple[Any, ...] | None = None,
    block: bool = False,
    extra: tuple[str, ...] = (),
) -> subprocess.Popen[str]:
    """Run a worker that records ``requests``, then holds one or exits."""
    plan = {
        "dir": os.fspath(workers.directory),
        "name": role,
        "requests": requests,
        "hold": hold,
        "block": block,
    }
    proc = subprocess.Popen(
        [sys.executable, os.fspath(workers.script), *extra, json.dumps(plan)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    workers.procs.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    workers.pids[role] = proc.pid
    [path] = workers.directory.glob(f"{role}.{proc.pid}.*.mmstats")
    workers.files[role] = path
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a worker and reap it, so its pid no longer looks alive."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def finish(proc: subprocess.Popen[str]) -> None:
    """Let a worker exit cleanly (it closes its file at exit)."""
    if proc.stdin is not None:
        proc.stdin.close()
    proc.wait(timeout=30)


def populate(directory: Path, script: Path, hostile: bool = True) -> Workers:
    """Write a directory with an alive, a killed and a closed worker."""
    workers = Workers(directory, script)
    start_worker(
        workers, "alive", ALIVE_REQUESTS, ("GET", "/busy/", "shop.busy", 2), block=True
    )
    killed = start_worker(
        workers,
        "killed",
        KILLED_REQUESTS,
        ("POST", "/checkout/42", "shop.checkout", 3),
        block=True,
    )
    kill(killed)
    finish(start_worker(workers, "closed", CLOSED_REQUESTS))
    if hostile:
        finish(start_worker(workers, "hostile", HOSTILE_REQUESTS, extra=(HOSTILE_ARG,)))
    return workers


def totals_of(directory: Path) -> dict[Any, Any]:
    """Counter and histogram totals of a directory, archive included."""
    result: dict[Any, Any] = {}
    for key, series in mmstats.read_directory(directory).totals().items():
        if series.kind == "counter":
            result[key] = series.value
        elif series.kind == "histogram":
            result[key] = (series.value.count, dict(series.value.buckets))
    return result


@contextlib.contextmanager
def held_elsewhere(lock: Any) -> Iterator[None]:
    """Hold ``lock`` in another thread while the block runs (10 s at most)."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    try:
        yield
    finally:
        release.set()
        holder.join()


def fork() -> int:
    """Return ``os.fork()``, without the warning Python 3.12+ gives about
    forking a process that runs threads: these tests do it on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def pty_fork() -> tuple[int, int]:
    """Return ``pty.fork()`` without that warning (the child execs at once)."""
    import pty

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pty.fork()
