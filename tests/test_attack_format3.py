"""Attacks on format 3 (power-of-two histogram buckets) and what came with it.

Histograms of format 2 and 3 side by side in the totals (``merge_moved``),
``clean`` in the middle of an upgrade, the Prometheus names and ``le``
buckets, the scan that polls every watched pid descriptor at once, the
worker table that leaves out columns on narrow terminals, and the folded
read of scrapes on damaged files.

The ground truth is the careful read of the same bytes by a fresh reader
(``read_directory().totals()`` after ``drop_caches()``), which
``read_totals`` and ``mmstats.scrape()`` must agree with, and, across a
``clean``, the scrape taken just before it.
"""

from __future__ import annotations

import bisect
import io
import itertools
import json
import math
import os
import random
import re
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len
from rich.console import Console

import mmstats
from mmstats import _cli, _exporter, _reader, _render
from mmstats import _format as F
from mmstats._cli import SUMMARY_NAMES
from mmstats._render import show_view
from tests.test_attack_caches import (
    DEAD_PID,
    _alive,
    _cell,
    _counter,
    _header,
    _image,
    _metric,
    _put,
)


@pytest.fixture(autouse=True)
def _cold_caches() -> Iterator[None]:
    _reader.drop_caches()
    yield
    _reader.drop_caches()


# -- building files of format 2 and 3 ----------------------------------------------


def _scheme(unit: str, version: int) -> tuple[float, float, int]:
    """Return (lo, gamma, nbuckets) that writers of ``version`` use for ``unit``."""
    if version == 2:
        lo, gamma = (1e-6 if unit == "seconds" else 0.5), F.GAMMA_V2
    else:
        lo, gamma = (F.SECONDS_RANGE[0] if unit == "seconds" else 0.5), F.GAMMA
    hi = F.SECONDS_RANGE[1] if unit == "seconds" else F.COUNT_RANGE[1]
    return lo, gamma, math.ceil(math.log(hi / lo) / math.log(gamma)) + 2


def _hmetric(
    mid: int,
    name: str,
    unit: str,
    version: int = 3,
    labels: dict[str, str] | None = None,
) -> bytes:
    """A histogram's metric record as a writer of ``version`` makes it."""
    lo, gamma, n = _scheme(unit, version)
    blob = json.dumps(
        {"name": name, "help": "h", "unit": unit, "labels": labels or {}}
    ).encode()
    flags = F.FLAG_INTEGER if unit in F.INTEGER_UNITS else 0
    size = F.round8(F.METRIC_FIXED.size + len(blob))
    r = bytearray(size)
    F.METRIC_FIXED.pack_into(
        r, 0, F.R_METRIC, size, mid, F.KIND_HISTOGRAM, flags, n, lo, gamma, 0, len(blob)
    )
    r[F.METRIC_FIXED.size : F.METRIC_FIXED.size + len(blob)] = blob
    return bytes(r)


def _hcell(
    mid: int, unit: str, values: list[float], version: int = 3, tslot: int = 0
) -> bytes:
    """A histogram cell holding ``values``, bucketed as a writer of ``version``."""
    lo, gamma, n = _scheme(unit, version)
    bounds = [F.bucket_bound(lo, gamma, k) for k in range(n - 1)]
    words = [0] * n
    for v in values:
        words[bisect.bisect_left(bounds, v)] += 1
    head = struct.pack("=Qd", len(values), float(sum(values)))
    body = b"".join(w.to_bytes(8, F.NATIVE_ORDER) for w in words)
    return _cell(mid, head + body, tslot)


def _vwrite(path: Path, records: list[bytes], version: int = 3, **header: Any) -> None:
    """Write a stats file of format ``version`` (2 or 3)."""
    data = bytearray(_image(records, **header))
    struct.pack_into("=I", data, F.H_VERSION, version)
    path.write_bytes(bytes(data))


def _hist_lines(exposition: bytes, family: str) -> list[str]:
    """The lines of one histogram family: buckets, count and sum."""
    return [
        line
        for line in exposition.decode().splitlines()
        if line.startswith(family + "_")
    ]


