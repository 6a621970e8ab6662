"""The writer API: declarative :class:`Stats` models and metric series.

Each series keeps, per thread, a reference to that thread's own cell in the
stats file, so an update is a few stores into shared memory: no lock and no
system call.  The cell is found through a ``threading.local``; a thread's
first update (and the first after a fork) allocates it under the writer's
lock.  Counters, and the count and sum of histograms, also have a private
copy in the thread: it is the cell's only writer, so an update adds to the
copy and stores the result, without loading the word from the file first.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar, cast

from . import _format as F
from ._writer import DIRECTORY_RULE, FileWriter, get_writer, is_directory, on_fork

log = logging.getLogger(__name__)

DEFAULT_LABEL_LIMIT = 100
DEFAULT_TEXT_BYTES = 256
OVERFLOW = "_overflow"

_stamps = itertools.count(1)  # next() is atomic under the GIL
_F = TypeVar("_F", bound=Callable[..., Any])

LabelKey = tuple[tuple[str, str], ...]


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The options of Stats and of the request recorder, each with its test and
# the rule it states; the adapters check their settings by these too.
# "not v >= 0" refuses NaN, with which no request would ever be slow.
OPTION_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "directory": (lambda v: v is None or is_directory(v), DIRECTORY_RULE),
    "name": (
        lambda v: v is None or (isinstance(v, str) and v != ""),
        "a non-empty str",
    ),
    "slow_seconds": (
        lambda v: (_whole(v) or isinstance(v, float)) and v >= 0,
        "a number >= 0",
    ),
    "slow_log_size": (
        lambda v: _whole(v) and 1 <= v <= 100_000,
        "an int from 1 to 100000",
    ),
    "label_limit": (lambda v: _whole(v) and v >= 1, "an int >= 1"),
}


def broken_rule(option: str, value: object) -> str | None:
    """Return the rule of ``option`` (see OPTION_RULES) that ``value`` breaks,
    or None when it keeps it."""
    test, rule = OPTION_RULES[option]
    return None if test(value) else rule


def check_options(**options: object) -> None:
    """Check options by OPTION_RULES.

    :raises ValueError: one is bad; the message names it, its rule and its
        value.
    """
    for option, value in options.items():
        rule = broken_rule(option, value)
        if rule is not None:
            raise ValueError(f"{option} must be {rule}, not {value!r}")


def _label_key(labels: Mapping[str, object] | None) -> LabelKey:
    if not labels:
        return ()
    if not isinstance(labels, Mapping):
        raise TypeError(f"labels must be a mapping of str to str, not {labels!r}")
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


class _Series:
    """One metric with one set of label values, in this process's file."""

    kind: ClassVar[int] = 0
    __slots__ = (
        "_writer",
        "_tl",
        "_cells",
        "name",
        "help",
        "unit",
        "labels",
        "_params",
        "_payload",
    )

    def __init__(
        self,
        writer: FileWriter,
        name: str,
        help: str,
        unit: str,
        labels: LabelKey,
    ) -> None:
        self._writer = writer
        self._tl = threading.local()
        self._cells: dict[int, Any] = {}
        self.name = name
        self.help = help
        self.unit = unit
        self.labels = dict(labels)
        self._params: dict[str, Any] = {}
        self._payload = 8
        writer.reset_hooks.append(self._reset)

    def __repr__(self) -> str:
        labels = "".join(f" {k}={v!r}" for k, v in self.labels.items())
        return f"<{type(self).__name__} {self.name}{labels}>"

    def _reset(self) -> None:
        self._tl = threading.local()
        self._cells = {}

    def _bind(self) -> Any:
        raise NotImplementedError

    def bound(self) -> Any:
        """Return what the calling thread writes through, binding it on first use.

        A counter gives its :class:`_CounterCell`, a gauge ``(d, word)`` and
        a histogram ``(q, d, totals)``: the objects its own methods use, so a
        caller holding them (the request recorder, once per thread) writes
        the same cell and keeps the same private totals.
        """
        try:
            return self._tl.cell
        except AttributeError:
            return self._bind()

    def _cell(self) -> Any:
        """Return the calling thread's cell, allocating it on first use."""
        writer = self._writer
        # Known limitation (#7): a Stats writer without the request recorder
        # notices a removed file only here, when it next allocates a record.
        writer.check(time.perf_counter())
        while True:
            generation = writer.generation
            tslot = writer.thread_slot()
            with writer.lock:
                if writer.generation != generation:
                    continue  # the file was replaced meanwhile: a new slot
                cell = self._cells.get(tslot)
                if cell is None:
                    meta = {
                        "name": self.name,
                        "help": self.help,
                        "unit": self.unit,
                        "labels": self.labels,
                    }
                    key = (self.name, tuple(sorted(self.labels.items())))
                    mid = writer.metric_id(key, self.kind, meta, **self._params)
                    cell = writer.cell(mid, tslot, self._payload)
                    self._cells[tslot] = cell
                return cell


