"""More attacks on what a long-running reader keeps between reads.

Held mappings, watched processes, reused histogram cells and series, the
folded read of scrapes and scans by plan (docs/RELIABILITY.md, "A reader
that reads again and again").  The ground truth is a cold read of the same
bytes (``drop_caches()`` first), or, for ``read_totals``, the totals of
``read_directory`` of the same bytes, which its docstring says it equals.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mmstats
from mmstats import _archive, _reader
from mmstats import _format as F
from tests.test_attack_caches import (
    _alive,
    _child_writer,
    _counter,
    _hist,
    _metric,
    _open_fds,
    _view,
    _write,
)


@pytest.fixture(autouse=True)
def _cold_caches() -> Iterator[None]:
    _reader.drop_caches()
    yield
    _reader.drop_caches()


def _archive_with(series: list[dict[str, Any]]) -> str:
    return json.dumps(
        {"version": 1, "workers": 1, "folded": {}, "series": series, "slow": []}
    )


def _totals(snap: mmstats.Snapshot) -> list[Any]:
    def value(v: Any) -> Any:
        if isinstance(v, mmstats.HistogramValue):
            return (v.lo, v.count, v.sum, sorted(v.buckets.items()))
        return v

    return sorted((k, s.kind, value(s.value)) for k, s in snap.totals().items())


# == the folded read (scrapes) ========================================================


@pytest.mark.parametrize("archived", ["counter", "histogram_of_other_buckets"])
def test_a_scrape_adds_live_workers_as_read_directory_does_beside_the_archive(
    stats_dir: Path, archived: str
) -> None:
    """After a deploy that changed a metric (a counter became a histogram,
    or a histogram got other buckets), the archive holds the old one and
    the live workers the new one.  ``read_directory().totals()`` keeps the
    live workers' histogram, as ``aggregate`` adds the archive last: a
    counter of the same name is left out, a histogram of the same unit in
    other buckets is moved into the live one's buckets (count and sum
    exact).  ``read_totals`` once put the archive in first and then dropped
    every live worker's observations of that name: a scrape showed the
    archived value, frozen, and flipped to the live one whenever a write
    under way made it fall back to the careful read."""
    if archived == "counter":
        old: dict[str, Any] = {"kind": "counter", "value": 5}
    else:
        hist = mmstats.HistogramValue(0.25, F.GAMMA, False, None, 3.0, {2: 3}, 6)
        old = {"kind": "histogram", "value": hist.to_json()}
    (stats_dir / _archive.ARCHIVE_NAME).write_text(
        _archive_with([{"name": "h", "help": "", "unit": "", "labels": {}, **old}])
    )
    metric = _metric(1, "h", F.KIND_HISTOGRAM, nbuckets=6, lo=0.5, gamma=F.GAMMA)
    _write(stats_dir / "app.1.a.mmstats", [metric, _hist(1, {1: 40}, 6)], **_alive())
    want = _totals(mmstats.read_directory(stats_dir, slow=False))
    if archived == "counter":
        assert want[0][1:3] == ("histogram", (0.5, 40, 1.5, [(1, 40)]))
    else:  # bucket 2 of lo 0.25 (about 0.29) is at or below 0.5: bucket 0
        assert want[0][1:3] == ("histogram", (0.5, 43, 4.5, [(0, 3), (1, 40)]))
    _reader.drop_caches()
    assert _totals(_reader.read_totals(stats_dir)) == want


@pytest.mark.parametrize("second", [F.KIND_COUNTER, F.KIND_GAUGE])
def test_a_scrape_keeps_the_kind_of_the_first_live_worker_as_read_directory_does(
    stats_dir: Path, second: int
) -> None:
    """Two live workers with one name of two kinds (a deploy under way):
    ``aggregate`` keeps the kind of the first worker by file name, as
    ``read_directory().totals()`` shows.  The folded read adds gauges first,
    then counters, then histograms, whatever the workers' order, so a scrape
    shows the other kind -- and the first again whenever a write under way
    makes it fall back to the careful read."""
    first = (
        [
            _metric(1, "x", F.KIND_HISTOGRAM, nbuckets=6, lo=0.5, gamma=F.GAMMA),
            _hist(1, {1: 4}, 6),
        ]
        if second == F.KIND_COUNTER
        else [_metric(1, "x"), _counter(1, 4)]
    )
    _write(stats_dir / "app.1.a.mmstats", first, **_alive())
    _write(
        stats_dir / "app.2.b.mmstats",
        [_metric(1, "x", second), _counter(1, 9)],
        **_alive(),
        created=1.8e9,
    )
    want = _totals(mmstats.read_directory(stats_dir, slow=False))
    _reader.drop_caches()
    assert _totals(_reader.read_totals(stats_dir)) == want


# == mappings kept between reads ======================================================


def test_a_mapping_let_go_by_another_thread_is_not_read_as_a_bad_file(
    stats_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thread A takes the kept mapping of a live file; before it reads it,
    thread B (``serve`` reads in threads) sees the file grown, lets the
    mapping go and closes it.  A then reads a closed mapping: the live file
    is listed as bad ("mmap closed or invalid") and its counts vanish from
    that read, so a scraped counter goes backwards (a counter reset for
    Prometheus).  The interleaving is made here by running B's read inside
    A's, at the point where A would be switched out."""
    target = stats_dir / "app.1.a.mmstats"
    _write(target, [_metric(1, "n"), _counter(1, 7)], **_alive())
    mmstats.read_directory(stats_dir)
    assert os.fspath(target) in _reader._held
    real_parse = _reader._parse
    interleaved: list[Any] = []

    def parse(*args: Any, **kwargs: Any) -> Any:
        if not interleaved:
            with open(target, "ab") as f:  # the writer grows its file
                f.write(bytes(F.HEADER_SIZE))
            interleaved.append(_view(mmstats.read_directory(stats_dir)))  # thread B
        return real_parse(*args, **kwargs)

    monkeypatch.setattr(_reader, "_parse", parse)
    snap = mmstats.read_directory(stats_dir)  # thread A
    assert [(b.reason) for b in snap.bad] == []
    assert snap.totals()[("n", ())].value == 7


