"""Section: the cost of one write, and counter increments from many threads.

Run by bench/run.py with ``PROMETHEUS_MULTIPROC_DIR`` set, so that
prometheus_client's metrics are multiprocess ones; its single-process
metrics are made in the same process with its in-memory value class, so
that every contender is timed in the same interleaved rounds.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import timeit
import types
from collections.abc import Callable
from typing import Any

import _util

# What each write is compared with: (contender, statement).  None marks a
# contender that has no such write.
OPERATIONS: dict[str, list[tuple[str, str | None]]] = {
    "counter increment": [
        ("plain attribute", "o.x += 1"),
        ("raw memoryview slot", "q[3] += 1"),
        ("mmstats", "stats.requests.incr()"),
        ("prometheus_client multiprocess", "prom_mp.requests.inc()"),
        ("prometheus_client single-process", "prom_sp.requests.inc()"),
        ("statsd (UDP to 127.0.0.1)", "sd.incr('requests')"),
    ],
    "gauge set": [
        ("plain attribute", "o.y = 3.5"),
        ("raw memoryview slot", "d[4] = 3.5"),
        ("mmstats", "stats.memory.set(3.5)"),
        ("prometheus_client multiprocess", "prom_mp.memory.set(3.5)"),
        ("prometheus_client single-process", "prom_sp.memory.set(3.5)"),
        ("statsd (UDP to 127.0.0.1)", "sd.gauge('memory', 3.5)"),
    ],
    "histogram observation": [
        ("mmstats", "stats.seconds.observe(0.042)"),
        ("prometheus_client multiprocess", "prom_mp.seconds.observe(0.042)"),
        ("prometheus_client single-process", "prom_sp.seconds.observe(0.042)"),
        ("statsd (UDP to 127.0.0.1)", "sd.timing('seconds', 42)"),
    ],
    "text set": [
        ("plain attribute", "o.z = 'v1.2.3'"),
        ("mmstats", "stats.version.set('v1.2.3')"),
        ("prometheus_client multiprocess", None),
        ("prometheus_client single-process", "prom_sp.info.info(VERSION)"),
        ("statsd (UDP to 127.0.0.1)", None),
    ],
    "labelled counter": [
        ("mmstats", "stats.responses.labels(status='200').incr()"),
        (
            "prometheus_client multiprocess",
            "prom_mp.responses.labels(status='200').inc()",
        ),
        (
            "prometheus_client single-process",
            "prom_sp.responses.labels(status='200').inc()",
        ),
        ("statsd (UDP to 127.0.0.1)", "sd.incr('responses.200')"),
    ],
}
NOT_SUPPORTED = {
    ("text set", "prometheus_client multiprocess"): "Info is not supported "
    "in multiprocess mode",
    ("text set", "statsd (UDP to 127.0.0.1)"): "statsd has no text metric",
}
THREAD_COUNTS = (1, 2, 4, 8)


class _Plain:
    x = 0
    y = 0.0
    z = ""


def _mmstats_stats(directory: str) -> Any:
    import mmstats

    class WriteStats(mmstats.Stats):
        requests = mmstats.Counter("Requests")
        memory = mmstats.Gauge("Memory")
        seconds = mmstats.Histogram("Request time", unit="seconds")
        version = mmstats.Text("Version", max_bytes=64)
        responses = mmstats.Counter("Responses", labels=("status",))

    return WriteStats(directory, "bench-writes")


class _PromMetrics:
    """The same five metrics in prometheus_client, unregistered."""

    def __init__(self, multiprocess: bool) -> None:
        from prometheus_client import Counter, Gauge, Histogram, Info, values

        saved = values.ValueClass
        if not multiprocess:
            values.ValueClass = values.MutexValue
        try:
            self.requests = Counter("requests", "Requests", registry=None)
            self.memory = Gauge(
                "memory", "Memory", multiprocess_mode="all", registry=None
            )
            self.seconds = Histogram("seconds", "Request time", registry=None)
            self.responses = Counter(
                "responses", "Responses", ["status"], registry=None
            )
            self.info = None if multiprocess else Info("version", "V", registry=None)
        finally:
            values.ValueClass = saved


def _udp_sink() -> tuple[int, int]:
    """Bind a UDP port on 127.0.0.1 and fork a process that drains it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            while True:
                sock.recv(65536)
        finally:
            os._exit(0)
    sock.close()
    return port, pid