def _count(exposition: bytes, family: str, labels: str = "") -> int | None:
    for line in exposition.decode().splitlines():
        if line.startswith(f"{family}_count{labels} "):
            return int(line.split()[-1])
    return None


def _hist_totals(snap: mmstats.Snapshot) -> list[Any]:
    return sorted(
        (
            k,
            s.unit,
            s.value.lo,
            s.value.count,
            s.value.sum,
            sorted(s.value.buckets.items()),
        )
        for k, s in snap.totals().items()
        if s.kind == "histogram"
    )


def _all_reads_agree(stats_dir: Path) -> list[Any]:
    """Read the totals the three ways; assert they agree; return them."""
    _reader.drop_caches()
    careful = _hist_totals(mmstats.read_directory(stats_dir, slow=False))
    _reader.drop_caches()
    folded = _hist_totals(_reader.read_totals(stats_dir))
    assert folded == careful
    # And again with the caches a long-running reader keeps.
    assert _hist_totals(_reader.read_totals(stats_dir)) == careful
    assert _hist_totals(mmstats.read_directory(stats_dir, slow=False)) == careful
    return careful


# == findings =======================================================================


def test_histograms_of_one_name_in_other_units_are_not_added_together(
    stats_dir: Path,
) -> None:
    """A name reused for another unit (a deploy changed ``size`` from bytes
    to items) must not be added up: the docs move only a histogram "of the
    same name and unit", and the code keeps the first for another unit.
    Yet two units that happen to share a bucket scheme (every unit but
    seconds starts at 0.5) were merged into one histogram of bytes and
    items, by read_directory, read_totals and Worker.total alike."""
    _vwrite(
        stats_dir / "app.1.a.mmstats",
        [_hmetric(1, "size", "bytes"), _hcell(1, "bytes", [100.0, 200.0])],
        **_alive(),
    )
    _vwrite(
        stats_dir / "app.2.b.mmstats",
        [_hmetric(1, "size", "items"), _hcell(1, "items", [3.0])],
        **_alive(),
        created=1.8e9,
    )
    ((key, unit, _lo, count, total, _),) = _all_reads_agree(stats_dir)
    assert (key, unit, count, total) == (("size", ()), "bytes", 2, 300.0)
    exposed = mmstats.scrape(stats_dir)
    assert _count(exposed, "mmstats_size") == 2

    # One worker with the name under two label sets of other units.
    _reader.drop_caches()
    for f in stats_dir.iterdir():
        f.unlink()
    _vwrite(
        stats_dir / "app.3.c.mmstats",
        [
            _hmetric(1, "size", "bytes", labels={"q": "a"}),
            _hmetric(2, "size", "items", labels={"q": "b"}),
            _hcell(1, "bytes", [100.0]),
            _hcell(2, "items", [3.0, 4.0]),
        ],
        **_alive(),
    )
    (worker,) = mmstats.read_directory(stats_dir).workers
    assert worker.total("size").count == 1


def test_a_name_of_another_unit_keeps_its_count_across_clean(stats_dir: Path) -> None:
    """Before a clean, a dead worker's histogram came first in the totals
    and a live worker's of the same name in another unit was left out;
    after the clean the dead one is in the archive, which comes last, so
    the live one is kept instead: the exported histogram switched units
    and its ``_count`` went from 2 back to 1.  The totals must be the same
    just before and just after a clean."""
    _vwrite(
        stats_dir / "app.1.dead.mmstats",
        [_hmetric(1, "x", "seconds", version=2), _hcell(1, "seconds", [0.1, 0.2], 2)],
        version=2,
        pid=DEAD_PID,
    )
    _vwrite(
        stats_dir / "app.2.live.mmstats",
        [_hmetric(1, "x", "bytes"), _hcell(1, "bytes", [100.0])],
        **_alive(),
    )
    before_totals = _all_reads_agree(stats_dir)
    before = mmstats.scrape(stats_dir)
    result = mmstats.clean(stats_dir)
    assert len(result.folded) == 1
    after_totals = _all_reads_agree(stats_dir)
    after = mmstats.scrape(stats_dir)
    assert _hist_lines(after, "mmstats_x") == _hist_lines(before, "mmstats_x")
    assert after_totals == before_totals


