"""Section: reading the workers' files, their size, and recycled workers.

Forks real worker processes (bench/_workers.py) that write mmstats files and
prometheus_client multiprocess files for the same requests, then times
``mmstats show``, ``mmstats json`` and a scrape against prometheus_client's
MultiProcessCollector over 1 to 256 workers, and again after 1,000
recycled workers, with and without ``mmstats clean``.
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import _util

# prometheus_client picks its multiprocess value class when it is imported;
# each worker then points it at its directory before making its metrics.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", os.devnull)


def _raise_open_files() -> None:
    """Let this one process be the long-running reader of every directory.

    A reader keeps live workers' files mapped and their processes watched,
    two descriptors each, within a quarter of the limit of open files; one
    exporter reads one directory, but this process stands for one reader
    per directory at once (hard links make each directory's files new
    paths), so it takes as many descriptors as the hard limit allows, up to
    8,192, before mmstats is imported and reads the limit.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(8192, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


_raise_open_files()

import _workers  # noqa: E402
import prometheus_client  # noqa: E402, F401  imported once, before the forks

import mmstats_wsgi  # noqa: E402, F401


def make_workers(
    root: str, live: int, recycled: int, requests: int, recycled_requests: int
) -> tuple[list[int], list[int], int, dict[str, float]]:
    """Fork live and recycled workers; return their pids and the release fd."""
    mm_all = os.path.join(root, "mm-all")
    prom_all = os.path.join(root, "prom-all")
    mm_gone = os.path.join(root, "mm-gone")
    prom_gone = os.path.join(root, "prom-gone")
    for path in (mm_all, prom_all, mm_gone, prom_gone):
        os.makedirs(path, mode=0o700)

    timings: dict[str, float] = {}
    start = time.perf_counter()
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()
    live_pids = []
    for i in range(live):
        hold = (ready_w, release_r, release_w)
        live_pids.append(_workers.fork_worker(mm_all, prom_all, i, requests, hold))
        if i % 2:  # two at a time: the machine has two cores
            _wait_ready(ready_r, 2)
    _wait_ready(ready_r, live % 2)
    os.close(ready_w)
    os.close(ready_r)
    os.close(release_r)
    timings["live_workers_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    gone_pids = []
    running: list[int] = []
    for i in range(recycled):
        pid = _workers.fork_worker(
            mm_gone, prom_gone, 100_000 + i, recycled_requests, None
        )
        gone_pids.append(pid)
        running.append(pid)
        if len(running) >= 2:
            _reap(running.pop(0))
    for pid in running:
        _reap(pid)
    timings["recycled_workers_seconds"] = time.perf_counter() - start
    return live_pids, gone_pids, release_w, timings


def _wait_ready(fd: int, n: int) -> None:
    got = 0
    while got < n:
        data = os.read(fd, n - got)
        if not data:
            raise RuntimeError("a worker died before it was ready")
        got += len(data)


def _reap(pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"worker {pid} failed with status {status}")


def _mm_files(directory: str, pid: int) -> list[str]:
    return glob.glob(os.path.join(directory, f"bench.{pid}.*.mmstats"))


def _prom_files(directory: str, pid: int) -> list[str]:
    return glob.glob(os.path.join(directory, f"*_{pid}.db"))


def link_dir(target: str, sources: list[str]) -> None:
    """Make ``target`` hold hard links to ``sources`` (same files, no copy)."""
    os.makedirs(target, mode=0o700, exist_ok=True)
    for path in sources:
        os.link(path, os.path.join(target, os.path.basename(path)))


def build_dirs(
    root: str, counts: tuple[int, ...], live: list[int], gone: list[int]
) -> dict[str, str]:
    """Lay out directories of N workers by hard links; return them by key."""
    mm_all = os.path.join(root, "mm-all")
    prom_all = os.path.join(root, "prom-all")
    mm_gone = os.path.join(root, "mm-gone")
    prom_gone = os.path.join(root, "prom-gone")
    dirs = {}
    for n in counts:
        pids = live[:n]
        dirs[f"mm-{n}"] = d = os.path.join(root, f"mm-{n}")
        link_dir(d, [f for p in pids for f in _mm_files(mm_all, p)])
        dirs[f"prom-{n}"] = d = os.path.join(root, f"prom-{n}")
        link_dir(d, [f for p in pids for f in _prom_files(prom_all, p)])

    base = counts[-2] if len(counts) > 2 else counts[-1]
    pids = live[:base]
    dirs["base"] = str(base)
    mm = dirs["mm-recycled"] = os.path.join(root, "mm-recycled")
    link_dir(mm, [f for p in pids for f in _mm_files(mm_all, p)])
    link_dir(mm, sorted(glob.glob(os.path.join(mm_gone, "*.mmstats"))))
    prom = dirs["prom-recycled"] = os.path.join(root, "prom-recycled")
    link_dir(prom, [f for p in pids for f in _prom_files(prom_all, p)])
    link_dir(prom, sorted(glob.glob(os.path.join(prom_gone, "*.db"))))
    from prometheus_client import multiprocess

    for pid in gone:  # what prometheus_client asks gunicorn's child_exit to do
        multiprocess.mark_process_dead(pid, prom)
    cleaned = dirs["mm-recycled-clean"] = os.path.join(root, "mm-recycled-clean")
    link_dir(cleaned, sorted(glob.glob(os.path.join(mm, "*.mmstats"))))
    return dirs


def clean_dir(directory: str) -> dict[str, Any]:
    import mmstats

    start = time.perf_counter()
    result = mmstats.clean(directory)
    took = time.perf_counter() - start
    return {
        "seconds": took,
        "folded": len(result.folded),
        "kept_alive": result.kept_alive,
        "files_left": len(glob.glob(os.path.join(directory, "*.mmstats"))),
    }


# -- the readers -------------------------------------------------------------


def _mm_command(name: str) -> Callable[[str], Callable[[], object]]:
    """Return a maker of ``mmstats NAME --dir DIR``, run through its click
    command with output to memory."""

    def make(directory: str) -> Callable[[], object]:
        from mmstats._cli import CliContext, cli

        def run() -> object:
            out, err = io.StringIO(), io.StringIO()
            cli.main(
                [name, "--dir", directory],
                prog_name="mmstats",
                obj=CliContext(out=out, err=err),
                standalone_mode=False,
            )
            if err.getvalue():
                raise RuntimeError(f"mmstats {name} failed: {err.getvalue()}")
            return out.getvalue()

        return run

    return make


mm_show = _mm_command("show")
mm_json = _mm_command("json")


def mm_scrape(directory: str) -> Callable[[], object]:
    import mmstats

    return lambda: mmstats.scrape(directory)


class _Traffic:
    """Changes every counter and histogram cell of a directory's live files
    as their writers would (a bucket, then the sum, then the count), so
    that the next read finds nothing unchanged since the one before.

    The workers are blocked while they are read; this stands in for the
    requests a busy worker serves between two scrapes.
    """

    def __init__(self, directory: str) -> None:
        import mmap

        from mmstats import _format as F
        from mmstats import _reader

        self.views: list[tuple[Any, Any, list[tuple[int, int, int]]]] = []
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if not name.endswith(F.SUFFIX) or _reader.read_file(path).state != "alive":
                continue
            layout = _reader._layouts[path][1]
            with open(path, "r+b") as f:
                mm = mmap.mmap(f.fileno(), 0)
            b = memoryview(mm)
            q, d = b.cast("q"), b.cast("d")
            cells = []
            for mid, word, _ in layout.cells:
                meta = layout.metrics[mid]
                if meta["kind"] == F.KIND_COUNTER:
                    cells.append((word, -1, 0.0))
                elif meta["kind"] == F.KIND_HISTOGRAM:
                    # One more observation in the bucket that has the most.
                    first = word + F.HIST_BUCKETS
                    counts = list(q[first : first + meta["nbuckets"]])
                    k = counts.index(max(counts))
                    probe = _reader.HistogramValue(
                        meta["lo"], meta["gamma"], meta["integer"], nbuckets=len(counts)
                    )
                    cells.append((word, first + k, probe.bounds(k)[1]))
            self.views.append((q, d, cells))
        self.count, self.sum = F.HIST_COUNT, F.HIST_SUM

    def step(self) -> None:
        for q, d, cells in self.views:
            for word, bucket, value in cells:
                if bucket < 0:
                    q[word] += 1
                else:
                    q[bucket] += 1
                    d[word + self.sum] += value
                    q[word + self.count] += 1


def mm_scrape_busy(directory: str) -> Callable[[], object]:
    import mmstats

    traffic = _Traffic(directory)

    def run() -> object:
        return mmstats.scrape(directory)

    run.prepare = traffic.step  # type: ignore[attr-defined]
    return run


def prom_collect(directory: str) -> Callable[[], object]:
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return lambda: list(registry.collect())


def prom_scrape(directory: str) -> Callable[[], object]:
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return lambda: generate_latest(registry)


def cold(
    make: Callable[[str], Callable[[], object]],
) -> Callable[[str], Callable[[], object]]:
    """Return the reader made to start cold: nothing kept from earlier reads."""

    def made(directory: str) -> Callable[[], object]:
        from mmstats._reader import fresh_caches

        run = make(directory)

        def run_cold() -> object:
            # What the other readers keep is set aside, not thrown away.
            with fresh_caches():
                return run()

        return run_cold

    return made


def floor_json_dumps(directory: str) -> Callable[[], object]:
    """Return the standard library's encoding of the very document that
    ``mmstats json`` prints, made once: what no reader that writes that
    document in Python can go below."""
    printed = mm_json(directory)()
    assert isinstance(printed, str)
    document = json.loads(printed)

    return lambda: json.dumps(document)


def floor_open_map(directory: str) -> Callable[[], object]:
    """Return opening, mapping and closing every stats file of the directory,
    reading the used length of each and nothing else: what any reader of
    these files pays for them before it parses a byte."""
    import mmap

    from mmstats import _format as F

    paths = [
        os.path.join(directory, name)
        for name in sorted(os.listdir(directory))
        if name.endswith(F.SUFFIX)
    ]

    def run() -> object:
        used = 0
        for path in paths:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                size = os.fstat(fd).st_size
                mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
            finally:
                os.close(fd)
            used += int.from_bytes(mm[F.H_USED : F.H_USED + 8], F.NATIVE_ORDER)
            mm.close()
        return used

    return run


# Measured once, over the directory of the base count, to say how far the
# goals of the cold reads could be reached at all.
FLOOR_READERS = (
    "floor: json.dumps of the json document",
    "floor: open, map and close every file",
)

READERS: dict[str, tuple[str, Callable[[str], Callable[[], object]]]] = {
    "mmstats show": ("mm", mm_show),
    "mmstats json": ("mm", mm_json),
    "mmstats scrape": ("mm", mm_scrape),
    "mmstats scrape (busy)": ("mm", mm_scrape_busy),
    "mmstats show (cold)": ("mm", cold(mm_show)),
    "mmstats json (cold)": ("mm", cold(mm_json)),
    "mmstats scrape (cold)": ("mm", cold(mm_scrape)),
    FLOOR_READERS[0]: ("mm", floor_json_dumps),
    FLOOR_READERS[1]: ("mm", floor_open_map),
    "prometheus_client collect": ("prom", prom_collect),
    "prometheus_client collect + generate_latest": ("prom", prom_scrape),
}


def _contender(func: Callable[[], object], seconds: float) -> Callable[[], float]:
    took = _util.timed(func)  # also the warm-up: page cache, imports
    took = min(took, _util.timed(func))
    n = max(1, int(seconds / max(took, 1e-9)))
    prepare = getattr(func, "prepare", None)

    def run() -> float:
        start = _util.clock()
        for _ in range(n):
            func()
        return (_util.clock() - start) / n

    def run_prepared() -> float:
        spent = 0.0
        for _ in range(n):
            prepare()  # not timed
            start = _util.clock()
            func()
            spent += _util.clock() - start
        return spent / n

    return run if prepare is None else run_prepared


# What an exporter does: Prometheus asks a process that reads one directory.
EXPORTER_READERS = (
    "mmstats scrape",
    "mmstats scrape (busy)",
    "mmstats scrape (cold)",
    "prometheus_client collect + generate_latest",
)


def _contenders(
    dirs: dict[str, str], scenarios: list[str], readers: tuple[str, ...], seconds: float
) -> dict[str, Callable[[], float]]:
    contenders = {}
    for scenario in scenarios:
        for reader in readers:
            kind, make = READERS[reader]
            key = f"{kind}-{scenario}"
            if key not in dirs:
                continue  # prometheus_client has no clean
            if (
                reader.endswith("(busy)") or reader in FLOOR_READERS
            ) and scenario != dirs["base"]:
                continue  # made or measured in the files of one count only
            contenders[f"{reader}|{scenario}"] = _contender(make(dirs[key]), seconds)
    return contenders


def _exporter_samples(
    dirs: dict[str, str], scenario: str, rounds: int, seconds: float
) -> dict[str, list[float]]:
    """Time the scrapes of one directory in a process of their own.

    An exporter reads one directory; this process reads them all, and what
    its readers keep of the other directories (hundreds of files, thousands
    of dead workers) would weigh on a scrape as it never does on a real
    exporter's.
    """
    job = json.dumps(
        {"dirs": dirs, "scenario": scenario, "rounds": rounds, "seconds": seconds}
    )
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--exporter", job],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the exporter run of {scenario} failed: {done.stderr}")
    samples: dict[str, list[float]] = json.loads(done.stdout)
    return samples


def _exporter_main(job_text: str) -> None:
    job = json.loads(job_text)
    contenders = _contenders(
        job["dirs"], [job["scenario"]], EXPORTER_READERS, job["seconds"]
    )
    print(json.dumps(_util.interleave(contenders, job["rounds"])))


def measure_reads(
    dirs: dict[str, str], counts: tuple[int, ...], quick: bool
) -> dict[str, Any]:
    """Time every reader over every directory in interleaved rounds; the
    scrapes of each directory in a process of their own."""
    seconds = 0.005 if quick else 0.05
    rounds = 2 if quick else 5
    scenarios = [str(n) for n in counts] + ["recycled", "recycled-clean"]
    others = tuple(r for r in READERS if r not in EXPORTER_READERS)
    samples = _util.interleave(_contenders(dirs, scenarios, others, seconds), rounds)
    for scenario in scenarios:
        samples.update(_exporter_samples(dirs, scenario, rounds, seconds))
    rows = []
    for key, values in samples.items():
        reader, scenario = key.split("|")
        rows.append(
            {"reader": reader, "scenario": scenario, "ms": _util.summary(values, 1e3)}
        )
    return {"rounds": rounds, "rows": rows}


def _mmstats_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "mmstats")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "import sys, mmstats._cli as c; sys.exit(c.main())"]


