"""Attacks on the caches a long-running reader keeps between reads.

One reader process reads the same directory again and again while the
files change underneath it.  The ground truth is a cold read of the same
bytes (``drop_caches()`` first, which is what a fresh process sees).  For
changes writers never make, a correct read or a CorruptFileError for that
file are both fine; silently different values, an exception escaping the
read, or memory that only grows are not.

Files are built byte by byte here (docs/FORMAT.md), so each test controls
exactly which bytes change.
"""

from __future__ import annotations

import gc
import io
import itertools
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import mmstats
from mmstats import _archive, _reader, _report
from mmstats import _format as F
from mmstats._grid import Grid
from mmstats._page import json_document
from mmstats._render import safe
from mmstats._report import dumps, snapshot_json_text, snapshot_to_json
from mmstats._writer import boot_id, pid_namespace, process_start_ticks

# -- building files -----------------------------------------------------------------


def _put(buf: bytearray, off: int, size: int, data: bytes) -> None:
    assert len(data) <= size - 2
    buf[off : off + 2] = len(data).to_bytes(2, F.NATIVE_ORDER)
    buf[off + 2 : off + 2 + len(data)] = data


DEAD_PID = 4_000_000  # above any pid_max in use: never alive


def _header(
    pid: int = DEAD_PID, closed: int = 1, ticks: int = 0, created: float = 1.7e9
) -> bytearray:
    h = bytearray(F.HEADER_SIZE)
    h[0:8] = F.MAGIC
    struct.pack_into("=II", h, F.H_VERSION, F.VERSION, F.HEADER_SIZE)
    struct.pack_into("=Q", h, F.H_BYTE_ORDER, F.BYTE_ORDER_MARK)
    struct.pack_into("=q", h, F.H_PID, pid)
    struct.pack_into("=Q", h, F.H_START_TICKS, ticks)
    struct.pack_into("=d", h, F.H_START_TIME, created - 10)
    struct.pack_into("=d", h, F.H_CREATED, created)
    struct.pack_into("=Q", h, F.H_CLOSED, closed)
    struct.pack_into("=d", h, F.H_CLOSED_AT, created + 5 if closed else 0.0)
    struct.pack_into("=Q", h, F.H_PIDNS, pid_namespace() if not closed else 0)
    _put(h, F.H_BOOT_ID, F.BOOT_ID_SIZE, boot_id().encode())
    _put(h, F.H_HOSTNAME, F.HOSTNAME_SIZE, F.encode(socket.gethostname()))
    _put(h, F.H_NAME, F.NAME_SIZE, b"app")
    _put(h, F.H_COMMAND, F.COMMAND_SIZE, b"worker")
    return h


def _alive() -> dict[str, int]:
    """Header fields that make a file belong to this (live) process."""
    pid = os.getpid()
    return {"pid": pid, "closed": 0, "ticks": process_start_ticks(pid)}


def _metric(
    mid: int,
    name: str,
    kind: int = F.KIND_COUNTER,
    labels: dict[str, str] | None = None,
    nbuckets: int = 0,
    lo: float = 0.0,
    gamma: float = 0.0,
    help: str = "h",
) -> bytes:
    blob = json.dumps(
        {"name": name, "help": help, "unit": "", "labels": labels or {}}
    ).encode()
    size = F.round8(F.METRIC_FIXED.size + len(blob))
    r = bytearray(size)
    F.METRIC_FIXED.pack_into(
        r, 0, F.R_METRIC, size, mid, kind, 0, nbuckets, lo, gamma, 0, len(blob)
    )
    r[F.METRIC_FIXED.size : F.METRIC_FIXED.size + len(blob)] = blob
    return bytes(r)


def _cell(mid: int, payload: bytes, tslot: int = 0) -> bytes:
    size = F.round8(F.CELL_PAYLOAD + len(payload))
    r = bytearray(size)
    F.CELL_FIXED.pack_into(r, 0, F.R_CELL, size, mid, tslot)
    r[F.CELL_PAYLOAD : F.CELL_PAYLOAD + len(payload)] = payload
    return bytes(r)


def _counter(mid: int, value: int, tslot: int = 0) -> bytes:
    return _cell(mid, struct.pack("=q", value), tslot)


def _hist(mid: int, buckets: dict[int, int], n: int, tslot: int = 0) -> bytes:
    words = [0] * n
    for k, c in buckets.items():
        words[k] = c
    head = struct.pack("=Qd", sum(buckets.values()) % 2**64, 1.5)  # count, sum
    body = b"".join((w % 2**64).to_bytes(8, F.NATIVE_ORDER) for w in words)
    return _cell(mid, head + body, tslot)