def test_a_name_of_another_kind_keeps_its_samples_across_clean(stats_dir: Path) -> None:
    """The same with a name whose kind changed (a counter became a
    histogram): the dead worker's counter was exported before the clean,
    the live worker's histogram after it."""
    _vwrite(
        stats_dir / "app.1.dead.mmstats",
        [_metric(1, "x"), _counter(1, 7)],
        pid=DEAD_PID,
    )
    _vwrite(
        stats_dir / "app.2.live.mmstats",
        [_hmetric(1, "x", "bytes"), _hcell(1, "bytes", [100.0])],
        **_alive(),
    )
    _all_reads_agree(stats_dir)
    before = [
        line
        for line in mmstats.scrape(stats_dir).decode().splitlines()
        if line.startswith("mmstats_x")
    ]
    mmstats.clean(stats_dir)
    _all_reads_agree(stats_dir)
    after = [
        line
        for line in mmstats.scrape(stats_dir).decode().splitlines()
        if line.startswith("mmstats_x")
    ]
    assert after == before


def test_a_metric_named_with_the_prefix_gets_a_family_of_its_own(
    stats_dir: Path,
) -> None:
    """``metric_name`` now leaves a name that begins with the prefix as it
    is, so ``mmstats_requests`` and ``requests`` (or ``mmstats_workers``
    and mmstats' own ``workers``) became one family written twice: a
    second HELP and TYPE for the same name, which Prometheus refuses,
    failing the whole scrape."""
    stats = mmstats.Stats(stats_dir, "app")
    stats.counter("requests").incr(2)
    stats.counter("mmstats_requests").incr(5)
    stats.gauge("mmstats_workers").set(3)
    exposed = mmstats.scrape(stats_dir).decode()
    families = re.findall(r"^# TYPE (\S+) ", exposed, re.M)
    assert len(families) == len(set(families)), sorted(families)
    promtool = (
        subprocess.run(
            ["promtool", "check", "metrics"],
            input=exposed.encode(),
            capture_output=True,
            check=False,
        )
        if os.path.exists("/usr/bin/promtool")
        else None
    )
    if promtool is not None:
        assert b"parsing error" not in promtool.stderr, promtool.stderr


def test_every_series_of_a_histogram_family_has_the_power_of_two_le_buckets(
    stats_dir: Path,
) -> None:
    """After an upgrade, a label set that only format 2 workers or the
    archive hold (a view no new worker has served yet) was exported in
    format 2's buckets, le="1.999004627104433e-06" and so on, beside the
    family's other series with le="1.0": series of one family with other
    bounds, which sum by (le) and histogram_quantile over them cannot add.
    Every series is exported in format 3's buckets, count and sum exact."""
    old = {"view": "archived"}
    _vwrite(
        stats_dir / "app.0.old.mmstats",
        [
            _hmetric(1, "rt", "seconds", 2, old),
            _hmetric(2, "rows", "count", 2, old),
            _hcell(1, "seconds", [0.5, 3.0], 2),
            _hcell(2, "count", [7.0], 2),
        ],
        2,
        pid=DEAD_PID - 1,
    )
    mmstats.clean(stats_dir)
    for n, (view, version) in enumerate((("old", 2), ("new", 3))):
        header: dict[str, Any] = _alive() if version == 3 else {"pid": DEAD_PID}
        labels = {"view": view}
        _vwrite(
            stats_dir / f"app.{n + 1}.w.mmstats",
            [
                _hmetric(1, "rt", "seconds", version, labels),
                _hmetric(2, "rows", "count", version, labels),
                _hcell(1, "seconds", [1.0, 2.0**-10], version),
                _hcell(2, "count", [1.0, 4.0, 1000.0], version),
            ],
            version,
            **header,
        )
    exposed = mmstats.scrape(stats_dir).decode()
    totals = _reader.read_totals(stats_dir).totals()
    for family, name in (("mmstats_rt", "rt"), ("mmstats_rows", "rows")):
        les: dict[str, list[str]] = {}
        for view, le in re.findall(
            rf'^{family}_bucket{{view="(\w+)",le="([^"]+)"}}', exposed, re.M
        ):
            les.setdefault(view, []).append(le)
        assert sorted(les) == ["archived", "new", "old"]
        assert les["archived"] == les["old"] == les["new"], family
        for le in les["new"][:-1]:
            assert math.log2(float(le)).is_integer(), le
        for view in les:
            series = totals[(name, (("view", view),))].value
            want = f'{family}_count{{view="{view}"}} {series.count}\n'
            assert want in exposed
            sum_line = f'{family}_sum{{view="{view}"}} '
            assert f"{sum_line}{_exporter.format_value(series.sum)}\n" in exposed