def test_threads_reading_a_growing_live_file_never_find_it_bad(
    stats_dir: Path,
) -> None:
    """The race above with real threads: six readers and a file that grows
    every half millisecond (a writer grows by 256 KiB chunks, far less
    often, so in production it is rarer, not absent).  With real workers,
    forked and writing flat out while a scraper polls, the same shows as
    ``mmstats_unreadable_files 1`` and totals that go back for a scrape."""
    target = stats_dir / "app.1.a.mmstats"
    _write(target, [_metric(1, "n"), _counter(1, 7)], **_alive())
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    stop = time.monotonic() + 1.5
    bad: list[str] = []
    errors: list[str] = []

    def read() -> None:
        while time.monotonic() < stop:
            try:
                snap = mmstats.read_directory(stats_dir)
                bad.extend(b.reason for b in snap.bad)
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

    def grow() -> None:
        with open(target, "ab") as f:
            while time.monotonic() < stop:
                f.write(bytes(8))
                f.flush()
                time.sleep(0.0005)

    threads = [threading.Thread(target=read) for _ in range(6)]
    threads.append(threading.Thread(target=grow))
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    finally:
        sys.setswitchinterval(interval)
    assert (errors, sorted(set(bad))) == ([], [])


# == processes watched and files of workers that died ================================


def test_a_reaped_worker_leaves_no_mapping_and_no_pid_descriptor(
    stats_dir: Path,
) -> None:
    """A worker seen alive twice is kept mapped and watched.  Once it dies
    and is reaped (a gunicorn master reaps at once), /proc has no entry, and
    ``_state`` settles "dead" by ``kill(pid, 0)`` without closing the pid
    descriptor; the file's mapping is never let go either, as dead files are
    afterwards taken from the final-worker cache and never looked at again.
    Both descriptors stay until the file is removed (or the cap evicts them,
    live workers' mappings with them): docs/RELIABILITY.md says dead and
    closed files are never kept mapped."""
    before = _open_fds()
    procs = [_child_writer(stats_dir) for _ in range(3)]
    piped = _open_fds() - before  # the children's pipes
    try:
        for _ in range(3):
            assert {w.state for w in mmstats.read_directory(stats_dir).workers} == {
                "alive"
            }
        if not _reader._watched:
            pytest.skip("pidfd_open is not available here")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()  # reaped
    for _ in range(3):
        snap = mmstats.read_directory(stats_dir)
        assert {w.state for w in snap.workers} == {"dead"}
        mmstats.scrape(stats_dir)
    assert (len(_reader._held), len(_reader._watched)) == (0, 0)
    assert _open_fds() - before == piped
    for proc in procs:
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