def _ring(paths: list[str]) -> bytes:
    r = bytearray(16 + len(paths) * F.ENTRY_SIZE)
    F.RING_FIXED.pack_into(r, 0, F.R_RING, len(r), len(paths), F.ENTRY_SIZE)
    for i, path in enumerate(paths):
        e = 16 + i * F.ENTRY_SIZE
        struct.pack_into(
            "=QddQQdqdd", r, e, 2 * i + 2, 1.7e9 + i, 0.5, 200, 3, 0.1, 0, 0.0, 1.7e9
        )
        s = e + 8 * F.E_STRINGS
        _put(r, s, F.METHOD_SIZE, b"GET")
        _put(r, s + F.METHOD_SIZE, F.PATH_SIZE, path.encode())
        _put(r, s + F.METHOD_SIZE + F.PATH_SIZE, F.VIEW_SIZE, b"view")
    return bytes(r)


def _image(records: list[bytes], **header: Any) -> bytes:
    data = _header(**header) + b"".join(records)
    struct.pack_into("=Q", data, F.H_USED, len(data))
    return bytes(data) + bytes(-len(data) % 65536)


def _write(path: Path, records: list[bytes], **header: Any) -> None:
    path.write_bytes(_image(records, **header))


def _offsets(records: list[bytes]) -> list[int]:
    return [F.HEADER_SIZE + sum(map(len, records[:i])) for i in range(len(records))]


@pytest.fixture(autouse=True)
def _cold_caches() -> Iterator[None]:
    _reader.drop_caches()
    yield
    _reader.drop_caches()


def _view(snap: mmstats.Snapshot) -> Any:
    """What a reader shows: every worker's series, the bad files, the totals."""

    def value(v: Any) -> Any:
        if isinstance(v, mmstats.HistogramValue):
            return (v.count, sorted(v.buckets.items()))
        if isinstance(v, _reader.GaugeTotal):
            return (v.sum, v.min, v.max, v.workers)
        return v

    workers = sorted(
        (
            os.path.basename(w.path),
            w.state,
            sorted(
                (s.name, sorted(s.labels.items()), value(s.value)) for s in w.series
            ),
            [(e.seq, e.path, e.hostname) for e in w.slow],
        )
        for w in snap.workers
    )
    bad = sorted((os.path.basename(b.path), b.reason) for b in snap.bad)
    totals = sorted((k, value(s.value)) for k, s in snap.totals().items())
    return workers, bad, totals


def _fresh(directory: Path) -> Any:
    """A read with nothing kept: what a new process reads."""
    _reader.drop_caches()
    return _view(mmstats.read_directory(directory))


# == findings: these fail on the code as it is ======================================


def test_totals_of_final_workers_follow_a_replaced_file(stats_dir: Path) -> None:
    """The sum over dead/closed workers is kept under the ids of the Worker
    objects; once those objects are freed, new ones get the same ids and the
    old sum comes back for workers that have other values."""
    target = stats_dir / "app.1.aaaa.mmstats"
    for value in range(40):
        new = stats_dir / ".new"
        _write(new, [_metric(1, "n"), _counter(1, 100 + value)])
        os.replace(new, target)  # a new inode: the worker is read anew
        gc.collect()
        snap = mmstats.read_directory(stats_dir)
        assert snap.workers[0].value("n") == 100 + value
        assert snap.totals()[("n", ())].value == 100 + value, f"round {value}"
        del snap