class _CounterCell:
    """A thread's counter cell: a one-word view and the value it holds."""

    __slots__ = ("view", "total")

    def __init__(self, cell: Any) -> None:
        self.view = cell.q[cell.word : cell.word + 1]
        # Read once, when the thread takes the cell: a cell handed over by
        # an ended thread keeps counting from where that thread left it.
        self.total: int = self.view[0]


class CounterSeries(_Series):
    """An integer that only goes up."""

    kind = F.KIND_COUNTER
    __slots__ = ()

    def _bind(self) -> _CounterCell:
        # The thread-local is taken first: if the file is replaced meanwhile,
        # the binding goes to the old one, which nothing reads any more.
        tl = self._tl
        tl.cell = bound = _CounterCell(self._cell())
        return bound

    def incr(self, n: int = 1) -> None:
        """Add ``n`` (a non-negative integer) to the counter."""
        try:
            bound = self._tl.cell
        except AttributeError:
            bound = self._bind()
        if n < 0:
            raise ValueError(f"Counter {self.name!r} cannot decrease: incr({n!r})")
        total = bound.total + n
        # The store goes first: a total it refuses (not an integer, past
        # 2**63 - 1) leaves the private copy as it was.
        # (No try around it: even an exception table costs every increment
        # a few nanoseconds, and memoryview's own error says enough.)
        bound.view[0] = total
        bound.total = total


class GaugeSeries(_Series):
    """A float that goes up and down; the value of the process is one number.

    Each thread changes only its own cell and the reader adds the cells up,
    so ``incr`` and ``decr`` from many threads lose nothing.  ``set`` stores
    the value minus the other threads' cells into the caller's cell.
    """

    kind = F.KIND_GAUGE
    __slots__ = ()

    def _bind(self) -> tuple[Any, int]:
        tl = self._tl
        cell = self._cell()
        tl.cell = bound = (cell.d, cell.word)
        return bound

    def incr(self, n: float = 1.0) -> None:
        """Add ``n`` to the gauge."""
        try:
            d, i = self._tl.cell
        except AttributeError:
            d, i = self._bind()
        d[i] += n

    def decr(self, n: float = 1.0) -> None:
        """Subtract ``n`` from the gauge."""
        try:
            d, i = self._tl.cell
        except AttributeError:
            d, i = self._bind()
        d[i] -= n

    def set(self, value: float) -> None:
        """Set the gauge to ``value``."""
        try:
            d, i = self._tl.cell
        except AttributeError:
            d, i = self._bind()
        others = 0.0
        if len(self._cells) > 1:
            for cell in list(self._cells.values()):
                if cell.word != i or cell.d is not d:
                    others += cell.d[cell.word]
        d[i] = value - others