def command_cpu_seconds(argv: list[str]) -> float:
    """Run a command; return the CPU seconds (user + system) it used.

    Python may write bytecode caches, as it does where it is installed: a
    shell with PYTHONDONTWRITEBYTECODE set would otherwise make every run
    compile mmstats' sources again (an editable install has no caches
    written at install time; prometheus_client's were).
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    ) as proc:
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}: {err!r}")
    return float(usage.ru_utime + usage.ru_stime)


def measure_commands(
    dirs: dict[str, str], counts: tuple[int, ...], quick: bool
) -> dict[str, Any]:
    """Time whole commands, interpreter start included, in interleaved rounds.

    A command's time is the CPU time it used, user and system, from the
    kernel's accounting of the child.
    """
    mmstats_cmd = _mmstats_command()
    prom_cmd = [sys.executable, os.path.join(_util.BENCH, "_prom_read.py")]
    scenarios = [str(counts[0]), str(counts[-1])]
    if len(counts) > 2:
        scenarios.insert(1, dirs["base"])
    commands: dict[str, list[str]] = {
        "python -c pass|-": [sys.executable, "-c", "pass"]
    }
    for scenario in scenarios:
        mm, prom = dirs[f"mm-{scenario}"], dirs[f"prom-{scenario}"]
        commands[f"mmstats show|{scenario}"] = [*mmstats_cmd, "show", "--dir", mm]
        commands[f"mmstats json|{scenario}"] = [*mmstats_cmd, "json", "--dir", mm]
        commands[f"prometheus_client collect + generate_latest|{scenario}"] = [
            *prom_cmd,
            prom,
        ]

    def contender(argv: list[str]) -> Callable[[], float]:
        def run() -> float:
            return command_cpu_seconds(argv)

        return run

    rounds = 1 if quick else 5
    samples = _util.interleave({k: contender(v) for k, v in commands.items()}, rounds)
    rows = []
    for key, values in samples.items():
        reader, scenario = key.split("|")
        rows.append(
            {"reader": reader, "scenario": scenario, "ms": _util.summary(values, 1e3)}
        )
    return {"rounds": rounds, "rows": rows}


PAGE_METRICS = (
    "requests,responses,in_flight,request_seconds,db_queries,memory_rss_bytes"
)


def measure_page(directory: str, quick: bool) -> dict[str, Any]:
    """CPU of ``mmstats serve`` while tabs of the live page poll it.

    Each tab asks for the document the page's script asks for every 2 s,
    starting at its own offset, as open tabs do: its metrics, and the newest
    N entries of each slow ring, with N as the script sets it after its
    first poll (400 / (workers + 1), from 10 to 100).  The server's CPU time
    comes from /proc/PID/stat, counted over the polling only (after the
    warm-up requests).
    """
    import threading
    import urllib.request

    tabs, interval = 5, 2.0
    seconds = 4.0 if quick else 30.0
    port = _util.free_port()
    proc = subprocess.Popen(
        [
            *_mmstats_command(),
            "serve",
            "--dir",
            directory,
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    first = f"http://127.0.0.1:{port}/api/json?metrics={PAGE_METRICS}&slow=100"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(first, timeout=10) as answer:
                    workers = len(json.loads(answer.read())["workers"])
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("mmstats serve did not answer") from None
                time.sleep(0.1)
        per_worker = min(100, max(10, math.ceil(400 / (workers + 1))))
        url = first.replace("slow=100", f"slow={per_worker}")
        with urllib.request.urlopen(url, timeout=10) as answer:
            size = len(answer.read())
        polls: list[int] = []
        failures: list[str] = []
        stop = threading.Event()

        def tab(offset: float) -> None:
            if stop.wait(offset):
                return
            while not stop.is_set():
                try:
                    with urllib.request.urlopen(url, timeout=10) as answer:
                        answer.read()
                    polls.append(1)
                except OSError as exc:
                    failures.append(repr(exc))
                stop.wait(interval)

        threads = [
            threading.Thread(target=tab, args=(interval * i / tabs,), daemon=True)
            for i in range(tabs)
        ]
        before, start = _proc_cpu(proc.pid), time.monotonic()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join(15)
        cpu, wall = _proc_cpu(proc.pid) - before, time.monotonic() - start
    finally:
        proc.terminate()
        proc.wait(10)
    return {
        "tabs": tabs,
        "interval": interval,
        "seconds": wall,
        "cpu_seconds": cpu,
        "core_percent": 100.0 * cpu / wall,
        "polls": len(polls),
        "failures": failures[:5],
        "document_bytes": size,
        "slow_per_worker": per_worker,
    }


def _proc_cpu(pid: int) -> float:
    """Return the user + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _prom_used(path: str) -> int:
    with open(path, "rb") as f:
        return int(struct.unpack("i", f.read(4))[0])