def _statsd_client(port: int) -> Any:
    try:
        import statsd
    except ImportError:
        return None
    return statsd.StatsClient("127.0.0.1", port)


def _namespace(workdir: str, port: int) -> dict[str, Any]:
    import mmap

    raw = memoryview(mmap.mmap(-1, 4096))
    stats = _mmstats_stats(os.path.join(workdir, "writes-mmstats"))
    ns = {
        "o": _Plain(),
        "q": raw.cast("q"),
        "d": raw.cast("d"),
        "stats": stats,
        "prom_mp": _PromMetrics(multiprocess=True),
        "prom_sp": _PromMetrics(multiprocess=False),
        "sd": _statsd_client(port),
        "VERSION": {"version": "v1.2.3"},
    }
    return ns


def _contender(stmt: str, ns: dict[str, Any], seconds: float) -> Callable[[], float]:
    """Return a function timing ``stmt`` in a loop of about ``seconds``."""
    timer = timeit.Timer(stmt, timer=_util.clock, globals=ns)
    timer.timeit(1000)  # warm: binds per-thread cells, creates files
    number = 1000
    while True:
        took = timer.timeit(number)
        if took >= seconds / 4 or number > 50_000_000:
            break
        number *= 4
    number = max(100, int(number * seconds / max(took, 1e-9)))
    return lambda: timer.timeit(number) / number


def _missing(ns: dict[str, Any], name: str) -> str | None:
    if name.startswith("statsd") and ns["sd"] is None:
        return "the statsd package is not installed (pip install mmstats[bench])"
    return None


def measure_writes(ns: dict[str, Any], quick: bool) -> dict[str, Any]:
    """Time every write of :data:`OPERATIONS` in interleaved rounds."""
    seconds = 0.002 if quick else 0.01
    rounds = 3 if quick else 31
    contenders = {"empty loop": _contender("pass", ns, seconds)}
    for op, entries in OPERATIONS.items():
        for name, stmt in entries:
            if stmt is not None and not _missing(ns, name):
                contenders[f"{op}|{name}"] = _contender(stmt, ns, seconds)
    samples = _util.interleave(contenders, rounds)

    loop = _util.median(samples["empty loop"])
    results: dict[str, Any] = {
        "loop_ns": loop * 1e9,
        "rounds": rounds,
        "operations": {},
    }
    for op, entries in OPERATIONS.items():
        rows = results["operations"][op] = []
        for name, stmt in entries:
            row: dict[str, Any] = {"contender": name, "statement": stmt}
            missing = _missing(ns, name)
            if stmt is None or missing:
                row["note"] = missing or NOT_SUPPORTED.get((op, name), "n/a")
            else:
                values = samples[f"{op}|{name}"]
                row["gross_ns"] = _util.summary(values, 1e9)
                row["net_ns"] = _util.summary([v - loop for v in values], 1e9)
            rows.append(row)
    return results


def _count_c_calls(func: Callable[[], None], n: int) -> dict[str, float]:
    """Return the C functions ``func`` calls, per call, by name."""
    counts: dict[str, int] = {}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "c_call":
            name = getattr(arg, "__name__", None) or repr(arg)
            owner = getattr(arg, "__self__", None)
            if isinstance(owner, types.ModuleType):
                key = f"{owner.__name__}.{name}"
            elif owner is not None:
                key = f"{type(owner).__name__}.{name}"
            else:
                key = name
            counts[key] = counts.get(key, 0) + 1

    func()
    sys.setprofile(profile)
    try:
        for _ in range(n):
            func()
    finally:
        sys.setprofile(None)
    counts.pop("sys.setprofile", None)
    return {k: v / n for k, v in sorted(counts.items())}