class HistogramSeries(_Series):
    """Counts of observations in log-scaled buckets, with their sum."""

    kind = F.KIND_HISTOGRAM
    __slots__ = ("_bounds", "_words")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        lo, hi = F.range_for(self.unit)
        integer = self.unit in F.INTEGER_UNITS
        nbuckets = F.bucket_count(lo, hi)
        self._params = {
            "lo": lo,
            "gamma": F.GAMMA,
            "nbuckets": nbuckets,
            "flags": F.FLAG_INTEGER if integer else 0,
        }
        self._words = F.HIST_BUCKETS + nbuckets
        self._payload = 8 * self._words
        self._bounds = F.bucket_bounds(lo, nbuckets)

    def _bind(self) -> tuple[Any, Any, list[Any]]:
        tl = self._tl
        cell = self._cell()
        start, end = cell.word, cell.word + self._words
        q, d = cell.q[start:end], cell.d[start:end]
        # The thread's copy of the count and the sum, read once when it takes
        # the cell (an ended thread may have handed it over).
        totals: list[Any] = [q[F.HIST_COUNT], d[F.HIST_SUM]]
        tl.cell = bound = (q, d, totals)
        return bound

    def observe(self, value: float, _bisect: Any = bisect.bisect_left) -> None:
        """Record one observation of ``value``."""
        try:
            q, d, totals = self._tl.cell
        except AttributeError:
            q, d, totals = self._bind()
        k = _bisect(self._bounds, value) + 2  # bucket 0 is word 2
        total = totals[1] + value
        # Bucket, then sum, then count (words k, 1 and 0): a reader takes a
        # copy only when its count equals the sum of its buckets, so it never
        # pairs a sum with buckets of another moment (docs/FORMAT.md).
        q[k] += 1
        try:
            d[1] = total
        except BaseException:
            q[k] -= 1  # a sum that is no float: as if never called
            raise
        totals[1] = total
        count = totals[0] + 1
        q[0] = count
        totals[0] = count

    def bucket(
        self,
        value: float,
        _bisect: Callable[[tuple[float, ...], float], int] = bisect.bisect_left,
    ) -> int:
        """Return the word of the cell that counts observations of ``value``."""
        return _bisect(self._bounds, value) + 2  # bucket 0 is word 2

    def time(self) -> _Timer:
        """Time a block (``with h.time():``) or a function (``@h.time()``)."""
        return _Timer(self)


class _Timer:
    """Context manager and decorator that observes elapsed seconds."""

    __slots__ = ("_hist", "_start")

    def __init__(self, hist: HistogramSeries) -> None:
        self._hist = hist
        self._start = 0.0

    def __enter__(self) -> _Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hist.observe(time.perf_counter() - self._start)

    def __call__(self, func: _F) -> _F:
        hist = self._hist

        @functools.wraps(func)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                hist.observe(time.perf_counter() - start)

        return timed  # type: ignore[return-value]


class TextSeries(_Series):
    """A short string; the newest ``set`` from any thread wins."""

    kind = F.KIND_TEXT
    __slots__ = ("_max",)

    def __init__(self, *args: Any, max_bytes: int = DEFAULT_TEXT_BYTES, **kw: Any):
        super().__init__(*args, **kw)
        if (
            isinstance(max_bytes, bool)
            or not isinstance(max_bytes, int)
            or not 1 <= max_bytes <= F.MAX_TEXT_BYTES
        ):
            raise ValueError(
                f"Text max_bytes must be an int from 1 to {F.MAX_TEXT_BYTES}, "
                f"not {max_bytes!r}"
            )
        self._max = max_bytes
        self._params = {"text_max": max_bytes}
        self._payload = 8 * F.TEXT_DATA + F.round8(max_bytes)

    def _bind(self) -> tuple[Any, Any, int]:
        tl = self._tl
        cell = self._cell()
        tl.cell = bound = (cell.q, cell.b, cell.word)
        return bound

    def set(self, value: str) -> None:
        """Store ``value``, cut at a character boundary to the maximum size."""
        try:
            q, b, i = self._tl.cell
        except AttributeError:
            q, b, i = self._bind()
        data = F.cut_utf8(F.encode(str(value)), self._max)
        start = (i + F.TEXT_DATA) * 8
        q[i] += 1
        q[i + 1] = next(_stamps)
        q[i + 2] = len(data)
        b[start : start + len(data)] = data
        q[i] += 1


_SERIES_TYPES: dict[str, type[_Series]] = {
    "counter": CounterSeries,
    "gauge": GaugeSeries,
    "histogram": HistogramSeries,
    "text": TextSeries,
}


class _Registry:
    """Series of one writer, by name and labels, with the label cap."""

    def __init__(self, writer: FileWriter) -> None:
        self.writer = writer
        self.lock = threading.Lock()
        self.series: dict[tuple[str, LabelKey], _Series] = {}
        self.kinds: dict[str, tuple[str, str]] = {}
        self.label_sets: dict[str, int] = {}
        self.warned: set[str] = set()


_registries: dict[int, _Registry] = {}


def _registry(writer: FileWriter) -> _Registry:
    reg = _registries.get(id(writer))
    if reg is None:
        reg = _registries.setdefault(id(writer), _Registry(writer))
    return reg


def _after_fork_in_child() -> None:
    for reg in _registries.values():
        reg.lock = threading.Lock()


on_fork(_after_fork_in_child)