def measure_size(root: str, live: list[int]) -> dict[str, Any]:
    """Bytes per worker: file sizes, disk blocks and bytes in use."""
    import mmstats

    mm_all = os.path.join(root, "mm-all")
    prom_all = os.path.join(root, "prom-all")
    mm: dict[str, list[float]] = {"size": [], "disk": [], "used": [], "files": []}
    prom: dict[str, list[float]] = {"size": [], "disk": [], "used": [], "files": []}
    for pid in live:
        files = _mm_files(mm_all, pid)
        mm["files"].append(len(files))
        mm["size"].append(sum(os.stat(p).st_size for p in files))
        mm["disk"].append(sum(os.stat(p).st_blocks * 512 for p in files))
        mm["used"].append(sum(mmstats.read_file(p).used for p in files))
        files = _prom_files(prom_all, pid)
        prom["files"].append(len(files))
        prom["size"].append(sum(os.stat(p).st_size for p in files))
        prom["disk"].append(sum(os.stat(p).st_blocks * 512 for p in files))
        prom["used"].append(sum(_prom_used(p) for p in files))
    return {
        "mmstats": {k: _util.median(v) for k, v in mm.items()},
        "prometheus_client": {k: _util.median(v) for k, v in prom.items()},
        "prometheus_client_files": sorted(
            {
                os.path.basename(p).rsplit("_", 1)[0]
                for p in _prom_files(prom_all, live[0])
            }
        ),
    }


