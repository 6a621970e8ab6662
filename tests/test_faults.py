"""Faults production brings: kills, recycling, removed files, full disks (#7).

Workers here are real processes: they are killed with SIGKILL in the middle
of a request, of a write, of a file growth; ``clean`` is killed at each of
its steps; gunicorn recycles its workers every 50 requests; the stats files
and their directory are removed under live workers; the disk fills up; and
writers run as another user (uid 65534) in directories they may not use.
docs/RELIABILITY.md lists what each test proves and its figures.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import mmstats
from mmstats import _format as F
from mmstats import _writer
from mmstats._cli import CliContext, run
from mmstats._writer import CHUNK_SIZE
from tests.workers import fork, totals_of

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534

# Figures of a run, printed at the end of the session with -s (and copied
# into docs/RELIABILITY.md by hand).
FIGURES: dict[str, Any] = {}


def figure(name: str, value: Any) -> None:
    FIGURES[name] = value
    print(f"\n[figure] {name} = {value}")


# -- worker processes ---------------------------------------------------------

KILLABLE = textwrap.dedent(
    """
    import itertools, os, signal, sys, threading, time
    import mmstats
    from mmstats import _format as F
    from mmstats import _writer

    mode, directory = sys.argv[1], sys.argv[2]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def ready():
        print("ready", flush=True)

    if mode == "requests":
        # Each request sleeps in the middle: most kills land inside one.
        recorder = mmstats.RequestRecorder(directory, "req", slow_seconds=0)
        for i in itertools.count():
            request = recorder.start("GET", f"/r/{i}", "v.r")
            for _ in range(3):
                mmstats.record_query(0.001)
                time.sleep(0.001)
            recorder.finish(request, 200)
            if i == 0:
                ready()

    elif mode == "writes":
        stats = mmstats.Stats(directory, "writes")
        hits = stats.counter("hits")
        sizes = stats.histogram("sizes", unit="bytes")
        label = stats.text("label", max_bytes=64)

        def work():
            for i in itertools.count():
                hits.incr()
                sizes.observe(0.5 if i % 3 else 2.0)
                if i % 100 == 0:
                    label.set("%08d" % i + "x" * (i % 47))

        hits.incr()
        for _ in range(2):
            threading.Thread(target=work, daemon=True).start()
        ready()
        time.sleep(600)

    elif mode == "grow":
        # A new series every step: the file grows a chunk every ~95 steps.
        stats = mmstats.Stats(directory, "grow")
        made = stats.counter("made")
        for k in range(50_000):  # about 100 MB at most, if never killed
            stats.histogram(f"h{k}", unit="bytes").observe(k + 1)
            made.incr()
            if k == 200:
                ready()
        time.sleep(600)

    elif mode in ("torn-bucket", "torn-sum"):
        # Killed between the stores of an observation of 0.5: after its
        # bucket, or after its bucket and sum; the count is never reached.
        stats = mmstats.Stats(directory, "torn")
        stats.counter("hits").incr(5)
        hist = stats.histogram("sizes", unit="bytes")
        for _ in range(3):
            hist.observe(2.0)
        q, d, _totals = hist._tl.cell
        q[F.HIST_BUCKETS + F.bucket_index(0.5, 0.5)] += 1
        if mode == "torn-sum":
            d[F.HIST_SUM] += 0.5
        ready()
        die()

    elif mode in ("grown", "growing"):
        # Killed inside a growth: after the new chunk is allocated and the
        # old one padded but before the record is published ("grown"), or
        # half way into extending the file ("growing").
        stats = mmstats.Stats(directory, "g" + mode)
        made = stats.counter("made")
        if mode == "grown":
            real_grow = _writer.FileWriter._grow

            def grow(self, size):
                chunk = real_grow(self, size)
                ready()
                die()

            _writer.FileWriter._grow = grow
        else:
            real_fallocate = os.posix_fallocate

            def fallocate(fd, offset, length):
                if offset:
                    os.ftruncate(fd, offset + length // 3)
                    ready()
                    die()
                real_fallocate(fd, offset, length)

            os.posix_fallocate = fallocate
        for k in range(50_000):
            stats.histogram(f"h{k}", unit="bytes").observe(k + 1)
            made.incr()

    elif mode == "neighbour":
        recorder = mmstats.RequestRecorder(directory, "neighbour", slow_seconds=0)
        for i in range(7):
            recorder.finish(recorder.start("GET", f"/n/{i}", "v.n"), 200)
        recorder.stats.text("motto").set("untouched")
        request = recorder.start("POST", "/n/held", "v.n")
        mmstats.record_query(0.5)
        ready()
        sys.stdin.read()

    elif mode == "closed":
        recorder = mmstats.RequestRecorder(directory, "closed", slow_seconds=0)
        for i in range(int(sys.argv[3])):
            recorder.finish(recorder.start("GET", f"/c/{i}", "v.c"), 200)
        ready()
    """
)


@pytest.fixture(scope="module")
def killable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("killable") / "killable.py"
    path.write_text(KILLABLE)
    return path


class Proc:
    """A worker process started from KILLABLE."""

    def __init__(self, script: Path, mode: str, directory: Path, *args: str) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, os.fspath(script), mode, os.fspath(directory), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if line != "ready\n":
            self.kill()
            raise AssertionError(f"worker {mode} did not start: {line!r}")
        self.pid = self.popen.pid

    def file(self, directory: Path) -> Path:
        [path] = directory.glob(f"*.{self.pid}.*.mmstats")
        return path

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.communicate(timeout=30)

    def wait(self) -> int:
        self.popen.communicate(timeout=30)
        return self.popen.returncode


@pytest.fixture
def neighbour(killable: Path, stats_dir: Path) -> Iterator[tuple[Proc, Path, str]]:
    """A live worker beside the ones killed: (process, its file, its sha256)."""
    proc = Proc(killable, "neighbour", stats_dir)
    path = proc.file(stats_dir)
    try:
        yield proc, path, sha256(path)
    finally:
        proc.kill()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_neighbour(neighbour: tuple[Proc, Path, str]) -> None:
    """The neighbour's file is byte for byte what it wrote, and reads so."""
    _proc, path, digest = neighbour
    assert sha256(path) == digest
    worker = mmstats.read_file(path)
    assert worker.state == "alive"
    assert worker.value("requests") == 7
    assert worker.value("motto") == "untouched"
    [slot] = worker.slots
    assert (slot.method, slot.path, slot.queries) == ("POST", "/n/held", 1)


def exported_requests(directory: Path) -> float:
    """The request total the Prometheus exporter gives for a directory."""
    from prometheus_client.parser import text_string_to_metric_families

    text = mmstats.scrape(directory).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mmstats_requests_total":
                return float(sample.value)
    return 0.0


# -- SIGKILL ------------------------------------------------------------------


class TestKill:
    def test_worker_killed_mid_request_shows_that_request(
        self,
        killable: Path,
        stats_dir: Path,
        neighbour: tuple[Proc, Path, str],
    ) -> None:
        """A worker killed while serving request i is dead, readable, its slot
        holds /r/i and its request counter says i: nothing before is lost."""
        rng = random.Random(7)
        mid_request = 0
        expected = 7  # the neighbour's
        for _ in range(5):
            proc = Proc(killable, "requests", stats_dir)
            time.sleep(rng.uniform(0.02, 0.25))
            proc.kill()
            worker = mmstats.read_file(proc.file(stats_dir))

            assert worker.state == "dead"
            requests = worker.value("requests")
            assert requests >= 1
            newest = worker.slow[0].path
            if worker.slots:
                [slot] = worker.slots
                assert (slot.method, slot.view) == ("GET", "v.r")
                # The slot is released before the counter moves: a busy slot
                # /r/i means exactly i requests had finished, all recorded.
                assert slot.path == f"/r/{requests}"
                assert 0 <= slot.queries <= 3
                assert newest == f"/r/{requests - 1}"
                assert worker.value("request_seconds").count == requests
                mid_request += 1
            else:  # killed inside finish: the counter moves before the ring
                assert newest in (f"/r/{requests - 1}", f"/r/{requests - 2}")
            expected += requests

        assert mid_request >= 3
        figure("kills_mid_request", f"{mid_request} of 5")
        assert totals_of(stats_dir)[("requests", ())] == expected
        check_neighbour(neighbour)
        assert mmstats.clean(os.fspath(stats_dir)).kept_alive == 1
        assert totals_of(stats_dir)[("requests", ())] == expected
        assert exported_requests(stats_dir) == expected

    def test_worker_killed_mid_write_never_goes_backwards(
        self,
        killable: Path,
        stats_dir: Path,
        neighbour: tuple[Proc, Path, str],
    ) -> None:
        """Two threads write flat out; readers poll; SIGKILL. Every value read
        later is at least every value read before, and consistent."""
        half, two = F.bucket_index(0.5, 0.5), F.bucket_index(0.5, 2.0)
        for _ in range(3):
            proc = Proc(killable, "writes", stats_dir)
            path = proc.file(stats_dir)
            seen_hits = seen_count = 0
            deadline = time.monotonic() + random.uniform(0.1, 0.4)
            while time.monotonic() < deadline:
                worker = mmstats.read_file(path)
                hits, hist = worker.value("hits"), worker.value("sizes")
                assert hits >= seen_hits and hist.count >= seen_count
                seen_hits, seen_count = hits, hist.count
            proc.kill()

            worker = mmstats.read_file(path)
            assert worker.state == "dead"
            assert worker.value("hits") >= seen_hits
            hist = worker.value("sizes")
            assert hist.count >= seen_count
            assert hist.count == sum(hist.buckets.values())
            halves, twos = hist.buckets.get(half, 0), hist.buckets.get(two, 0)
            # A kill mid-observation may leave it in the buckets but not yet
            # in the sum, in each thread's cell.
            cut = hist.sum - (0.5 * halves + 2.0 * twos)
            assert cut in (0.0, -0.5, -2.0, -1.0, -2.5, -4.0)
            label = worker.value("label")
            assert label is None or label[8:] == "x" * (int(label[:8]) % 47)

        before = totals_of(stats_dir)
        mmstats.clean(os.fspath(stats_dir))
        assert totals_of(stats_dir) == before
        check_neighbour(neighbour)

    @pytest.mark.parametrize(
        ("mode", "total"), [("torn-bucket", 6.0), ("torn-sum", 6.5)]
    )
    def test_observation_cut_by_a_kill_is_read_from_its_buckets(
        self, killable: Path, stats_dir: Path, mode: str, total: float
    ) -> None:
        """A histogram whose count a kill left short of its buckets reads its
        count from the buckets, the cut observation included, at once; the
        sum holds the cut value only if it was stored before the kill (#2)."""
        proc = Proc(killable, mode, stats_dir)
        proc.wait()
        started = time.monotonic()
        worker = mmstats.read_file(proc.file(stats_dir))

        assert time.monotonic() - started < 0.4  # a dead writer gets one try
        assert worker.state == "dead"
        assert worker.value("hits") == 5
        hist = worker.value("sizes")
        assert hist.count == 4 and sum(hist.buckets.values()) == 4
        assert hist.sum == total

    @pytest.mark.parametrize("mode", ["grown", "growing"])
    def test_worker_killed_mid_growth_leaves_every_published_series(
        self, killable: Path, stats_dir: Path, mode: str
    ) -> None:
        """Killed inside a file growth (after padding the old chunk, or half
        way through extending the file): every series published before reads
        back exactly, and nothing past the used length is read."""
        proc = Proc(killable, mode, stats_dir)
        proc.wait()
        path = proc.file(stats_dir)
        worker = mmstats.read_file(path)

        made = worker.value("made")
        hists = {s.name: s.value for s in worker.series if s.kind == "histogram"}
        assert made > 90
        # Series k is published before "made" counts it; the one being
        # added when the file had to grow is not in the file.
        assert len(hists) == made
        for k in range(made):
            assert (hists[f"h{k}"].count, hists[f"h{k}"].sum) == (1, k + 1)
        assert worker.used <= CHUNK_SIZE < os.path.getsize(path)

    def test_worker_killed_at_random_while_growing(
        self, killable: Path, stats_dir: Path
    ) -> None:
        """Random kills while a worker adds a series per step and grows its
        file: the file always reads, and its series are complete."""
        rng = random.Random(11)
        for _ in range(4):
            proc = Proc(killable, "grow", stats_dir)
            time.sleep(rng.uniform(0.0, 0.3))
            proc.kill()
            worker = mmstats.read_file(proc.file(stats_dir))
            made = worker.value("made")
            counts = {s.name: s.value.count for s in worker.series if s.name[0] == "h"}
            assert made <= len(counts) <= made + 1
            assert all(counts[f"h{k}"] == 1 for k in range(made))
            assert counts.get(f"h{made}", 0) in (0, 1)  # the one being added


# -- SIGKILL of clean ---------------------------------------------------------

CLEAN_KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    import mmstats
    from mmstats import _archive

    point, directory = sys.argv[1], sys.argv[2]

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "locked":
        _archive._litter = die
    elif point == "writing":
        def dump(obj, f, **kwargs):
            f.write(json.dumps(obj)[:200])
            f.flush()
            die()
        json.dump = dump
    elif point == "renaming":
        os.replace = die
    elif point == "removing":
        real_remove, calls = _archive._remove, []
        def remove(paths):
            calls.append(paths)
            if len(calls) == 2:  # the litter first, then the folded files
                real_remove(paths[:1])
                die()
            real_remove(paths)
        _archive._remove = remove
    mmstats.clean(directory)
    print("not killed")
    """
)


@pytest.fixture(scope="module")
def clean_template(
    tmp_path_factory: pytest.TempPathFactory, killable: Path
) -> Iterator[tuple[Path, Proc]]:
    """A directory with a live worker, two killed and two closed ones."""
    directory = tmp_path_factory.mktemp("clean") / "stats"
    directory.mkdir(mode=0o700)
    live = Proc(killable, "neighbour", directory)
    for _ in range(2):
        proc = Proc(killable, "requests", directory)
        time.sleep(0.05)
        proc.kill()
    for n in (3, 4):
        assert Proc(killable, "closed", directory, str(n)).wait() == 0
    try:
        yield directory, live
    finally:
        live.kill()


class TestKillClean:
    @pytest.mark.parametrize("point", ["locked", "writing", "renaming", "removing"])
    def test_clean_killed_at_any_step_loses_and_doubles_nothing(
        self, clean_template: tuple[Path, Proc], tmp_path: Path, point: str
    ) -> None:
        """SIGKILL of clean while it holds the lock, writes the archive, before
        and after the rename: totals read the same throughout (reader and
        exporter), the next clean succeeds, and leaves no litter behind."""
        template, _live = clean_template
        directory = tmp_path / "stats"
        shutil.copytree(template, directory)
        stale = directory / ".closed.1.deadbeef.new"
        stale.write_bytes(b"\0" * 4096)
        os.utime(stale, (time.time() - 3600, time.time() - 3600))
        (directory / "mmstats-archive.json.4242.tmp").write_text("{")
        before = totals_of(directory)
        exported = exported_requests(directory)
        assert before[("requests", ())] == exported > 7

        killer = tmp_path / "killer.py"
        killer.write_text(CLEAN_KILLER)
        result = subprocess.run(
            [sys.executable, os.fspath(killer), point, os.fspath(directory)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert result.returncode == -signal.SIGKILL, result.stderr

        assert totals_of(directory) == before
        assert exported_requests(directory) == exported
        cli = subprocess.run(
            [sys.executable, "-m", "mmstats._cli", "clean", "--dir", str(directory)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert cli.returncode == 0, cli.stderr
        assert totals_of(directory) == before
        assert exported_requests(directory) == exported
        left = sorted(p.name for p in directory.iterdir())
        [live_file] = [n for n in left if n.endswith(".mmstats")]
        assert live_file.startswith("neighbour.")
        assert left == sorted(
            [live_file, "mmstats-archive.json", "mmstats-archive.lock"]
        )


# -- gunicorn recycling its workers ----------------------------------------------

RECYCLED_APP = textwrap.dedent(
    """
    from mmstats_wsgi import StatsMiddleware

    def hello(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    app = StatsMiddleware(hello, name="recycled", slow_seconds=10)
    """
)


def read_seconds(directory: Path, times: int = 15) -> float:
    """Median time of a full read of the directory, totals included."""
    spent = []
    for _ in range(times):
        started = time.perf_counter()
        mmstats.read_directory(directory).totals()
        spent.append(time.perf_counter() - started)
    return statistics.median(spent)


def settled_total(directory: Path, expected: int, seconds: float = 20) -> int:
    """Return the request total once it reaches ``expected`` (or the deadline).

    A worker counts a request when the server closes the response, just
    after the client has read it.
    """
    deadline = time.monotonic() + seconds
    while True:
        total = totals_of(directory).get(("requests", ()), 0)
        if total >= expected or time.monotonic() > deadline:
            return int(total)
        time.sleep(0.05)


@pytest.mark.stress
@pytest.mark.integration
def test_gunicorn_recycling_workers_every_50_requests(
    stats_dir: Path, tmp_path: Path
) -> None:
    """5,000 requests to gunicorn -w 2 --max-requests 50 (about 100 workers)
    while `mmstats clean` runs: the total is exact, files stay near the live
    workers, and a read takes as long at the end as at the start."""
    from tests.test_gunicorn_servers import gunicorn
    from tests.test_wsgi_threads import fetch

    (tmp_path / "recycled_app.py").write_text(RECYCLED_APP)
    env = {"MMSTATS_DIR": os.fspath(stats_dir), "PYTHONPATH": os.fspath(tmp_path)}
    total_requests = 5000
    cleans = 0
    files_after_clean: list[int] = []
    stop = threading.Event()

    def clean_loop() -> None:
        nonlocal cleans
        while not stop.wait(0.5):
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mmstats._cli",
                    "clean",
                    "--dir",
                    str(stats_dir),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=ROOT,
            )
            assert result.returncode == 0, result.stderr
            cleans += 1
            files_after_clean.append(len(list(stats_dir.glob("*.mmstats"))))

    started = time.monotonic()
    with gunicorn(
        "recycled_app:app", tmp_path, env, "--max-requests=50", "--preload"
    ) as base:
        with ThreadPoolExecutor(8) as pool:
            warm = list(pool.map(lambda _: fetch(base + "/")[0], range(40)))
        assert settled_total(stats_dir, 40) == 40
        mmstats.clean(os.fspath(stats_dir))
        read_before = read_seconds(stats_dir)

        cleaner = threading.Thread(target=clean_loop)
        cleaner.start()
        try:
            with ThreadPoolExecutor(8) as pool:
                statuses = list(
                    pool.map(lambda _: fetch(base + "/")[0], range(total_requests - 40))
                )
        finally:
            stop.set()
            cleaner.join()
        assert warm + statuses == [200] * total_requests
        assert settled_total(stats_dir, total_requests) == total_requests
        mmstats.clean(os.fspath(stats_dir))
        live_files = len(list(stats_dir.glob("*.mmstats")))
        read_after = read_seconds(stats_dir)
    elapsed = time.monotonic() - started

    snapshot = mmstats.read_directory(stats_dir)
    assert snapshot.bad == []
    assert snapshot.totals()[("requests", ())].value == total_requests
    mmstats.clean(os.fspath(stats_dir))
    snapshot = mmstats.read_directory(stats_dir)
    assert snapshot.workers == []  # every worker closed and was folded
    assert snapshot.totals()[("requests", ())].value == total_requests
    workers_seen = snapshot.archive.workers
    assert workers_seen >= total_requests // 50
    assert live_files <= 4
    assert max(files_after_clean) <= 6
    assert read_after <= 3 * read_before + 0.005
    figure(
        "recycling",
        {
            "requests": total_requests,
            "workers": workers_seen,
            "cleans": cleans,
            "files_after_clean_max": max(files_after_clean),
            "files_at_end": live_files,
            "read_ms_start": round(read_before * 1000, 2),
            "read_ms_end": round(read_after * 1000, 2),
            "seconds": round(elapsed, 1),
        },
    )


# -- files and the directory removed under live workers ---------------------------


@pytest.fixture
def quick_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check for a removed file every 50 ms instead of every 2 s."""
    monkeypatch.setattr(_writer, "FILE_CHECK_SECONDS", 0.05)


def serve(recorder: mmstats.RequestRecorder, n: int, path: str = "/x") -> None:
    for _ in range(n):
        request = recorder.start("GET", path, "v")
        mmstats.record_query(0.001)
        recorder.finish(request, 200)


def removed_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "was removed" in r.getMessage()]


class TestRemoved:
    def test_removed_file_is_noticed_and_a_new_one_started(
        self,
        stats_dir: Path,
        quick_checks: None,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """After its file is removed, a worker starts a new file within the
        check interval, with one WARNING; the new file holds what came after."""
        recorder = mmstats.RequestRecorder(stats_dir, "removed", slow_seconds=0)
        serve(recorder, 3)
        first = recorder.stats.path or ""
        os.unlink(first)

        with caplog.at_level(logging.WARNING, logger="mmstats"):
            deadline = time.monotonic() + 0.3
            after = 0
            while time.monotonic() < deadline:
                serve(recorder, 1)
                after += 1
        second = recorder.stats.path or ""

        assert second != first and os.path.exists(second)
        assert len(removed_warnings(caplog)) == 1
        [worker] = mmstats.read_directory(stats_dir).workers
        assert worker.path == second and worker.pid == os.getpid()
        assert 0 < worker.value("requests") <= after
        assert worker.value("in_flight") == 0
        assert worker.slots == []

    def test_the_check_costs_one_stat_every_two_seconds(
        self, stats_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Thousands of requests cost at most one stat of the file per
        FILE_CHECK_SECONDS (2 s), not one per request."""
        recorder = mmstats.RequestRecorder(stats_dir, "cheap", slow_seconds=10)
        serve(recorder, 1)
        path = recorder.stats.path
        calls = []
        real_stat = os.stat

        def counting_stat(target: Any, *args: Any, **kwargs: Any) -> Any:
            if target == path:
                calls.append(1)
            return real_stat(target, *args, **kwargs)

        monkeypatch.setattr(os, "stat", counting_stat)
        started = time.monotonic()
        serve(recorder, 5000)
        elapsed = time.monotonic() - started
        assert len(calls) <= 1 + elapsed / _writer.FILE_CHECK_SECONDS
        figure("stat_calls_for_5000_requests", (len(calls), round(elapsed, 2)))

    def test_removed_directory_is_reported_then_recreated(
        self,
        stats_dir: Path,
        quick_checks: None,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """With the directory gone, the API raises DirectoryError, the CLI
        exits 3 and the exporter reports a scrape error; the workers then
        create it again (0700) and go on."""
        recorder = mmstats.RequestRecorder(stats_dir, "gone", slow_seconds=0)
        serve(recorder, 2)
        shutil.rmtree(stats_dir)

        with pytest.raises(mmstats.DirectoryError, match="does not exist"):
            mmstats.read_directory(stats_dir)
        status, _, err = run_cli("show", stats_dir)
        assert status == 3 and "does not exist" in err
        scraped = mmstats.scrape(stats_dir).decode()
        assert 'mmstats_scrape_error{error="' in scraped and "does not exist" in scraped

        with caplog.at_level(logging.WARNING, logger="mmstats"):
            time.sleep(0.06)
            serve(recorder, 4)
        assert len(removed_warnings(caplog)) == 1
        assert os.stat(stats_dir).st_mode & 0o777 == 0o700
        [worker] = mmstats.read_directory(stats_dir).workers
        # The first request after the removal ended in the removed file; its
        # end noticed, and the three after it are in the new one.
        assert worker.value("requests") == 3

    def test_removed_private_default_directory_is_recreated_private(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        quick_checks: None,
    ) -> None:
        """The private default ($XDG_RUNTIME_DIR/mmstats) removed under a live
        worker comes back owned by the user, mode 0700."""
        monkeypatch.delenv("MMSTATS_DIR", raising=False)
        monkeypatch.setenv("XDG_RUNTIME_DIR", os.fspath(tmp_path))
        recorder = mmstats.RequestRecorder(name="defaultgone", slow_seconds=0)
        serve(recorder, 1)
        shutil.rmtree(tmp_path / "mmstats")
        time.sleep(0.06)
        serve(recorder, 2)

        st = os.lstat(tmp_path / "mmstats")
        assert (st.st_uid, st.st_mode & 0o777) == (os.getuid(), 0o700)
        [worker] = mmstats.read_directory(tmp_path / "mmstats").workers
        assert worker.value("requests") == 1  # the check runs after a request

    def test_plain_stats_notice_on_their_next_allocation(
        self, stats_dir: Path, quick_checks: None
    ) -> None:
        """A Stats writer without the recorder notices when it next allocates
        a record (a new series or thread)."""
        stats = mmstats.Stats(stats_dir, "plain")
        stats.counter("a").incr()
        first = stats.path or ""
        os.unlink(first)
        time.sleep(0.06)
        stats.counter("b").incr(2)
        stats.counter("a").incr(3)

        assert stats.path != first
        [worker] = mmstats.read_directory(stats_dir).workers
        assert (worker.value("a"), worker.value("b")) == (3, 2)

    def test_threads_serving_while_files_are_removed_again_and_again(
        self,
        stats_dir: Path,
        quick_checks: None,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Four threads serve requests while the file is removed five times:
        no error, and the last file has no stray slot or negative gauge."""
        recorder = mmstats.RequestRecorder(stats_dir, "churn", slow_seconds=0)
        serve(recorder, 1)
        stop = threading.Event()

        def work() -> None:
            while not stop.is_set():
                serve(recorder, 1, "/t")

        threads = [threading.Thread(target=work) for _ in range(4)]
        with caplog.at_level(logging.WARNING, logger="mmstats"):
            for t in threads:
                t.start()
            try:
                for _ in range(5):
                    time.sleep(0.1)
                    path = recorder.stats.path
                    if path:
                        os.unlink(path)
                time.sleep(0.1)
            finally:
                stop.set()
                for t in threads:
                    t.join()
            serve(recorder, 1)

        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        assert 1 <= len(removed_warnings(caplog)) <= 5
        [worker] = mmstats.read_directory(stats_dir).workers
        assert worker.value("requests") > 0
        assert worker.slots == []
        # Known limitation (#7): a request starting or ending in the instant
        # its file is replaced may count once in the new file's in-flight
        # gauge.
        assert abs(worker.value("in_flight")) <= len(removed_warnings(caplog))


def run_cli(command: str, directory: Path) -> tuple[int, str, str]:
    """Run a subcommand in this process; return status, output and errors."""
    out, err = io.StringIO(), io.StringIO()
    app = CliContext(out=out, err=err)
    status = run([command, "--dir", os.fspath(directory)], app, "mmstats")
    return status, out.getvalue(), err.getvalue()


# -- full disks and directories a worker may not use ------------------------------

UNUSABLE_WORKER = textwrap.dedent(
    """
    import json, logging, os, sys
    from werkzeug.test import Client
    import mmstats._writer
    from mmstats_wsgi import StatsMiddleware

    directory, requests = sys.argv[1], int(sys.argv[2])
    if os.environ.get("FIXED_TOKEN"):
        mmstats._writer.file_token = lambda: os.environ["FIXED_TOKEN"]
    warnings = []

    class Keep(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                warnings.append(record.getMessage())

    logging.getLogger("mmstats").addHandler(Keep())

    def app(environ, start_response):
        environ["mmstats.view"] = "view" + environ["PATH_INFO"].split("/")[-1]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    wrapped = StatsMiddleware(app, directory, "unusable", slow_seconds=0,
                              label_limit=10_000)
    print(os.getpid(), flush=True)
    sys.stdin.readline()  # the test may plant files first
    client = Client(wrapped)
    statuses = [client.get(f"/v/{i}", buffered=True).status_code
                for i in range(requests)]
    stats = wrapped.recorder.stats
    print(json.dumps({"statuses": sorted(set(statuses)), "warnings": warnings,
                      "disabled": stats.disabled, "path": stats.path}))
    """
)


@pytest.fixture(scope="module")
def shared_tmp() -> Iterator[Path]:
    """A scratch directory that uid 65534 can reach (pytest's is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="mmstats-faults-"))
    os.chmod(path, 0o755)
    (path / "worker.py").write_text(UNUSABLE_WORKER)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_unusable(
    shared: Path,
    directory: Path,
    requests: int,
    as_nobody: bool = False,
    plant: Any = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run UNUSABLE_WORKER; ``plant(pid)`` runs before its first request."""
    command = [sys.executable, os.fspath(shared / "worker.py"), str(directory)]
    if as_nobody:
        if os.getuid() != 0:
            pytest.skip("needs root to run a writer as uid 65534")
        command = [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            *command,
        ]
    proc = subprocess.Popen(
        [*command, str(requests)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=shared,
        env={**os.environ, "HOME": os.fspath(shared), **(env or {})},
    )
    assert proc.stdout is not None and proc.stdin is not None
    pid = int(proc.stdout.readline())
    if plant is not None:
        plant(pid)
    out, err = proc.communicate("go\n", timeout=120)
    assert proc.returncode == 0, err
    result: dict[str, Any] = json.loads(out)
    assert result["statuses"] == [200]
    assert len(result["warnings"]) == 1, result["warnings"]
    assert result["warnings"][0].startswith("Stats are off for pid")
    return result


@pytest.fixture
def small_disk(shared_tmp: Path) -> Iterator[Path]:
    """A 300 KiB tmpfs: room for one 256 KiB stats file, not two."""
    mount = Path(tempfile.mkdtemp(dir=shared_tmp))
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=300k,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


class TestUnusable:
    def test_full_disk_stops_growth_and_creation_with_one_warning(
        self, shared_tmp: Path, small_disk: Path
    ) -> None:
        """On a full disk: requests succeed; a worker whose file cannot grow
        warns once and its file says so; a worker that cannot create one warns
        once; readers name the full file system and the stunted worker."""
        grower = run_unusable(shared_tmp, small_disk, 400)
        assert "No space left on device" in grower["warnings"][0]
        assert grower["path"] is not None  # created, then could not grow
        latecomer = run_unusable(shared_tmp, small_disk, 3)
        assert latecomer["path"] is None
        assert "No space left on device" in latecomer["warnings"][0]

        snapshot = mmstats.read_directory(small_disk)
        [worker] = snapshot.workers
        assert worker.value("requests") == 400  # its cell existed before
        assert worker.problem is not None and "could not grow" in worker.problem
        assert any("KiB free" in p for p in snapshot.problems)
        shown = " ".join(_cli_output("show", small_disk).split())
        assert "Warning: Stats directory" in shown and "KiB free" in shown
        assert f"Warning: worker {worker.pid} (closed): its file could not" in shown
        slow = " ".join(_cli_output("slow", small_disk).split())
        assert "Warning: Stats directory" in slow and "KiB free" in slow
        doc = json.loads(_cli_output("json", small_disk))
        assert doc["workers"][0]["problem"] == worker.problem
        assert doc["problems"] == snapshot.problems

    def test_read_only_directory(self, shared_tmp: Path) -> None:
        """A directory its owner cannot write (mode 0500): stats off with one
        warning, requests succeed, readers name the mode."""
        directory = shared_tmp / "readonly"
        directory.mkdir(mode=0o500)
        os.chown(directory, NOBODY, NOBODY)
        result = run_unusable(shared_tmp, directory, 3, as_nobody=True)

        assert "not writable by uid 65534" in (result["disabled"] or "")
        assert list(directory.iterdir()) == []
        snapshot = mmstats.read_directory(directory)
        assert snapshot.workers == []
        assert any("has mode 500" in p for p in snapshot.problems)

    def test_directory_of_another_user(self, shared_tmp: Path) -> None:
        """A directory owned by root (0755), used by uid 65534: stats off with
        one warning; a reader running as that user says it cannot write."""
        directory = shared_tmp / "rootowned"
        directory.mkdir(mode=0o755)
        result = run_unusable(shared_tmp, directory, 3, as_nobody=True)
        assert "not writable by uid 65534" in (result["disabled"] or "")

        reader = subprocess.run(
            [
                "setpriv",
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                "--clear-groups",
                sys.executable,
                "-m",
                "mmstats._cli",
                "json",
                "--dir",
                str(directory),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=shared_tmp,
        )
        assert reader.returncode == 4  # empty, and says why
        [problem] = json.loads(reader.stdout)["problems"]
        assert "not writable by uid 65534, this reader's user" in problem

    def test_world_writable_directory_without_sticky_bit(
        self, shared_tmp: Path
    ) -> None:
        """A world-writable directory (0777, no sticky bit) is refused even by
        a worker that could write it; readers say why."""
        directory = shared_tmp / "open"
        directory.mkdir()
        os.chmod(directory, 0o777)
        result = run_unusable(shared_tmp, directory, 3, as_nobody=True)

        assert "world-writable" in (result["disabled"] or "")
        [problem] = mmstats.read_directory(directory).problems
        assert "world-writable without the sticky bit" in problem
        # show and slow fail as for an empty directory, with the reason
        # rather than advice to point workers at it.
        for command in ("show", "slow"):
            shown = subprocess.run(
                [sys.executable, "-m", "mmstats._cli", command, "--dir", directory],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert shown.returncode == 4
            assert shown.stderr == f"Error: {problem} It holds no stats files yet.\n"
        exposed = mmstats.scrape(directory).decode()
        assert "\nmmstats_directory_problems 1\n" in exposed

    @pytest.mark.parametrize("planted", ["file", "temporary", "symlink"])
    def test_file_with_our_name_owned_by_someone_else(
        self, shared_tmp: Path, tmp_path: Path, planted: str
    ) -> None:
        """A file (or symlink) planted by root under the worker's next file
        name, or its temporary name: never opened, followed or truncated;
        stats off with one warning; readers list the planted file."""
        directory = shared_tmp / f"planted-{planted}"
        directory.mkdir(mode=0o700)
        os.chown(directory, NOBODY, NOBODY)
        victim = shared_tmp / f"victim-{planted}"
        victim.write_text("precious")
        os.chmod(victim, 0o666)
        token = "0badf00d"

        def plant(pid: int) -> None:
            name = f"unusable.{pid}.{token}.mmstats"
            if planted == "temporary":
                target = directory / f".unusable.{pid}.{token}.new"
            else:
                target = directory / name
            if planted == "symlink":
                target.symlink_to(victim)
            else:
                target.write_text("planted by root")
                os.chmod(target, 0o644)

        result = run_unusable(
            shared_tmp,
            directory,
            3,
            as_nobody=True,
            plant=plant,
            env={"FIXED_TOKEN": token},
        )
        assert "File exists" in result["warnings"][0]
        assert victim.read_text() == "precious"
        snapshot = mmstats.read_directory(directory)
        assert snapshot.workers == []
        if planted == "temporary":
            assert snapshot.bad == []  # not a stats file name: not listed
        else:
            [bad] = snapshot.bad
            assert "symlink" in bad.reason or "shorter than" in bad.reason


def _cli_output(command: str, directory: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "mmstats._cli", command, "--dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.stdout


# -- many readers while many writers grow their files ------------------------------

GROWING_WRITER = textwrap.dedent(
    """
    import json, sys, time, mmstats
    directory, steps = sys.argv[1], int(sys.argv[2])
    stats = mmstats.Stats(directory, "grower")
    hits = stats.counter("hits")
    sizes = stats.histogram("sizes", unit="bytes")
    label = stats.text("label", max_bytes=64)
    hits.incr()
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(steps):
        hits.incr()
        sizes.observe(0.5 if i % 3 else 2.0)
        if i % 97 == 0:
            label.set("%08d" % i + "x" * (i % 47))
        if i % 500 == 0:
            # A new series: the file grows by a chunk every ~100 of them.
            stats.histogram("g%d" % i, unit="bytes").observe(i + 1)
    print(json.dumps({"cpu": time.process_time() - cpu,
                      "wall": time.perf_counter() - wall}))
    """
)

POLLING_READER = textwrap.dedent(
    """
    import json, os, re, sys, time, mmstats
    from mmstats._format import bucket_index
    directory, stop = sys.argv[1], sys.argv[2]
    half, two = bucket_index(0.5, 0.5), bucket_index(0.5, 2.0)
    pattern = re.compile(r"^(\\d{8})(x*)$")
    last, reads, problems = {}, 0, []
    while not os.path.exists(stop):
        try:
            snap = mmstats.read_directory(directory)
        except Exception as exc:
            problems.append(f"exception {exc!r}")
            continue
        problems += [f"bad {b.path}: {b.reason}" for b in snap.bad]
        for w in snap.workers:
            hits = w.value("hits") or 0
            if hits < last.get(w.path, 0):
                problems.append(f"hits went back in {w.path}")
            last[w.path] = hits
            hist = w.value("sizes")
            if hist is not None:
                halves, twos = hist.buckets.get(half, 0), hist.buckets.get(two, 0)
                if hist.count != halves + twos or hist.sum != 0.5 * halves + 2 * twos:
                    problems.append(f"torn histogram {hist}")
            text = w.value("label")
            if text is not None:
                m = pattern.match(text)
                if not m or len(m.group(2)) != int(m.group(1)) % 47:
                    problems.append(f"torn text {text!r}")
            for s in w.series:
                if s.name.startswith("g") and s.value.count not in (0, 1):
                    problems.append(f"torn new series {s.name}")
        reads += 1
    print(json.dumps({"reads": reads, "problems": problems[:20]}))
    """
)


def run_growers(script: Path, directory: Path, steps: int) -> list[dict[str, float]]:
    procs = [
        subprocess.Popen(
            [sys.executable, os.fspath(script), os.fspath(directory), str(steps)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    return results


@pytest.mark.stress
def test_eight_readers_while_eight_writers_grow_their_files(tmp_path: Path) -> None:
    """8 reader processes poll while 8 writers write and grow their files:
    no torn value, no bad file, no exception, and the writers' CPU time per
    operation is what it is without readers."""
    writer = tmp_path / "writer.py"
    writer.write_text(GROWING_WRITER)
    reader = tmp_path / "reader.py"
    reader.write_text(POLLING_READER)
    steps = 300_000

    alone_dir = tmp_path / "alone"
    alone_dir.mkdir(mode=0o700)
    alone = run_growers(writer, alone_dir, steps)

    watched_dir = tmp_path / "watched"
    watched_dir.mkdir(mode=0o700)
    stop = tmp_path / "stop"
    readers = [
        subprocess.Popen(
            [sys.executable, os.fspath(reader), os.fspath(watched_dir), str(stop)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    try:
        time.sleep(0.5)  # the readers are polling before the writers start
        watched = run_growers(writer, watched_dir, steps)
    finally:
        stop.touch()
    reads, problems = 0, []
    for proc in readers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        result = json.loads(out)
        reads += result["reads"]
        problems += result["problems"]

    assert problems == []
    assert reads >= 8 * 5
    snapshot = mmstats.read_directory(watched_dir)
    assert snapshot.bad == []
    assert snapshot.totals()[("hits", ())].value == 8 * (steps + 1)
    assert all(w.size > 2 * CHUNK_SIZE for w in snapshot.workers)
    cpu_alone = statistics.median(r["cpu"] for r in alone)
    cpu_watched = statistics.median(r["cpu"] for r in watched)
    # Readers take CPU from writers on a small machine (wall time), but never
    # make a write itself cost more: writers do not wait on readers.  The
    # least disturbed writer of each run is compared, as the machine may be
    # busy with other work too.
    best_alone = min(r["cpu"] for r in alone)
    assert min(r["cpu"] for r in watched) <= 1.5 * best_alone
    figure(
        "many_readers",
        {
            "reads": reads,
            "writer_cpu_s_alone": round(cpu_alone, 3),
            "writer_cpu_s_with_readers": round(cpu_watched, 3),
            "writer_wall_s_alone": round(
                statistics.median(r["wall"] for r in alone), 3
            ),
            "writer_wall_s_with_readers": round(
                statistics.median(r["wall"] for r in watched), 3
            ),
            "file_bytes": max(w.size for w in snapshot.workers),
        },
    )


# -- fork storms -------------------------------------------------------------------


def test_fork_storm_from_a_process_with_a_writing_thread(stats_dir: Path) -> None:
    """A parent whose background thread writes, and whose main thread is in
    the middle of a request, forks 20 children at once; each records a
    request, writes and exits. All finish; every total is exact; no child
    touches the parent's file, not even the request it inherited."""
    recorder = mmstats.RequestRecorder(stats_dir, "storm", slow_seconds=0)
    stats = recorder.stats
    hits = stats.counter("hits")
    stop = threading.Event()
    written = [0]

    def background() -> None:
        while not stop.is_set():
            hits.incr()
            written[0] += 1
            stats.counter("dyn", labels={"n": str(written[0] % 30)}).incr()

    held = recorder.start("POST", "/held", "v.held")
    mmstats.record_query(0.25)
    thread = threading.Thread(target=background)
    thread.start()
    pids = []
    try:
        for i in range(20):
            pid = fork()  # with threads running: the point of this test
            if pid == 0:  # the child
                code = 1
                try:
                    # The inherited request: its queries and end must stay
                    # out of the parent's slot.
                    mmstats.record_query(0.5)
                    recorder.finish(held, 200)
                    serve(recorder, 2, f"/child/{i}")
                    hits.incr(3)
                    if i % 2:
                        _writer._close_all()  # as a clean exit would
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        statuses = []
        deadline = time.monotonic() + 60
        for pid in pids:
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    statuses.append(os.waitstatus_to_exitcode(status))
                    break
                assert time.monotonic() < deadline, "a forked child hangs"
                time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    assert statuses == [0] * 20

    snapshot = mmstats.read_directory(stats_dir)
    mine = [w for w in snapshot.workers if w.pid == os.getpid()]
    children = [w for w in snapshot.workers if w.pid != os.getpid()]
    assert len(children) == 20
    assert sorted(w.state for w in children) == ["closed"] * 10 + ["dead"] * 10
    assert [c.value("hits") for c in children] == [3] * 20
    # Each child finished its two requests and the one it inherited; the
    # inherited one only in its own file.
    assert [c.value("requests") for c in children] == [3] * 20
    assert all(c.value("in_flight") == 0 and c.slots == [] for c in children)
    [parent] = mine
    assert parent.value("hits") == written[0]
    assert parent.value("requests") is None  # only the held one, not finished
    [slot] = parent.slots
    assert (slot.path, slot.queries, slot.db_seconds) == ("/held", 1, 0.25)
    assert parent.value("in_flight") == 1
    totals = snapshot.totals()
    assert totals[("hits", ())].value == written[0] + 60
    assert totals[("requests", ())].value == 60
    recorder.finish(held, 200)