def test_threads_reading_a_replaced_dead_file_do_not_raise(stats_dir: Path) -> None:
    """Two threads (serve is a ThreadingMixIn server) see the same stale
    cache entry; both delete it and the second gets KeyError, which escapes
    read_directory (a 500 for that scrape)."""
    target = stats_dir / "app.1.aaaa.mmstats"
    _write(target, [_metric(1, "n"), _counter(1, 5)])
    mmstats.read_directory(stats_dir)
    new = stats_dir / ".new"
    _write(new, [_metric(1, "n"), _counter(1, 7)])
    os.replace(new, target)  # another inode under the same name

    both_looked = threading.Barrier(2, timeout=5)

    class Interleaved(dict):  # type: ignore[type-arg]
        """Let both threads look the entry up before either acts on it."""

        def get(self, *args: Any) -> Any:
            found = super().get(*args)
            try:
                both_looked.wait()
            except threading.BrokenBarrierError:
                pass
            return found

    saved = _reader._finals
    _reader._finals = Interleaved(saved)
    errors: list[str] = []
    values: list[Any] = []

    def read() -> None:
        try:
            values.append(mmstats.read_directory(stats_dir).workers[0].value("n"))
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    try:
        threads = [threading.Thread(target=read) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    finally:
        _reader._finals = saved
    assert errors == []
    assert values == [7, 7]


def _rename(f: Any, offs: list[int]) -> None:
    f.seek(offs[0] + F.METRIC_FIXED.size + len('{"name": "'))
    f.write(b"zzzz")  # metric "aaaa" becomes "zzzz"


def _repoint(f: Any, offs: list[int]) -> None:
    f.seek(offs[3] + 8)
    f.write(struct.pack("=I", 1))  # the cell of "bbbb" now counts for "aaaa"


def _bad_size(f: Any, offs: list[int]) -> None:
    f.seek(offs[2] + 4)
    f.write(struct.pack("=I", 12))  # not a multiple of 8


def _unknown_type(f: Any, offs: list[int]) -> None:
    f.seek(offs[2])
    f.write(struct.pack("=I", 9))


def _truncated_and_regrown(f: Any, offs: list[int]) -> None:
    f.truncate(F.HEADER_SIZE)  # the header survives, the records are zeros
    f.truncate(65536)


@pytest.mark.parametrize(
    "change",
    [_rename, _repoint, _bad_size, _unknown_type, _truncated_and_regrown],
    ids=lambda c: c.__name__.strip("_"),
)
@pytest.mark.parametrize("state", ["alive", "closed"])
def test_records_changed_after_a_read_read_as_a_fresh_reader_does(
    stats_dir: Path,
    change: Callable[[Any, list[int]], None],
    state: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bytes of records already seen change in place (same inode, same
    header), which writers never do.  A long-running reader keeps what it
    walked for at most REWALK_SECONDS (REREAD_FINAL_SECONDS for a dead
    file); then it reads the file as a fresh
    reader does: new names, values under the other metric, or the file
    refused as corrupt.  Meanwhile nothing escapes and the other files
    read right."""
    records = [_metric(1, "aaaa"), _metric(2, "bbbb"), _counter(1, 5), _counter(2, 9)]
    target = stats_dir / "app.1.aaaa.mmstats"
    other = stats_dir / "app.2.bbbb.mmstats"
    _write(target, records, **(_alive() if state == "alive" else {}))
    _write(other, records, pid=DEAD_PID + 1)
    first = _view(mmstats.read_directory(stats_dir))
    assert first[0][0][2] == [("aaaa", [], 5), ("bbbb", [], 9)]
    with open(target, "r+b") as f:
        change(f, _offsets(records))
    within = mmstats.read_directory(stats_dir)  # within REWALK_SECONDS
    assert [w for w in within.workers if w.path == os.fspath(other)]
    monkeypatch.setattr(_reader, "REWALK_SECONDS", -1.0)
    monkeypatch.setattr(_reader, "REREAD_FINAL_SECONDS", -1.0)
    assert _view(mmstats.read_directory(stats_dir)) == _fresh(stats_dir)


@pytest.mark.parametrize("how", ["rewritten_in_place", "removed_and_recreated"])
def test_a_dead_file_written_again_under_its_name_is_read_anew(
    stats_dir: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A closed file removed and created again (ext4 hands the same inode
    number back at once; pytest's tmp_path is on ext4 here) is read anew at
    the next scan; one overwritten in place by another worker's file (which
    changes nothing in the directory) within REREAD_FINAL_SECONDS."""
    if how == "rewritten_in_place":
        monkeypatch.setattr(_reader, "REREAD_FINAL_SECONDS", -1.0)
    target = stats_dir / "app.1.aaaa.mmstats"
    _write(target, [_metric(1, "n"), _counter(1, 1)])
    mmstats.read_directory(stats_dir)
    inode = target.stat().st_ino
    if how == "removed_and_recreated":
        target.unlink()
    _write(target, [_metric(1, "m"), _counter(1, 2)], **_alive(), created=1.8e9)
    if target.stat().st_ino != inode:
        pytest.skip("this file system gave the new file another inode")
    assert _view(mmstats.read_directory(stats_dir)) == _fresh(stats_dir)


def test_a_long_running_reader_forgets_files_that_were_removed(
    stats_dir: Path,
) -> None:
    """Everything kept of a file (its Worker, layout and slow-entry texts)
    stays after ``clean`` removed it, until a cache reaches its cap by count:
    20,000 dead workers (about 350 KiB each for a busy worker with a full
    slow ring, so ~7 GB) for a page or ``top`` left running for weeks while
    gunicorn recycles workers."""
    for i in range(30):
        _write(
            stats_dir / f"app.{i}.aaaa.mmstats",
            [_metric(1, "n"), _counter(1, i), _ring([f"/p/{i}/{k}" for k in range(4)])],
            pid=DEAD_PID - i,
        )
    snapshot_json_text(mmstats.read_directory(stats_dir))
    for path in stats_dir.iterdir():
        path.unlink()  # what clean does after folding them
    snap = mmstats.read_directory(stats_dir)
    assert snap.workers == []
    snapshot_json_text(snap)
    here = os.fspath(stats_dir)
    kept = {
        "finals": [p for kind in _reader._finals.values() for p in kind if here in p],
        "layouts": [p for p in _reader._layouts if p.startswith(here)],
        "entry texts": [p for p in _report._entry_texts if p.startswith(here)],
    }
    assert {name: len(keys) for name, keys in kept.items()} == {
        "finals": 0,
        "layouts": 0,
        "entry texts": 0,
    }


def test_page_queries_with_new_metric_names_do_not_grow_memory(
    stats_dir: Path,
) -> None:
    """``/api/json?metrics=...`` comes from any HTTP client; every new set
    of names adds a selection to each live file's kept layout (and a whole
    Worker to the final-worker cache for each dead file), for as long as
    the file does not grow."""
    _write(
        stats_dir / "app.1.aaaa.mmstats", [_metric(1, "n"), _counter(1, 1)], **_alive()
    )
    for i in range(300):
        json_document(stats_dir, {"metrics": f"n,probe{i}"})
    (layout,) = [
        v[1] for p, v in _reader._layouts.items() if p.startswith(os.fspath(stats_dir))
    ]
    assert len(layout.selections) <= 64
    assert len(_reader._finals) <= _reader._FINAL_KINDS_MAX


def test_a_reader_of_many_directories_keeps_a_bounded_number_of_stamps(
    tmp_path: Path,
) -> None:
    """A long-running reader pointed at directory after directory (a page
    or an exporter per app, a script walking them all) keeps the stamps of
    64 at the most, and still reads each one right."""
    directories = []
    for i in range(100):
        directory = tmp_path / f"d{i}"
        directory.mkdir(mode=0o700)
        _write(directory / "app.1.aaaa.mmstats", [_metric(1, "n"), _counter(1, i)])
        directories.append(directory)
    _quiet(tmp_path)
    for i, directory in enumerate(directories):
        totals = mmstats.read_directory(directory).totals()
        assert totals[("n", ())].value == i
        assert len(_reader._stamps) <= 64 and len(_reader._listings) <= 64
        assert len(_reader._plans) <= 16
    assert os.fspath(directories[-1]) in _reader._stamps


# == what held up =====================================================================


def test_used_going_back_and_forth_reads_like_a_fresh_reader(stats_dir: Path) -> None:
    records = [_metric(1, "a"), _counter(1, 5), _metric(2, "b"), _counter(2, 9)]
    target = stats_dir / "app.1.aaaa.mmstats"
    _write(target, records, **_alive())
    offs = _offsets(records)
    for used in (
        offs[-1] + len(records[-1]),
        offs[2],
        offs[1] + 4,
        offs[3],
        offs[-1] + 8 + len(records[-1]),
    ):
        with open(target, "r+b") as f:
            f.seek(F.H_USED)
            f.write(struct.pack("=Q", used))
        assert _view(mmstats.read_directory(stats_dir)) == _fresh(stats_dir)
        mmstats.read_directory(stats_dir)  # warm again for the next step


def test_a_file_replaced_under_its_name_is_read_anew(stats_dir: Path) -> None:
    """Same name, new inode (rename over it, as writers and clean do); and a
    live file whose header changes in place (another pid or created)."""
    target = stats_dir / "app.1.aaaa.mmstats"
    _write(target, [_metric(1, "n"), _counter(1, 1)])
    mmstats.read_directory(stats_dir)
    other = stats_dir / ".other"
    _write(other, [_metric(1, "n"), _counter(1, 2)], **_alive())
    os.replace(other, target)
    assert _view(mmstats.read_directory(stats_dir)) == _fresh(stats_dir)
    mmstats.read_directory(stats_dir)
    target.write_bytes(
        _image([_metric(1, "m"), _counter(1, 3)], **_alive(), created=1.8e9)
    )
    assert _view(mmstats.read_directory(stats_dir)) == _fresh(stats_dir)


def test_an_archive_rewritten_with_the_same_size_and_mtime_is_read_anew(
    stats_dir: Path,
) -> None:
    def archive(value: int) -> str:
        return json.dumps(
            {
                "version": 1,
                "workers": 1,
                "folded": {},
                "series": [
                    {
                        "name": "n",
                        "kind": "counter",
                        "help": "",
                        "unit": "",
                        "labels": {},
                        "value": value,
                    }
                ],
                "slow": [],
            }
        )

    path = stats_dir / _archive.ARCHIVE_NAME
    path.write_text(archive(11))
    assert mmstats.read_directory(stats_dir).totals()[("n", ())].value == 11
    mtime = path.stat().st_mtime_ns
    tmp = stats_dir / "new.json"
    tmp.write_text(archive(22))  # same size; rename like clean does
    os.utime(tmp, ns=(mtime, mtime))
    os.replace(tmp, path)
    assert mmstats.read_directory(stats_dir).totals()[("n", ())].value == 22


_COUNTS = [0, 1, 2**47, 2**48 - 1, 2**48, 2**48 + 1, 2**62, 2**63 - 1, -1, -(2**40)]


def test_histograms_near_and_past_the_packing_limit_add_up_exactly(
    stats_dir: Path,
) -> None:
    """Packed and plain bucket counts mixed across cells and workers; a
    negative word (>= 2**63) makes that file bad and no other."""
    rng = random.Random(11)
    n = 6
    for round_ in range(12):
        for path in stats_dir.iterdir():
            path.unlink()
        expected: dict[int, int] = {}
        bad = set()
        for i in range(4):
            cells = [
                {k: rng.choice(_COUNTS) for k in rng.sample(range(n), 3)}
                for _ in range(rng.randint(1, 3))
            ]
            name = f"app.{i}.r{round_}.mmstats"
            _write(
                stats_dir / name,
                [_metric(1, "h", F.KIND_HISTOGRAM, nbuckets=n, lo=0.5, gamma=F.GAMMA)]
                + [_hist(1, c, n, tslot=t) for t, c in enumerate(cells)],
                pid=DEAD_PID - i,
            )
            if any(v < 0 for c in cells for v in c.values()):
                bad.add(name)
                continue
            for c in cells:
                for k, v in c.items():
                    if v:
                        expected[k] = expected.get(k, 0) + v
        for _ in range(2):  # cold, then from the caches
            snap = mmstats.read_directory(stats_dir)
            assert {os.path.basename(b.path) for b in snap.bad} == bad
            assert len(snap.workers) == 4 - len(bad)
            total = snap.totals().get(("h", ()))
            got = total.value if total else None
            assert (got.buckets if got else {}) == expected
            if got:
                assert got.count == sum(expected.values())
                dense = [expected.get(k, 0) for k in range(max(expected) + 1)]
                assert got.cumulative() == list(itertools.accumulate(dense))
            assert json.loads(snapshot_json_text(snap)) == json.loads(
                dumps(snapshot_to_json(snap), None)
            )


def test_many_threads_read_what_one_cold_reader_reads(stats_dir: Path) -> None:
    """read_directory, scrape and json_document at once from 8 threads,
    over live, closed and bad files, agree with a cold read every time."""
    for i in range(6):
        header = _alive() if i % 3 == 0 else {"pid": DEAD_PID - i}
        _write(
            stats_dir / f"app.{i}.aaaa.mmstats",
            [
                _metric(1, "n", labels={"i": str(i % 2)}),
                _counter(1, i),
                _metric(2, "h", F.KIND_HISTOGRAM, nbuckets=8, lo=0.5, gamma=F.GAMMA),
                _hist(2, {1: i, 7: 2**48}, 8),
                _ring([f"/{i}"]),
            ],
            **header,
        )
    (stats_dir / "app.9.bad.mmstats").write_bytes(b"x" * 5000)
    want = _fresh(stats_dir)
    want_json = json.loads(json_document(stats_dir))
    want_json.pop("read_at")
    start = threading.Barrier(8, timeout=10)
    errors: list[str] = []

    def work(which: int) -> None:
        start.wait()
        try:
            for _ in range(15):
                if which % 3 == 0:
                    assert _view(mmstats.read_directory(stats_dir)) == want
                elif which % 3 == 1:
                    assert b"mmstats_unreadable_files 1" in mmstats.scrape(stats_dir)
                else:
                    doc = json.loads(json_document(stats_dir))
                    doc.pop("read_at")
                    assert doc == want_json
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc)[:300])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []


