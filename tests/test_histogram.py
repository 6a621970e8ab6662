"""Histogram buckets: quantile accuracy and exact merging."""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmstats
import mmstats._reader
from mmstats import _format as F


def exact_quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile, the definition the reader uses."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@pytest.mark.parametrize("seed", range(5))
def test_time_quantiles_within_5_percent_from_1us_to_1h(
    stats_dir: Path, seed: int
) -> None:
    """p50, p90 and p99 are within 5 % for any mix of 1 µs to 1 h."""
    rng = random.Random(seed)
    values = [10 ** rng.uniform(-6, math.log10(3600)) for _ in range(5000)]
    stats = mmstats.Stats(stats_dir, f"qt{seed}")
    hist = stats.histogram("t")
    for v in values:
        hist.observe(v)
    read = mmstats.read_file(stats.path or "").value("t")
    for q in (0.5, 0.9, 0.99):
        exact = exact_quantile(values, q)
        assert read.quantile(q) == pytest.approx(exact, rel=0.05)


@pytest.mark.parametrize("value", [1e-6 * 1.0001, 3.3e-5, 0.0123, 1.0, 59.9, 3599.0])
def test_any_single_time_is_reported_within_5_percent(
    stats_dir: Path, value: float
) -> None:
    """Each value, alone, is its own p50 within 5 %."""
    stats = mmstats.Stats(stats_dir, f"one{value}")
    stats.histogram("t").observe(value)
    read = mmstats.read_file(stats.path or "").value("t")
    assert read.quantile(0.5) == pytest.approx(value, rel=0.05)


def test_count_quantiles_within_5_percent_from_1_to_100000(stats_dir: Path) -> None:
    """Queries per request from 1 to 100,000: small counts exact, all within 5 %."""
    rng = random.Random(3)
    values = [float(int(10 ** rng.uniform(0, 5))) for _ in range(5000)]
    stats = mmstats.Stats(stats_dir, "counts")
    hist = stats.histogram("q", unit="queries")
    for v in values:
        hist.observe(v)
    read = mmstats.read_file(stats.path or "").value("q")
    for q in (0.5, 0.9, 0.99):
        assert read.quantile(q) == pytest.approx(exact_quantile(values, q), rel=0.05)
    for small in range(0, 13):
        solo = mmstats.Stats(stats_dir.parent / f"small{small}", "small")
        solo.histogram("q", unit="queries").observe(small)
        assert mmstats.read_file(solo.path or "").value("q").quantile(0.5) == small


def test_histograms_of_workers_and_threads_merge_exactly(stats_dir: Path) -> None:
    """Merging two workers' histograms equals one histogram of all values."""
    rng = random.Random(9)
    a_values = [rng.expovariate(10) for _ in range(2000)]
    b_values = [rng.expovariate(2) for _ in range(2000)]
    # One file per directory in a process: a directory each.
    a = mmstats.Stats(stats_dir / "a", "merge_a")
    b = mmstats.Stats(stats_dir / "b", "merge_b")
    both = mmstats.Stats(stats_dir / "both", "merge_both")
    for v in a_values:
        a.histogram("t").observe(v)
        both.histogram("t").observe(v)
    for v in b_values:
        b.histogram("t").observe(v)
        both.histogram("t").observe(v)
    merged = mmstats.read_file(a.path or "").value("t")
    merged.merge(mmstats.read_file(b.path or "").value("t"))
    reference = mmstats.read_file(both.path or "").value("t")
    assert merged.buckets == reference.buckets
    assert merged.count == reference.count == 4000
    assert merged.sum == pytest.approx(reference.sum, rel=1e-12)