# Sums of cells whose total depends on the order they are added in: the
# cells of three workers, two threads each (found by a random search).
_ORDERED_SUMS = [
    [0.007687918872773447, 4.419006112954338e-05],
    [37.780476896793004, 5.508514410324789],
    [0.0005054203736480441, 0.0030967005347633902],
]


@pytest.mark.parametrize("shape", ["packed", "careful_cell", "two_records"])
def test_a_scrape_adds_histogram_sums_as_the_careful_read_does(
    stats_dir: Path, shape: str
) -> None:
    """The folded read added every cell's sum into one running total per
    metric record, where read_directory adds each worker's cells, then the
    workers: with two threads' cells per worker the totals differ in the
    last bit (43.3003255369601 against 43.30032553696011).  A scrape falls
    back to the careful read whenever a write is under way, so on a busy
    server the exported _sum went down by a rounding from one scrape to
    the next, which Prometheus takes for a counter reset (a spike of the
    whole sum in rate(), and in every mean computed from it)."""
    for i, (a, b) in enumerate(_ORDERED_SUMS):
        help_text = "other help" if shape == "two_records" and i == 1 else "h"
        meta = bytearray(_hmetric(1, "t", "seconds"))
        if help_text != "h":  # the same series, in a record of its own
            meta = bytearray(_hmetric(1, "t", "seconds").replace(b'"h"', b'"H"'))
        first = bytearray(_hcell(1, "seconds", [a], tslot=0))
        second = bytearray(_hcell(1, "seconds", [b], tslot=1))
        struct.pack_into("=d", first, F.CELL_PAYLOAD + 8, a)
        struct.pack_into("=d", second, F.CELL_PAYLOAD + 8, b)
        if shape == "careful_cell" and i == 1:
            # A bucket too big to be packed: this cell is read the careful
            # way by the scrape too.
            big = 2**50
            struct.pack_into("=Q", second, F.CELL_PAYLOAD, big + 1)
            struct.pack_into("=Q", second, F.CELL_PAYLOAD + 16, big)
        _vwrite(
            stats_dir / f"app.{i}.w.mmstats",
            [bytes(meta), bytes(first), bytes(second)],
            **_alive(),
            created=1.7e9 + i,
        )
    _reader.drop_caches()
    careful = mmstats.read_directory(stats_dir).totals()[("t", ())].value
    _reader.drop_caches()
    folded = _reader.read_totals(stats_dir).totals()[("t", ())].value
    assert (folded.count, folded.sum) == (careful.count, careful.sum)
    assert folded.sum == careful.sum  # to the last bit
    assert _all_reads_agree(stats_dir)