_HOSTILE = [
    "/日本語/パス" * 6,
    "\x1b[2J\x1b]0;owned\x07[red]x[/red]",
    "[/]:smile: \\[bold]",
    "a\u0301\u200b\u202eevil\u2066",
    "😀🇯🇵" * 10,
    "\t\r\n\x00\x7f\x9b",
    "\ud800\udcff",
]


@pytest.mark.parametrize("width", [20, 40, 80, 200])
@pytest.mark.parametrize("color", [False, True])
def test_the_grid_prints_hostile_strings_as_rich_table_does(
    width: int, color: bool
) -> None:
    grid = Grid(title="Requests in flight", caption="cap", show_footer=True)
    grid.add_column("PID", justify="right", no_wrap=True)
    for header in ("Method", "Path", "View"):
        grid.add_column(header, overflow="fold", min_width=4)
    for i, s in enumerate(_HOSTILE):
        grid.add_row(str(i), safe(s[:8]), safe(s), safe(s[::-1], fold=True))

    def render(renderable: object) -> str:
        out = io.StringIO()
        Console(
            file=out,
            width=width,
            force_terminal=color,
            color_system="truecolor" if color else None,
            legacy_windows=False,
        ).print(renderable)
        return out.getvalue()

    text = render(grid)
    assert text == render(grid.to_table())
    assert "\x1b]" not in text and "\x07" not in text
    if not color:
        assert "\x1b" not in text


