"""Hostile input: damaged and foreign files, and hostile strings (#7).

Every reader (the API, every CLI subcommand, the Prometheus exporter and
the JSON endpoint) must show the healthy workers of a directory and name
each bad file, without crashing, hanging or reading out of bounds; a
fuzzer runs over the file parser and the renderers.  Strings from requests
and names are stored cut to size at a character boundary and escaped by
every output.

:func:`bad_directory` and :func:`hostile_directory` build the directories,
so that the live web page can be checked against the same input when it
exists (#7: see the ``TestWebPage`` placeholder at the end).
"""

from __future__ import annotations

import functools
import io
import json
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_classic
from rich.console import Console
from werkzeug.test import Client

import mmstats
import mmstats._writer as writer_module
from mmstats import _format as F
from mmstats._exporter import render as render_exposition
from mmstats._render import dump_view, show_view, slow_table
from mmstats._report import dumps, snapshot_to_json
from mmstats._serve import StatsApp

ROOT = Path(__file__).resolve().parent.parent

# -- healthy workers ----------------------------------------------------------

HEALTHY = textwrap.dedent(
    """
    import sys, mmstats
    directory, name, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ring = int(sys.argv[4]) if len(sys.argv) > 4 else 256
    recorder = mmstats.RequestRecorder(
        directory, name, slow_seconds=0, slow_log_size=ring
    )
    for i in range(requests):
        request = recorder.start("GET", f"/ok/{i}", "ok.view")
        mmstats.record_query(0.002)
        recorder.finish(request, 200)
    stats = recorder.stats
    stats.counter("jobs", labels={"queue": "mail"}).incr(requests)
    stats.text("version").set("v1")
    print(stats.path, flush=True)
    """
)


PLAIN = textwrap.dedent(
    """
    import sys, mmstats
    stats = mmstats.Stats(sys.argv[1], "whole")
    stats.counter("c", labels={"k": "v"}).incr(3)
    stats.gauge("g").set(1.5)
    stats.text("t").set("text")
    stats.histogram("h", unit="count").observe(7)
    print(stats.path, flush=True)
    """
)