def _observing_child(stats_dir: Path, n: int, ready_w: int, hold_r: int) -> None:
    """A forked worker: four threads observe values of many magnitudes; then
    it says so and waits, alive, until told to exit."""
    stats = mmstats.Stats(stats_dir, f"w{n}")
    hist = stats.histogram("t", unit="seconds")
    rng = random.Random(n)
    # No thread ends before all have written: each keeps a cell of its own.
    barrier = threading.Barrier(4)

    def work() -> None:
        barrier.wait()
        for _ in range(50):
            hist.observe(rng.random() * 10 ** rng.randint(-4, 3))
        barrier.wait()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    os.write(ready_w, b"r")
    os.read(hold_r, 1)


def _fork_children(
    stats_dir: Path, n: int, child: Callable[[Path, int, int, int], None]
) -> tuple[list[int], int, int]:
    """Fork ``n`` children running ``child(stats_dir, i, ready, hold)``;
    return their pids, the end their readiness comes on, and the end that
    holds them until it is closed."""
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pids: list[int] = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                os.close(ready_r)
                os.close(hold_w)
                child(stats_dir, i, ready_w, hold_r)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(ready_w)
    os.close(hold_r)
    return pids, ready_r, hold_w


def test_forked_writers_threads_sums_read_the_same_both_ways(stats_dir: Path) -> None:
    """Real writers: three forked workers, four threads each (a cell each);
    the scrape's read and the careful read give the very same _sum.  (Which
    cells' sums round apart depends on their values and file order: the
    files above show the bug for certain, this one checks real files.)"""
    pids, ready_r, hold_w = _fork_children(stats_dir, 3, _observing_child)
    try:
        for _ in pids:
            assert os.read(ready_r, 1) == b"r"
        _reader.drop_caches()
        careful = mmstats.read_directory(stats_dir).totals()[("t", ())].value
        _reader.drop_caches()
        folded = _reader.read_totals(stats_dir).totals()[("t", ())].value
        assert folded.count == careful.count == 600
        assert folded.sum == careful.sum
    finally:
        os.close(hold_w)
        os.close(ready_r)
        for pid in pids:
            os.waitpid(pid, 0)


# == what held up ===================================================================

# Values whose sums are exact in any order (dyadic), in seconds and counts.
_SECONDS = [2.0**-20, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 2.0**16, 2.0**17]
_COUNTS = [0.0, 1.0, 2.0, 3.0, 4.0, 13.0, 42.0, 1024.0, 2.0**24]


def _roles_files(
    stats_dir: Path, versions: dict[str, int], labels: dict[str, str]
) -> int:
    """Write the roles' files (dead or live workers, each of format 2 or 3)
    with a seconds and a counts histogram; return the observations written."""
    written = 0
    for n, (role, version) in enumerate(sorted(versions.items())):
        seconds = _SECONDS[n % 3 :: 2]
        counts = _COUNTS[n % 2 :: 2]
        records = [
            _hmetric(1, "rt", "seconds", version, labels),
            _hmetric(2, "rows", "count", version, labels),
            _hcell(1, "seconds", seconds, version),
            _hcell(2, "count", counts, version),
            _hcell(1, "seconds", seconds[:2], version, tslot=1),
        ]
        written += len(seconds) + 2
        header: dict[str, Any] = (
            _alive() if role.startswith("live") else {"pid": DEAD_PID - n}
        )
        _vwrite(
            stats_dir / f"app.{n}.{role}.mmstats",
            records,
            version,
            **header,
            created=1.7e9 + n,
        )
    return written