# == mappings and histogram cells kept by a long-running reader =======================


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _hist_cells(counts: list[dict[int, int]], n: int = 6) -> list[bytes]:
    metric = _metric(1, "h", F.KIND_HISTOGRAM, nbuckets=n, lo=0.5, gamma=F.GAMMA)
    return [metric] + [_hist(1, c, n, tslot=t) for t, c in enumerate(counts)]


def test_a_series_of_several_thread_cells_reads_the_same_every_time(
    stats_dir: Path,
) -> None:
    """Cells of one series (one per thread) are added up per worker; the
    first cell's value, kept for the next read, must not be added into."""
    _write(
        stats_dir / "app.1.aaaa.mmstats",
        _hist_cells([{0: 2, 3: 1}, {3: 4}, {5: 7}]),
        **_alive(),
    )
    reads = [_view(mmstats.read_directory(stats_dir)) for _ in range(4)]
    assert reads == [_fresh(stats_dir)] * 4
    (series,) = mmstats.read_directory(stats_dir).workers[0].series
    assert (series.value.count, series.value.buckets) == (14, {0: 2, 3: 5, 5: 7})


def test_histogram_cells_changed_in_place_read_as_a_fresh_reader_does(
    stats_dir: Path,
) -> None:
    """A kept cell is used again only while its buckets, count and sum are
    all unchanged: a writer's observation, a count edited alone, or a sum
    edited alone are each read anew."""
    target = stats_dir / "app.1.aaaa.mmstats"
    records = _hist_cells([{1: 3}])
    _write(target, records, **_alive())
    cell = _offsets(records)[1] + F.CELL_PAYLOAD
    mmstats.read_directory(stats_dir)
    edits = [
        (cell + 8 * (F.HIST_BUCKETS + 1), struct.pack("=Q", 4)),  # bucket, no count
        (cell + 8 * F.HIST_COUNT, struct.pack("=Q", 4)),  # now whole again
        (cell + 8 * F.HIST_SUM, struct.pack("=d", 9.25)),  # the sum alone
        (cell + 8 * F.HIST_COUNT, struct.pack("=Q", 40)),  # damage: count alone
    ]

    def histogram() -> tuple[int, float, dict[int, int]]:
        (series,) = mmstats.read_directory(stats_dir).workers[0].series
        return series.value.count, series.value.sum, series.value.buckets

    seen = []
    for off, data in edits:
        with open(target, "r+b") as f:
            f.seek(off)
            f.write(data)
        warm = histogram()
        _reader.drop_caches()
        assert warm == histogram()
        seen.append(warm)
        histogram()  # warm again for the next edit
    # The buckets are the truth for the count (docs/FORMAT.md).
    assert seen[1:] == [(4, 1.5, {1: 4}), (4, 9.25, {1: 4}), (4, 9.25, {1: 4})]