# == series kept between reads ========================================================


def test_a_gauge_set_to_minus_zero_reads_as_a_fresh_reader_reads_it(
    stats_dir: Path,
) -> None:
    """A series is reused while its value is ``==`` the last one; -0.0 ==
    0.0, so a gauge a writer sets from 0.0 to -0.0 (``set(-x)`` of a zero)
    keeps reading 0.0 where a fresh reader (and the exporter's text) shows
    -0.0, for as long as the gauge stays there.  Cosmetic."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import mmstats, sys\n"
            f"g = mmstats.Stats({os.fspath(stats_dir)!r}, 'g').gauge('g')\n"
            "for line in sys.stdin:\n"
            "    g.set(float(line))\n"
            "    print('set', flush=True)\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write("0.0\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "set\n"
        for _ in range(2):
            mmstats.read_directory(stats_dir)
        proc.stdin.write("-0.0\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "set\n"
        warm = mmstats.read_directory(stats_dir).workers[0].value("g")
        warm_scrape = mmstats.scrape(stats_dir)
        _reader.drop_caches()
        cold = mmstats.read_directory(stats_dir).workers[0].value("g")
        _reader.drop_caches()
        assert math.copysign(1.0, cold) == -1.0
        assert math.copysign(1.0, warm) == math.copysign(1.0, cold)
        assert warm_scrape == mmstats.scrape(stats_dir)
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()


# == scans by plan ====================================================================


class _CoarseStat:
    """An lstat result whose times are whole seconds, as on file systems
    with one-second timestamps (ext4 made with 128-byte inodes, ext3, NFS
    from such a server; FAT has two seconds)."""

    def __init__(self, st: os.stat_result) -> None:
        self._st = st
        self.st_mtime_ns = st.st_mtime_ns // 10**9 * 10**9
        self.st_ctime_ns = st.st_ctime_ns // 10**9 * 10**9

    def __getattr__(self, name: str) -> Any:
        return getattr(self._st, name)


def test_a_file_added_within_the_second_of_a_planned_scan_is_seen(
    stats_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan trusts a directory stamp 0.1 s old and the next scan goes by
    plan, without a listing, while the stamp is the same.  Where the file
    system keeps whole seconds, a worker's file created later in the same
    second leaves the same stamp: scans by plan leave it out (its counts
    missing from every read) until the directory changes in another second,
    or for up to REREAD_FINAL_SECONDS (5 minutes).  Before plans, every
    scan listed the directory and saw it."""
    real_lstat = os.lstat
    here = os.fspath(stats_dir)

    def lstat(path: Any, *args: Any, **kwargs: Any) -> Any:
        st = real_lstat(path, *args, **kwargs)
        return _CoarseStat(st) if os.fspath(path) == here else st

    monkeypatch.setattr(os, "lstat", lstat)
    while time.time() % 1 > 0.3:  # start early in a second
        time.sleep(0.02)
    _write(stats_dir / "app.1.a.mmstats", [_metric(1, "n"), _counter(1, 1)], **_alive())
    time.sleep(0.15)
    for _ in range(2):
        assert mmstats.read_directory(stats_dir).totals()[("n", ())].value == 1
    assert time.time() % 1 < 0.9, "too slow a machine for this test's second"
    _write(
        stats_dir / "app.2.b.mmstats", [_metric(1, "n"), _counter(1, 10)], **_alive()
    )
    assert mmstats.read_directory(stats_dir).totals()[("n", ())].value == 11