class TestConsistentReads:
    """Readers take a histogram cell only whole: count, sum and buckets of
    the same observations (docs/FORMAT.md, "Reading consistently")."""

    def test_reader_waits_for_an_observation_in_flight(self, stats_dir: Path) -> None:
        """A live cell whose bucket is stored but not yet its sum and count is
        not read as it stands: the reader waits for the count store (#2)."""
        stats = mmstats.Stats(stats_dir, "inflight")
        hist = stats.histogram("sizes", unit="bytes")
        for _ in range(3):
            hist.observe(2.0)
        q, d, _words = hist._tl.cell
        q[F.HIST_BUCKETS + F.bucket_index(0.5, 0.5)] += 1

        def finish() -> None:
            d[F.HIST_SUM] += 0.5
            q[F.HIST_COUNT] += 1

        timer = threading.Timer(0.1, finish)
        timer.start()
        try:
            started = time.monotonic()
            read = mmstats.read_file(stats.path or "").value("sizes")
            waited = time.monotonic() - started
        finally:
            timer.join()
        assert (read.count, read.sum) == (4, 6.5)
        assert waited >= 0.05

    def test_refused_value_leaves_the_cell_whole(self, stats_dir: Path) -> None:
        """A value whose sum is no number raises and changes nothing: the
        bucket stored before the sum is taken back, so reads stay prompt
        and exact (#2)."""

        class NoSum:
            def __lt__(self, other: object) -> bool:
                return False

            def __gt__(self, other: object) -> bool:
                return False

            def __radd__(self, other: object) -> object:
                return object()

        stats = mmstats.Stats(stats_dir, "nosum")
        hist = stats.histogram("t")
        hist.observe(0.25)
        with pytest.raises(TypeError):
            hist.observe(NoSum())  # type: ignore[arg-type]
        hist.observe(0.5)
        started = time.monotonic()
        read = mmstats.read_file(stats.path or "").value("t")
        assert time.monotonic() - started < 0.25
        assert (read.count, read.sum) == (2, 0.75)
        assert sum(read.buckets.values()) == 2

    def test_forked_writers_and_a_polling_reader_agree_exactly(
        self, stats_dir: Path
    ) -> None:
        """Two forked workers, two threads each, observe flat out while this
        process reads their files in a loop: every read has a sum that
        matches its buckets and a count that never goes back, and the final
        counts are exact (#2)."""
        per_thread = 150_000
        values = (0.5, 2.0, 8.0)  # three buckets; every sum is exact
        stats = mmstats.Stats(stats_dir, "forked")
        hist = stats.histogram("sizes", unit="bytes")
        buckets = [F.bucket_index(0.5, v) for v in values]
        assert len(set(buckets)) == 3

        def work() -> None:
            for i in range(per_thread):
                hist.observe(values[i % 3])

        pids = _fork_writers(work)

        seen: dict[str, int] = {}
        counts: set[int] = set()
        reads = 0
        with contextlib.closing(_while_writing(pids)) as rounds:
            for _ in rounds:
                for w in mmstats.read_directory(stats_dir).workers:
                    got = w.value("sizes")
                    if got is None:
                        continue
                    parts = [got.buckets.get(k, 0) for k in buckets]
                    assert got.count == sum(parts) == sum(got.buckets.values())
                    weighted = zip(values, parts, strict=True)
                    assert got.sum == sum(v * n for v, n in weighted)
                    assert got.count >= seen.get(w.path, 0)
                    seen[w.path] = got.count
                    counts.add(got.count)
                    reads += 1

        finals = [w.value("sizes") for w in mmstats.read_directory(stats_dir).workers]
        assert [f.count for f in finals] == [2 * per_thread] * 2
        for f in finals:
            assert [f.buckets[k] for k in buckets] == [2 * per_thread // 3] * 3
        assert reads > 10 and len(counts) > 5  # the reads raced the writers


def _fork_writers(work: Callable[[], None]) -> list[int]:
    """Fork two workers that each run ``work`` in two threads at once, then
    exit (status 0 when both threads finished); return their pids."""

    def child() -> None:
        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                child()
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    return pids


def _while_writing(pids: list[int]) -> Iterator[None]:
    """Yield again and again until every forked writer has exited, each with
    status 0; closed early, wait for the ones left."""
    running = set(pids)
    try:
        while running:
            yield
            for pid in list(running):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    running.discard(pid)
                    assert os.waitstatus_to_exitcode(status) == 0
    finally:
        for pid in running:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


class TestTotalsRead:
    """read_totals, what a scrape reads: live workers' counters and
    histograms go straight into the totals, each histogram checked with
    the others of its series at once."""

    def test_forked_writers_and_a_polling_scrape_agree_exactly(
        self, stats_dir: Path
    ) -> None:
        """Two forked workers, two threads each, observe and count flat out
        while this process reads the totals in a loop: every total has a sum
        that matches its buckets and a count that never goes back, and the
        counter moves with the histogram."""
        per_thread = 100_000
        values = (0.5, 2.0, 8.0)
        stats = mmstats.Stats(stats_dir, "forked")
        hist = stats.histogram("sizes", unit="bytes")
        done = stats.counter("done")
        buckets = [F.bucket_index(0.5, v) for v in values]

        def work() -> None:
            for i in range(per_thread):
                hist.observe(values[i % 3])
                done.incr()

        pids = _fork_writers(work)

        last = 0
        reads = folded = 0
        with contextlib.closing(_while_writing(pids)) as rounds:
            for _ in rounds:
                snap = mmstats._reader.read_totals(stats_dir)
                folded += snap._totals is not None
                totals = snap.totals()
                got = totals[("sizes", ())].value if ("sizes", ()) in totals else None
                if got is not None:
                    parts = [got.buckets.get(k, 0) for k in buckets]
                    assert got.count == sum(parts) == sum(got.buckets.values())
                    weighted = zip(values, parts, strict=True)
                    assert got.sum == sum(v * n for v, n in weighted)
                    assert got.count >= last
                    last = got.count
                    reads += 1
        assert reads > 10 and folded > 0
        totals = mmstats._reader.read_totals(stats_dir).totals()
        assert totals[("sizes", ())].value.count == 4 * per_thread
        assert totals[("done", ())].value == 4 * per_thread

    def test_an_observation_under_way_is_read_the_careful_way(
        self, stats_dir: Path
    ) -> None:
        """A live cell whose bucket holds one more than its count (its
        writer between the two stores) makes the totals be read again the
        careful way, which waits for the writer and then takes the buckets."""
        stats = mmstats.Stats(stats_dir, "app")
        hist = stats.histogram("t")
        for v in (0.001, 0.002, 0.002):
            hist.observe(v)
        stats.counter("c").incr(4)
        (path,) = stats_dir.glob("*.mmstats")
        warm = mmstats._reader.read_totals(stats_dir)
        assert warm._totals is not None  # folded
        layout = mmstats._reader._layouts[os.fspath(path)][1]
        ((mid, meta),) = [(m, x) for m, x in layout.metrics.items() if x["name"] == "t"]
        (word,) = [w for m, w, _ in layout.cells if m == mid]
        k = F.bucket_index(meta["lo"], 0.002)
        with open(path, "r+b") as f:
            f.seek(8 * (word + F.HIST_BUCKETS + k))
            (n,) = struct.unpack("=q", f.read(8))
            f.seek(8 * (word + F.HIST_BUCKETS + k))
            f.write(struct.pack("=q", n + 1))
        started = time.monotonic()
        snap = mmstats._reader.read_totals(stats_dir)
        assert snap._totals is None  # read again, the careful way
        assert time.monotonic() - started >= mmstats._reader.RECORD_WAIT * 0.9
        totals = snap.totals()
        got = totals[("t", ())].value
        assert (got.count, got.buckets[k]) == (4, 3)  # the buckets are the truth
        assert totals[("c", ())].value == 4

    def test_the_totals_equal_those_of_a_whole_read(self, stats_dir: Path) -> None:
        """Labels, several threads' cells, closed workers and the archive:
        read_totals and read_directory add up to the same totals."""
        code = f"""
import threading, mmstats
stats = mmstats.Stats({os.fspath(stats_dir)!r}, "gone")
stats.counter("c", labels={{"k": "a"}}).incr(5)
stats.histogram("h").observe(0.25)
"""
        result = subprocess.run([sys.executable, "-c", code], check=False)
        assert result.returncode == 0
        stats = mmstats.Stats(stats_dir, "app")

        def work(i: int) -> None:
            for j in range(50):
                stats.counter("c", labels={"k": "ab"[j % 2]}).incr(i + 1)
                stats.histogram("h").observe(0.001 * (i + j + 1))
                stats.gauge("g").incr(1)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats.text("v").set("x")

        def view(totals: dict[Any, Any]) -> dict[Any, Any]:
            return {
                key: (s.kind, (s.value.count, s.value.sum, s.value.buckets))
                if s.kind == "histogram"
                else (s.kind, s.value)
                for key, s in totals.items()
            }

        for _ in range(3):  # cold, then from what is kept
            whole = mmstats.read_directory(stats_dir, slow=False)
            folded = mmstats._reader.read_totals(stats_dir)
            assert folded._totals is not None
            assert view(folded.totals()) == view(whole.totals())
            assert [w.state for w in folded.workers] == [w.state for w in whole.workers]
            live = [w for w in folded.workers if w.state == "alive"]
            assert {s.name for w in live for s in w.series} == {"g", "v"}


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.floats(min_value=-1e12, max_value=1e12, allow_nan=False), max_size=40
    ),
    seed=st.integers(0, 2**32),
)
def test_a_total_sum_is_the_same_float_however_its_parts_were_grouped(
    values: list[float], seed: int
) -> None:
    """Histograms added one after another, or in any other grouping (a
    worker's cells, then workers, then the archive), have the same sum: the
    exact sum of every part, rounded once.  The archive's exact parts add up
    to the same exact sum, so a clean changes no _sum."""
    values = [0.0, *values]

    def hist(value: float) -> mmstats.HistogramValue:
        return mmstats.HistogramValue(2.0**-20, F.GAMMA, False, 1, value, {100: 1})

    in_turn = hist(values[0])
    for value in values[1:]:
        in_turn.merge(hist(value))

    rng = random.Random(seed)
    groups = [hist(v) for v in values]
    while len(groups) > 1:  # any order and grouping
        a = groups.pop(rng.randrange(len(groups)))
        b = groups.pop(rng.randrange(len(groups)))
        a.merge(b)
        groups.append(a)

    assert in_turn.sum == groups[0].sum == math.fsum(values)
    parts = mmstats._reader.exact_parts(in_turn.sums())
    assert len(parts) <= 40
    assert sum(map(Fraction, parts)) == sum(map(Fraction, values))
    archived = mmstats.HistogramValue.from_json(
        {**in_turn.to_json(), "sum_parts": parts}
    )
    archived.merge(hist(1.5))
    assert archived.sum == math.fsum([*values, 1.5])