def test_kept_mappings_follow_replaced_grown_and_removed_files(
    stats_dir: Path,
) -> None:
    """A live file's mapping is kept between reads; a file replaced under
    its name, grown, or removed is mapped anew or let go (its descriptor
    closed), and what is read equals a fresh read every time."""
    target = stats_dir / "app.1.aaaa.mmstats"
    _write(target, [_metric(1, "n"), _counter(1, 1)], **_alive())
    before = _open_fds()
    mmstats.read_directory(stats_dir)
    assert os.fspath(target) in _reader._held
    assert _open_fds() == before + 1  # the mapping's own descriptor

    other = stats_dir / ".other"
    _write(other, [_metric(1, "n"), _counter(1, 2)], **_alive())
    os.replace(other, target)
    assert _view(mmstats.read_directory(stats_dir)) == _fresh(stats_dir)
    mmstats.read_directory(stats_dir)
    # The old inode's mapping was let go; the process is watched now.
    assert len(_reader._held) == len(_reader._watched) == 1
    assert _open_fds() == before + 2

    with open(target, "ab") as f:  # grown: a longer file, records appended later
        f.write(bytes(65536))
    assert _view(mmstats.read_directory(stats_dir)) == _fresh(stats_dir)
    mmstats.read_directory(stats_dir)
    assert _reader._held[os.fspath(target)][1] == target.stat().st_size

    target.unlink()
    assert mmstats.read_directory(stats_dir).workers == []
    assert _reader._held == _reader._watched == {}
    assert _open_fds() == before