def c_calls(ns: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Which C functions one write calls once its record exists.

    A lock acquisition or a system call is a call into C; the plain
    memoryview stores mmstats makes are not calls at all.
    """
    stats = ns["stats"]
    prom = ns["prom_mp"]
    checks: dict[str, Callable[[], None]] = {
        "mmstats counter incr()": stats.requests.incr,
        "mmstats gauge set()": lambda: stats.memory.set(3.5),
        "mmstats histogram observe()": lambda: stats.seconds.observe(0.042),
        "mmstats text set()": lambda: stats.version.set("v1.2.3"),
        "prometheus_client multiprocess Counter.inc()": prom.requests.inc,
    }
    return {name: _count_c_calls(func, 1000) for name, func in checks.items()}


def _thread_run(
    incr: Callable[[], None], read: Callable[[], float], threads: int, total: int
) -> tuple[float, int, int]:
    """Increment from ``threads`` threads; return seconds, expected and got."""
    per_thread = total // threads
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        barrier.wait()
        for _ in range(per_thread):
            incr()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for t in workers:
        t.start()
    before = read()
    barrier.wait()
    start = time.perf_counter()
    for t in workers:
        t.join()
    took = time.perf_counter() - start
    got = int(read() - before)
    return took, per_thread * threads, got


def measure_threads(ns: dict[str, Any], workdir: str, quick: bool) -> dict[str, Any]:
    """Counter increments per second from 1, 2, 4 and 8 threads of one process."""
    import mmstats

    stats = ns["stats"]
    counter = stats.requests
    path = stats.path

    def read_mmstats() -> float:
        worker = mmstats.read_file(path)
        return float(worker.value("requests") or 0)

    contenders_by_kind: dict[str, tuple[Callable[[], None], Callable[[], float]]] = {
        "mmstats": (counter.incr, read_mmstats),
        "prometheus_client single-process": (
            ns["prom_sp"].requests.inc,
            ns["prom_sp"].requests._value.get,
        ),
        "prometheus_client multiprocess": (
            ns["prom_mp"].requests.inc,
            ns["prom_mp"].requests._value.get,
        ),
    }
    total = 20_000 if quick else 240_000
    lost: dict[str, int] = {}
    contenders: dict[str, Callable[[], float]] = {}
    for kind, (incr, read) in contenders_by_kind.items():
        for n in THREAD_COUNTS:

            def run(
                incr: Any = incr, read: Any = read, n: int = n, kind: str = kind
            ) -> float:
                took, expected, got = _thread_run(incr, read, n, total)
                key = f"{kind}|{n}"
                lost[key] = lost.get(key, 0) + (expected - got)
                return expected / took

            contenders[f"{kind}|{n}"] = run
    rounds = 2 if quick else 7
    samples = _util.interleave(contenders, rounds)
    rows = []
    for kind in contenders_by_kind:
        for n in THREAD_COUNTS:
            key = f"{kind}|{n}"
            rows.append(
                {
                    "contender": kind,
                    "threads": n,
                    "per_second": _util.summary(samples[key]),
                    "lost": lost.get(key, 0),
                    "increments": total * (rounds + 1),
                }
            )
    return {"rounds": rounds, "rows": rows}


def main() -> None:
    args = _util.section_args(__doc__ or "")
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        sys.exit("writes.py needs PROMETHEUS_MULTIPROC_DIR; run it via bench/run.py")
    port, sink = _udp_sink()
    try:
        ns = _namespace(args.workdir, port)
        _util.log("writes: ns per operation")
        writes = measure_writes(ns, args.quick)
        _util.log("writes: C calls per write")
        calls = c_calls(ns)
        _util.log("writes: threads")
        threads = measure_threads(ns, args.workdir, args.quick)
    finally:
        os.kill(sink, signal.SIGTERM)
        os.waitpid(sink, 0)
    _util.write_results(
        args.json, {"writes": writes, "c_calls": calls, "threads": threads}
    )


if __name__ == "__main__":
    main()