class _Field:
    """A metric declared on a :class:`Stats` subclass."""

    kind = ""

    def __init__(self, help: str = "", *, labels: tuple[str, ...] = ()) -> None:
        self.help = help
        self.labelnames = tuple(labels)
        self.unit = ""
        self.options: dict[str, Any] = {}

    def make(self, stats: Stats, name: str) -> Any:
        if self.labelnames:
            return Family(
                stats,
                self.kind,
                name,
                self.help,
                self.unit,
                self.labelnames,
                self.options,
            )
        return stats._series(self.kind, name, self.help, self.unit, None, self.options)


class Counter(_Field):
    """Declare an integer counter: ``done = Counter("Jobs finished")``."""

    kind = "counter"


class Gauge(_Field):
    """Declare a float gauge: ``queue = Gauge("Jobs waiting")``."""

    kind = "gauge"


class Histogram(_Field):
    """Declare a histogram: ``runtime = Histogram("Run time", unit="seconds")``."""

    kind = "histogram"

    def __init__(
        self, help: str = "", *, unit: str = "seconds", labels: tuple[str, ...] = ()
    ) -> None:
        super().__init__(help, labels=labels)
        self.unit = unit


class Text(_Field):
    """Declare a short text: ``version = Text("Deployed version", max_bytes=64)``."""

    kind = "text"

    def __init__(
        self,
        help: str = "",
        *,
        max_bytes: int = DEFAULT_TEXT_BYTES,
        labels: tuple[str, ...] = (),
    ) -> None:
        super().__init__(help, labels=labels)
        self.options = {"max_bytes": max_bytes}


class Family:
    """A declared metric with label names; ``.labels(...)`` gives a series."""

    def __init__(
        self,
        stats: Stats,
        kind: str,
        name: str,
        help: str,
        unit: str,
        labelnames: tuple[str, ...],
        options: dict[str, Any],
    ) -> None:
        self._stats = stats
        self._kind = kind
        self.name = name
        self._help = help
        self._unit = unit
        self.labelnames = labelnames
        self._options = options

    def labels(self, **values: object) -> Any:
        """Return the series for these label values."""
        if set(values) != set(self.labelnames):
            raise ValueError(
                f"Metric {self.name!r} takes labels {sorted(self.labelnames)!r}, "
                f"not {sorted(values)!r}"
            )
        return self._stats._series(
            self._kind, self.name, self._help, self._unit, values, self._options
        )