def main() -> None:
    args = _util.section_args(__doc__ or "")
    counts = (1, 8) if args.quick else (1, 8, 64, 256)
    recycled = 20 if args.quick else 1000
    requests = 100 if args.quick else 1000
    root = os.path.join(args.workdir, "reading")
    os.makedirs(root, mode=0o700)

    _util.log(f"reading: forking {counts[-1]} live and {recycled} recycled workers")
    live, gone, release, timings = make_workers(
        root, counts[-1], recycled, requests, 200
    )
    try:
        dirs = build_dirs(root, counts, live, gone)
        cleaned = clean_dir(dirs["mm-recycled-clean"])
        _util.log("reading: in-process readers")
        reads = measure_reads(dirs, counts, args.quick)
        _util.log("reading: whole commands")
        commands = measure_commands(dirs, counts, args.quick)
        _util.log("reading: the live page polled by 5 tabs")
        page = measure_page(dirs[f"mm-{dirs['base']}"], args.quick)
        size = measure_size(root, live)
    finally:
        os.close(release)
        for pid in live:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    _util.write_results(
        args.json,
        {
            "counts": counts,
            "base": int(dirs["base"]),
            "recycled": recycled,
            "requests_per_live_worker": requests,
            "requests_per_recycled_worker": 200,
            "slow_seconds": _workers.SLOW_SECONDS,
            "median_request_seconds": _workers.MEDIAN_SECONDS,
            "setup": timings,
            "clean": cleaned,
            "in_process": reads,
            "commands": commands,
            "page": page,
            "size": size,
        },
    )
    if not args.quick:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--exporter"]:
        _exporter_main(sys.argv[2])
    else:
        main()