def test_dead_files_are_not_kept_mapped_and_live_ones_stay_under_the_cap(
    stats_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_reader, "_HELD_MAX", 8)
    for i in range(20):
        _write(stats_dir / f"app.{i}.live.mmstats", [_metric(1, "n")], **_alive())
        _write(stats_dir / f"app.{i}.dead.mmstats", [_metric(1, "n")], pid=DEAD_PID - i)
    before = _open_fds()
    for _ in range(3):
        snap = mmstats.read_directory(stats_dir)
        assert len(snap.workers) == 40
        assert len(_reader._held) <= 8
        assert not [p for p in _reader._held if ".dead." in p]
        assert len(_reader._watched) <= 8
        assert _open_fds() == before + len(_reader._held) + len(_reader._watched)
    _reader.drop_caches()
    assert _open_fds() == before


def _child_writer(stats_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import mmstats, sys\n"
            f"mmstats.Stats({os.fspath(stats_dir)!r}, 'child').counter('c').incr(3)\n"
            "print('ready', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _states(stats_dir: Path) -> list[str]:
    return [w.state for w in mmstats.read_directory(stats_dir).workers]


def test_a_watched_worker_killed_reads_dead_zombie_or_reaped(stats_dir: Path) -> None:
    """A reader that comes back watches live workers through pid file
    descriptors instead of /proc; a worker killed reads dead at once, while
    a zombie (not yet reaped) and after, and its descriptor is closed."""
    proc = _child_writer(stats_dir)
    try:
        before = _open_fds()
        assert _states(stats_dir) == ["alive"]
        assert _reader._watched == {}  # a one-off read opens no descriptor
        assert _states(stats_dir) == ["alive"]
        if not _reader._watched:
            pytest.skip("pidfd_open is not available here")
        assert [pid for pid, _ in _reader._watched] == [proc.pid]
        assert _states(stats_dir) == ["alive"]
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _reader.process_state(proc.pid)[0] not in ("Z", "X", ""):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert _states(stats_dir) == ["dead"]  # a zombie: not reaped yet
        assert _reader._watched == {}
    finally:
        proc.kill()
        proc.wait()
    assert _states(stats_dir) == ["dead"]
    _reader.drop_caches()
    assert _open_fds() == before


def test_a_scan_asks_every_watched_worker_at_once_and_sees_one_killed(
    stats_dir: Path,
) -> None:
    """With several workers watched, a scan polls their descriptors once
    when it begins: a killed one reads dead in the next scan (zombie or
    reaped, planned scan or not), the others alive, and a one-off read of
    a file agrees."""
    procs = [_child_writer(stats_dir) for _ in range(3)]
    try:
        for _ in range(2):
            assert _states(stats_dir) == ["alive"] * 3
        if len(_reader._watched) < 3:
            pytest.skip("pidfd_open is not available here")
        assert _reader._exited_pidfds() == frozenset()
        victim = procs[1]
        os.kill(victim.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _reader.process_state(victim.pid)[0] not in ("Z", "X", ""):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert len(_reader._exited_pidfds() or ()) == 1
        workers = mmstats.read_directory(stats_dir).workers
        states = {w.pid: w.state for w in workers}
        assert states == {p.pid: ("dead" if p is victim else "alive") for p in procs}
        watched = sorted(pid for pid, _ in _reader._watched)
        assert watched == sorted(p.pid for p in procs if p is not victim)
        victim.wait()  # reaped: /proc has no entry any more
        _quiet(stats_dir)
        for _ in range(3):  # the last ones by plan
            states = {w.pid: w.state for w in mmstats.read_directory(stats_dir).workers}
            assert states[victim.pid] == "dead"
            assert sorted(states.values()) == ["alive", "alive", "dead"]
        (victim_file,) = [w.path for w in workers if w.pid == victim.pid]
        assert mmstats.read_file(victim_file).state == "dead"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_a_pid_reused_by_another_process_is_not_taken_for_the_watched_one(
    stats_dir: Path,
) -> None:
    """A descriptor is kept by (pid, start time): a file whose header names
    the pid of a watched process with another start time is judged by
    /proc, as dead."""
    proc = _child_writer(stats_dir)
    try:
        for _ in range(3):
            assert _states(stats_dir) == ["alive"]
        ticks = _reader.process_start_ticks(proc.pid)
        (path,) = stats_dir.iterdir()
        with open(path, "r+b") as f:
            f.seek(F.H_START_TICKS)
            f.write(struct.pack("=Q", ticks + 1))
        assert _states(stats_dir) == ["dead"]
    finally:
        proc.kill()
        proc.wait()


# == scans by plan: a directory as it was at the last scan ============================


def _quiet(stats_dir: Path) -> None:
    """Let the directory's change times fall 0.1 s behind, so that a scan
    may trust them (and make a plan for the next scan)."""
    time.sleep(0.15)


def test_a_worker_that_dies_between_planned_scans_stays_in_the_totals(
    stats_dir: Path,
) -> None:
    """The directory does not change when a worker dies: a scan by plan
    reads it, finds it dead, and its counts are neither lost nor counted
    twice, then or after."""
    for i in range(5):
        _write(
            stats_dir / f"app.{i}.dead.mmstats",
            [_metric(1, "n"), _counter(1, 10)],
            pid=DEAD_PID - i,
        )
    proc = _child_writer(stats_dir)
    try:
        _quiet(stats_dir)
        for _ in range(3):
            snap = mmstats.read_directory(stats_dir)
            assert snap.totals()[("c", ())].value == 3
            assert snap.totals()[("n", ())].value == 50
        assert _reader._plans  # the scans above went by plan
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for _ in range(3):
            snap = mmstats.read_directory(stats_dir)
            assert sorted(w.state for w in snap.workers) == ["closed"] * 5 + ["dead"]
            assert snap.totals()[("c", ())].value == 3
            assert snap.totals()[("n", ())].value == 50
            assert _view(snap) == _fresh(stats_dir)
            assert mmstats.scrape(stats_dir) == _scrape_fresh(stats_dir)
            _quiet(stats_dir)
    finally:
        proc.kill()
        proc.wait()


def _scrape_fresh(stats_dir: Path) -> bytes:
    _reader.drop_caches()
    return mmstats.scrape(stats_dir)


def test_planned_scans_see_files_added_removed_and_replaced(stats_dir: Path) -> None:
    """Any change to the directory's entries makes a full scan again."""
    for i in range(3):
        _write(
            stats_dir / f"app.{i}.dead.mmstats",
            [_metric(1, "n"), _counter(1, i + 1)],
            pid=DEAD_PID - i,
        )
    _quiet(stats_dir)
    changes: list[Callable[[], None]] = [
        lambda: _write(
            stats_dir / "app.9.dead.mmstats",
            [_metric(1, "n"), _counter(1, 100)],
            pid=DEAD_PID - 9,
        ),
        lambda: (stats_dir / "app.0.dead.mmstats").unlink(),
        lambda: (
            _write(
                stats_dir / ".new",
                [_metric(1, "n"), _counter(1, 1000)],
                pid=DEAD_PID - 20,
            ),
            os.replace(stats_dir / ".new", stats_dir / "app.1.dead.mmstats"),
        ),
    ]
    for change in changes:
        for _ in range(2):
            mmstats.read_directory(stats_dir)
        change()
        assert _view(mmstats.read_directory(stats_dir)) == _fresh(stats_dir)
        _quiet(stats_dir)
    assert mmstats.read_directory(stats_dir).totals()[("n", ())].value == 1103