class Stats:
    """A set of metrics written to this process's stats file.

    Subclass it and declare fields, or call :meth:`counter`, :meth:`gauge`,
    :meth:`histogram` and :meth:`text` for names known only at run time.
    The directory comes from ``directory``, else ``MMSTATS_DIR``, else a
    private per-user default; the file is created on the first write.
    ``directory_source`` names what set ``directory`` (say
    ``"app.config['MMSTATS_DIR']"``) in the warning when it is unusable.
    """

    _fields: ClassVar[dict[str, _Field]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Collect the declared fields, and take the subclass's own off it.

        Each instance sets its series under the fields' names.  Left on the
        class, a field would sit behind every ``stats.done`` lookup, and
        CPython 3.11 does not specialise an instance attribute load that a
        class attribute of a Python class shadows: the load would cost
        about four times a plain one on every write.
        """
        super().__init_subclass__(**kwargs)
        fields: dict[str, _Field] = {}
        for klass in reversed(cls.__mro__):
            fields.update(vars(klass).get("_fields", {}))
            for attr, value in vars(klass).items():
                if isinstance(value, _Field):
                    fields[attr] = value
        for attr, value in list(vars(cls).items()):
            if isinstance(value, _Field):
                delattr(cls, attr)
        cls._fields = fields

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        name: str | None = None,
        *,
        label_limit: int = DEFAULT_LABEL_LIMIT,
        directory_source: str | None = None,
    ) -> None:
        check_options(directory=directory, label_limit=label_limit)
        self._writer = get_writer(directory, name, directory_source)
        self._registry = _registry(self._writer)
        self._label_limit = label_limit
        for attr, field in self._fields.items():
            setattr(self, attr, field.make(self, attr))

    @property
    def path(self) -> str | None:
        """Path of this process's stats file, or None before the first write."""
        return self._writer.path

    @property
    def disabled(self) -> str | None:
        """Why stats are off for this process, or None while they work."""
        return self._writer.disabled

    def counter(
        self, name: str, help: str = "", labels: Mapping[str, object] | None = None
    ) -> CounterSeries:
        """Return the counter ``name`` with these labels."""
        series: CounterSeries = self._series("counter", name, help, "", labels, {})
        return series

    def gauge(
        self, name: str, help: str = "", labels: Mapping[str, object] | None = None
    ) -> GaugeSeries:
        """Return the gauge ``name`` with these labels."""
        series: GaugeSeries = self._series("gauge", name, help, "", labels, {})
        return series

    def histogram(
        self,
        name: str,
        help: str = "",
        labels: Mapping[str, object] | None = None,
        *,
        unit: str = "seconds",
    ) -> HistogramSeries:
        """Return the histogram ``name`` with these labels."""
        series: HistogramSeries = self._series(
            "histogram", name, help, unit, labels, {}
        )
        return series

    def text(
        self,
        name: str,
        help: str = "",
        labels: Mapping[str, object] | None = None,
        *,
        max_bytes: int = DEFAULT_TEXT_BYTES,
    ) -> TextSeries:
        """Return the text ``name`` with these labels."""
        options = {"max_bytes": max_bytes}
        series: TextSeries = self._series("text", name, help, "", labels, options)
        return series

    def _series(
        self,
        kind: str,
        name: str,
        help: str,
        unit: str,
        labels: Mapping[str, object] | None,
        options: dict[str, Any],
    ) -> Any:
        key = (name, _label_key(labels))
        reg = self._registry
        series = reg.series.get(key)
        if series is not None and series.kind == _SERIES_TYPES[kind].kind:
            return series
        with reg.lock:
            return self._make_series(reg, kind, name, help, unit, key, options)

    def _make_series(
        self,
        reg: _Registry,
        kind: str,
        name: str,
        help: str,
        unit: str,
        key: tuple[str, LabelKey],
        options: dict[str, Any],
    ) -> Any:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Metric name must be a non-empty str, not {name!r}")
        known = reg.kinds.get(name)
        if known is not None and known[0] != kind:
            raise ValueError(
                f"Metric {name!r} is a {known[0]}; it cannot also be a {kind}"
            )
        series = reg.series.get(key)
        if series is not None:
            return series

        labels = key[1]
        if labels:
            used = reg.label_sets.get(name, 0)
            if used >= self._label_limit:
                return self._overflow(reg, kind, name, help, unit, labels, options)
            reg.label_sets[name] = used + 1

        cls = _SERIES_TYPES[kind]
        series = cls(self._writer, name, help, unit, labels, **options)
        reg.kinds.setdefault(name, (kind, unit))
        reg.series[key] = series
        return series

    def _dropped_labels(self, name: str) -> CounterSeries:
        """Return the counter of uses of label sets of ``name`` that the cap
        refused."""
        with self._registry.lock:
            return self._dropped_series(self._registry, name)

    def _dropped_series(self, reg: _Registry, name: str) -> CounterSeries:
        # Under the registry's lock.
        key = ("mmstats_dropped_labels", (("metric", name),))
        dropped = cast("CounterSeries | None", reg.series.get(key))
        if dropped is None:
            dropped = CounterSeries(
                self._writer,
                "mmstats_dropped_labels",
                "Uses of a label set refused by the label cap",
                "",
                key[1],
            )
            reg.series[key] = dropped
        return dropped

    def _overflow(
        self,
        reg: _Registry,
        kind: str,
        name: str,
        help: str,
        unit: str,
        labels: LabelKey,
        options: dict[str, Any],
    ) -> Any:
        """Return the series that collects values past the label cap."""
        if name not in reg.warned:
            reg.warned.add(name)
            log.warning(
                "Metric %r reached its cap of %d label sets; further values go "
                "to the series {%s} and are counted in "
                "mmstats_dropped_labels{metric=%r}.",
                name,
                self._label_limit,
                ", ".join(f"{k}={OVERFLOW!r}" for k, _ in labels),
                name,
            )
        self._dropped_series(reg, name).incr()

        okey = (name, tuple((k, OVERFLOW) for k, _ in labels))
        series = reg.series.get(okey)
        if series is None:
            cls = _SERIES_TYPES[kind]
            series = cls(self._writer, name, help, unit, okey[1], **options)
            reg.series[okey] = series
        return series
