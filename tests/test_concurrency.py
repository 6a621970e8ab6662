"""Real threads and forked processes writing while readers read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import mmstats
from mmstats import _format as F
from mmstats._writer import CHUNK_SIZE
from tests.workers import held_elsewhere

WRITER = """
import sys, threading, mmstats
directory, incrs, observes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stats = mmstats.Stats(directory, "stress")
counter = stats.counter("hits")
hist = stats.histogram("sizes", unit="bytes")
label = stats.text("label", max_bytes=64)

def work(n):
    every = max(1, incrs // observes)
    for i in range(incrs):
        counter.incr()
        if i % every == 0:
            hist.observe(0.5 if i % 3 else 2.0)
        if i % 50_000 == 0:
            label.set("%08d" % i + "x" * (i % 47))

threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
for t in threads: t.start()
for t in threads: t.join()
"""

READER = """
import json, os, re, sys, time, mmstats
directory, stop = sys.argv[1], sys.argv[2]
from mmstats._format import bucket_index
half, two = bucket_index(0.5, 0.5), bucket_index(0.5, 2.0)
pattern = re.compile(r"^(\\d{8})(x*)$")
last = {}
reads = violations = 0
while not os.path.exists(stop):
    snap = mmstats.read_directory(directory)
    if snap.bad:
        violations += 1
        print("bad", snap.bad, file=sys.stderr)
    for w in snap.workers:
        hits = w.value("hits") or 0
        if hits < last.get(w.path, 0):
            violations += 1
        last[w.path] = hits
        hist = w.value("sizes")
        if hist is not None:
            halves, twos = hist.buckets.get(half, 0), hist.buckets.get(two, 0)
            if hist.count != sum(hist.buckets.values()):
                violations += 1
            if hist.sum != 0.5 * halves + 2.0 * twos:
                violations += 1
        text = w.value("label")
        if text is not None:
            m = pattern.match(text)
            if not m or len(m.group(2)) != int(m.group(1)) % 47:
                violations += 1
        reads += 1
    time.sleep(0.001)
print(json.dumps({"reads": reads, "violations": violations}))
"""


def run_script(code: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.stress
def test_forked_threaded_writers_and_a_polling_reader(
    stats_dir: Path, tmp_path: Path
) -> None:
    """4 processes x 2 threads: exact totals, and no read is ever torn.

    Each thread makes 1,000,000 counter increments and 200,000 histogram
    observations while another process reads the directory in a loop.
    """
    stop = tmp_path / "stop"
    reader = run_script(READER, stats_dir, stop)
    writers = [run_script(WRITER, stats_dir, 1_000_000, 200_000) for _ in range(4)]
    for w in writers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err
    stop.touch()
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    result = json.loads(out)
    assert result["reads"] > 10
    assert result["violations"] == 0

    snapshot = mmstats.read_directory(stats_dir)
    assert len(snapshot.workers) == 4
    totals = snapshot.totals()
    assert totals[("hits", ())].value == 8_000_000
    hist = totals[("sizes", ())].value
    assert hist.count == 8 * 200_000
    assert hist.count == sum(hist.buckets.values())


def test_thread_churn_reuses_records(stats_dir: Path) -> None:
    """10,000 short threads lose no increment and the file does not grow."""
    stats = mmstats.Stats(stats_dir, "churn")
    counter = stats.counter("hits")
    hist = stats.histogram("t")
    counter.incr()

    def work() -> None:
        counter.incr()
        hist.observe(0.01)

    for _batch in range(1250):
        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    worker = mmstats.read_file(stats.path or "")
    assert worker.value("hits") == 10_001
    assert worker.value("t").count == 10_000
    assert os.path.getsize(stats.path or "") == CHUNK_SIZE
    # At most 9 threads were ever alive at once: 9 thread slots at most.
    assert stats._writer.next_thread_slot <= 9


def fork_and_run(child: object) -> int:
    """Fork; run ``child()`` in the child and return its exit status."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child()  # type: ignore[operator]
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


class TestFork:
    def test_child_writes_its_own_file_and_inherits_no_counts(
        self, stats_dir: Path
    ) -> None:
        """After fork the child starts a new file at zero; the parent's is untouched."""
        stats = mmstats.Stats(stats_dir, "fork")
        counter = stats.counter("hits")
        counter.incr(5)
        parent_path = stats.path

        assert fork_and_run(lambda: counter.incr(1)) == 0

        counter.incr()
        snapshot = mmstats.read_directory(stats_dir)
        by_pid = {w.pid: w for w in snapshot.workers}
        assert len(by_pid) == 2
        assert by_pid[os.getpid()].value("hits") == 6
        assert by_pid[os.getpid()].path == parent_path
        [child] = [w for pid, w in by_pid.items() if pid != os.getpid()]
        assert child.value("hits") == 1
        assert child.state == "dead"  # os._exit skips the clean-exit mark

    def test_fork_while_a_background_thread_writes(self, stats_dir: Path) -> None:
        """A writing thread in the parent neither hangs nor leaks into the child."""
        stats = mmstats.Stats(stats_dir, "forkbg")
        counter = stats.counter("hits")
        stop = threading.Event()
        written = [0]

        def background() -> None:
            while not stop.is_set():
                counter.incr()
                written[0] += 1
                stats.counter("dyn", labels={"n": str(written[0] % 50)}).incr()

        thread = threading.Thread(target=background)
        thread.start()
        try:
            statuses = [fork_and_run(lambda: counter.incr(3)) for _ in range(5)]
        finally:
            stop.set()
            thread.join()
        assert statuses == [0] * 5

        snapshot = mmstats.read_directory(stats_dir)
        mine = [w for w in snapshot.workers if w.pid == os.getpid()]
        children = [w for w in snapshot.workers if w.pid != os.getpid()]
        assert mine[0].value("hits") == written[0]
        assert [c.value("hits") for c in children] == [3] * 5

    def test_lock_held_at_fork_does_not_hang_the_child(self, stats_dir: Path) -> None:
        """A writer lock held by another thread at fork time is fresh in the child."""
        stats = mmstats.Stats(stats_dir, "forklock")
        stats.counter("hits").incr()
        with held_elsewhere(stats._writer.lock):
            started = time.monotonic()
            status = fork_and_run(lambda: stats.counter("new_metric").incr())
            assert status == 0
            assert time.monotonic() - started < 10
        children = [
            w for w in mmstats.read_directory(stats_dir).workers if w.pid != os.getpid()
        ]
        assert [c.value("new_metric") for c in children] == [1]


def test_reused_pid_with_another_start_time_is_dead(stats_dir: Path) -> None:
    """A file whose pid now belongs to another process is read as dead."""
    stats = mmstats.Stats(stats_dir, "reuse")
    stats.counter("c").incr()
    path = stats.path or ""
    assert mmstats.read_file(path).state == "alive"

    copy = stats_dir / "copy.1.deadbeef.mmstats"
    data = bytearray(Path(path).read_bytes())
    ticks = int.from_bytes(data[F.H_START_TICKS : F.H_START_TICKS + 8], sys.byteorder)
    data[F.H_START_TICKS : F.H_START_TICKS + 8] = (ticks + 1).to_bytes(8, sys.byteorder)
    copy.write_bytes(data)
    os.chmod(copy, 0o600)
    assert mmstats.read_file(copy).state == "dead"


def test_thread_taking_over_an_ended_threads_cells_continues_them(
    stats_dir: Path,
) -> None:
    """Threads run one after another share one thread slot: each takes over
    the cells the ended one left (its ident may be the ended one's or not)
    and counts on from their values, so nothing is lost or counted twice (#2)."""
    stats = mmstats.Stats(stats_dir, "handover")
    counter = stats.counter("hits")
    hist = stats.histogram("sizes", unit="bytes")

    def work(k: int) -> None:
        counter.incr(k)
        hist.observe(0.5 if k % 2 else 2.0)

    for k in range(1, 201):
        thread = threading.Thread(target=work, args=(k,))
        thread.start()
        thread.join()

    worker = mmstats.read_file(stats.path or "")
    assert worker.value("hits") == sum(range(1, 201))
    sizes = worker.value("sizes")
    assert (sizes.count, sizes.sum) == (200, 100 * 0.5 + 100 * 2.0)
    assert stats._writer.next_thread_slot == 1
