"""The reader API: parse one stats file, scan a directory, add workers up.

Every file is untrusted input.  A file that cannot be parsed raises
:class:`~mmstats.exceptions.CorruptFileError` from :func:`read_file`; a
directory scan never raises for one bad file but lists it in
:attr:`Snapshot.bad` and goes on with the others.
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import os
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import _format as F
from ._archive import ARCHIVE_NAME, Archive, load_archive
from ._writer import (
    CHUNK_SIZE,
    boot_id,
    pid_namespace,
    process_state,
    resolve_directory,
)
from .exceptions import CorruptFileError, DirectoryError, UnsupportedVersionError

log = logging.getLogger(__name__)

LabelKey = tuple[tuple[str, str], ...]


def text(data: bytes) -> str:
    """Decode bytes from a file; invalid bytes become ``\\xNN`` escapes."""
    return data.decode("utf-8", "backslashreplace")


@dataclass
class HistogramValue:
    """Counts per log-scaled bucket; merges exactly with the same scheme."""

    lo: float
    gamma: float
    integer: bool
    count: int = 0
    sum: float = 0.0
    buckets: dict[int, int] = field(default_factory=dict)
    nbuckets: int = 0  # of the scheme: the last one also holds all above

    def merge(self, other: HistogramValue) -> None:
        """Add ``other`` into this histogram."""
        if not self.same_scheme(other):
            raise ValueError(
                f"Cannot merge histograms with buckets lo={other.lo!r} "
                f"gamma={other.gamma!r} into lo={self.lo!r} gamma={self.gamma!r}"
            )
        self.count += other.count
        self.sum += other.sum
        for k, n in other.buckets.items():
            self.buckets[k] = self.buckets.get(k, 0) + n

    def same_scheme(self, other: HistogramValue) -> bool:
        """Return whether ``other`` has the same buckets, so they can merge."""
        return (other.lo, other.gamma) == (self.lo, self.gamma)

    def copy(self) -> HistogramValue:
        """Return an independent copy."""
        return HistogramValue(
            self.lo,
            self.gamma,
            self.integer,
            self.count,
            self.sum,
            dict(self.buckets),
            self.nbuckets,
        )

    def bounds(self, k: int) -> tuple[float, float]:
        """Return the (lower, upper] bounds of bucket ``k``."""
        if k == 0:
            return (-math.inf, self.lo)
        return (self.lo * self.gamma ** (k - 1), self.lo * self.gamma**k)

    def representative(self, k: int) -> float:
        """Return the value that stands for bucket ``k`` (error <= 3.85 %)."""
        if k == 0:
            return 0.0
        low, high = self.bounds(k)
        # The harmonic mean of the bounds has the smallest worst-case
        # relative error for any value in the bucket.
        value = 2 * low * high / (low + high)
        if self.integer:
            # Counts are whole: the nearest integer inside the bucket.
            first, last = math.floor(low) + 1, math.floor(high)
            if first <= last:
                return float(min(max(round(value), first), last))
        return value

    def quantile(self, q: float) -> float | None:
        """Return the ``q`` quantile (0 to 1) by nearest rank, or None if empty."""
        total = sum(self.buckets.values())
        if total == 0:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for k in sorted(self.buckets):
            seen += self.buckets[k]
            if seen >= rank:
                return self.representative(k)
        return self.representative(max(self.buckets))

    @property
    def mean(self) -> float | None:
        """Return the exact mean, or None if empty."""
        return self.sum / self.count if self.count else None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form (see the README's schema)."""
        return {
            "count": self.count,
            "sum": self.sum,
            "lo": self.lo,
            "gamma": self.gamma,
            "integer": self.integer,
            "nbuckets": self.nbuckets,
            "buckets": {str(k): n for k, n in sorted(self.buckets.items())},
            "p50": self.quantile(0.5),
            "p90": self.quantile(0.9),
            "p99": self.quantile(0.99),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HistogramValue:
        """Build a histogram from its JSON form.

        :raises ValueError: the bucket scheme or a bucket is out of range.
        """
        lo, gamma = float(data["lo"]), float(data["gamma"])
        nbuckets = int(data["nbuckets"])
        buckets = {int(k): int(n) for k, n in data["buckets"].items()}
        check_scheme(lo, gamma, max(nbuckets, max(buckets, default=0) + 1))
        if buckets and min(buckets) < 0:
            raise ValueError(f"histogram has a bucket below 0: {min(buckets)}")
        if min(buckets.values(), default=0) < 0:
            raise ValueError("histogram has a negative bucket count")
        int(data["count"])  # present and a number, but the buckets are the truth
        return cls(
            lo,
            gamma,
            bool(data["integer"]),
            sum(buckets.values()),
            float(data["sum"]),
            buckets,
            nbuckets,
        )


def check_scheme(lo: float, gamma: float, nbuckets: int) -> None:
    """Refuse a bucket scheme whose bounds are not finite positive numbers.

    :raises ValueError: naming the scheme.
    """
    ok = (
        1 <= nbuckets <= F.MAX_BUCKETS
        and 1e-300 < lo < 1e300
        and 1.0 < gamma <= 4.0
        and math.log(lo) + nbuckets * math.log(gamma) < 700
    )
    if not ok:
        raise ValueError(
            f"histogram has a bad bucket scheme: lo={lo!r} gamma={gamma!r} "
            f"buckets={nbuckets}"
        )


@dataclass
class Series:
    """One metric with one set of label values, as read."""

    name: str
    kind: str
    help: str
    unit: str
    labels: dict[str, str]
    value: Any  # int (counter), float (gauge), HistogramValue, str (text)

    @property
    def key(self) -> tuple[str, LabelKey]:
        return (self.name, tuple(sorted(self.labels.items())))


@dataclass
class Slot:
    """A request a worker is serving now."""

    index: int
    thread: int
    method: str
    path: str
    view: str
    started: float
    queries: int
    db_seconds: float


@dataclass
class SlowEntry:
    """One request from a worker's slow ring."""

    seq: int
    pid: int
    hostname: str
    method: str
    path: str
    view: str
    status: int
    start: float
    end: float
    duration: float
    queries: int
    db_seconds: float
    memory_delta: int
    load_delta: float

    def to_json(self) -> dict[str, Any]:
        return {
            "end": self.end,
            "start": self.start,
            "pid": self.pid,
            "hostname": self.hostname,
            "method": self.method,
            "path": self.path,
            "view": self.view,
            "status": self.status,
            "duration_seconds": self.duration,
            "queries": self.queries,
            "db_seconds": self.db_seconds,
            "memory_delta_bytes": self.memory_delta,
            "load_delta": self.load_delta,
        }


@dataclass
class Worker:
    """One stats file: who wrote it, its state and its values."""

    path: str
    name: str
    pid: int
    hostname: str
    command: str
    boot_id: str
    start_time: float
    created: float
    closed: bool
    closed_at: float
    heartbeat: float
    state: str  # "alive", "dead", "closed" or "unknown" (another host)
    version: int
    size: int
    used: int
    series: list[Series] = field(default_factory=list)
    slots: list[Slot] = field(default_factory=list)
    slow: list[SlowEntry] = field(default_factory=list)
    problem: str | None = None  # why some of the worker's values are missing

    def find(self, name: str, labels: dict[str, str] | None = None) -> Series | None:
        """Return the series ``name`` with exactly these labels, or None."""
        wanted = labels or {}
        for s in self.series:
            if s.name == name and s.labels == wanted:
                return s
        return None

    def value(self, name: str, labels: dict[str, str] | None = None) -> Any:
        """Return the value of a series, or None when it was never written."""
        s = self.find(name, labels)
        return None if s is None else s.value

    def total(self, name: str) -> Any:
        """Return a metric summed over its label sets (None if absent)."""
        return _sum_values([s for s in self.series if s.name == name])


@dataclass
class BadFile:
    """A file a directory scan could not read, and why."""

    path: str
    reason: str


@dataclass
class GaugeTotal:
    """A gauge across workers: the sum and the extremes."""

    sum: float
    min: float
    max: float
    workers: int


def _sum_values(series: list[Series]) -> Any:
    if not series:
        return None
    kind = series[0].kind
    if kind == "histogram":
        hist: HistogramValue = series[0].value.copy()
        for s in series[1:]:
            if s.kind == "histogram" and hist.same_scheme(s.value):
                hist.merge(s.value)
        return hist
    if kind in ("counter", "gauge"):
        return sum(s.value for s in series)
    return series[0].value


# -- one file -----------------------------------------------------------------


def _get_string(buf: Any, offset: int, size: int) -> str:
    n = int.from_bytes(buf[offset : offset + 2], F.NATIVE_ORDER)
    if n > size - 2:
        raise ValueError(f"string at byte {offset} claims {n} bytes of {size - 2}")
    return text(bytes(buf[offset + 2 : offset + 2 + n]))


def _open_file(path: str) -> tuple[Any, int]:
    """Open and map a stats file without following symlinks or blocking."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the last component is a symlink
            raise CorruptFileError(
                path, "is a symlink; symlinks are not followed"
            ) from None
        raise CorruptFileError(path, exc.strerror or str(exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptFileError(path, "is not a regular file")
        if st.st_size < F.HEADER_SIZE:
            raise CorruptFileError(
                path,
                f"is {st.st_size} bytes, shorter than the {F.HEADER_SIZE}-byte header",
            )
        try:
            mm = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ)
        except (OSError, OverflowError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise CorruptFileError(
                path, f"of {st.st_size} bytes cannot be mapped: {reason}"
            ) from None
        return mm, st.st_size
    finally:
        os.close(fd)


class _Patience:
    """How long one read may spend, in all, waiting for writers.

    A live writer leaves a record's sequence odd for microseconds, or for as
    long as the scheduler keeps it off the CPU; a reader waits for it (up to
    RECORD_WAIT a record).  A file that only claims to be live (a copy, a
    forgery) could make every record wait: the time spent waiting on a
    file, and on a directory scan, is capped too.  Only waiting counts, so
    a scan that is slow for other reasons keeps its patience.
    """

    def __init__(self, seconds: float, parent: _Patience | None = None) -> None:
        self.seconds = seconds
        self.parent = parent
        self.spent = 0.0

    def left(self) -> float:
        """Return the waiting time left (never more than the parent's)."""
        left = self.seconds - self.spent
        if self.parent is not None:
            left = min(left, self.parent.left())
        return left

    def spend(self, seconds: float) -> None:
        self.spent += seconds
        if self.parent is not None:
            self.parent.spend(seconds)


RECORD_WAIT = 0.5
FILE_WAIT = 1.0
SCAN_WAIT = 2.0


class _Host:
    """What a reader needs to know about its own host to judge liveness."""

    def __init__(self) -> None:
        self.hostname = socket.gethostname()
        self.boot_id = boot_id()
        self.pidns = pid_namespace()


_host: _Host | None = None


def _this_host() -> _Host:
    global _host
    if _host is None:
        _host = _Host()
    return _host


def _state(
    closed: bool, pid: int, ticks: int, hostname: str, boot: str, ns: int
) -> str:
    if closed:
        return "closed"
    host = _this_host()
    if hostname != host.hostname:
        return "unknown"
    if boot and host.boot_id and boot != host.boot_id:
        return "dead"  # the host rebooted since
    if ns and host.pidns and ns != host.pidns:
        return "unknown"  # another pid namespace: its pids mean nothing here
    if ticks:
        state, current = process_state(pid)
        if current:
            # A zombie has exited (killed, not yet reaped): it writes no more.
            alive = current == ticks and state not in ("Z", "X")
            return "alive" if alive else "dead"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        return "alive"
    return "alive"


def read_file(path: str | os.PathLike[str]) -> Worker:
    """Read one stats file, live or dead.

    :raises CorruptFileError: the file is not a readable stats file; the
        message names the file and the reason.
    """
    return _read_file(os.fspath(path), _Patience(FILE_WAIT))


# What a damaged file can make the parser raise, on top of CorruptFileError.
_PARSE_ERRORS = (
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    OverflowError,
    struct.error,
    RecursionError,  # deeply nested JSON in a metric record
    MemoryError,
)


def _read_file(path: str, patience: _Patience, rings: bool = True) -> Worker:
    grown_to = 0
    for _attempt in range(3):
        mm, size = _open_file(path)
        try:
            return _parse(path, mm, size, grown_to, patience, rings)
        except _Grew as grew:
            # Grown between the size check and the read: map it again, and
            # read no further than what was published at the first look.
            grown_to = grew.used
            continue
        except CorruptFileError:
            raise
        except _PARSE_ERRORS as exc:
            reason = str(exc) or type(exc).__name__
            raise CorruptFileError(path, reason) from None
        finally:
            try:
                mm.close()
            except BufferError:
                pass
    raise CorruptFileError(path, "kept growing past its mapped size while read")


class _Grew(Exception):
    """The used length passed the mapped size because the file grew."""

    def __init__(self, used: int) -> None:
        super().__init__(used)
        self.used = used


def _current_size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _parse(
    path: str,
    mm: Any,
    size: int,
    grown_to: int,
    patience: _Patience,
    rings: bool = True,
) -> Worker:
    # A writer killed while extending its file can leave a size that is not
    # a multiple of 8; records never reach into that tail.
    size -= size % 8
    b = memoryview(mm)[:size]
    q = d = None
    try:
        q, d = b.cast("q"), b.cast("d")
        return _parse_views(path, b, q, d, size, grown_to, patience, rings)
    finally:
        for view in (d, q, b):
            if view is not None:
                view.release()


# A pid is positive and fits the kernel's pid_max (at most 2**22).
MAX_PID = 1 << 22


def _parse_views(
    path: str,
    b: Any,
    q: Any,
    d: Any,
    size: int,
    grown_to: int,
    patience: _Patience,
    rings: bool = True,
) -> Worker:
    if bytes(b[0:8]) != F.MAGIC:
        raise CorruptFileError(path, "has no mmstats magic number; not a stats file")
    if q[F.H_BYTE_ORDER // 8] != F.BYTE_ORDER_MARK:
        raise CorruptFileError(path, "was written with another byte order")
    version = int.from_bytes(b[F.H_VERSION : F.H_VERSION + 4], F.NATIVE_ORDER)
    if version != F.VERSION:
        raise UnsupportedVersionError(path, version, F.VERSION)
    header_size = int.from_bytes(
        b[F.H_HEADER_SIZE : F.H_HEADER_SIZE + 4], F.NATIVE_ORDER
    )
    if header_size != F.HEADER_SIZE:
        raise CorruptFileError(
            path, f"has header size {header_size}, not {F.HEADER_SIZE}"
        )
    used = q[F.H_USED // 8]
    if used > size and F.HEADER_SIZE <= grown_to <= size:
        used = grown_to  # grew again while mapped: read what was there before
    elif used > size and used % 8 == 0 and used <= _current_size(path):
        raise _Grew(used)
    if used < F.HEADER_SIZE or used > size or used % 8:
        raise CorruptFileError(path, f"has used length {used} outside 4096..{size}")

    pid = q[F.H_PID // 8]
    if not 0 < pid <= MAX_PID:
        raise CorruptFileError(path, f"has pid {pid}, not a process id")
    closed = q[F.H_CLOSED // 8] == 1
    hostname = _get_string(b, F.H_HOSTNAME, F.HOSTNAME_SIZE)
    boot = _get_string(b, F.H_BOOT_ID, F.BOOT_ID_SIZE)
    flags = q[F.H_FLAGS // 8]
    worker = Worker(
        path=path,
        name=_get_string(b, F.H_NAME, F.NAME_SIZE),
        pid=pid,
        hostname=hostname,
        command=_get_string(b, F.H_COMMAND, F.COMMAND_SIZE),
        boot_id=boot,
        start_time=d[F.H_START_TIME // 8],
        created=d[F.H_CREATED // 8],
        closed=closed,
        closed_at=d[F.H_CLOSED_AT // 8],
        heartbeat=d[F.H_HEARTBEAT // 8],
        state=_state(
            closed, pid, q[F.H_START_TICKS // 8], hostname, boot, q[F.H_PIDNS // 8]
        ),
        version=version,
        size=size,
        used=used,
    )
    if flags & F.FLAG_GROW_FAILED:
        worker.problem = (
            "its file could not grow (file system full?): series, threads and "
            "slots added since are not recorded"
        )
    _parse_records(worker, b, q, d, used, patience, rings)
    return worker


def _stable(
    b: Any,
    q: Any,
    seq_word: int,
    start: int,
    end: int,
    live: bool,
    patience: _Patience,
) -> tuple[bytes, int, bool]:
    """Copy bytes ``start:end`` of a record guarded by a sequence word.

    Returns the copy, the sequence value and whether the copy is
    consistent: the sequence was even and unchanged across the copy.
    """

    def copy() -> tuple[tuple[bytes, int], bool]:
        before = q[seq_word]
        data = bytes(b[start:end])  # one memcpy: short, so rarely raced
        return (data, before), not before & 1 and q[seq_word] == before

    (data, before), settled = _settle(copy, live, patience)
    return data, before, settled


_T = TypeVar("_T")


def _settle(
    copy: Callable[[], tuple[_T, bool]], live: bool, patience: _Patience
) -> tuple[_T, bool]:
    """Call ``copy`` until it says its copy is consistent; return the last.

    A live writer is waited for (up to RECORD_WAIT, within the read's
    patience); a dead one never moves, so it gets one try.
    """
    started = deadline = 0.0
    tries = 0
    while True:
        got, settled = copy()
        if settled or not live:
            if started:
                patience.spend(time.monotonic() - started)
            return got, settled
        now = time.monotonic()
        if not started:
            started = now
            deadline = now + min(RECORD_WAIT, patience.left())
        elif now > deadline:
            patience.spend(now - started)
            return got, False
        # Yield at first; then sleep, so that a writer waiting for a CPU
        # (a busy machine) gets it rather than the reader spinning.
        tries += 1
        time.sleep(0 if tries < 20 else 0.001)


def _parse_records(
    worker: Worker,
    b: Any,
    q: Any,
    d: Any,
    used: int,
    patience: _Patience,
    rings: bool = True,
) -> None:
    metrics: dict[int, dict[str, Any]] = {}
    cells: list[tuple[int, int, int, int]] = []  # (metric id, tslot, word, size)
    live = worker.state == "alive"

    off = F.HEADER_SIZE
    while off < used:
        rtype, rsize = F.RECORD_HEAD.unpack(b[off : off + 8])
        if rsize < 8 or rsize % 8 or off + rsize > used:
            raise CorruptFileError(
                worker.path, f"has a record at byte {off} of bad size {rsize}"
            )
        if rtype == F.R_METRIC:
            mid, meta = _parse_metric(b, off, rsize)
            metrics[mid] = meta
        elif rtype == F.R_CELL:
            if rsize < F.CELL_PAYLOAD + 8:
                raise ValueError(f"cell record at byte {off} is too short")
            _, _, mid, tslot = F.CELL_FIXED.unpack(b[off : off + 16])
            cells.append(
                (mid, tslot, (off + F.CELL_PAYLOAD) // 8, rsize - F.CELL_PAYLOAD)
            )
        elif rtype == F.R_SLOT:
            _parse_slot(worker, b, q, off, rsize, live, patience)
        elif rtype == F.R_RING and not rings:
            _ring_shape(b, off, rsize)  # checked even when not read
        elif rtype == F.R_RING:
            _parse_ring(worker, b, q, off, rsize, live, patience)
        elif rtype not in (F.R_PAD, F.R_RING):
            raise CorruptFileError(worker.path, f"has a record of unknown type {rtype}")
        off += rsize

    _collect_series(worker, metrics, cells, q, d, b, live, patience)


def _clean(value: object) -> str:
    """Return a JSON string of a file as text every output can encode.

    JSON can carry lone surrogates (``\\ud800``); like bytes that are not
    UTF-8, they become backslash escapes.
    """
    return text(F.encode(str(value)))


# Metric records are written once and never change, and every worker of an
# app has the same ones: decoded records are kept by their bytes.
_metric_cache: dict[bytes, tuple[int, dict[str, Any]]] = {}
_METRIC_CACHE_MAX = 50_000


def _parse_metric(b: Any, off: int, rsize: int) -> tuple[int, dict[str, Any]]:
    key = bytes(b[off + 8 : off + rsize])
    cached = _metric_cache.get(key)
    if cached is not None:
        return cached
    parsed = _decode_metric(b, off, rsize)
    if len(_metric_cache) >= _METRIC_CACHE_MAX:
        _metric_cache.clear()
    _metric_cache[key] = parsed
    return parsed


def _decode_metric(b: Any, off: int, rsize: int) -> tuple[int, dict[str, Any]]:
    fixed = F.METRIC_FIXED
    if rsize < fixed.size:
        raise ValueError(f"metric record at byte {off} is too short")
    _, _, mid, kind, flags, nbuckets, lo, gamma, text_max, blen = fixed.unpack(
        b[off : off + fixed.size]
    )
    if fixed.size + blen > rsize:
        raise ValueError(f"metric record at byte {off} overruns its size")
    meta = json.loads(bytes(b[off + fixed.size : off + fixed.size + blen]))
    if kind not in F.KIND_NAMES or not isinstance(meta, dict):
        raise ValueError(f"metric record at byte {off} has unknown kind {kind}")
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        raise ValueError(f"metric record at byte {off} has bad labels")
    meta.update(
        kind=kind,
        integer=bool(flags & F.FLAG_INTEGER),
        nbuckets=nbuckets,
        lo=lo,
        gamma=gamma,
        text_max=text_max,
        name=_clean(meta.get("name", "")),
        help=_clean(meta.get("help", "")),
        unit=_clean(meta.get("unit", "")),
        labels={_clean(k): _clean(v) for k, v in labels.items()},
    )
    if kind == F.KIND_HISTOGRAM:
        if nbuckets < 2:
            raise ValueError(f"histogram record at byte {off} has {nbuckets} buckets")
        check_scheme(lo, gamma, nbuckets)
    if kind == F.KIND_TEXT and text_max > F.MAX_TEXT_BYTES:
        raise ValueError(
            f"text record at byte {off} claims {text_max} bytes, more than "
            f"{F.MAX_TEXT_BYTES}"
        )
    return mid, meta


def _collect_series(
    worker: Worker,
    metrics: dict[int, dict[str, Any]],
    cells: list[tuple[int, int, int, int]],
    q: Any,
    d: Any,
    b: Any,
    live: bool,
    patience: _Patience,
) -> None:
    values: dict[int, Any] = {}
    stamps: dict[int, int] = {}
    for mid, _tslot, word, size in cells:
        meta = metrics.get(mid)
        if meta is None:
            raise ValueError(f"a cell refers to unknown metric id {mid}")
        kind = meta["kind"]
        if kind == F.KIND_COUNTER:
            if q[word] < 0:
                raise ValueError(f"a cell of counter id {mid} is negative")
            values[mid] = values.get(mid, 0) + q[word]
        elif kind == F.KIND_GAUGE:
            values[mid] = values.get(mid, 0.0) + d[word]
        elif kind == F.KIND_HISTOGRAM:
            hist = _read_histogram(meta, b, q, d, word, size, live, patience)
            if mid in values:
                values[mid].merge(hist)
            else:
                values[mid] = hist
        else:
            got = _read_text(meta, b, q, word, size, live, patience)
            if got is not None and got[0] >= stamps.get(mid, -1):
                stamps[mid] = got[0]
                values[mid] = got[1]

    for mid, meta in metrics.items():
        if mid not in values:
            continue
        worker.series.append(
            Series(
                name=str(meta.get("name", "")),
                kind=F.KIND_NAMES[meta["kind"]],
                help=str(meta.get("help", "")),
                unit=str(meta.get("unit", "")),
                labels=meta["labels"],
                value=values[mid],
            )
        )


def _read_histogram(
    meta: dict[str, Any],
    b: Any,
    q: Any,
    d: Any,
    word: int,
    size: int,
    live: bool,
    patience: _Patience,
) -> HistogramValue:
    n = meta["nbuckets"]
    if size < 8 * (F.HIST_BUCKETS + n):
        raise ValueError("histogram cell is shorter than its buckets")
    start = (word + F.HIST_BUCKETS) * 8
    end = start + 8 * n

    def copy() -> tuple[tuple[float, dict[int, int]], bool]:
        # In this order: the writer stores bucket, sum, count, so a sum
        # that already holds an observation the count does not has its
        # bucket in the copy taken after it, and the check below fails.
        count = q[word + F.HIST_COUNT]
        sum_value = d[word + F.HIST_SUM]
        buckets = _nonzero_buckets(bytes(b[start:end]), 0)
        settled = count == q[word + F.HIST_COUNT] == sum(buckets.values())
        return (sum_value, buckets), settled

    (sum_value, buckets), _ = _settle(copy, live, patience)
    if buckets and min(buckets.values()) < 0:
        raise ValueError("histogram cell has a negative bucket count")
    # The buckets are the truth for the count: equal to the count word in a
    # consistent copy, and still right when a writer was killed between its
    # stores (or never let go for 0.5 s).
    count = sum(buckets.values())
    return HistogramValue(
        meta["lo"],
        meta["gamma"],
        meta["integer"],
        count,
        sum_value,
        buckets,
        meta["nbuckets"],
    )


def _nonzero_buckets(data: bytes, start: int) -> dict[int, int]:
    """Return {bucket: count} of the non-zero u64 words from byte ``start``.

    Only the span between the first and last non-zero byte is looked at
    word by word: a request histogram fills a few dozen of its buckets.
    """
    body = data[start:]
    tail = len(body.rstrip(b"\0"))
    if not tail:
        return {}
    head = (len(body) - len(body.lstrip(b"\0"))) // 8
    words = memoryview(body)[head * 8 : (tail + 7) // 8 * 8].cast("q").tolist()
    return {head + k: c for k, c in enumerate(words) if c}


def _read_text(
    meta: dict[str, Any],
    b: Any,
    q: Any,
    word: int,
    size: int,
    live: bool,
    patience: _Patience,
) -> tuple[int, str] | None:
    # Copy no more than the metric's maximum: a damaged size cannot make a
    # reader copy gigabytes.
    limit = min(size - 8 * F.TEXT_DATA, F.round8(meta["text_max"]))
    if limit < 0:
        raise ValueError("text cell is shorter than its header")
    end = word * 8 + 8 * F.TEXT_DATA + limit
    data, seq, settled = _stable(b, q, word, word * 8, end, live, patience)
    if not settled or not seq:
        # Known limitation (#7): a text being set when its writer was killed
        # reads as missing; its old bytes are already partly overwritten.
        return None
    words = memoryview(data)[: 8 * F.TEXT_DATA].cast("q")
    stamp, length = words[F.TEXT_STAMP], words[F.TEXT_LEN]
    if length < 0 or length > limit:
        raise ValueError(f"text cell claims {length} bytes of {limit}")
    start = 8 * F.TEXT_DATA
    return stamp, text(data[start : start + length])


def _parse_slot(
    worker: Worker,
    b: Any,
    q: Any,
    off: int,
    rsize: int,
    live: bool,
    patience: _Patience,
) -> None:
    if rsize < F.SLOT_SIZE:
        raise ValueError(f"slot record at byte {off} is too short")
    index = F.SLOT_FIXED.unpack(b[off : off + 16])[2]
    start = off + 16
    data, _, _ = _stable(b, q, start // 8, start, off + F.SLOT_SIZE, live, patience)
    words = memoryview(data).cast("q")
    floats = memoryview(data).cast("d")
    if words[F.S_STATE] != 1:
        return
    s = F.S_STRINGS * 8
    worker.slots.append(
        Slot(
            index=index,
            thread=words[F.S_THREAD],
            started=floats[F.S_STARTED],
            queries=words[F.S_QUERIES],
            db_seconds=floats[F.S_DB_SECONDS],
            method=_get_string(data, s, F.METHOD_SIZE),
            path=_get_string(data, s + F.METHOD_SIZE, F.PATH_SIZE),
            view=_get_string(data, s + F.METHOD_SIZE + F.PATH_SIZE, F.VIEW_SIZE),
        )
    )


def _ring_shape(b: Any, off: int, rsize: int) -> tuple[int, int]:
    """Return a slow ring's capacity and entry size, checked against its size."""
    if rsize < 16:
        raise ValueError(f"slow ring at byte {off} is too short")
    _, _, capacity, entry_size = F.RING_FIXED.unpack(b[off : off + 16])
    if (
        entry_size != F.ENTRY_SIZE
        or capacity > F.MAX_RING_ENTRIES
        or 16 + capacity * entry_size > rsize
    ):
        raise ValueError(f"slow ring at byte {off} has a bad size")
    return capacity, entry_size


def _parse_ring(
    worker: Worker,
    b: Any,
    q: Any,
    off: int,
    rsize: int,
    live: bool,
    patience: _Patience,
) -> None:
    capacity, entry_size = _ring_shape(b, off, rsize)
    # One copy of the whole ring, then the generations read again from the
    # file: an entry whose generation is the same, even and not 0 in both
    # was complete and unchanged while copied.  Others are copied alone.
    base = off + 16
    ring = bytes(b[base : base + capacity * entry_size])
    stride = entry_size // 8
    copied = memoryview(ring).cast("q")[::stride].tolist()[:capacity]
    now = q[base // 8 : base // 8 + capacity * stride : stride].tolist()
    for i, gen in enumerate(copied):
        if gen == 0 and now[i] == 0:
            continue
        start = base + i * entry_size
        if gen == now[i] and gen and not gen & 1:
            data = ring[i * entry_size : (i + 1) * entry_size]
        else:
            data, gen, settled = _stable(
                b, q, start // 8, start, start + entry_size, live, patience
            )
            if not settled or not gen:
                continue  # a writer killed mid-entry: the entry is incomplete
        worker.slow.append(_slow_entry(worker, data, gen))
    worker.slow.sort(key=lambda e: e.seq, reverse=True)


_ENTRY = struct.Struct(f"=qddqqdqdd{F.METHOD_SIZE}s{F.PATH_SIZE}s{F.VIEW_SIZE}s")


def _entry_string(field: bytes) -> str:
    n = int.from_bytes(field[:2], F.NATIVE_ORDER)
    if n > len(field) - 2:
        raise ValueError(f"slow entry string claims {n} bytes of {len(field) - 2}")
    return text(field[2 : 2 + n])


def _slow_entry(worker: Worker, data: bytes, gen: int) -> SlowEntry:
    """Build a slow entry from a consistent copy of its bytes."""
    (_, end, duration, status, queries, db, memory, load, start, method, path, view) = (
        _ENTRY.unpack_from(data)
    )
    return SlowEntry(
        seq=gen // 2,
        pid=worker.pid,
        hostname=worker.hostname,
        end=end,
        start=start,
        duration=duration,
        status=status,
        queries=queries,
        db_seconds=db,
        memory_delta=memory,
        load_delta=load,
        method=_entry_string(method),
        path=_entry_string(path),
        view=_entry_string(view),
    )


# -- a directory --------------------------------------------------------------


@dataclass
class Snapshot:
    """Every worker of a directory at one moment, plus the archive."""

    directory: str
    read_at: float
    workers: list[Worker]
    bad: list[BadFile]
    archive: Archive
    problems: list[str] = field(default_factory=list)
    """Why workers may be unable to write here (one line each), if any."""

    def totals(self) -> dict[tuple[str, LabelKey], Series]:
        """Return counters and histograms summed over workers and the archive,
        and gauges per label set as :class:`GaugeTotal`."""
        return aggregate(self.workers, self.archive)

    def slow(self, limit: int | None = None, sort: str = "end") -> list[SlowEntry]:
        """Return the slow entries of all workers and the archive, merged."""
        entries = [e for w in self.workers for e in w.slow] + list(self.archive.slow)
        if sort == "duration":
            entries.sort(key=lambda e: e.duration, reverse=True)
        else:
            entries.sort(key=lambda e: e.end, reverse=True)
        return entries[:limit] if limit is not None else entries


FINAL_STATES = ("dead", "closed")


def aggregate(
    workers: Iterable[Worker], archive: Archive | None = None
) -> dict[tuple[str, LabelKey], Series]:
    """Add workers up: counters and histograms summed, gauges as GaugeTotal.

    Gauges are taken from live workers (and workers of other hosts) only.
    The sum over dead and closed workers, whose files no longer change, is
    kept between calls, so a long-running reader (``serve``, ``top``, the
    page) pays for them once, not on every read.
    """
    workers = list(workers)
    final = [w for w in workers if w.state in FINAL_STATES]
    # Only workers held by the read cache are known never to change (a
    # caller may pass edited copies): those are summed once and kept.
    kept = all(_finals.get(w.path, (None, None, None))[1] is w for w in final)
    key = tuple(sorted(id(w) for w in final)) if kept else None
    if key is None or _final_sum[0] != key:
        base: dict[tuple[str, LabelKey], Series] = {}
        for w in final:
            _add_series(base, w.series, gauges=False)
        _final_sum[:] = [key, base]
    totals = {k: _copy_series(s) for k, s in _final_sum[1].items()}
    for w in workers:
        if w.state not in FINAL_STATES:
            _add_series(totals, w.series, gauges=True)
    if archive is not None:
        _add_series(totals, archive.series, gauges=False)
    return totals


_final_sum: list[Any] = [None, {}]


def _copy_series(s: Series) -> Series:
    value = s.value.copy() if s.kind == "histogram" else s.value
    return Series(s.name, s.kind, s.help, s.unit, s.labels, value)


def _add_series(
    totals: dict[tuple[str, LabelKey], Series], found: list[Series], gauges: bool
) -> None:
    """Add one worker's (or the archive's) series into ``totals``."""
    for s in found:
        if s.kind == "text" or (not gauges and s.kind == "gauge"):
            continue
        key = s.key
        have = totals.get(key)
        if have is None:
            value: Any = s.value
            if s.kind == "histogram":
                value = s.value.copy()
            elif s.kind == "gauge":
                value = GaugeTotal(s.value, s.value, s.value, 1)
            totals[key] = Series(s.name, s.kind, s.help, s.unit, dict(s.labels), value)
        elif have.kind != s.kind:
            continue  # a name reused with another kind: keep the first
        elif s.kind == "histogram":
            try:
                have.value.merge(s.value)
            except ValueError:
                continue
        elif s.kind == "gauge":
            g = have.value
            g.sum += s.value
            g.min = min(g.min, s.value)
            g.max = max(g.max, s.value)
            g.workers += 1
        else:
            have.value += s.value


_logged_bad: set[str] = set()


def _log_bad_once(exc: CorruptFileError) -> None:
    """Log a bad file once per process, not on every scan of a live view."""
    key = str(exc)
    if key not in _logged_bad and len(_logged_bad) < 10_000:
        _logged_bad.add(key)
        log.error("Skipped a bad stats file: %s", exc)


def list_stats_files(directory: str) -> list[str]:
    """Return the names of the stats files in ``directory``, sorted.

    :raises DirectoryError: the directory is missing, not a directory, a
        symlink (not followed, as writers do not) or cannot be listed.
    """
    try:
        if stat.S_ISLNK(os.lstat(directory).st_mode):
            raise DirectoryError(
                directory, "is a symlink; symlinks are not followed"
            ) from None
        with os.scandir(directory) as it:
            return sorted(e.name for e in it if e.name.endswith(F.SUFFIX))
    except FileNotFoundError:
        raise DirectoryError(directory, "does not exist") from None
    except NotADirectoryError:
        raise DirectoryError(directory, "is not a directory") from None
    except PermissionError:
        raise DirectoryError(directory, "cannot be read (permission denied)") from None
    except OSError as exc:
        raise DirectoryError(directory, f"cannot be read: {exc.strerror}") from None


def directory_problems(directory: str, private: bool = False) -> list[str]:
    """Return why workers may be unable to write in ``directory``, one line each.

    A worker that cannot create its file has no file a reader could see;
    what a reader can see is the directory: a full or read-only file
    system, or a mode or owner that makes workers refuse it.
    """
    problems: list[str] = []
    try:
        st = os.lstat(directory)
        vfs = os.statvfs(directory)
    except OSError:
        return problems  # list_stats_files says what is wrong with it
    where = f"Stats directory {directory!r}"
    if vfs.f_flag & os.ST_RDONLY:
        problems.append(
            f"{where} is on a read-only file system: workers cannot create or "
            "grow their files."
        )
    else:
        free = vfs.f_bavail * vfs.f_frsize
        if free < CHUNK_SIZE:
            problems.append(
                f"{where} has {free // 1024} KiB free, less than the "
                f"{CHUNK_SIZE // 1024} KiB a worker needs to create or grow its "
                "file; free some space."
            )
        if vfs.f_files and not vfs.f_favail:
            problems.append(
                f"{where} is on a file system without free inodes: workers "
                "cannot create their files."
            )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o300 != 0o300:
        problems.append(
            f"{where} has mode {mode:o}: its owner (uid {st.st_uid}) cannot "
            "create files in it."
        )
    uid = os.geteuid()
    if uid != 0 and not os.access(directory, os.W_OK | os.X_OK):
        problems.append(
            f"{where} is not writable by uid {uid}, this reader's user: workers "
            f"running as uid {uid} cannot create their files in it."
        )
    if private and (st.st_uid != uid or mode & 0o077):
        problems.append(
            f"{where} is the private default but is owned by uid {st.st_uid} "
            f"with mode {mode:o}: workers of uid {uid} refuse it; remove it."
        )
    elif mode & 0o002 and not mode & stat.S_ISVTX:
        problems.append(
            f"{where} is world-writable without the sticky bit (mode {mode:o}): "
            "workers refuse it; chmod o-w it."
        )
    return problems


# Files of dead and closed workers never change again: a long-running
# reader keeps what it parsed of them, checked against the file's identity.
_finals: dict[str, tuple[tuple[int, int, int, int], Worker, bool]] = {}
_FINALS_MAX = 20_000


def _identity(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _cached_final(path: str, rings: bool) -> Worker | None:
    entry = _finals.get(path)
    if entry is None or (rings and not entry[2]):
        return None
    if _identity(path) != entry[0]:
        del _finals[path]
        return None
    return entry[1]


def _remember_final(path: str, worker: Worker, rings: bool) -> None:
    if worker.state not in FINAL_STATES:
        return
    identity = _identity(path)
    if identity is None:
        return
    if len(_finals) >= _FINALS_MAX:
        _finals.clear()
    _finals[path] = (identity, worker, rings)


def read_directory(
    directory: str | os.PathLike[str] | None = None, *, slow: bool = True
) -> Snapshot:
    """Read every stats file of a directory and its archive.

    ``slow=False`` leaves the slow rings unread (``Worker.slow`` empty), for
    readers that show no slow entries: a ring is most of a busy file.

    :raises DirectoryError: the directory is missing or cannot be listed.
    """
    rings = slow
    path, private = resolve_directory(directory)
    patience = _Patience(SCAN_WAIT)
    for _attempt in range(5):
        names = list_stats_files(path)
        archive = load_archive(path)
        workers: list[Worker] = []
        bad: list[BadFile] = []
        vanished = False
        for name in names:
            if name in archive.folded:
                continue  # folded into the archive by a clean that is finishing
            full = os.path.join(path, name)
            cached = _cached_final(full, rings)
            if cached is not None:
                workers.append(cached)
                continue
            try:
                worker = _read_file(full, _Patience(FILE_WAIT, patience), rings)
                workers.append(worker)
                _remember_final(full, worker, rings)
            except CorruptFileError as exc:
                if not os.path.lexists(full):
                    vanished = True
                    break
                _log_bad_once(exc)
                bad.append(BadFile(full, exc.reason))
        if not vanished:
            break
    # After five scans that a clean kept racing, the last view is used.
    if archive.error:
        bad.append(BadFile(os.path.join(path, ARCHIVE_NAME), archive.error))
    problems = directory_problems(path, private)
    return Snapshot(path, time.time(), workers, bad, archive, problems)