def write_healthy(directory: Path, name: str, requests: int, ring: int = 256) -> Path:
    """Run a worker that records ``requests`` requests and exits cleanly."""
    result = subprocess.run(
        [sys.executable, "-c", HEALTHY, str(directory), name, str(requests), str(ring)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())


def set_bytes(data: bytearray, offset: int, fmt: str, value: Any) -> None:
    struct.pack_into("=" + fmt, data, offset, value)


def records(data: bytes) -> Iterator[tuple[int, int, int]]:
    """Yield (offset, type, size) of each record of a healthy file."""
    used = struct.unpack_from("=Q", data, F.H_USED)[0]
    off = F.HEADER_SIZE
    while off < used:
        rtype, size = struct.unpack_from("=II", data, off)
        yield off, rtype, size
        off += size


def first_record(data: bytes, rtype: int, kind: int | None = None) -> int:
    """Return the offset of the first record of a type (and metric kind)."""
    for off, t, _size in records(data):
        if t != rtype:
            continue
        if kind is None or struct.unpack_from("=I", data, off + 12)[0] == kind:
            return off
    raise AssertionError(f"no record of type {rtype}")


def with_record(data: bytes, record: bytes) -> bytes:
    """Return a copy of a file with one more record published at its end."""
    used = struct.unpack_from("=Q", data, F.H_USED)[0]
    out = bytearray(data[:used]) + record
    out += bytes(F.round8(len(out)) - len(out))
    struct.pack_into("=Q", out, F.H_USED, len(out))
    return bytes(out)


def metric_record(blob: bytes) -> bytes:
    size = F.round8(F.METRIC_FIXED.size + len(blob))
    fixed = F.METRIC_FIXED.pack(
        F.R_METRIC, size, 99, F.KIND_COUNTER, 0, 0, 0, 0, 0, len(blob)
    )
    return (fixed + blob).ljust(size, b"\0")


def bad_directory(directory: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Fill ``directory`` with two healthy workers and every kind of bad file.

    Returns the healthy workers' request counts by name and, for each bad
    file name, a fragment of the reason readers must give.
    """
    good = write_healthy(directory, "healthy", 5)
    write_healthy(directory, "sound", 3)
    data = good.read_bytes()
    bad: dict[str, str] = {}

    def plant(name: str, content: bytes, reason: str) -> None:
        path = directory / name
        path.write_bytes(content)
        os.chmod(path, 0o600)
        bad[name] = reason

    plant("empty.1.a.mmstats", b"", "shorter than the 4096-byte header")
    used = struct.unpack_from("=Q", data, F.H_USED)[0]
    plant("cut.1.a.mmstats", data[: (F.HEADER_SIZE + used) // 2], "used length")
    plant("header-only.1.a.mmstats", data[:4000], "shorter than the 4096-byte")
    plant("magic.1.a.mmstats", b"NOTMMSTA" + data[8:], "no mmstats magic")
    for name, version, word in (
        ("older", 0, "older"),
        ("newer", F.VERSION + 1, "newer"),
    ):
        versioned = bytearray(data)
        set_bytes(versioned, F.H_VERSION, "I", version)
        plant(f"{name}.1.a.mmstats", bytes(versioned), f"{word} than this reader's")
    plant(
        "random.1.a.mmstats", random.Random(7).randbytes(len(data)), "no mmstats magic"
    )
    huge = bytearray(data)
    set_bytes(huge, F.H_USED, "Q", 1 << 60)
    plant("huge.1.a.mmstats", bytes(huge), "used length")
    plant("text.1.a.mmstats", b"just some notes\n" * 400, "no mmstats magic")
    (directory / "link.1.a.mmstats").symlink_to(good)
    bad["link.1.a.mmstats"] = "symlinks are not followed"
    os.mkfifo(directory / "fifo.1.a.mmstats")
    bad["fifo.1.a.mmstats"] = "not a regular file"
    (directory / "dir.1.a.mmstats").mkdir()
    bad["dir.1.a.mmstats"] = "not a regular file"
    listening = socket.socket(socket.AF_UNIX)  # opening one fails: ENXIO
    listening.bind(os.fspath(directory / "socket.1.a.mmstats"))
    listening.close()
    bad["socket.1.a.mmstats"] = "not a regular file"

    # Damage inside the records.
    nested = with_record(data, metric_record(b"[" * 100_000))
    plant("nested.1.a.mmstats", nested, "recursion")
    scheme = bytearray(data)
    off = first_record(data, F.R_METRIC, F.KIND_HISTOGRAM)
    set_bytes(scheme, off + 32, "d", 1e10)  # gamma
    plant("scheme.1.a.mmstats", bytes(scheme), "bad bucket scheme")
    pid = bytearray(data)
    set_bytes(pid, F.H_PID, "q", -1)
    plant("pid.1.a.mmstats", bytes(pid), "has pid -1")
    ring = bytearray(data)
    off = first_record(data, F.R_RING)
    set_bytes(ring, off + 8, "I", 0xFFFFFFFF)  # capacity
    plant("ring.1.a.mmstats", bytes(ring), "slow ring")

    # A hostile file name: not UTF-8, with a newline and an escape sequence.
    hostile = os.fsencode(directory) + b"/evil\xff\n\x1b[31m.1.a.mmstats"
    with open(hostile, "wb") as f:
        f.write(b"\x1b[2Jnot a stats file")
    bad[os.fsdecode(os.path.basename(hostile))] = "shorter than"
    return {"healthy": 5, "sound": 3}, bad


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    directory = tmp_path_factory.mktemp("bad") / "stats"
    directory.mkdir(mode=0o700)
    _, bad = bad_directory(directory)
    return directory, bad


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMSTATS_")}
    return subprocess.run(
        [sys.executable, "-m", "mmstats._cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**env, "COLUMNS": "80"},
    )


def flat(text: str) -> str:
    """Join the lines of a table, so that folded cells read as one string."""
    return "".join(line.strip() for line in text.splitlines())


# -- a directory of bad files -------------------------------------------------


class TestBadFiles:
    def test_api_reads_the_healthy_and_names_each_bad_file(
        self, bad_dir: tuple[Path, dict[str, str]]
    ) -> None:
        """read_directory gives both healthy workers with their values and one
        BadFile per bad file, with the expected reason."""
        directory, expected = bad_dir
        snapshot = mmstats.read_directory(directory)

        assert {w.name: w.value("requests") for w in snapshot.workers} == {
            "healthy": 5,
            "sound": 3,
        }
        got = {os.path.basename(b.path): b.reason for b in snapshot.bad}
        assert set(got) == set(expected)
        for name, fragment in expected.items():
            assert fragment in got[name], (name, got[name])
            assert "\n" not in got[name]
        assert snapshot.totals()[("requests", ())].value == 8

    @pytest.mark.parametrize(
        "args",
        [
            ("show",),
            ("show", "--wide"),
            ("slow", "--limit", "0", "--wide"),
            ("top", "--iterations", "1", "--wide"),
            ("clean", "--dry-run"),
            ("json",),
        ],
        ids=lambda a: "-".join(a),
    )
    def test_cli_shows_the_healthy_and_names_each_bad_file(
        self, bad_dir: tuple[Path, dict[str, str]], args: tuple[str, ...]
    ) -> None:
        """Every subcommand shows the healthy workers, names every bad file
        (escaped), exits 1 with one error line, and no traceback."""
        directory, expected = bad_dir
        started = time.monotonic()
        result = cli(*args, "--dir", os.fspath(directory))

        assert time.monotonic() - started < 30
        assert "Traceback" not in result.stderr
        if args[0] == "top":
            assert result.returncode == 0  # top watches; bad files are listed
        else:
            assert result.returncode == 1, result.stderr
            [line] = result.stderr.splitlines()
            assert f"{len(expected)} stats files" in line
        out = result.stdout
        assert "\x1b" not in out and "\x00" not in out
        if args[0] == "json":
            doc = json.loads(out)
            names = {os.path.basename(b["path"]) for b in doc["bad_files"]}
            assert names == set(expected)
            assert {w["name"] for w in doc["workers"]} == {"healthy", "sound"}
            return
        listed = out.split("Files that could not be read", 1)[1]
        if args[0] == "clean":
            assert out.count("Would remove") == 2  # the two healthy, closed
        if "--wide" not in args:
            return  # names may be folded over lines at 80 columns
        for name in expected:
            shown = name.encode("utf-8", "surrogateescape").decode(
                "utf-8", "backslashreplace"
            )
            shown = shown.replace("\n", "\\n").replace("\x1b", "\\x1b")
            assert shown in listed, name
        if args[0] in ("show", "top"):
            table = out.split("Files that could not be read", 1)[0]
            rows = [line.split() for line in table.splitlines()]
            reqs = 5 if "--wide" in args else 3  # --wide adds Name and Host
            closed = [row[reqs] for row in rows if row[1:2] == ["closed"]]
            assert sorted(closed) == ["3", "5"]

    def test_dump_of_each_bad_file_is_one_line(
        self, bad_dir: tuple[Path, dict[str, str]]
    ) -> None:
        """`mmstats dump` of any bad file: status 1, one line naming it."""
        directory, expected = bad_dir
        for name, fragment in expected.items():
            if not name.isascii() or "evil" in name:
                continue  # not passable as an argument on every system
            result = cli("dump", os.fspath(directory / name), timeout=30)
            assert result.returncode == 1, name
            [line] = result.stderr.splitlines()
            assert line.startswith("Error: ") and name in line
            assert fragment in line, (name, line)

    def test_exporter_counts_bad_files_and_totals_the_healthy(
        self, bad_dir: tuple[Path, dict[str, str]]
    ) -> None:
        """The Prometheus exposition parses, gives the healthy totals and
        counts the unreadable files; /api/json lists them."""
        directory, expected = bad_dir
        for openmetrics in (False, True):
            text = mmstats.scrape(directory, openmetrics=openmetrics).decode()
            parse = parse_openmetrics if openmetrics else parse_classic
            found = {s.name: s.value for family in parse(text) for s in family.samples}
            assert found["mmstats_requests_total"] == 8
            assert found["mmstats_unreadable_files"] == len(expected)
            assert found["mmstats_scrape_error"] == 0

        response = Client(StatsApp(directory)).get("/api/json")
        doc = json.loads(response.get_data(as_text=True))
        assert len(doc["bad_files"]) == len(expected)
        assert len(doc["workers"]) == 2

    def test_file_cut_at_every_length_in_a_directory(self, stats_dir: Path) -> None:
        """A directory holding every prefix of a real file: the scan names each
        prefix but the whole file, and the CLI and exporter say the same."""
        # A small file (no slow ring): every prefix is a file of its own.
        result = subprocess.run(
            [sys.executable, "-c", PLAIN, str(stats_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        data = Path(result.stdout.strip()).read_bytes()
        used = struct.unpack_from("=Q", data, F.H_USED)[0]
        assert used < 16 * 1024
        for length in range(used):
            (stats_dir / f"cut.{length:05d}.x.mmstats").write_bytes(data[:length])

        started = time.monotonic()
        snapshot = mmstats.read_directory(stats_dir)
        elapsed = time.monotonic() - started
        assert [w.name for w in snapshot.workers] == ["whole"]
        assert len(snapshot.bad) == used
        assert elapsed < 20
        print(f"\n[figure] every_length = {used} prefixes read in {elapsed:.2f} s")

        doc = json.loads(cli("json", "--compact", "--dir", str(stats_dir)).stdout)
        assert len(doc["bad_files"]) == used
        text = mmstats.scrape(stats_dir).decode()
        assert f"mmstats_unreadable_files {used}" in text

    def test_a_file_that_only_claims_to_be_live_cannot_stall_a_reader(
        self, stats_dir: Path
    ) -> None:
        """Copies of a live worker's file with every text sequence left odd
        and every histogram count short of its buckets (as if its writer
        were always mid-update): a scan gives up waiting within its bounds,
        however many such files there are."""
        stats = mmstats.Stats(stats_dir, "live")
        for i in range(20):
            stats.histogram(f"h{i}").observe(1.0)
            stats.text(f"t{i}").set("x")
        data = bytearray(Path(stats.path or "").read_bytes())
        for off, rtype, _size in records(bytes(data)):
            if rtype == F.R_CELL:
                # Word 0 is a text's sequence (2, made 3: odd) or a
                # histogram's count (1, made 0: short of its one bucket).
                word = off + F.CELL_PAYLOAD
                set_bytes(data, word, "Q", struct.unpack_from("=Q", data, word)[0] ^ 1)
        for i in range(10):
            (stats_dir / f"frozen.{i}.x.mmstats").write_bytes(bytes(data))

        started = time.monotonic()
        snapshot = mmstats.read_directory(stats_dir)
        elapsed = time.monotonic() - started
        assert len(snapshot.workers) == 11  # read, with what could be read
        assert elapsed < 5
        print(f"\n[figure] stalled_scan = {elapsed:.2f} s for 10 forged files")
        one = time.monotonic()
        mmstats.read_file(stats_dir / "frozen.0.x.mmstats")
        assert time.monotonic() - one < 2.0


# -- fuzzing ------------------------------------------------------------------


@functools.cache
def fuzz_base() -> bytes:
    """A file with every record type, from another host (never waited on)."""
    directory = tempfile.mkdtemp(prefix="mmstats-fuzz-")
    try:
        recorder = mmstats.RequestRecorder(directory, "fuzz", slow_seconds=0)
        stats = recorder.stats
        for i in range(3):
            request = recorder.start("GET", f"/p/{i}", "v")
            mmstats.record_query(0.01)
            recorder.finish(request, 200 + i)
        recorder.start("POST", "/held", "held")
        stats.gauge("g", labels={"k": "v"}).set(2.5)
        stats.text("t").set("text")
        stats.histogram("h", unit="count").observe(3)
        data = bytearray(Path(stats.path or "").read_bytes())
    finally:
        shutil.rmtree(directory)
    used = struct.unpack_from("=Q", data, F.H_USED)[0]
    del data[used:]
    host = b"fuzz.invalid"
    data[F.H_HOSTNAME : F.H_HOSTNAME + 2 + len(host)] = (
        struct.pack("=H", len(host)) + host
    )
    return bytes(data)


def interesting_offsets(data: bytes) -> list[int]:
    offsets = [F.H_USED, F.H_PID, F.H_START_TIME, F.H_CREATED, F.H_CLOSED]
    offsets += [F.H_CLOSED_AT, F.H_HEARTBEAT, F.H_FLAGS, F.H_HOSTNAME, F.H_NAME]
    for off, _t, size in records(data):
        offsets += [off, off + 4, off + 8, off + 12, off + 16, off + 20]
        offsets += [off + 24, off + 32, off + 40, off + 44, off + 48, off + 64]
        offsets += [off + size - 8]
    return sorted(o for o in set(offsets) if o + 8 <= len(data))


def _bits(value: float) -> int:
    return int(struct.unpack("=Q", struct.pack("=d", value))[0])


INTERESTING = [
    0,
    1,
    7,
    8,
    4096,
    2**31,
    2**32 - 1,
    2**63 - 1,
    2**64 - 1,
    _bits(float("nan")),
    _bits(float("inf")),
    _bits(-1e300),
    _bits(1e300),
    _bits(1.5e9),
]


def exercise(path: Path, render: bool = True) -> None:
    """Run every reader over one file; only CorruptFileError may come out."""
    try:
        worker = mmstats.read_file(path)
    except mmstats.CorruptFileError as exc:
        assert "\n" not in str(exc)
        return
    snapshot = mmstats.read_directory(path.parent)
    if render:
        console = Console(file=io.StringIO(), width=100, color_system=None)
        console.print(dump_view(worker, time.time()))
        console.print(show_view(snapshot, wide=True))
        console.print(slow_table(snapshot.slow(), snapshot.read_at, True))
    json.loads(dumps(snapshot_to_json(snapshot)))
    list(parse_classic(render_exposition(snapshot).decode()))
    text = render_exposition(snapshot, openmetrics=True).decode()
    list(parse_openmetrics(text))


def damage(base: bytes) -> st.SearchStrategy[tuple[list[tuple[int, str, int]], Any]]:
    """Edits (offset, struct format, value) and a length to cut the file to."""
    edit = st.tuples(
        st.one_of(
            st.sampled_from(interesting_offsets(base)),
            st.integers(0, len(base) - 8),
        ),
        st.sampled_from(["B", "I", "Q"]),
        st.one_of(st.sampled_from(INTERESTING), st.integers(0, 2**64 - 1)),
    )
    cut = st.one_of(st.none(), st.none(), st.integers(0, len(base)))
    return st.tuples(st.lists(edit, min_size=1, max_size=6), cut)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.data())
def test_fuzzed_files_give_a_value_or_one_clean_refusal(data_: st.DataObject) -> None:
    """Structured damage to a file with every record type: header fields,
    record types and sizes, counts, floats (NaN, infinities, 1e300), lengths.
    The parser, dump, show, slow, JSON and the exposition never fail."""
    edits, cut = data_.draw(damage(fuzz_base()))
    data = bytearray(fuzz_base())
    for offset, fmt, value in edits:
        size = struct.calcsize("=" + fmt)
        set_bytes(data, offset, fmt, value % (1 << (8 * size)))
    if cut is not None:
        del data[cut:]
    directory = Path(tempfile.mkdtemp(prefix="mmstats-fuzz-"))
    try:
        path = directory / "fuzz.1.x.mmstats"
        path.write_bytes(bytes(data))
        started = time.monotonic()
        exercise(path)
        assert time.monotonic() - started < 5
    finally:
        shutil.rmtree(directory)


ATHERIS_TARGET = textwrap.dedent(
    """
    import os, struct, sys, tempfile, time
    import atheris

    with atheris.instrument_imports():
        import mmstats, mmstats._exporter, mmstats._report
    from tests.test_hostile import exercise

    base = open(sys.argv[1], "rb").read()
    directory = tempfile.mkdtemp(prefix="mmstats-atheris-")
    from pathlib import Path
    path = Path(directory) / "fuzz.1.x.mmstats"

    def one(data):
        fdp = atheris.FuzzedDataProvider(data)
        mutated = bytearray(base)
        for _ in range(fdp.ConsumeIntInRange(1, 8)):
            offset = fdp.ConsumeIntInRange(0, len(mutated) - 8)
            width = fdp.PickValueInList([1, 4, 8])
            chunk = fdp.ConsumeBytes(width).ljust(width, b"\\0")
            mutated[offset:offset + width] = chunk
        if fdp.ConsumeBool():
            del mutated[fdp.ConsumeIntInRange(0, len(mutated)):]
        path.write_bytes(bytes(mutated))
        exercise(path, render=False)

    atheris.Setup([sys.argv[0], *sys.argv[2:]], one)
    atheris.Fuzz()
    """
)


@pytest.mark.stress
def test_atheris_over_the_parser_and_renderers(tmp_path: Path) -> None:
    """Coverage-guided fuzzing (atheris, when installed) of the same target
    for 10 seconds: no crash."""
    pytest.importorskip("atheris")
    base = tmp_path / "base.mmstats"
    base.write_bytes(fuzz_base())
    script = tmp_path / "target.py"
    script.write_text(ATHERIS_TARGET)
    result = subprocess.run(
        [
            sys.executable,
            os.fspath(script),
            os.fspath(base),
            "-max_total_time=10",
            "-rss_limit_mb=4096",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.fspath(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = re.findall(r"Done (\d+) runs", result.stderr)
    print(f"\n[figure] atheris runs = {runs}")


# -- hostile strings ----------------------------------------------------------

HOSTILE_PATHS = {
    "newline": "/a\nb\r\nc",
    "nul": "/nul\x00byte",
    "quotes": "/q\"u'o`te",
    "backslash": "/back\\slash\\\\n",
    "emoji": "/" + "🦄" * 2500,  # 10 KB of 4-byte characters
    "script": "/<script>alert(1)</script>&amp;",
    "escape": "/\x1b]0;title\x07\x1b[2J\u202eevil",
    "long": "/" + "é" * 5000,
}
# Raw bytes as a client sends them: not UTF-8 (WSGI carries them as latin-1).
HOSTILE_RAW = b"/raw/\xff\xfe\xc3(\x80"
HOSTILE_VIEWS = [
    "vue.ünïcödé",
    "v\n<script>x</script>",
    "v\ud800lone",
    "🦄" * 200,
    'v"quote\\back',
]
HOSTILE_HOST = "hôst-\U0001f984-\udcff\x1b[31m"
HOSTILE_METHOD = "GET\x1b[31m<sc>LONGMETHOD"

HOSTILE_WORKER = textwrap.dedent(
    """
    import json, sys
    import mmstats._writer
    mmstats._writer.hostname = lambda: json.loads(sys.argv[3])
    import mmstats
    from werkzeug.test import EnvironBuilder
    from mmstats_wsgi import StatsMiddleware

    directory, plan = sys.argv[1], json.loads(sys.argv[2])

    def app(environ, start_response):
        environ["mmstats.view"] = environ.get("HTTP_X_VIEW") or None
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    wrapped = StatsMiddleware(app, directory, "hostile", slow_seconds=0)
    statuses = []

    def call(path, method="GET", view=None):
        environ = EnvironBuilder(method="GET").get_environ()
        environ["PATH_INFO"] = path
        environ["REQUEST_METHOD"] = method
        if view is not None:
            environ["HTTP_X_VIEW"] = view
        got = []
        body = wrapped(environ, lambda s, h, e=None: got.append(s))
        list(body)
        body.close()
        statuses.append(got[0])

    for path in plan["paths"]:
        call(path)
    call(bytes.fromhex(plan["raw"]).decode("latin-1"))
    for view in plan["views"]:
        call("/v", view=view)
    call("/m", method=plan["method"])
    print(json.dumps(sorted(set(statuses))))
    """
)


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory written by a worker fed every hostile string."""
    directory = tmp_path_factory.mktemp("hostile") / "stats"
    directory.mkdir(mode=0o700)
    hostile_directory(directory)
    return directory


def hostile_directory(directory: Path) -> None:
    """Record HOSTILE_* requests into ``directory`` from a worker whose host
    name is HOSTILE_HOST."""
    plan = {
        # PEP 3333: a server hands the path's bytes over as latin-1.
        "paths": [p.encode().decode("latin-1") for p in HOSTILE_PATHS.values()],
        "raw": HOSTILE_RAW.hex(),
        "views": HOSTILE_VIEWS,
        "method": HOSTILE_METHOD,
    }
    # JSON carries the lone surrogates as \\udXXX escapes.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            HOSTILE_WORKER,
            os.fspath(directory),
            json.dumps(plan),
            json.dumps(HOSTILE_HOST),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["200 OK"]
    assert result.stderr == ""  # nothing logged: no stats failure


def as_stored(value: str, size: int) -> str:
    """What a reader gives back for ``value`` stored in a ``size`` field."""
    return F.cut_utf8(F.encode(value), size - 2).decode("utf-8", "backslashreplace")


class TestHostileStrings:
    def test_stored_cut_at_a_character_boundary(self, hostile_dir: Path) -> None:
        """Each path is stored as sent, cut to its field at a character
        boundary, without query string; invalid bytes come back escaped; the
        host name and method too."""
        [worker] = mmstats.read_directory(hostile_dir).workers
        paths = [e.path for e in reversed(worker.slow)]
        expected = [as_stored(p, F.PATH_SIZE) for p in HOSTILE_PATHS.values()]
        expected.append(HOSTILE_RAW.decode("utf-8", "backslashreplace"))
        assert paths[: len(expected)] == expected
        emoji = paths[list(HOSTILE_PATHS).index("emoji")]
        assert len(emoji.encode()) == 1 + 4 * 127  # of 510 bytes
        assert HOSTILE_PATHS["emoji"].startswith(emoji)

        assert worker.hostname == as_stored(HOSTILE_HOST, F.HOSTNAME_SIZE)
        assert worker.hostname.endswith("\\xff\x1b[31m")
        assert worker.state == "closed"  # exited; its host is not this one
        methods = {e.method for e in worker.slow}
        assert as_stored(HOSTILE_METHOD, F.METHOD_SIZE) in methods
        assert len(as_stored(HOSTILE_METHOD, F.METHOD_SIZE).encode()) <= 14

    def test_view_names_in_slots_ring_and_labels_agree(self, hostile_dir: Path) -> None:
        """A view name is the same, cut the same way, in the slow ring and in
        the view_requests label; a lone surrogate becomes an escape."""
        [worker] = mmstats.read_directory(hostile_dir).workers
        views = {e.view for e in worker.slow if e.path == "/v"}
        labels = {s.labels["view"] for s in worker.series if s.name == "view_requests"}
        assert views == labels
        assert "vue.ünïcödé" in labels
        assert "v\\ud800lone" in labels
        assert "🦄" * 63 in labels  # 254 bytes hold 63 four-byte characters
        assert all(len(v.encode()) <= F.VIEW_SIZE - 2 for v in labels)

    @pytest.mark.parametrize(
        "args",
        [
            ("show",),
            ("show", "--wide"),
            ("slow", "--limit", "0"),
            ("slow", "--limit", "0", "--wide"),
            ("top", "--iterations", "1", "--wide"),
        ],
        ids=lambda a: "-".join(a),
    )
    def test_terminal_output_escapes_everything(
        self, hostile_dir: Path, args: tuple[str, ...]
    ) -> None:
        """No control character, bidi override or NUL from a file reaches the
        terminal; narrow output stays within 80 columns."""
        result = cli(*args, "--dir", os.fspath(hostile_dir))
        assert result.returncode == 0, result.stderr
        check_terminal_text(result.stdout)
        if "--wide" not in args:
            assert max(map(len, result.stdout.splitlines())) <= 80

    def test_dump_escapes_everything_and_shows_every_byte(
        self, hostile_dir: Path
    ) -> None:
        """dump folds long values instead of cutting them, escaped."""
        [path] = hostile_dir.glob("*.mmstats")
        result = cli("dump", "--wide", os.fspath(path))
        assert result.returncode == 0, result.stderr
        check_terminal_text(result.stdout)
        out = flat(result.stdout)
        assert "\\x1b]0;title\\x07\\x1b[2J\\u202eevil" in out
        assert "/raw/\\xff\\xfe\\xc3(\\x80" in out
        assert "/nul\\x00byte" in out

    def test_json_is_ascii_html_safe_and_exact(self, hostile_dir: Path) -> None:
        """The JSON document is ASCII, has no raw <, > or &, and parses back
        to exactly what the reader gives."""
        result = cli("json", "--dir", os.fspath(hostile_dir))
        assert result.returncode == 0, result.stderr
        assert result.stdout.isascii()
        assert not set("<>&") & set(result.stdout)
        doc = json.loads(result.stdout)
        [worker] = mmstats.read_directory(hostile_dir).workers
        assert [e["path"] for e in doc["workers"][0]["slow"]] == [
            e.path for e in worker.slow
        ]
        assert doc["workers"][0]["hostname"] == worker.hostname

    def test_prometheus_labels_escape_and_parse_back(self, hostile_dir: Path) -> None:
        """Every view label survives the exposition's escaping, in both
        formats, and parses back to the reader's string."""
        [worker] = mmstats.read_directory(hostile_dir).workers
        labels = {s.labels["view"] for s in worker.series if s.name == "view_requests"}
        for openmetrics in (False, True):
            text = mmstats.scrape(hostile_dir, openmetrics=openmetrics).decode()
            assert all(line.isprintable() for line in text.splitlines())
            parse = parse_openmetrics if openmetrics else parse_classic
            exported = {
                s.labels["view"]
                for family in parse(text)
                for s in family.samples
                if s.name == "mmstats_view_requests_total"
            }
            assert exported == labels

    def test_api_json_endpoint_escapes(self, hostile_dir: Path) -> None:
        """/api/json of `mmstats serve` is the same HTML-safe document."""
        response = Client(StatsApp(hostile_dir)).get("/api/json")
        body = response.get_data(as_text=True)
        assert not set("<>&") & set(body)
        assert json.loads(body)["workers"][0]["hostname"].startswith("hôst-")


def check_terminal_text(out: str) -> None:
    """No character a terminal would act on, other than newlines."""
    unsafe = re.compile(
        "[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]"
    )
    assert not unsafe.search(out), unsafe.search(out)
    out.encode("utf-8")  # no lone surrogate


def test_hostnames_and_names_from_this_host_render(
    stats_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host name that is not UTF-8 does not break the writer (#7)."""
    monkeypatch.setattr(writer_module, "hostname", lambda: "b\udcffd-hôst")
    stats = mmstats.Stats(stats_dir, "hostname")
    stats.counter("c").incr()
    assert stats.disabled is None
    [worker] = mmstats.read_directory(stats_dir).workers
    assert worker.hostname == "b\\xffd-hôst"


def test_text_with_a_lone_surrogate_is_stored_escaped(stats_dir: Path) -> None:
    """Text.set never raises for a str Python can hold."""
    stats = mmstats.Stats(stats_dir, "surrogate")
    stats.text("t").set("a\ud800b\udcffc")
    stats.text("u").set("a\udcffb")
    [worker] = mmstats.read_directory(stats_dir).workers
    assert worker.value("t") == "a\\ud800b\\udcffc"
    assert worker.value("u") == "a\\xffb"  # a byte smuggled in: as it was


def test_openmetrics_histogram_sum_of_negative_observations(stats_dir: Path) -> None:
    """Observing negative values (or NaN) still gives a valid OpenMetrics
    exposition (#7)."""
    stats = mmstats.Stats(stats_dir, "negative")
    stats.histogram("delta", unit="count").observe(-5)
    stats.histogram("broken", unit="count").observe(float("nan"))
    text = mmstats.scrape(stats_dir, openmetrics=True).decode()
    list(parse_openmetrics(text))


# -- the web page -------------------------------------------------------------


class TestWebPage:
    """The live page and the JSON it polls, over bad and hostile directories."""

    def test_page_json_names_bad_files_and_keeps_healthy_workers(
        self, stats_dir: Path
    ) -> None:
        """/api/json lists every bad file with its reason beside the workers."""
        counts, reasons = bad_directory(stats_dir)
        client = Client(mmstats.StatsApp(stats_dir))
        response = client.get("/api/json")
        assert response.status_code == 200
        doc = json.loads(response.get_data(as_text=True))
        shown = {w["name"]: w for w in doc["workers"]}
        assert set(counts) <= set(shown)
        bad = {os.path.basename(b["path"]): b["reason"] for b in doc["bad_files"]}
        for name, fragment in reasons.items():
            assert fragment in bad[name]

    def test_page_json_escapes_markup_and_the_page_sets_a_strict_policy(
        self, stats_dir: Path
    ) -> None:
        """No raw ``<`` from a file reaches the page's JSON; the page may run
        only its own script."""
        hostile_directory(stats_dir)
        client = Client(mmstats.StatsApp(stats_dir))
        body = client.get("/api/json").get_data(as_text=True)
        assert "<script" not in body and "\\u003cscript" in body
        assert "\x1b" not in body
        json.loads(body)
        page = client.get("/")
        policy = page.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy
        assert "unsafe-inline" not in policy