def test_a_sum_stays_the_same_float_when_workers_die_and_are_cleaned(
    stats_dir: Path,
) -> None:
    """Four forked workers, two threads each, observe awkward floats and
    wait; the exported _sum is read, then two are killed (their cells move
    from the live to the dead workers' sums), then cleaned into the archive
    (which keeps their sum exactly), then the others: every read of the
    _sum, careful or folded, is the same float, so Prometheus never sees it
    drop."""
    rng = random.Random(7)
    # Magnitudes far apart, so that each regrouping of the additions rounds.
    plans = [
        [rng.random() * 10.0 ** rng.randint(-6, 9) for _ in range(200)]
        for _ in range(8)
    ]
    pids = []
    for worker in range(4):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                stats = mmstats.Stats(stats_dir, f"w{worker}")
                h = stats.histogram("t", "t")

                def observe(plan: list[float], h: Any = h) -> None:
                    for value in plan:
                        h.observe(value)

                threads = [
                    threading.Thread(target=observe, args=(plans[2 * worker + i],))
                    for i in range(2)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                time.sleep(120)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    try:
        deadline = time.monotonic() + 30
        while True:
            seen = mmstats.read_directory(stats_dir).totals().get(("t", ()))
            if seen is not None and seen.value.count == 1600:
                break
            assert time.monotonic() < deadline
            time.sleep(0.02)

        def sums() -> set[float]:
            careful = mmstats.read_directory(stats_dir).totals()[("t", ())].value
            folded = mmstats._reader.read_totals(stats_dir).totals()[("t", ())].value
            assert careful.count == folded.count == 1600
            return {careful.sum, folded.sum}

        # The exact sum of the cells' sums (a thread's cell adds its values
        # in turn; a thread that ended hands its cell to the next), rounded.
        [want] = sums()
        observed = math.fsum(v for plan in plans for v in plan)
        assert math.isclose(want, observed, rel_tol=1e-12)
        for pid in pids[:2]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert sums() == {want}
        mmstats.clean(stats_dir)
        assert sums() == {want}
        for pid in pids[2:]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        mmstats.clean(stats_dir)
        assert sums() == {want}
        assert not list(stats_dir.glob("*.mmstats"))
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