@pytest.mark.parametrize("labels", [{}, {"path": '/a b\\"c\n'}])
def test_every_mix_of_versions_keeps_counts_and_buckets_across_clean(
    stats_dir: Path, labels: dict[str, str]
) -> None:
    """Dead and live workers and an archive, each of format 2 or 3, in
    every mix: the three reads agree, the totals are in format 3's buckets
    as soon as one part is, count and sum are exact, and a clean changes
    no sample of the exposition but the worker gauges."""
    label_text = _exporter._labels(sorted(labels.items()))
    key = ("rt", tuple(sorted(labels.items())))
    for mix in itertools.product((None, 2, 3), repeat=4):
        archive, dead1, dead2, live = mix
        _reader.drop_caches()
        for f in stats_dir.iterdir():
            f.unlink()
        written = 0
        if archive is not None:
            written += _roles_files(stats_dir, {"old": archive}, labels)
            mmstats.clean(stats_dir)
        roles = {"dead1": dead1, "dead2": dead2, "live": live}
        written += _roles_files(
            stats_dir, {r: v for r, v in roles.items() if v is not None}, labels
        )
        if not written:
            continue
        totals = _all_reads_agree(stats_dir)
        by_key = {t[0]: t for t in totals}
        _, _, lo, count, total, buckets = by_key[key]
        assert count == written == sum(c for _, c in buckets), mix
        if 3 in mix:
            assert lo == F.SECONDS_RANGE[0], mix
        before = mmstats.scrape(stats_dir)
        assert _count(before, "mmstats_rt", label_text) == written, mix
        mmstats.clean(stats_dir)
        after = mmstats.scrape(stats_dir)
        for family in ("mmstats_rt", "mmstats_rows"):
            assert _hist_lines(after, family) == _hist_lines(before, family), mix
        assert _all_reads_agree(stats_dir) == totals, mix


def _blocking_child(stats_dir: Path, n: int, ready_w: int, hold_r: int) -> None:
    """A forked worker that counts ``n + 1``, says so and waits."""
    mmstats.Stats(stats_dir, f"k{n}").counter("c").incr(n + 1)
    os.write(ready_w, b"r")
    os.read(hold_r, 1)


def _wait_exited(pid: int) -> None:
    deadline = time.monotonic() + 10
    while _reader.process_state(pid)[0] not in ("Z", "X", ""):
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_many_watched_workers_killed_read_dead_in_every_threads_next_scan(
    stats_dir: Path,
) -> None:
    """Twelve forked workers, watched by a long-running reader (pid
    descriptors and mappings kept); three threads scan and scrape in a
    loop.  Five are killed with SIGKILL, three of them reaped and two left
    zombies: every scan begun after they exited reads them dead, the
    others alive, and no count is lost or counted twice."""
    pids, ready_r, hold_w = _fork_children(stats_dir, 12, _blocking_child)
    victims = pids[1:10:2]
    reaped = set(victims[:3])
    stop = threading.Event()
    killed_at: list[float] = []
    errors: list[str] = []

    def reader(scrape: bool) -> None:
        while not stop.is_set():
            began = time.monotonic()
            if scrape:
                text = mmstats.scrape(stats_dir).decode()
                if "mmstats_c_total 78\n" not in text:
                    errors.append("a scrape lost or doubled a count")
                continue
            snap = mmstats.read_directory(stats_dir, slow=False)
            if snap.totals()[("c", ())].value != 78:
                errors.append("a scan lost or doubled a count")
            states = {w.pid: w.state for w in snap.workers}
            if killed_at and began > killed_at[0]:
                want = {p: "dead" if p in victims else "alive" for p in pids}
                if states != want:
                    errors.append(f"scan after the kills: {states}")

    try:
        for _ in pids:
            assert os.read(ready_r, 1) == b"r"
        for _ in range(3):
            states = [w.state for w in mmstats.read_directory(stats_dir).workers]
            assert states == ["alive"] * 12
        if len(_reader._watched) < 12:
            pytest.skip("pidfd_open is not available here")
        threads = [
            threading.Thread(target=reader, args=(scrape,))
            for scrape in (False, False, True)
        ]
        for t in threads:
            t.start()
        time.sleep(0.2)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        for pid in victims:
            _wait_exited(pid)
            if pid in reaped:
                os.waitpid(pid, 0)
        killed_at.append(time.monotonic())
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        snap = mmstats.read_directory(stats_dir)
        assert sorted(w.state for w in snap.workers) == ["alive"] * 7 + ["dead"] * 5
        assert not [p for p, _ in _reader._watched if p in victims]
    finally:
        stop.set()
        os.close(hold_w)
        os.close(ready_r)
        for pid in pids:
            if pid not in reaped:
                os.waitpid(pid, 0)


