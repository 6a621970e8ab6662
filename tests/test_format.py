"""The file format is pinned by a golden file and read back exactly."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmstats
from mmstats import _format as F
from mmstats._reader import read_totals

GOLDEN = Path(__file__).parent / "golden"


class TestGolden:
    @pytest.mark.parametrize("version", [2, 3])
    def test_golden_file_reads_to_its_pinned_values(self, version: int) -> None:
        """Format 3's golden file, and format 2's (whose histograms have other
        buckets), give these exact values (docs/FORMAT.md)."""
        worker = mmstats.read_file(GOLDEN / f"v{version}.mmstats")
        assert (worker.pid, worker.version, worker.state) == (12345, version, "closed")
        assert worker.hostname == "golden-host"
        assert worker.command == "gunicorn: worker [golden]"
        assert worker.name == "golden"
        assert (worker.start_time, worker.created) == (1_699_999_000.0, 1_699_999_500.0)
        assert worker.closed_at == 1_700_000_100.0
        assert worker.heartbeat == 1_700_000_001.25
        assert worker.value("jobs", {"queue": "mail"}) == 7
        assert worker.find("jobs", {"queue": "mail"}).help == "Jobs done"
        assert worker.value("temperature") == 21.5
        runtime = worker.value("runtime")
        assert (runtime.count, runtime.sum) == (5, 7201.753002)
        rows = worker.value("rows")
        assert (rows.lo, rows.integer) == (0.5, True)
        if version == 2:  # gamma 1.08 from 1e-6 s
            assert runtime.buckets == {10: 1, 105: 1, 162: 1, 185: 1, 295: 1}
            assert rows.buckets == {58: 1}
            assert rows.quantile(0.5) == 42
        else:  # eight buckets a doubling from 2**-20 s: 2e-6, 0.003, ..., 7200
            assert (runtime.lo, runtime.gamma) == (2.0**-20, 2 ** (1 / 8))
            assert runtime.buckets == {9: 1, 93: 1, 144: 1, 165: 1, 263: 1}
            assert runtime.bounds(144) == (2 ** (-17 / 8), 0.25)  # 0.25 is a bound
            assert rows.buckets == {52: 1}  # 42 in (41.5, 45.25]: 43 stands for it
            assert rows.quantile(0.5) == 43
        assert worker.value("version") == "v1.2.3-ü"
        assert worker.value("requests") == 1
        assert worker.value("responses", {"class": "2xx"}) == 1
        assert worker.value("db_queries").sum == 1.0
        assert worker.value("memory_rss_bytes") == 50 * 1024 * 1024
        [slot] = worker.slots
        assert (slot.method, slot.path, slot.view, slot.thread) == (
            "POST",
            "/cart/add",
            "shop.views.cart_add",
            777,
        )
        [entry] = worker.slow
        assert (entry.method, entry.path, entry.view, entry.status) == (
            "GET",
            "/orders/42",
            "shop.views.order",
            200,
        )
        assert (entry.duration, entry.queries, entry.db_seconds) == (0.25, 1, 0.125)
        assert (entry.start, entry.end) == (1_700_000_001.0, 1_700_000_001.25)

    def test_writer_still_writes_the_golden_bytes(self, tmp_path: Path) -> None:
        """The same writes give the same bytes: a change needs a version bump."""
        out = tmp_path / "again.mmstats"
        subprocess.run(
            [sys.executable, os.fspath(GOLDEN / "make_golden.py"), os.fspath(out)],
            check=True,
            timeout=60,
        )
        assert out.read_bytes() == (GOLDEN / "v3.mmstats").read_bytes()

    def test_histogram_cell_is_count_sum_then_buckets(self) -> None:
        """A histogram cell read by the documented offsets alone: u64 count,
        f64 sum, then one u64 per bucket, and no sequence word (#2)."""
        data = (GOLDEN / "v3.mmstats").read_bytes()
        metrics: dict[int, str] = {}
        cells: dict[str, bytes] = {}
        off = F.HEADER_SIZE
        used = int.from_bytes(data[F.H_USED : F.H_USED + 8], sys.byteorder)
        while off < used:
            rtype, rsize = struct.unpack_from("=II", data, off)
            if rtype == 1:
                mid = struct.unpack_from("=I", data, off + 8)[0]
                blen = struct.unpack_from("=I", data, off + 44)[0]
                metrics[mid] = json.loads(data[off + 48 : off + 48 + blen])["name"]
            elif rtype == 2:
                mid = struct.unpack_from("=I", data, off + 8)[0]
                cells[metrics[mid]] = data[off + 16 : off + rsize]
            off += rsize

        runtime = cells["runtime"]
        count, total = struct.unpack_from("=Qd", runtime)
        buckets = struct.unpack_from(f"={len(runtime) // 8 - 2}Q", runtime, 16)
        assert (count, total) == (5, 7201.753002)
        assert len(buckets) == 296  # 2**-20 s to 1.2 days, eight a doubling, + 2
        assert {k: n for k, n in enumerate(buckets) if n} == {
            9: 1,
            93: 1,
            144: 1,
            165: 1,
            263: 1,
        }

    def test_file_of_format_1_is_refused_by_name(self) -> None:
        """A version 1 file (its histograms had a sequence word) is refused
        with the one-line newer/older error, not misread (#2)."""
        with pytest.raises(
            mmstats.UnsupportedVersionError,
            match=r"v1\.mmstats: has format version 1, older than this reader's 3",
        ):
            mmstats.read_file(GOLDEN / "v1.mmstats")

    def test_header_offsets_match_the_documented_layout(self) -> None:
        """Offsets are 8-byte aligned and the header fits its 4096 bytes."""
        scalars = [F.H_USED, F.H_PID, F.H_START_TICKS, F.H_START_TIME, F.H_CREATED]
        scalars += [F.H_CLOSED, F.H_CLOSED_AT, F.H_HEARTBEAT, F.H_PIDNS, F.H_FLAGS]
        assert all(offset % 8 == 0 for offset in scalars)
        assert F.H_END <= F.HEADER_SIZE
        assert F.SLOT_SIZE % 8 == 0 and F.ENTRY_SIZE % 8 == 0


names = st.text(alphabet="abcdefghij_", min_size=1, max_size=6)
label_values = st.text(max_size=12)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("counter"), names, label_values, st.integers(0, 2**40)),
        st.tuples(st.just("gauge"), names, label_values, st.floats(-1e12, 1e12)),
        st.tuples(
            st.just("histogram"),
            names,
            label_values,
            st.floats(0, 1e5, allow_nan=False),
        ),
        st.tuples(st.just("text"), names, label_values, st.text(max_size=40)),
    ),
    max_size=40,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=operations)
