"""The request recorder that every framework adapter feeds.

An adapter calls :meth:`RequestRecorder.start` when a request arrives and
:meth:`RequestRecorder.finish` when the server is done with the response.
The recorder keeps the request's slot, times it, counts its database
queries (reported through :func:`record_query`) and writes the request
metrics and, for slow requests, an entry of the slow ring.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import os
import threading
import time
from contextvars import ContextVar, Token
from typing import Any

from . import _format as F
from ._stats import CounterSeries, HistogramSeries, Stats, check_options
from ._writer import Cell

log = logging.getLogger(__name__)

DEFAULT_SLOW_SECONDS = 1.0
DEFAULT_SLOW_LOG_SIZE = 256
# How often, at most, the resident size is read while requests are fast;
# a slow request reads it at its end.  A slow entry's memory delta then
# starts from a reading taken at most this long before the request began,
# so it can include what the work in that window allocated: 10 ms, 1% of
# the default slow threshold.
RSS_SECONDS = 0.01
# The kernel updates the load average every 5 seconds.
LOAD_SECONDS = 1.0
_VIEW_CACHE_MAX = 1000
_METHOD_CACHE_MAX = 64
_STATUS_CACHE_MAX = 100
_ORDER = F.NATIVE_ORDER
# The u16 length that starts a string field, for every length a field holds.
_LENGTHS = [n.to_bytes(2, _ORDER) for n in range(F.PATH_SIZE)]
_QUESTION_MARK = ord("?")
_PATH_MAX = F.PATH_SIZE - 2  # bytes of a path a field holds
_PATH_LENGTHS = _LENGTHS[: _PATH_MAX + 1]

_current: ContextVar[Request | None] = ContextVar("mmstats_request", default=None)
_perf = time.perf_counter
_new_request = object.__new__
_bisect = bisect.bisect_left
_wall = time.time
_HEARTBEAT = F.H_HEARTBEAT // 8
# A view's name as a string field, its request counter and its time histogram.
_ViewSeries = tuple[bytes, CounterSeries, HistogramSeries]
# A view past the label cap: its (overflow) series and the two counters of
# dropped label uses, of view_requests and of view_seconds.
_OverView = tuple[_ViewSeries, CounterSeries, CounterSeries]


def record_query(seconds: float) -> None:
    """Report one database query of ``seconds`` into the current request.

    Any database layer can call this; outside a request it does nothing.
    """
    request = _current.get()
    if request is not None:
        request.add_query(seconds)


def set_view(view: str) -> None:
    """Name the view serving the current request, at once also in its slot.

    For apps with their own routing; outside a request it does nothing,
    and so it does in a thread the request started (which does not inherit
    the request's context).  ``environ["mmstats.view"]``, read when the
    request ends, wins over it (WSGI).
    """
    if not isinstance(view, str):
        raise TypeError(f"view must be a str, not {view!r}")
    request = _current.get()
    if request is not None:
        request.set_view(view)


def _as_status(status: object) -> int:
    """Return a status given as another number (``201.0``) as an int; 0
    (no class) for what is not one."""
    if not isinstance(status, int | float | str):
        return 0
    try:
        return int(status)
    except (ValueError, OverflowError):
        return 0


def current_request() -> Request | None:
    """Return the request being recorded in this context, if any."""
    return _current.get()


def _encode(value: str | bytes | None) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    return F.encode(value)


def _field(data: bytes, size: int) -> bytes:
    """Return ``data`` as a string field of at most ``size`` bytes.

    The field is a u16 length and the bytes, cut at a character boundary:
    the layout ``put_string`` writes.
    """
    if len(data) > size - 2:
        data = F.cut_utf8(data, size - 2)
    return _LENGTHS[len(data)] + data


def _field_value(field: bytes) -> bytes:
    return field[2 : 2 + int.from_bytes(field[:2], _ORDER)]


_NO_VIEW = _field(b"", F.VIEW_SIZE)
# Stands in for the header's floats of a process whose stats are off.
_NO_HEADER = memoryview(bytearray(F.HEADER_SIZE)).cast("d")
# Where the view's field starts among a slot's or an entry's strings.
_VIEW_OFFSET = F.METHOD_SIZE + F.PATH_SIZE
_method_fields: dict[str | bytes, bytes] = {}


def _method_field(method: str | bytes) -> bytes:
    """Return the method's string field, padded to the field's size.

    Servers hand over a few methods again and again, so their fields are
    kept; any method a client makes up is encoded each time.
    """
    field = _method_fields.get(method)
    if field is None:
        field = _field(_encode(method), F.METHOD_SIZE).ljust(F.METHOD_SIZE, b"\0")
        if len(_method_fields) < _METHOD_CACHE_MAX:
            _method_fields[method] = field
    return field


def exception_name(exc: BaseException) -> str:
    """Return ``module.Class`` for an exception, or just ``Class`` for builtins."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


class _Slot:
    """A request slot: its views and where each of its fields is, found once.

    The slot also keeps what its owner last wrote into it: the sequence and
    the string fields, so a start writes only the fields that change.  One
    request owns a slot at a time, and only its owner writes those words.
    """

    __slots__ = (
        "q",
        "d",
        "b",
        "generation",
        "seq",
        "state",
        "started",
        "thread",
        "queries",
        "db_seconds",
        "method_at",
        "path_at",
        "view_at",
        "view_word",
        "version",
        "method",
        "path",
        "view",
        "stored_view",
        "stored_word",
        "counted",
    )

    def __init__(self, cell: Cell) -> None:
        self.q, self.d, self.b = cell.q, cell.d, cell.b
        self.generation = cell.generation
        # Word indexes of the fixed fields, byte offsets of the strings.
        w = cell.word
        self.seq = w + F.S_SEQ
        self.state = w + F.S_STATE
        self.started = w + F.S_STARTED
        self.thread = w + F.S_THREAD
        self.queries = w + F.S_QUERIES
        self.db_seconds = w + F.S_DB_SECONDS
        self.method_at = (w + F.S_STRINGS) * 8
        self.path_at = self.method_at + F.METHOD_SIZE
        self.view_at = self.method_at + _VIEW_OFFSET
        # The word that starts the view's field (the field is 8-byte
        # aligned): storing 0 there makes it an empty string in one store.
        self.view_word = self.view_at // 8
        # The sequence as last written, and the string fields last written
        # (None: not known, written by the next start).
        self.version: int = self.q[self.seq]
        self.method: bytes | None = None
        self.path: bytes | None = None
        self.view: bytes | None = None
        # The view field whose bytes after its first word are in the slot,
        # and that first word: an empty view is shown by a 0 in the first
        # word, so the view shown before it comes back with one store.
        self.stored_view: bytes | None = None
        self.stored_word = 0
        # Whether the query count and time may be non-zero.
        self.counted = True

    def show_view(self, field: bytes) -> None:
        """Write a view's field; the caller holds the sequence odd."""
        if field is _NO_VIEW:
            self.q[self.view_word] = 0  # a zero length, in one store
        elif field is self.stored_view:
            self.q[self.view_word] = self.stored_word
        else:
            at = self.view_at
            self.b[at : at + len(field)] = self.stored_view = field
            self.stored_word = self.q[self.view_word]
        self.view = field


class Request:
    """One request being recorded, made by :meth:`RequestRecorder.start`.

    Method, path and view are kept as the string fields of the stats file
    (u16 length, then UTF-8 bytes), built once and copied into the slot
    and the slow ring.
    """

    __slots__ = (
        "_recorder",
        "_slot",
        "_token",
        "_generation",
        "method_field",
        "path_field",
        "view_field",
        "view",
        "started",
        "wall_started",
        "rss_start",
        "load_start",
        "queries",
        "db_seconds",
        "status",
        "exception",
        "finished",
        "ignored",
    )

    # Set by RequestRecorder.start, which makes every request.
    _recorder: RequestRecorder
    _slot: _Slot | None
    _token: Token[Request | None] | None
    # The file generation whose in-flight gauge counts this request.
    _generation: int
    method_field: bytes
    path_field: bytes
    view_field: bytes
    view: str | None
    started: float
    wall_started: float
    rss_start: int
    load_start: float
    queries: int
    db_seconds: float
    status: int
    exception: str | None
    finished: bool
    ignored: bool

    @property
    def method(self) -> bytes:
        """The request method, as stored."""
        return _field_value(self.method_field)

    @property
    def path(self) -> bytes:
        """The request path without its query string, as stored."""
        return _field_value(self.path_field)

    def add_query(self, seconds: float) -> None:
        """Count one query of ``seconds``; shown live in the request's slot."""
        self.queries += 1
        self.db_seconds += seconds
        slot = self._slot
        if slot is not None and slot.generation == self._recorder._writer.generation:
            slot.counted = True
            slot.q[slot.queries] = self.queries
            slot.d[slot.db_seconds] = self.db_seconds

    def ignore(self) -> None:
        """Leave this request out of the metrics (the stats endpoints' own).

        Its slot is shown as idle from now on and it leaves the in-flight
        gauge, so a page or a scrape polling the app does not show itself as
        a request in flight.
        """
        if self.ignored:
            return
        self.ignored = True
        recorder = self._recorder
        slot = self._slot
        # A slot of another generation is in the file of the parent (after a
        # fork) or of a removed file: not this process's to change.
        if slot is not None and slot.generation == recorder._writer.generation:
            slot.q[slot.state] = 0
        # Nor as one in the in-flight gauge: taken back now, in the thread
        # that counted it, and left alone by finish().
        if self._token is not None and self._generation == recorder._writer.generation:
            recorder.in_flight.decr()
            self._generation = -1

    def set_exception(self, exception: BaseException) -> None:
        """Note the unhandled exception this request ended with."""
        self.exception = exception_name(exception)

    def set_view(self, view: str | None) -> None:
        """Name the view serving this request, also in its slot."""
        if view == self.view or not view:
            return
        recorder = self._recorder
        # The field first: a name it cannot encode leaves the request as it was.
        field = recorder._view_fields.get(view) or recorder._view_field(view)
        self.view = view
        self.view_field = field
        slot = self._slot
        if slot is None or slot.generation != recorder._writer.generation:
            return

        if field is slot.stored_view:
            # The rest of the field still holds the name: its first word is
            # one aligned store, which a reader sees whole or not at all, so
            # the sequence is left as it is (docs/FORMAT.md).
            slot.q[slot.view_word] = slot.stored_word
            slot.view = field
            return

        q = slot.q
        version = slot.version + 1
        q[slot.seq] = version
        at = slot.view_at
        slot.b[at : at + len(field)] = slot.stored_view = field
        slot.stored_word = q[slot.view_word]
        slot.view = field
        slot.version = version = version + 1
        q[slot.seq] = version


class _Bindings:
    """One thread's bound cells of the request metrics, in one file.

    Bound once per thread, and again after a new file, from the series
    themselves (:meth:`~mmstats._stats._Series.bound`): the recorder and the
    series' own methods write the same cells with the same private totals,
    and a request costs one thread-local lookup instead of one per metric.
    """

    __slots__ = (
        "generation",
        "requests",
        "responses",
        "statuses",
        "flight",
        "flight_word",
        "seconds",
        "queries",
        "db_seconds",
        "views",
        "thread",
        "heartbeat",
    )

    def __init__(self, recorder: RequestRecorder, generation: int, status: int) -> None:
        # Bound in the order the recorder first writes them, so a thread's
        # cells are allocated as they were before bindings: the golden file
        # (tests/golden) pins that order.
        self.generation = generation
        # The in-flight gauge's floats and the word of the thread's cell.
        self.flight, self.flight_word = recorder.in_flight.bound()
        self.requests = recorder.requests.bound()
        # By the status's first digit; a class is bound by its first
        # response, so a file holds cells only for classes that occurred.
        self.responses: list[Any] = [None] * 10
        if 100 <= status < 600:
            series = recorder._by_hundreds[status // 100]
            assert series is not None
            self.responses[status // 100] = series.bound()
        # The class counter of each status met so far, by status.
        self.statuses: dict[int, Any] = {}
        self.seconds = recorder.request_seconds.bound()
        self.queries = recorder.db_queries.bound()
        self.db_seconds = recorder.db_seconds.bound()
        # Counter and histogram bindings of the views kept in the recorder.
        self.views: dict[str, tuple[Any, Any]] = {}
        # What a slot shows as the thread serving its request.
        self.thread = threading.get_ident()
        # Where the time of the last request goes: the header's floats, or
        # a scrap of memory when stats are off for this process.
        header = recorder._writer.header
        self.heartbeat = _NO_HEADER if header is None else header.d


class RequestRecorder:
    """Record requests of this process into its stats file.

    :param slow_seconds: requests at least this long go into the slow ring;
        0 records every request.
    :param slow_log_size: entries in the slow ring.
    :param directory_source: what set ``directory``, named in the warning when
        it is unusable (say ``"MMSTATS['DIR'] in your settings"``).
    :raises ValueError: an option is bad (see :func:`check_options`).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        name: str | None = None,
        *,
        slow_seconds: float = DEFAULT_SLOW_SECONDS,
        slow_log_size: int = DEFAULT_SLOW_LOG_SIZE,
        label_limit: int = 100,
        directory_source: str | None = None,
    ) -> None:
        check_options(
            directory=directory,
            name=name,
            slow_seconds=slow_seconds,
            slow_log_size=slow_log_size,
            label_limit=label_limit,
        )
        self.slow_seconds = float(slow_seconds)
        self.slow_log_size = slow_log_size
        self.stats = stats = Stats(
            directory, name, label_limit=label_limit, directory_source=directory_source
        )
        self._writer = stats._writer

        self.requests = stats.counter("requests", "Requests finished")
        self.responses = {
            cls: stats.counter("responses", "Responses by status class", {"class": cls})
            for cls in ("1xx", "2xx", "3xx", "4xx", "5xx")
        }
        self.in_flight = stats.gauge("in_flight", "Requests being served now")
        self.request_seconds = stats.histogram(
            "request_seconds", "Time from request start to the end of the response"
        )
        self.db_queries = stats.histogram(
            "db_queries", "Database queries per request", unit="queries"
        )
        self.db_seconds = stats.histogram("db_seconds", "Database time per request")
        self.memory = stats.gauge("memory_rss_bytes", "Resident memory of the worker")
        self.load1 = stats.gauge("load1", "1-minute load average of the host")
        # Indexed by the status's first digit; None where there is no class.
        self._by_hundreds = (None, *self.responses.values(), None, None, None, None)
        self._views: dict[str, _ViewSeries] = {}
        # The string field of each view in _views.
        self._view_fields: dict[str, bytes] = {}
        # Views past the label cap: the overflow series they go to, and the
        # counters of dropped label uses that each of their requests adds to
        # (one per metric), so that their requests take no lock either.
        self._over_views: dict[str, _OverView] = {}
        # Buckets known before any value: the time of a request and of its
        # view share their bounds, and most requests make no query.
        self._seconds_bounds = self.request_seconds._bounds
        self._db_zero = self.db_seconds.bucket(0.0)
        self._query_zero = self.db_queries.bucket(0)
        self._reset()
        self._writer.reset_hooks.append(self._reset)

    def _reset(self) -> None:
        """Forget slots, ring and /proc handles: after a fork they are the parent's."""
        statm = getattr(self, "_statm", -1)
        if statm >= 0:
            try:
                os.close(statm)  # the child's copy of the parent's /proc file
            except OSError:
                pass
        self._local = threading.local()
        self._free_slots: list[_Slot] = []
        self._slot_count = 0
        self._ring: Cell | None = None
        self._ring_counter = itertools.count()
        self._statm = -1
        # The last readings and when they were taken (perf_counter time);
        # a new file gets its gauges on its first request.
        self._rss = 0
        self._rss_at = -math.inf
        self._load = 0.0
        self._load_at = -math.inf
        # Whether the gauges show the last readings: they are set when a
        # request finishes, so a reading costs no gauge write until then.
        self._rss_shown = self._load_shown = False
        # The earliest perf_counter time at which a request has to read
        # memory or the load average, or show a reading in its gauge: while
        # nothing is due, a start and a finish each compare one number.
        self._due = -math.inf
        self._page = os.sysconf("SC_PAGE_SIZE")

    # -- cheap readings -------------------------------------------------------

    def rss(self) -> int:
        """Return resident memory in bytes: one pread of an open /proc file."""
        fd = self._statm
        if fd < 0:
            try:
                fd = self._statm = os.open(
                    "/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC
                )
            except OSError:
                return 0
        try:
            return int(os.pread(fd, 64, 0).split()[1]) * self._page
        except (OSError, IndexError, ValueError):
            return 0

    def load(self, now: float) -> float:
        """Return the 1-minute load average, read at most once a second."""
        if now - self._load_at >= LOAD_SECONDS:
            self._load_at = now
            try:
                self._load = os.getloadavg()[0]
            except OSError:
                pass
            self._load_shown = False
            self._due = -math.inf
        return self._load

    def _read_rss(self, now: float) -> None:
        """Read resident memory now; the next finish shows it in the gauge."""
        self._rss_at = now
        self._rss = self.rss()
        self._rss_shown = False
        self._due = -math.inf

    def _take_readings(self, now: float) -> None:
        """Read memory and the load average where due; at a request's start."""
        try:
            if now - self._rss_at >= RSS_SECONDS:
                self._read_rss(now)
            if now - self._load_at >= LOAD_SECONDS:
                self.load(now)
        except Exception:
            log.exception("mmstats could not record the start of a request")

    def _refresh(self, now: float, slow: bool) -> None:
        """Take the readings that are due and show them in their gauges.

        A slow request reads memory now: its entry's delta ends at its end.
        """
        if slow or now - self._rss_at >= RSS_SECONDS:
            self._read_rss(now)
        if now - self._load_at >= LOAD_SECONDS:
            self.load(now)
        if not self._rss_shown:
            self._rss_shown = True
            self.memory.set(self._rss)
        if not self._load_shown:
            self._load_shown = True
            self.load1.set(self._load)
        self._due = min(self._rss_at + RSS_SECONDS, self._load_at + LOAD_SECONDS)

    def _bind_thread(self, status: int) -> _Bindings:
        """Bind the calling thread's cells of the request metrics.

        Called by a thread's first recorded finish in a file, with its status.
        """
        # The thread-local is taken first: if the file is replaced meanwhile,
        # the bindings go to the old one, which nothing reads any more.
        local = self._local
        writer = self._writer
        # A new file's reset hooks run under the lock: once it is free, every
        # series has dropped the old file's bindings for this generation.  A
        # file replaced while binding leaves a generation that no longer
        # matches, so the next request binds again.
        with writer.lock:
            generation = writer.generation
        local.bindings = bindings = _Bindings(self, generation, status)
        return bindings

    def _bind_view(self, bindings: _Bindings, view: str) -> tuple[Any, Any]:
        """Return the thread's bound counter and histogram of a view."""
        kept = self._views.get(view)
        over = None if kept is not None else self._over_views.get(view)
        if over is not None:
            over[1].incr()  # what stats.counter() adds for a view past the cap
            over[2].incr()
            kept = over[0]
        _, count, hist = kept or self._view_series(view)
        # finish() puts a view's time in the bucket it found for the
        # request's time: both are histograms in seconds.
        assert hist.unit == self.request_seconds.unit
        bound = (count.bound(), hist.bound())
        # A view past the label cap is not bound for the thread, so each of
        # its requests still counts as a dropped label use.
        if view in self._views:
            bindings.views[view] = bound
        return bound

    # -- slots and ring --------------------------------------------------------

    def _new_slot(self) -> _Slot:
        """Allocate one more slot; finished requests' slots go first."""
        writer = self._writer
        with writer.lock:
            index = self._slot_count
            self._slot_count += 1

            def fill(chunk: Any, off: int) -> None:
                chunk.b[off + 8 : off + 16] = F.SLOT_FIXED.pack(0, 0, index, 0)[8:]

            cell: Cell = writer.allocate(F.R_SLOT, F.SLOT_SIZE, fill)
        cell.byte += 16
        cell.word += 2
        return _Slot(cell)

    def _ring_cell(self) -> Cell:
        ring = self._ring
        if ring is not None:
            return ring
        writer = self._writer
        capacity = self.slow_log_size
        with writer.lock:
            if self._ring is None:

                def fill(chunk: Any, off: int) -> None:
                    head = F.RING_FIXED.pack(0, 0, capacity, F.ENTRY_SIZE)[8:]
                    chunk.b[off + 8 : off + 16] = head

                size = 16 + capacity * F.ENTRY_SIZE
                cell = writer.allocate(F.R_RING, size, fill)
                cell.byte += 16
                cell.word += 2
                self._ring = cell
        assert self._ring is not None
        return self._ring

    # -- requests ---------------------------------------------------------------

    def start(
        self, method: str | bytes, path: str | bytes, view: str | None = None
    ) -> Request:
        """Begin recording a request; pair with :meth:`finish`.  Never raises."""
        # Made without __init__: start sets every field, and a call less
        # shows in the cost of every request.
        request = _new_request(Request)
        request._recorder = self
        request._slot = None
        request._token = None
        request._generation = -1
        request.started = now = _perf()
        request.wall_started = wall = _wall()
        if now >= self._due:
            self._take_readings(now)
        request.rss_start = self._rss
        request.load_start = self._load
        request.queries = 0
        request.db_seconds = 0.0
        request.status = 0
        request.exception = None
        request.finished = False
        request.ignored = False
        request.view = None
        request.view_field = _NO_VIEW
        try:
            request.method_field = _method_fields.get(method) or _method_field(method)
            # The path's field, without the query string: it may hold
            # secrets, and is never stored.
            if isinstance(path, str):
                try:
                    data = path.encode()
                except UnicodeEncodeError:  # lone surrogates: F.encode keeps them
                    data = F.encode(path)
            else:
                data = path
            if _QUESTION_MARK in data:  # an int: much faster than b"?" in bytes
                data = data.partition(b"?")[0]
            try:
                request.path_field = _PATH_LENGTHS[len(data)] + data
            except IndexError:  # longer than a field holds
                data = F.cut_utf8(data, _PATH_MAX)
                request.path_field = _LENGTHS[len(data)] + data
            if view:
                request.view_field = self._view_field(view)
                request.view = view
        except Exception:
            log.exception("mmstats could not record the start of a request")
            request.method_field = _method_field(b"")
            request.path_field = _LENGTHS[0]
            request.view = None
            request.view_field = _NO_VIEW

        try:
            writer = self._writer
            try:
                slot = self._free_slots.pop()
            except IndexError:
                slot = self._new_slot()
            else:
                # A finish racing a switch to a new file can hand back a slot
                # of the old file: it is left behind.
                if slot.generation != writer.generation:
                    slot = self._new_slot()
            request._slot = slot
            # Known limitation (#7): a request starting or ending in the
            # instant its file is replaced can leave the new file's in-flight
            # gauge off by one; exact only with a lock, which requests never
            # take.
            generation = request._generation = writer.generation
            # The thread's bindings are made by its first finish: until then
            # no metric but the in-flight gauge is created.
            try:
                bindings: _Bindings | None = self._local.bindings
            except AttributeError:
                bindings = None
            if bindings is not None and bindings.generation != generation:
                bindings = None

            # Odd while the slot changes.  Fields that hold what this start
            # would write are left as they are.
            q, version = slot.q, slot.version + 1
            q[slot.seq] = version
            slot.d[slot.started] = wall
            q[slot.thread] = (
                threading.get_ident() if bindings is None else bindings.thread
            )
            if slot.counted:
                slot.counted = False
                q[slot.queries] = 0
                slot.d[slot.db_seconds] = 0.0
            field = request.method_field
            if field is not slot.method:
                slot.b[slot.method_at : slot.path_at] = slot.method = field
            field = request.path_field
            if field != slot.path:
                at = slot.path_at
                slot.b[at : at + len(field)] = slot.path = field
            field = request.view_field
            if field is not slot.view:
                if field is _NO_VIEW:
                    q[slot.view_word] = 0  # a zero length, in one store
                    slot.view = field
                else:
                    slot.show_view(field)
            q[slot.state] = 1
            q[slot.seq] = slot.version = version + 1

            if bindings is not None:
                bindings.flight[bindings.flight_word] += 1
            else:
                self.in_flight.incr()
            request._token = _current.set(request)
        except Exception:
            log.exception("mmstats could not record the start of a request")
        return request

    def finish(
        self, request: Request, status: int, exception: BaseException | None = None
    ) -> None:
        """Finish recording ``request`` with the status the client received.

        Calling it twice records the request once.  Never raises.
        """
        if request.finished:
            return
        request.finished = True
        try:
            end = _perf()
            duration = end - request.started
            if type(status) is not int:
                status = _as_status(status)
            request.status = status
            # A request started before a fork or a new file belongs to the
            # old file: its slot and in-flight count are not touched in the
            # new one.
            generation = self._writer.generation
            try:
                bindings: _Bindings | None = self._local.bindings
            except AttributeError:
                bindings = None
            if bindings is not None and bindings.generation != generation:
                bindings = None
            token = request._token
            if token is not None:
                # The token is set last in start: only then is it in flight.
                request._token = None
                if request._generation == generation:
                    if bindings is not None:
                        bindings.flight[bindings.flight_word] -= 1
                    else:
                        self.in_flight.decr()
                if _current.get() is request:
                    try:
                        _current.reset(token)
                    except ValueError:
                        _current.set(None)  # finished in a copy of its context

            slot = request._slot
            if slot is not None:
                request._slot = None
                if slot.generation == generation:
                    slot.q[slot.state] = 0
                    self._free_slots.append(slot)
            if request.ignored:
                return

            if bindings is None:
                bindings = self._bind_thread(status)
            # Counters and histograms are written here as their own methods
            # write them (CounterSeries.incr, HistogramSeries.observe), through
            # the thread's bindings: bucket, then sum, then count.
            counter = bindings.requests
            counter.view[0] = counter.total = counter.total + 1
            counter = bindings.statuses.get(status) or self._bind_status(
                bindings, status
            )
            if counter is not None:
                counter.view[0] = counter.total = counter.total + 1
            if exception is not None:
                request.exception = exception_name(exception)
            if request.exception is not None:
                self.stats.counter(
                    "exceptions",
                    "Unhandled exceptions by class",
                    {"exception": request.exception},
                ).incr()

            k = _bisect(self._seconds_bounds, duration) + 2
            q, d, totals = bindings.seconds
            q[k] += 1
            d[1] = totals[1] = totals[1] + duration
            q[0] = totals[0] = totals[0] + 1
            if request.queries == 0:
                # No query: bucket 0 of both, and both sums stay as they are.
                q, d, totals = bindings.queries
                q[self._query_zero] += 1
                q[0] = totals[0] = totals[0] + 1
                q, d, totals = bindings.db_seconds
                q[self._db_zero] += 1
                q[0] = totals[0] = totals[0] + 1
            else:
                self.db_queries.observe(request.queries)
                self.db_seconds.observe(request.db_seconds)
            view = request.view
            if view:
                counter, hist = bindings.views.get(view) or self._bind_view(
                    bindings, view
                )
                counter.view[0] = counter.total = counter.total + 1
                q, d, totals = hist
                q[k] += 1
                d[1] = totals[1] = totals[1] + duration
                q[0] = totals[0] = totals[0] + 1

            # The time of the last request; a slow request, a reading due or
            # the file's check share one comparison with the time they are due.
            bindings.heartbeat[_HEARTBEAT] = request.wall_started + duration
            if end >= self._due or duration >= self.slow_seconds:
                self._finish_rarely(request, end, duration)
        except Exception:
            log.exception("mmstats could not record the end of a request")

    def _bind_status(self, bindings: _Bindings, status: int) -> Any:
        """Return the thread's bound counter of a status's class, or None."""
        if not 100 <= status < 600:
            return None
        hundreds = status // 100
        counter = bindings.responses[hundreds]
        if counter is None:
            series = self._by_hundreds[hundreds]
            assert series is not None
            counter = bindings.responses[hundreds] = series.bound()
        if len(bindings.statuses) < _STATUS_CACHE_MAX:
            bindings.statuses[status] = counter
        return counter

    def _finish_rarely(self, request: Request, end: float, duration: float) -> None:
        """Write a slow request's entry, take due readings, check the file."""
        slow = duration >= self.slow_seconds
        self._refresh(end, slow)
        if slow:
            wall_end = request.wall_started + duration
            self._write_slow(request, wall_end, duration, self._rss, self._load)
        writer = self._writer
        if end >= writer.next_check:
            writer.check(end)  # a stat every few seconds
        self._due = min(self._due, writer.next_check)

    def _view_field(self, view: str) -> bytes:
        """Return the string field of a view's name."""
        return self._view_fields.get(view) or _field(_encode(view), F.VIEW_SIZE)

    def _view_series(self, view: str) -> _ViewSeries:
        """Return the view's field and series, kept for the next request."""
        series = self._views.get(view)
        if series is None:
            # The label holds what the slot and the slow ring hold: the name
            # cut to their field's size at a character boundary.
            name = F.cut_utf8(_encode(view), F.VIEW_SIZE - 2)
            labels = {"view": name.decode("utf-8", "surrogateescape")}
            series = (
                _field(name, F.VIEW_SIZE),
                self.stats.counter("view_requests", "Requests per view", labels),
                self.stats.histogram("view_seconds", "Request time per view", labels),
            )
            # A view past the label cap gets the overflow series, kept apart:
            # each of its requests counts as a dropped label use.
            if series[1].labels == labels:
                if len(self._views) < _VIEW_CACHE_MAX:
                    self._views[view] = series
                    self._view_fields[view] = series[0]
            elif len(self._over_views) < _VIEW_CACHE_MAX:
                dropped = self.stats._dropped_labels
                self._over_views[view] = (
                    series,
                    dropped("view_requests"),
                    dropped("view_seconds"),
                )
        return series

    def _write_slow(
        self, request: Request, end: float, duration: float, rss: int, load: float
    ) -> None:
        ring = self._ring_cell()
        index = next(self._ring_counter)
        start = ring.byte + (index % self.slow_log_size) * F.ENTRY_SIZE
        q, d, b, w = ring.q, ring.d, ring.b, start // 8
        strings = start + 8 * F.E_STRINGS
        # An odd generation marks the entry as being written; the even one
        # written last publishes it and orders it among the others.
        q[w + F.E_GEN] = 2 * index + 1
        try:
            d[w + F.E_END] = end
            d[w + F.E_START] = request.wall_started
            d[w + F.E_DURATION] = duration
            q[w + F.E_STATUS] = request.status
            q[w + F.E_QUERIES] = request.queries
            d[w + F.E_DB_SECONDS] = request.db_seconds
            q[w + F.E_MEMORY_DELTA] = (
                rss - request.rss_start if rss and request.rss_start else 0
            )
            d[w + F.E_LOAD_DELTA] = load - request.load_start
            path = strings + F.METHOD_SIZE
            view = strings + _VIEW_OFFSET
            b[strings:path] = request.method_field
            b[path : path + len(request.path_field)] = request.path_field
            b[view : view + len(request.view_field)] = request.view_field
        except BaseException:
            # A value its field cannot hold (a status past 2**63 - 1): left
            # odd, the entry would make every reader of this live worker wait
            # for it.  Generation 0 reads as an empty entry.
            q[w + F.E_GEN] = 0
            raise
        q[w + F.E_GEN] = 2 * index + 2