def _scrape_view(snap: mmstats.Snapshot) -> Any:
    def value(v: Any) -> Any:
        if isinstance(v, mmstats.HistogramValue):
            s = "nan" if math.isnan(v.sum) else v.sum
            return (v.count, s, sorted(v.buckets.items()))
        return v

    totals = sorted(
        (k, s.kind, value(s.value))
        for k, s in snap.totals().items()
        if s.kind in ("counter", "histogram")
    )
    return totals, sorted((os.path.basename(b.path), b.reason) for b in snap.bad)


_DAMAGES = {
    # word offsets are from the start of the second worker's cell payloads
    "negative counter": ("counter", 0, struct.pack("=q", -5)),
    "bucket with high bits": ("hist", 8 * (2 + 160), struct.pack("=Q", 1 << 63)),
    "bucket of 2**48": ("hist", 8 * (2 + 160), struct.pack("=Q", 1 << 48)),
    "count above the buckets": ("hist", 0, struct.pack("=Q", 10)),
    "count below the buckets": ("hist", 0, struct.pack("=Q", 1)),
    "negative count": ("hist", 0, struct.pack("=q", -3)),
    "sum NaN": ("hist", 8, struct.pack("=d", math.nan)),
    "sum -0.0": ("hist", 8, struct.pack("=d", -0.0)),
    "bucket one ahead": ("hist", 8 * (2 + 5), struct.pack("=Q", 1)),
}


@pytest.mark.parametrize("damage", sorted(_DAMAGES))
def test_damage_in_place_under_a_kept_mapping_scrapes_as_a_fresh_reader_reads(
    stats_dir: Path, damage: str
) -> None:
    """Bytes of a live worker's cells changed in place while a long-running
    reader keeps the file mapped, its layout and its fold plan: the next
    scrape's read (read_totals) shows what a fresh process's read_totals
    and read_directory show of the same bytes, or the same bad file."""
    bounds = F.bucket_bounds(*_scheme("seconds", 3)[::2])
    assert bounds[160] == 1.0
    for i in range(2):
        records = [
            _metric(1, "c"),
            _hmetric(2, "t", "seconds"),
            _counter(1, 4),
            _hcell(2, "seconds", [1.0, 1.0, 2.0]),
        ]
        _vwrite(
            stats_dir / f"app.{i}.w.mmstats", records, **_alive(), created=1.7e9 + i
        )
    where, offset, data = _DAMAGES[damage]
    records = [
        _metric(1, "c"),
        _hmetric(2, "t", "seconds"),
        _counter(1, 4),
        _hcell(2, "seconds", [1.0, 1.0, 2.0]),
    ]
    base = F.HEADER_SIZE + len(records[0]) + len(records[1])
    if where == "hist":
        base += len(records[2])
    for _ in range(3):  # layouts, plans, mappings and descriptors kept
        _reader.read_totals(stats_dir)
        time.sleep(0.06)
    with open(stats_dir / "app.1.w.mmstats", "r+b") as f:
        f.seek(base + F.CELL_PAYLOAD + offset)
        f.write(data)
    started = time.monotonic()
    kept = _scrape_view(_reader.read_totals(stats_dir))
    assert time.monotonic() - started < 5
    _reader.drop_caches()
    fresh = _scrape_view(_reader.read_totals(stats_dir))
    _reader.drop_caches()
    careful = _scrape_view(mmstats.read_directory(stats_dir, slow=False))
    assert kept == fresh == careful