def test_random_writes_read_back_exactly(
    ops: list[tuple[str, str, str, object]],
) -> None:
    """Whatever is written, in whatever order, is read back exactly."""
    directory = tempfile.mkdtemp(prefix="mmstats-prop-")
    stats = mmstats.Stats(directory, "prop")
    expected: dict[tuple[str, str], object] = {}
    kinds: dict[str, str] = {}
    for kind, name, label, value in ops:
        name = f"{kind}_{name}"
        kinds[name] = kind
        key = (name, label)
        labels = {"l": label}
        if kind == "counter":
            stats.counter(name, labels=labels).incr(value)  # type: ignore[arg-type]
            expected[key] = int(expected.get(key, 0)) + value  # type: ignore[call-overload]
        elif kind == "gauge":
            stats.gauge(name, labels=labels).set(value)  # type: ignore[arg-type]
            expected[key] = value
        elif kind == "histogram":
            stats.histogram(name, labels=labels).observe(value)  # type: ignore[arg-type]
            got = expected.setdefault(key, [])
            got.append(value)  # type: ignore[attr-defined]
        else:
            stats.text(name, labels=labels, max_bytes=64).set(value)  # type: ignore[arg-type]
            # Forty characters can take up to 160 bytes: the text keeps the
            # whole characters that fit in 64.
            kept = F.cut_utf8(F.encode(value), 64)  # type: ignore[arg-type]
            expected[key] = kept.decode("utf-8", "surrogateescape")
    if not expected:
        return

    worker = mmstats.read_file(stats.path or "")
    for (name, label), value in expected.items():
        read = worker.value(name, {"l": label})
        if kinds[name] == "histogram":
            values: list[float] = value  # type: ignore[assignment]
            assert read.count == len(values)
            assert read.sum == pytest.approx(sum(values), rel=1e-12, abs=1e-12)
            for v in values:
                assert F.bucket_index(read.lo, v) in read.buckets
        else:
            assert read == value


def test_an_upgrade_from_format_2_keeps_every_histogram(stats_dir: Path) -> None:
    """A worker of format 2 beside one of format 3, during an upgrade: the
    totals (the careful read, the scrape's read, the exposition) keep every
    observation of both, in format 3's buckets, and `clean` keeps them as
    they were."""
    shutil.copy(GOLDEN / "v2.mmstats", stats_dir / "golden.12345.aaaa.mmstats")
    stats = mmstats.Stats(stats_dir, "live")
    runtime = stats.histogram("runtime", "Run time")
    for v in (0.003, 0.25, 2.0):
        runtime.observe(v)
    rows = stats.histogram("rows", "Rows per job", unit="count")
    rows.observe(4)

    def check(totals: dict[tuple[str, Any], mmstats.Series]) -> None:
        seconds = totals[("runtime", ())].value
        assert (seconds.lo, seconds.gamma) == (2.0**-20, F.GAMMA)
        assert seconds.count == sum(seconds.buckets.values()) == 8
        assert seconds.sum == 7201.753002 + 2.253
        # 2e-6, 0.003 (twice), 0.25 (twice), 1.5, 2.0, 7200: each within
        # the two schemes' errors (4.33 % and 3.85 %) of its bucket.
        for value, q in ((0.003, 0.3), (0.25, 0.6), (7200.0, 1.0)):
            assert seconds.quantile(q) == pytest.approx(value, rel=0.085)
        counted = totals[("rows", ())].value
        assert (counted.count, counted.sum) == (2, 46.0)
        # 42 of format 2 is in format 3's bucket (41.5, 45.25], shown as 43.
        assert sorted(counted.quantiles((0.0, 1.0))) == [4, 43]

    check(mmstats.read_directory(stats_dir).totals())
    check(read_totals(stats_dir).totals())
    exposed = mmstats.scrape(stats_dir).decode()
    assert "mmstats_runtime_count 8\n" in exposed
    assert 'mmstats_runtime_bucket{le="0.25"} 5\n' in exposed
    result = mmstats.clean(stats_dir)
    assert [os.path.basename(w.path) for w in result.folded] == [
        "golden.12345.aaaa.mmstats"
    ]
    check(mmstats.read_directory(stats_dir).totals())
    check(read_totals(stats_dir).totals())