def test_a_clean_never_changes_a_histogram_sum(stats_dir: Path) -> None:
    """Before a clean the totals add live + dead + archive, (L + D) + A;
    after it the archive holds D + A, and the totals are L + (D + A).
    Floats do not associate: added that way the exported _sum dropped by
    two units in the last place (84646.22942343743 to 84646.22942343741),
    which Prometheus reads as a counter reset of the _sum series.  Sums are
    now added exactly and rounded once, and the archive keeps its sum
    exactly (sum_parts): the same float before and after, by the careful
    read, the scrape's and the exposition."""
    live, dead, old = 25.9, 0.5875806061435594, 84619.74184283128
    _vwrite(
        stats_dir / "app.0.old.mmstats",
        [_hmetric(1, "t", "seconds"), _hcell(1, "seconds", [old])],
        pid=DEAD_PID - 9,
    )
    mmstats.clean(stats_dir)
    _vwrite(
        stats_dir / "app.1.dead.mmstats",
        [_hmetric(1, "t", "seconds"), _hcell(1, "seconds", [dead])],
        pid=DEAD_PID,
    )
    _vwrite(
        stats_dir / "app.2.live.mmstats",
        [_hmetric(1, "t", "seconds"), _hcell(1, "seconds", [live])],
        **_alive(),
    )

    def sums() -> tuple[float, float, str]:
        careful = mmstats.read_directory(stats_dir).totals()[("t", ())].value.sum
        folded = _reader.read_totals(stats_dir).totals()[("t", ())].value.sum
        [line] = [
            line
            for line in mmstats.scrape(stats_dir).decode().splitlines()
            if line.startswith("mmstats_t_sum ")
        ]
        return careful, folded, line

    before = sums()
    assert before[0] == before[1] == math.fsum([live, dead, old])
    mmstats.clean(stats_dir)
    assert sums() == before


_HOSTILE = [
    "\x1b]0;owned\x07\x1b[31mred",
    "名前" * 40,
    "a" * 300,
    "e\u0301" * 50,
    "\u202eevil",
    "\t\n\r",
    "\U0001f642" * 30,
    "\u200b" * 50,
    "[bold]x[/bold]",
]


def test_the_worker_table_fits_every_width_with_hostile_names(
    stats_dir: Path,
) -> None:
    """show and top, narrow and --wide, at every width from 40 to 200, with
    a real worker and workers of other hosts whose names and host names
    are escapes, wide characters, combining marks and 300 characters: no
    line is wider than the terminal, no control character gets out, PID,
    State and Reqs are always there, and the caption names what was left
    out."""
    recorder = mmstats.RequestRecorder(
        stats_dir, "real\x1b[31m名前" * 5, slow_seconds=0
    )
    for i in range(30):
        recorder.finish(recorder.start("GET", "/x", "v"), 200 + (i % 4) * 100, None)
    for i, hostile in enumerate(_HOSTILE):
        header = _header(pid=DEAD_PID - i, closed=0)
        _put(header, F.H_NAME, F.NAME_SIZE, F.encode(hostile)[:120])
        _put(header, F.H_HOSTNAME, F.HOSTNAME_SIZE, F.encode(hostile)[:250])
        data = bytearray(header) + _metric(1, "requests") + _counter(1, 10**12 + i)
        struct.pack_into("=Q", data, F.H_USED, len(data))
        path = stats_dir / f"app.{i}.h.mmstats"
        path.write_bytes(bytes(data) + bytes(-len(data) % 65536))
    first = mmstats.read_directory(stats_dir, slow=False, names=SUMMARY_NAMES)
    snap = mmstats.read_directory(stats_dir, slow=False, names=SUMMARY_NAMES)
    rates = _cli._rates(first, snap, 0.5)
    for rated, wide, width in itertools.product(
        (None, rates), (False, True), range(40, 201)
    ):
        out = io.StringIO()
        console = Console(
            file=out,
            width=width,
            color_system=None,
            markup=False,
            emoji=False,
            highlight=False,
            soft_wrap=False,
        )
        console.print(show_view(snap, wide, rated, prog="mmstats"))
        text = out.getvalue()
        where = (bool(rated), wide, width)
        lines = text.splitlines()
        assert all(cell_len(line) <= width for line in lines), where
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", text), where
        (head,) = [line for line in lines if line.lstrip().startswith("PID")]
        assert "State" in head and "Reqs" in head, where
        kept = set(head.split())
        if "Left out to fit the width" in " ".join(lines):
            assert kept < set(head.split()) | set(_render._WORKER_DROPS), where
