"""The reader API: parse one stats file, scan a directory, add workers up.

Every file is untrusted input.  A file that cannot be parsed raises
:class:`~mmstats.exceptions.CorruptFileError` from :func:`read_file`; a
directory scan never raises for one bad file but lists it in
:attr:`Snapshot.bad` and goes on with the others.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
import json
import logging
import math
import mmap
import os
import resource
import select
import stat
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from . import _format as F
from ._archive import ARCHIVE_NAME, Archive, load_archive
from ._writer import (
    CHUNK_SIZE,
    boot_id,
    hostname,
    pid_namespace,
    process_start_ticks,
    process_state,
    resolve_directory,
)
from .exceptions import CorruptFileError, DirectoryError, UnsupportedVersionError

log = logging.getLogger(__name__)

LabelKey = tuple[tuple[str, str], ...]
Names = frozenset[str] | None  # the metrics a reader wants; None for all


class _Want(NamedTuple):
    """What a read takes from each file: the newest ``rings`` slow entries
    of each ring (None for all, 0 for none) and the metrics ``names`` (None
    for all).  With ``fold``, a live worker's counters and histograms go
    into the directory's totals only (see :func:`read_totals`)."""

    rings: int | None = None
    names: Names = None
    fold: bool = False


_EVERYTHING = _Want()


def text(data: bytes) -> str:
    """Decode bytes from a file; invalid bytes become ``\\xNN`` escapes."""
    return data.decode("utf-8", "backslashreplace")


# Buckets packed into one integer, a 64-bit digit per bucket: adding two
# packed histograms adds every bucket at once, in C.  A count below 2**48
# per bucket, and fewer than 2**15 histograms added, never carry into the
# next digit; past that the buckets are kept as a dict.
_PACKED_MAX_PARTS = 1 << 15
# 2**64 == 1 modulo 2**64 - 1: a packed integer and the sum of its digits
# have the same remainder; exact while that sum stays below the modulus.
_DIGIT_MODULUS = (1 << 64) - 1
_DIGIT_SUM_MAX = 1 << 16  # buckets times parts, each digit below 2**48
_HIGH_BYTES = (6, 7) if F.NATIVE_ORDER == "little" else (0, 1)


def _digit_sum(packed: int) -> int:
    """Return the sum of the 64-bit digits of ``packed``, modulo 2**64 - 1.

    Halves are added until one digit is left: ``hi * 2**s + lo`` becomes
    ``hi + lo``, which keeps the remainder by 2**64 - 1 (2**64 is 1 to that
    modulus) at the cost of a shift, a mask and an addition per halving,
    where a division by the three-digit modulus costs about as much again
    as all of them.
    """
    n = (packed.bit_length() + 63) >> 6
    while n > 1:
        half = (n + 1) >> 1
        shift = half << 6
        packed = (packed >> shift) + (packed & _low_mask(shift))
        n = half
    return packed % _DIGIT_MODULUS


@functools.lru_cache(maxsize=64)
def _low_mask(bits: int) -> int:
    return (1 << bits) - 1


# Buckets assumed of a histogram made without its number (tests, by hand).
_UNKNOWN_NBUCKETS = 1024


@functools.lru_cache(maxsize=16)
def _scheme_bounds(lo: float, gamma: float, nbuckets: int) -> tuple[float, ...]:
    """Return the bounds of a bucket scheme, as writers bisect them."""
    return tuple(F.bucket_bound(lo, gamma, k) for k in range(nbuckets - 1))


# More partial sums than a sum of doubles ever needs (about 40).
_SUM_PARTS_MAX = 100


def _exact_sum(values: list[float]) -> float:
    """Return the sum of ``values`` as if added exactly and rounded once.

    Float additions grouped another way can round to another float: a total
    added up as (live + dead) + archive before a clean and live + (dead +
    archive) after it could end one unit in the last place lower, which
    Prometheus takes for a reset of a _sum that only ever grows.
    """
    try:
        return math.fsum(values)
    except (ValueError, OverflowError):  # +inf with -inf, or too large on the way
        total = 0.0
        for value in values:
            total += value
        return total


def exact_parts(values: list[float]) -> list[float]:
    """Return a few floats whose exact sum is the exact sum of ``values``.

    Shewchuk's way: each value is added into a list of partial sums that do
    not overlap, each addition split into its rounded sum and the error
    that rounding made, which is again a float.  The archive keeps a
    histogram's sum so, however many workers it folded.
    """
    if not all(math.isfinite(v) for v in values):
        return [_exact_sum(values)]
    partials: list[float] = []
    for value in values:
        kept = 0
        for partial in partials:
            big, small = (
                (value, partial) if abs(value) >= abs(partial) else (partial, value)
            )
            rounded = big + small
            error = small - (rounded - big)
            if error:
                partials[kept] = error
                kept += 1
            value = rounded
        del partials[kept:]
        partials.append(value)
    return partials


def _add_into(mine: dict[int, int], buckets: dict[int, int]) -> None:
    for k, n in buckets.items():
        mine[k] = mine.get(k, 0) + n


def _packable(raw: bytes) -> bool:
    """Return whether every u64 word of ``raw`` is below 2**48 (so not negative)."""
    a, b = _HIGH_BYTES
    words = len(raw) // 8
    return raw[a::8].count(0) == words and raw[b::8].count(0) == words


class HistogramValue:
    """Counts per log-scaled bucket; merges exactly with the same scheme.

    ``buckets`` maps a bucket index to its count (non-zero buckets only).
    Read from a file, the buckets stay packed until something asks for
    them, so adding many workers' histograms up costs little.
    """

    __slots__ = (
        "lo",
        "gamma",
        "integer",
        "_sum",
        "nbuckets",
        "_count",
        "_state",
        "_sums",
        "_sum_due",
    )

    def __init__(
        self,
        lo: float,
        gamma: float,
        integer: bool,
        count: int | None = None,
        sum: float = 0.0,
        buckets: dict[int, int] | None = None,
        nbuckets: int = 0,
    ) -> None:
        self.lo = lo
        self.gamma = gamma
        self.integer = integer
        self._sum = sum
        self.nbuckets = nbuckets  # of the scheme: the last one also holds all above
        self._count = count
        # The buckets: those packed into one integer (and how many
        # histograms were added into it), plus plain ones.  One tuple,
        # replaced whole, so that threads sharing a value read it whole.
        self._state: tuple[int, int, dict[int, int]] = (
            0,
            0,
            {} if buckets is None else buckets,
        )
        # The sums added into ``sum`` (None: just ``sum``), which is their
        # exact sum rounded once: the same float however they were grouped,
        # so a total's _sum never drops by a rounding when a clean or a
        # worker's death regroups its parts (see _exact_sum).  Added up
        # when asked for, not at every merge.
        self._sums: list[float] | None = None
        self._sum_due = False

    @property
    def sum(self) -> float:
        """The sum of the observed values."""
        if self._sum_due:
            assert self._sums is not None
            self._sum = _exact_sum(self._sums)
            self._sum_due = False
        return self._sum

    @sum.setter
    def sum(self, value: float) -> None:
        self._sum = value
        self._sums = None
        self._sum_due = False

    def sums(self) -> list[float]:
        """Return floats whose exact sum is this histogram's exact sum."""
        return [self._sum] if self._sums is None else self._sums

    def compact_sums(self) -> None:
        """Keep the sums added so far as the few floats that add up to them
        exactly (see exact_parts): for a value that is added again and again."""
        if self._sums is not None and len(self._sums) > 2:
            self._sums = exact_parts(self._sums)

    def _add_count_and_sum(self, other: HistogramValue) -> None:
        """Add ``other``'s count and sum into this one's (the buckets are
        the caller's)."""
        if self._count is not None:
            self._count = None if other._count is None else self._count + other._count
        mine = self._sums
        if mine is None:
            mine = self._sums = [self._sum]
        if other._sums is None:
            mine.append(other._sum)
        else:
            mine.extend(other._sums)
        self._sum_due = True

    @classmethod
    def from_words(cls, meta: dict[str, Any], raw: bytes, sum: float) -> HistogramValue:
        """Build a histogram from the bucket words of a file, as copied.

        The count is the sum of the buckets, which stays right even when a
        writer was killed in the middle of an update.

        :raises ValueError: a bucket count is negative.
        """
        if _packable(raw):
            return cls.from_packed(meta, int.from_bytes(raw, F.NATIVE_ORDER), sum)
        buckets = _nonzero_buckets(raw)
        if buckets and min(buckets.values()) < 0:
            raise ValueError("histogram cell has a negative bucket count")
        hist = cls(meta["lo"], meta["gamma"], meta["integer"], None, sum, buckets)
        hist.nbuckets = meta["nbuckets"]
        return hist

    @classmethod
    def from_packed(
        cls, meta: dict[str, Any], packed: int, sum: float
    ) -> HistogramValue:
        """Build a histogram from bucket words read as one integer, each
        below 2**48."""
        hist = cls(meta["lo"], meta["gamma"], meta["integer"], None, sum)
        hist.nbuckets = meta["nbuckets"]
        hist._state = (packed, 1, {})
        return hist

    @property
    def buckets(self) -> dict[int, int]:
        """Counts of the non-zero buckets, by bucket index."""
        packed, parts, plain = self._state
        if parts:
            raw = packed.to_bytes((packed.bit_length() + 63) // 64 * 8, F.NATIVE_ORDER)
            unpacked = _nonzero_buckets(raw)
            _add_into(unpacked, plain)
            self._state = (0, 0, unpacked)
            return unpacked
        return plain

    @buckets.setter
    def buckets(self, value: dict[int, int]) -> None:
        self._state = (0, 0, value)
        self._count = None

    @property
    def count(self) -> int:
        """How many values were observed."""
        if self._count is None:
            packed, parts, plain = self._state
            if parts and not plain and parts * max(self.nbuckets, 1) < _DIGIT_SUM_MAX:
                # The digits (each below parts * 2**48) add up to less than
                # 2**64 - 1, so the remainder by it is their sum.
                self._count = _digit_sum(packed)
            else:
                self._count = sum(self.buckets.values())
        return self._count

    @count.setter
    def count(self, value: int) -> None:
        self._count = value

    def merge(self, other: HistogramValue) -> None:
        """Add ``other`` into this histogram (``other`` is left as it is).

        :raises ValueError: ``other`` has other buckets (see
            :meth:`merge_moved`).
        """
        if other.lo != self.lo or other.gamma != self.gamma:
            raise ValueError(
                f"Cannot merge histograms with buckets lo={other.lo!r} "
                f"gamma={other.gamma!r} into lo={self.lo!r} gamma={self.gamma!r}"
            )
        self._add_count_and_sum(other)
        packed, parts, plain = self._state
        opacked, oparts, oplain = other._state
        if oparts and parts + oparts < _PACKED_MAX_PARTS:
            if oplain:
                _add_into(plain, oplain)
            self._state = (packed + opacked, parts + oparts, plain)
        else:
            _add_into(plain, other.buckets)

    def merge_moved(self, other: HistogramValue) -> None:
        """Add ``other`` of the same quantity, whatever its buckets.

        A histogram of other buckets (a file of format version 2) is added
        bucket by bucket into the bucket of this one that holds the value
        standing for it: the count and the sum stay exact, and each
        observation moves by no more than the two schemes' errors together.
        """
        if other.lo == self.lo and other.gamma == self.gamma:
            self.merge(other)
            return
        n = self.nbuckets or _UNKNOWN_NBUCKETS
        bounds = _scheme_bounds(self.lo, self.gamma, n)
        moved: dict[int, int] = {}
        for k, c in other.buckets.items():
            j = min(bisect.bisect_left(bounds, other.representative(k)), n - 1)
            moved[j] = moved.get(j, 0) + c
        self._add_count_and_sum(other)
        packed, parts, plain = self._state
        _add_into(plain, moved)
        self._state = (packed, parts, plain)

    def same_scheme(self, other: HistogramValue) -> bool:
        """Return whether ``other`` has the same buckets, so they can merge."""
        return other.lo == self.lo and other.gamma == self.gamma

    def copy(self) -> HistogramValue:
        """Return an independent copy."""
        packed, parts, plain = self._state
        hist = HistogramValue(self.lo, self.gamma, self.integer, self._count, self._sum)
        hist.nbuckets = self.nbuckets
        hist._state = (packed, parts, dict(plain))
        if self._sums is not None:
            hist._sums = list(self._sums)
            hist._sum_due = self._sum_due
        return hist

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HistogramValue):
            return NotImplemented
        return (
            self.lo == other.lo
            and self.gamma == other.gamma
            and self.integer == other.integer
            and self.sum == other.sum
            and self.nbuckets == other.nbuckets
            and self.buckets == other.buckets
            and self.count == other.count
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"HistogramValue(lo={self.lo!r}, gamma={self.gamma!r}, "
            f"integer={self.integer!r}, count={self.count!r}, sum={self.sum!r}, "
            f"buckets={self.buckets!r}, nbuckets={self.nbuckets!r})"
        )

    def bounds(self, k: int) -> tuple[float, float]:
        """Return the (lower, upper] bounds of bucket ``k``."""
        if k == 0:
            return (-math.inf, self.lo)
        lo, gamma = self.lo, self.gamma
        return (F.bucket_bound(lo, gamma, k - 1), F.bucket_bound(lo, gamma, k))

    def representative(self, k: int) -> float:
        """Return the value that stands for bucket ``k`` (error <= 4.33 %)."""
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
        return self.quantiles((q,))[0]

    def _counts(self) -> tuple[list[int] | range, list[int]]:
        """Return bucket indexes, ascending, and their counts."""
        packed, parts, plain = self._state
        if parts and not plain:
            raw = packed.to_bytes((packed.bit_length() + 63) // 64 * 8, F.NATIVE_ORDER)
            counts = memoryview(raw).cast("q").tolist()
            return range(len(counts)), counts
        buckets = self.buckets
        keys = sorted(buckets)
        return keys, [buckets[k] for k in keys]

    def cumulative(self) -> list[int]:
        """Return the cumulative count at every bucket, up to the last non-empty one."""
        keys, counts = self._counts()
        if isinstance(keys, range):
            return list(itertools.accumulate(counts))
        dense = [0] * (keys[-1] + 1 if keys else 0)
        for k, n in zip(keys, counts, strict=True):
            dense[k] = n
        return list(itertools.accumulate(dense))

    def quantiles(self, qs: Iterable[float]) -> list[float | None]:
        """Return several quantiles (0 to 1) by nearest rank, in one pass."""
        wanted = list(qs)
        keys, counts = self._counts()
        cumulative = list(itertools.accumulate(counts))
        total = cumulative[-1] if cumulative else 0
        if total <= 0:
            return [None] * len(wanted)
        found: list[float | None] = []
        for q in wanted:
            rank = max(1, math.ceil(q * total))
            at = bisect.bisect_left(cumulative, rank)
            found.append(self.representative(keys[min(at, len(keys) - 1)]))
        return found

    @property
    def mean(self) -> float | None:
        """Return the exact mean, or None if empty."""
        return self.sum / self.count if self.count else None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form (see the README's schema)."""
        p50, p90, p99 = self.quantiles((0.5, 0.9, 0.99))
        return {
            "count": self.count,
            "sum": self.sum,
            "lo": self.lo,
            "gamma": self.gamma,
            "integer": self.integer,
            "nbuckets": self.nbuckets,
            "buckets": {str(k): n for k, n in sorted(self.buckets.items())},
            "p50": p50,
            "p90": p90,
            "p99": p99,
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
        hist = cls(
            lo,
            gamma,
            bool(data["integer"]),
            sum(buckets.values()),
            float(data["sum"]),
            buckets,
            nbuckets,
        )
        parts = data.get("sum_parts")
        if parts is not None:
            # The archive's exact sum (see exact_parts); "sum" is it rounded.
            if not isinstance(parts, list) or not 1 <= len(parts) <= _SUM_PARTS_MAX:
                raise ValueError("histogram has a bad sum_parts")
            hist._sums = [float(part) for part in parts]
            hist._sum_due = True
        return hist


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
    # The key, when the reader knew it already (it is the same for every
    # worker with this metric record).
    known_key: tuple[str, LabelKey] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def key(self) -> tuple[str, LabelKey]:
        if self.known_key is not None:
            return self.known_key
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
    # Counters and histograms read for the totals only (read_totals).
    # (metric records, values) of its counter cells
    _folded_counts: tuple[Sequence[dict[str, Any]], Sequence[int]] = field(
        default=((), ()), repr=False, compare=False
    )
    _folded_hists: list[tuple[Any, ...]] = field(
        default_factory=list, repr=False, compare=False
    )

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
            if s.kind != "histogram" or s.unit != series[0].unit:
                continue  # another quantity: not added
            if hist.same_scheme(s.value):
                hist.merge(s.value)
            else:
                hist.merge_moved(s.value)
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


def _open_file(path: str) -> tuple[Any, int, os.stat_result]:
    """Open and map a stats file without following symlinks or blocking."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the last component is a symlink
            raise CorruptFileError(
                path, "is a symlink; symlinks are not followed"
            ) from None
        reason = exc.strerror or str(exc)
        with contextlib.suppress(OSError):
            if not stat.S_ISREG(os.lstat(path).st_mode):
                reason = "is not a regular file"  # a socket: ENXIO on open
        raise CorruptFileError(path, reason) from None
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
        return mm, st.st_size, st
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
        # The pid descriptors of watched processes that had exited when the
        # scan began (see _exited_pidfds); None: ask each one.
        self.exited: frozenset[int] | None = None if parent is None else parent.exited

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
        self.hostname = hostname()
        self.boot_id = boot_id()
        self.pidns = pid_namespace()


_host: _Host | None = None


def _this_host() -> _Host:
    global _host
    if _host is None:
        _host = _Host()
    return _host


def _state(
    closed: bool,
    pid: int,
    ticks: int,
    hostname: str,
    boot: str,
    ns: int,
    exited: frozenset[int] | None = None,
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
        watched = _watched.get((pid, ticks))
        if watched is not None and (
            not _has_exited(watched) if exited is None else watched not in exited
        ):
            return "alive"
        state, current = process_state(pid)
        if current:
            # A zombie has exited (killed, not yet reaped): it writes no more.
            alive = current == ticks and state not in ("Z", "X")
            if alive and watched is None:
                _watch(pid, ticks)
            elif not alive and watched is not None:
                _unwatch((pid, ticks))
            return "alive" if alive else "dead"
        if watched is not None:
            _unwatch((pid, ticks))  # exited and reaped: /proc has no entry
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        return "alive"
    return "alive"


# Processes seen alive by a reader that comes back (top, serve, an
# exporter): a pid file descriptor, by (pid, start ticks), tells in one
# poll that the very process is still running, where /proc/<pid>/stat
# costs an open, a read and a close.  Opened when a process is seen alive
# the second time, so that a one-off read opens none.
_watched: dict[tuple[int, int], int] = {}
_sighted: set[tuple[int, int]] = set()


def _has_exited(pidfd: int) -> bool:
    """Return whether the process of ``pidfd`` exited (or cannot be told).

    True sends the caller to /proc, which has the last word on "dead": a
    descriptor closed by another thread, or its number taken by another
    file, can only cost that thread a look at /proc.
    """
    try:
        poll = select.poll()
        poll.register(pidfd, select.POLLIN)
        return bool(poll.poll(0))
    except (OSError, ValueError):
        return True  # asked again of /proc


def _exited_pidfds() -> frozenset[int] | None:
    """Return the watched processes' descriptors that tell of an exit.

    Asked once when a scan begins, in one poll for every watched process,
    instead of one poll a file.  A process that exits later in the scan
    reads as alive, as it would had it exited just after its own poll.
    """
    if len(_watched) < 2:
        return None
    try:
        poll = select.poll()
        for pidfd in list(_watched.values()):
            poll.register(pidfd, select.POLLIN)
        # A descriptor closed by another thread answers POLLNVAL: /proc it is.
        return frozenset(pidfd for pidfd, _ in poll.poll(0))
    except (OSError, ValueError):
        return None


def _watch(pid: int, ticks: int) -> None:
    ident = (pid, ticks)
    if not _HELD_MAX:
        return
    if ident not in _sighted:
        if len(_sighted) >= 4 * _HELD_MAX:
            _sighted.clear()
        _sighted.add(ident)
        return
    if len(_watched) >= _HELD_MAX:
        for old in list(_watched)[: max(1, len(_watched) // 4)]:
            _unwatch(old)
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return  # no pidfd here (an old kernel, a sandbox): /proc it is
    # The pid may have been reused between the look at /proc and the open:
    # the descriptor is kept only for the process started at ``ticks``.
    if process_start_ticks(pid) != ticks or _watched.setdefault(ident, pidfd) != pidfd:
        os.close(pidfd)


def _unwatch(ident: tuple[int, int]) -> None:
    pidfd = _watched.pop(ident, None)
    if pidfd is not None:
        os.close(pidfd)


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


def _read_file(path: str, patience: _Patience, want: _Want = _EVERYTHING) -> Worker:
    grown_to = 0
    use_held = True
    for _attempt in range(3):
        held = _held_mapping(path) if use_held else None
        if held is None:
            mm, size, st = _open_file(path)
            key = (path, st.st_dev, st.st_ino)
        else:
            key, size, mm, _ = held
        try:
            worker = _parse(path, mm, size, grown_to, patience, want, key)
            if held is not None and worker.state in FINAL_STATES:
                _release_held(path)  # dead and closed files are not kept mapped
            if worker.state in LIVE_STATES and held is None:
                ticks = int.from_bytes(
                    mm[F.H_START_TICKS : F.H_START_TICKS + 8], F.NATIVE_ORDER
                )
                _hold_mapping(path, key, size, mm, (worker.pid, ticks))
                mm = None  # kept open for the next read
            return worker
        except _Grew as grew:
            # Grown between the size check and the read: map it again, and
            # read no further than what was published at the first look.
            grown_to = grew.used
            continue
        except (CorruptFileError, *_PARSE_ERRORS) as exc:
            if held is not None:
                # Let go (and closed) by another thread since it was taken,
                # or the file changed: read again as a first read does.
                if _held.get(path) is held:
                    _release_held(path)
                use_held = False
                continue
            if isinstance(exc, CorruptFileError):
                raise
            reason = str(exc) or type(exc).__name__
            raise CorruptFileError(path, reason) from None
        finally:
            if mm is not None and held is None:
                _close_mapping(mm)
    raise CorruptFileError(path, "kept growing past its mapped size while read")


# Mappings of live workers' files kept open between reads, by path:
# ((path, st_dev, st_ino), size, mapping, (pid, start ticks)).  A reader
# that comes back (top, serve, an exporter) then makes one lstat per file
# instead of opening, mapping and unmapping it, and finds its pages still
# mapped.  Each
# mapping holds a file descriptor (Python's mmap keeps a duplicate), so
# they are capped well below the process's limit of open files.
_held: dict[str, tuple[tuple[Any, ...], int, Any, tuple[int, int]]] = {}


def _held_limit() -> int:
    """Return how many live workers' files to keep mapped (and processes to
    watch): two descriptors each, a quarter of the limit of open files in
    all, and never more than 1,024 workers."""
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        return 0
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(0, min(1024, soft // 8))


_HELD_MAX = _held_limit()


def _held_mapping(
    path: str,
) -> tuple[tuple[Any, ...], int, Any, tuple[int, int]] | None:
    """Return the mapping kept for ``path`` if it still maps the file there.

    The same inode of the same size: the mapping shows what the file holds
    now (a shared mapping of that inode).  A file replaced, grown or cut is
    mapped anew.
    """
    held = _held.get(path)
    if held is None:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    key, size = held[0], held[1]
    if (
        st is not None
        and st.st_ino == key[2]
        and st.st_dev == key[1]
        and st.st_size == size
        and stat.S_ISREG(st.st_mode)
    ):
        return held
    _release_held(path)
    return None


def _hold_mapping(
    path: str, key: tuple[Any, ...], size: int, mm: Any, ident: tuple[int, int]
) -> None:
    if len(_held) >= _HELD_MAX:
        for old in list(_held)[: max(1, len(_held) // 4)]:
            _release_held(old)
        if len(_held) >= _HELD_MAX:
            _close_mapping(mm)
            return
    _held[path] = (key, size, mm, ident)


def _release_held(path: str) -> None:
    held = _held.pop(path, None)
    if held is not None:
        _close_mapping(held[2])
        _unwatch(held[3])  # the file is gone or replaced: so may its process be


def _close_mapping(mm: Any) -> None:
    try:
        mm.close()
    except BufferError:
        pass  # another thread is reading it: closed when it lets go


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
    want: _Want = _EVERYTHING,
    key: tuple[Any, ...] = (),
) -> Worker:
    # A writer killed while extending its file can leave a size that is not
    # a multiple of 8; records never reach into that tail.
    size -= size % 8
    b = memoryview(mm)[:size]
    q = d = None
    try:
        q, d = b.cast("q"), b.cast("d")
        return _parse_views(path, b, q, d, size, grown_to, patience, want, key)
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
    want: _Want = _EVERYTHING,
    key: tuple[Any, ...] = (),
) -> Worker:
    if bytes(b[0:8]) != F.MAGIC:
        raise CorruptFileError(path, "has no mmstats magic number; not a stats file")
    if q[F.H_BYTE_ORDER // 8] != F.BYTE_ORDER_MARK:
        raise CorruptFileError(path, "was written with another byte order")
    version = int.from_bytes(b[F.H_VERSION : F.H_VERSION + 4], F.NATIVE_ORDER)
    if version not in F.READ_VERSIONS:
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
            closed,
            pid,
            q[F.H_START_TICKS // 8],
            hostname,
            boot,
            q[F.H_PIDNS // 8],
            patience.exited,
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
    if key:  # the same inode may hold another worker's file later
        key = (*key, pid, q[F.H_CREATED // 8], q[F.H_START_TICKS // 8])
    _parse_records(worker, b, q, d, used, patience, want, key)
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


class _Layout:
    """Where a file's records are, up to a used length.

    Records never move or change once published, so a reader that comes
    back to a file (top, serve, the page) walks only what was added since.
    """

    __slots__ = (
        "used",
        "metrics",
        "cells",
        "slots",
        "rings",
        "selections",
        "splits",
        "entries",
        "hists",
        "folds",
        "ends",
        "walked",
    )

    def __init__(self) -> None:
        self.used = F.HEADER_SIZE
        self.metrics: dict[int, dict[str, Any]] = {}
        self.cells: list[tuple[int, int, int]] = []  # (metric id, word, size)
        self.slots: list[tuple[int, int]] = []  # (offset, size)
        self.rings: list[tuple[int, int]] = []
        self.selections: dict[Names, _Selection] = {}  # a few: see select()
        self.splits: dict[Names, tuple[_CounterFold, list[_HistFold], _Selection]] = {}
        # Slow entries decoded before, by byte offset: (generation, entry).
        self.entries: dict[int, tuple[int, SlowEntry]] = {}
        # Histogram cells read before, by word: (buckets, count, sum, value).
        self.hists: dict[int, tuple[bytes, int, float, HistogramValue]] = {}
        # The same for read_totals: (buckets, count, sum, packed buckets).
        self.folds: dict[int, tuple[bytes, int, float, int]] = {}
        # The first and the last record: (offset, (type, size)).
        self.ends: list[tuple[int, tuple[int, int]]] = []
        self.walked = time.monotonic()  # when walked from the start

    def split(self, names: Names) -> tuple[_CounterFold, list[_HistFold], _Selection]:
        """Return what a folded read reads of the counter and the histogram
        cells (:func:`_fold_plan`), and a selection of the gauges and texts
        of these names."""
        split = self.splits.get(names)
        if split is None:
            selection = self.select(names)
            rest = _Selection(
                [c for c in selection.cells if c[1]["kind"] not in _FOLDED_KINDS],
                [m for m in selection.metrics if m[1]["kind"] not in _FOLDED_KINDS],
                {},
            )
            counters, hists = _fold_plan(selection.cells)
            if len(self.splits) >= 8:
                self.splits.clear()
            split = self.splits[names] = (counters, hists, rest)
        return split

    def select(self, names: Names) -> _Selection:
        """Return the cells and metrics of these names (all for None)."""
        selection = self.selections.get(names)
        if selection is None:
            metrics = self.metrics
            selection = _Selection(
                [
                    (mid, metrics[mid], word, size)
                    for mid, word, size in self.cells
                    if names is None or metrics[mid]["name"] in names
                ],
                [
                    (mid, meta)
                    for mid, meta in metrics.items()
                    if names is None or meta["name"] in names
                ],
                {},
            )
            if len(self.selections) >= 8:  # names from a query string: no growth
                self.selections.clear()
            self.selections[names] = selection
        return selection


class _Selection(NamedTuple):
    """The cells a reader wants, with their metric records, in file order,
    and the series made of them at the last read, by metric id."""

    cells: list[tuple[int, dict[str, Any], int, int]]
    metrics: list[tuple[int, dict[str, Any]]]
    made: dict[int, Series]


# path -> (identity of the file, its layout): one file per path at a time.
_layouts: dict[str, tuple[tuple[Any, ...], _Layout]] = {}
# Records already walked are walked again from the start this often, so a
# file edited in place by something other than its writer is seen as it is
# within this time (writers only ever append).  Dead and closed workers,
# also known by their size and change times, are read again less often:
# a scrape every 15 s must not read a thousand dead files every time.
REWALK_SECONDS = 60.0
REREAD_FINAL_SECONDS = 300.0
_LAYOUTS_MAX = 4096


def _still_there(b: Any, layout: _Layout) -> bool:
    """Return whether the first and last records seen are still where they were.

    Writers only append, so a kept layout stays true; this catches a file
    zeroed, truncated or rewritten in place by something else, cheaply.
    Other edits in place are read as they were until the file's identity
    or used length changes (docs/RELIABILITY.md).
    """
    ends = layout.ends
    if not ends:
        return True
    head = F.RECORD_HEAD.unpack_from
    return all(head(b, off) == want for off, want in ends)


def _layout(b: Any, used: int, path: str, key: tuple[Any, ...]) -> _Layout:
    """Return the records of a file up to ``used``, walking what is new."""
    kept = _layouts.get(path) if key else None
    known = kept[1] if kept is not None and kept[0] == key else None
    if (
        known is not None
        and known.used <= used
        and time.monotonic() - known.walked <= REWALK_SECONDS
        and _still_there(b, known)
    ):
        if known.used == used:
            return known
        layout = _Layout()
        layout.metrics = dict(known.metrics)
        layout.cells = list(known.cells)
        layout.slots = list(known.slots)
        layout.rings = list(known.rings)
        layout.entries = known.entries
        layout.hists = known.hists
        layout.folds = known.folds
        layout.walked = known.walked
    else:
        known = layout = _Layout()  # walked from the start
        if layout.used == used:
            return layout
    head = F.RECORD_HEAD.unpack_from
    metrics, cells = layout.metrics, layout.cells
    R_METRIC, R_CELL, PAYLOAD = F.R_METRIC, F.R_CELL, F.CELL_PAYLOAD  # noqa: N806
    decoded = _metric_cache
    # Slices of the mapping itself are bytes, made in one step.
    raw = b.obj if isinstance(b.obj, (bytes, mmap.mmap)) else bytes(b)
    off = known.used
    new_cells = len(known.cells)  # cells from here on are checked below
    last = -1
    words = b.cast("I")  # record heads are u32: type, size, then the id
    try:
        while off < used:
            last = off
            at = off >> 2
            rtype = words[at]
            rsize = words[at + 1]
            if rsize < 8 or rsize & 7 or off + rsize > used:
                raise CorruptFileError(
                    path, f"has a record at byte {off} of bad size {rsize}"
                )
            if rtype == R_CELL:
                if rsize < PAYLOAD + 8:
                    raise ValueError(f"cell record at byte {off} is too short")
                cells.append((words[at + 2], (off + PAYLOAD) >> 3, rsize - PAYLOAD))
            elif rtype == R_METRIC:
                # What _parse_metric does, inline for the usual case: a
                # record decoded before (in this or another worker's file).
                meta = decoded.get(raw[off + 12 : off + rsize])
                metrics[words[at + 2]] = (
                    meta if meta is not None else _parse_metric(b, off, rsize)
                )
            elif rtype == F.R_SLOT:
                layout.slots.append((off, rsize))
            elif rtype == F.R_RING:
                _ring_shape(b, off, rsize)
                layout.rings.append((off, rsize))
            elif rtype != F.R_PAD:
                raise CorruptFileError(path, f"has a record of unknown type {rtype}")
            off += rsize
    finally:
        words.release()
    for mid, _, _ in layout.cells[new_cells:]:
        if mid not in layout.metrics:
            raise ValueError(f"a cell refers to unknown metric id {mid}")
    first = known.ends[0] if known.ends else (F.HEADER_SIZE, head(b, F.HEADER_SIZE))
    layout.ends = [first, (last, head(b, last))] if last >= 0 else []
    layout.used = used
    if key:
        if len(_layouts) >= _LAYOUTS_MAX:
            _layouts.clear()
        _layouts[path] = (key, layout)
    return layout


def _parse_records(
    worker: Worker,
    b: Any,
    q: Any,
    d: Any,
    used: int,
    patience: _Patience,
    want: _Want = _EVERYTHING,
    key: tuple[Any, ...] = (),
) -> None:
    live = worker.state == "alive"
    layout = _layout(b, used, worker.path, key)
    for off, rsize in layout.slots:
        _parse_slot(worker, b, q, off, rsize, live, patience)
    if want.rings != 0:
        for off, rsize in layout.rings:
            entries = layout.entries
            _parse_ring(worker, b, q, off, rsize, live, patience, entries, want.rings)
    selection = layout.select(want.names)
    if want.fold and worker.state in LIVE_STATES:
        counters, hists, rest = layout.split(want.names)
        _fold_series(worker, counters, hists, q, d, b, live, patience, layout.folds)
        _collect_series(worker, rest, q, d, b, live, patience, layout.hists)
    else:
        _collect_series(worker, selection, q, d, b, live, patience, layout.hists)


def _fold_series(
    worker: Worker,
    counters: _CounterFold,
    hists: list[_HistFold],
    q: Any,
    d: Any,
    b: Any,
    live: bool,
    patience: _Patience,
    kept: dict[int, tuple[bytes, int, float, int]],
) -> None:
    """Read a live worker's counters and histograms for the totals only.

    A histogram cell is taken as its buckets packed into one integer, with
    its count, and checked later together with every other cell of its
    series (:func:`_fold_totals`): the sums of the buckets and of the
    counts agree, or a write was under way and the read is made again the
    careful way.
    """
    metas, words, mids = counters
    values = [q[word] for word in words]
    if values and min(values) < 0:
        mid = mids[values.index(min(values))]
        raise ValueError(f"a cell of counter id {mid} is negative")
    worker._folded_counts = (metas, values)
    folded = worker._folded_hists
    from_bytes, order = int.from_bytes, F.NATIVE_ORDER
    for meta, word, start, end, count_word, high in hists:
        count = q[count_word]
        sum_value: float = d[word + F.HIST_SUM]
        raw = bytes(b[start:end])
        # The cell as it was at the last read (see _unchanged), inline: a
        # scrape reads every cell of every live worker.
        before = kept.get(word)
        if (
            before is not None
            and before[0] == raw
            and before[1] == count == q[count_word]
            and before[2] == sum_value
        ):
            folded.append((meta, before[3], sum_value, count, None))
            continue
        packed = from_bytes(raw, order)
        if high and not packed & high and q[count_word] == count:
            remember = (kept, word, (raw, count, sum_value, packed))
            folded.append((meta, packed, sum_value, count, remember))
        else:  # damaged, or being written: the careful way
            size = end - start + 8 * F.HIST_BUCKETS
            hist = _read_histogram(meta, b, q, d, word, size, live, patience)
            folded.append((meta, hist))


# A folded read's counter cells: their metric records, words and metric ids.
_CounterFold = tuple[list[dict[str, Any]], list[int], list[int]]
# A folded read's histogram cell: its metric record, its word, where its
# buckets start and end (bytes), its count's word, and the bits 48 to 63 of
# every bucket (0 when it has too many buckets to be packed).
_HistFold = tuple[dict[str, Any], int, int, int, int, int]


def _fold_plan(
    cells: list[tuple[int, dict[str, Any], int, int]],
) -> tuple[_CounterFold, list[_HistFold]]:
    """Return what a folded read reads of these cells, worked out once."""
    counters: _CounterFold = ([], [], [])
    hists: list[_HistFold] = []
    for mid, meta, word, size in cells:
        if meta["kind"] == _COUNTER:
            counters[0].append(meta)
            counters[1].append(word)
            counters[2].append(mid)
        elif meta["kind"] == _HISTOGRAM:
            n = meta["nbuckets"]
            if size < 8 * (F.HIST_BUCKETS + n):
                raise ValueError(
                    f"a cell of histogram id {mid} is shorter than its buckets"
                )
            start = (word + F.HIST_BUCKETS) * 8
            high = _high_bits(n) if n < _DIGIT_SUM_MAX else 0
            hists.append((meta, word, start, start + 8 * n, word + F.HIST_COUNT, high))
    return counters, hists


def _clean(value: object) -> str:
    """Return a JSON string of a file as text every output can encode.

    JSON can carry lone surrogates (``\\ud800``); like bytes that are not
    UTF-8, they become backslash escapes.
    """
    return text(F.encode(str(value)))


# Metric records are written once and never change, and every worker of an
# app has the same ones: decoded records are kept by their bytes.
_metric_cache: dict[bytes, dict[str, Any]] = {}
_METRIC_CACHE_MAX = 50_000


def _parse_metric(b: Any, off: int, rsize: int) -> dict[str, Any]:
    # Keyed without the id, which differs between workers that made the
    # same metrics in another order.
    key = bytes(b[off + 12 : off + rsize])
    cached = _metric_cache.get(key)
    if cached is not None:
        return cached
    parsed = _decode_metric(b, off, rsize)[1]
    if len(_metric_cache) >= _METRIC_CACHE_MAX:
        _metric_cache.clear()
    _metric_cache[key] = parsed
    return parsed


_HEAD_ID = struct.Struct("=III")  # record type, size, and the id that follows


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
    meta["key"] = (meta["name"], tuple(sorted(meta["labels"].items())))
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


_COUNTER, _GAUGE, _HISTOGRAM = F.KIND_COUNTER, F.KIND_GAUGE, F.KIND_HISTOGRAM
_FOLDED_KINDS = (_COUNTER, _HISTOGRAM)


def _collect_series(
    worker: Worker,
    selection: _Selection,
    q: Any,
    d: Any,
    b: Any,
    live: bool,
    patience: _Patience,
    kept: dict[int, tuple[bytes, int, float, HistogramValue]],
) -> None:
    values: dict[int, Any] = {}
    added: set[int] = set()
    stamps: dict[int, int] = {}
    for mid, meta, word, size in selection.cells:
        kind = meta["kind"]
        if kind == _COUNTER:
            value = q[word]
            if value < 0:
                raise ValueError(f"a cell of counter id {mid} is negative")
            values[mid] = values[mid] + value if mid in values else value
        elif kind == _GAUGE:
            values[mid] = values[mid] + d[word] if mid in values else d[word]
        elif kind == _HISTOGRAM:
            hist = _read_histogram(meta, b, q, d, word, size, live, patience, kept)
            first = values.get(mid)
            if first is None:
                values[mid] = hist
            else:
                # Another thread's cell of the same series.  Values read
                # before are kept for the next read: add into a copy.
                if mid not in added:
                    first = values[mid] = first.copy()
                    added.add(mid)
                first.merge(hist)
        else:
            got = _read_text(meta, b, q, word, size, live, patience)
            if got is not None and got[0] >= stamps.get(mid, -1):
                stamps[mid] = got[0]
                values[mid] = got[1]

    # A series whose value did not change since the last read is the same
    # (read-only) object again.
    append = worker.series.append
    made = selection.made
    for mid, meta in selection.metrics:
        if mid in values:
            value = values[mid]
            series = made.get(mid)
            if series is None or not (
                series.value is value
                or (
                    type(value) is not HistogramValue
                    and series.value == value
                    # -0.0 == 0.0, but a reader shows them apart
                    and (
                        value
                        or type(value) is not float
                        or _same_sign(value, series.value)
                    )
                )
            ):
                series = made[mid] = _series(meta, value, meta["labels"])
            append(series)


def _same_sign(a: float, b: float) -> bool:
    return math.copysign(1.0, a) == math.copysign(1.0, b)


_T1 = TypeVar("_T1")


def _unchanged(
    kept: dict[int, tuple[bytes, int, float, _T1]],
    word: int,
    raw: bytes,
    count: int,
    sum_value: float,
    q: Any,
) -> tuple[bytes, int, float, _T1] | None:
    """Return what was kept of a histogram cell read whole before, if the
    cell is as it was then: its buckets, its count (read before and after
    the buckets) and its sum.  The same buckets make the same sum of
    buckets, which both counts equal again: the copy is whole."""
    before = kept.get(word)
    if (
        before is not None
        and before[0] == raw
        and before[1] == count == q[word + F.HIST_COUNT]
        and before[2] == sum_value
    ):
        return before
    return None


def _read_histogram(
    meta: dict[str, Any],
    b: Any,
    q: Any,
    d: Any,
    word: int,
    size: int,
    live: bool,
    patience: _Patience,
    kept: dict[int, tuple[bytes, int, float, HistogramValue]] | None = None,
) -> HistogramValue:
    n = meta["nbuckets"]
    if size < 8 * (F.HIST_BUCKETS + n):
        raise ValueError("histogram cell is shorter than its buckets")
    start = (word + F.HIST_BUCKETS) * 8
    end = start + 8 * n
    # The common case in one go: count, sum, the buckets, count again.  The
    # copy is whole when both counts equal the sum of the buckets (see
    # docs/FORMAT.md), which for buckets below 2**48 is the sum of the
    # digits of the buckets read as one integer.
    count = q[word + F.HIST_COUNT]
    sum_value: float = d[word + F.HIST_SUM]
    raw = bytes(b[start:end])
    if kept is not None:
        before = _unchanged(kept, word, raw, count, sum_value, q)
        if before is not None:
            return before[3]
    packed = int.from_bytes(raw, F.NATIVE_ORDER)
    if (
        n < _DIGIT_SUM_MAX
        and not packed & _high_bits(n)
        and q[word + F.HIST_COUNT] == count == _digit_sum(packed)
    ):
        hist = HistogramValue.from_packed(meta, packed, sum_value)
        hist.count = count
        if kept is not None:
            kept[word] = (raw, count, sum_value, hist)
        return hist

    def copy() -> tuple[tuple[float, bytes], bool]:
        # In this order: the writer stores bucket, sum, count, so a sum
        # that already holds an observation the count does not has its
        # bucket in the copy taken after it, and the check below fails.
        count = q[word + F.HIST_COUNT]
        sum_value = d[word + F.HIST_SUM]
        raw = bytes(b[start:end])
        total = sum(memoryview(raw).cast("q"))
        # One writer per cell: an observation under way shows as one more in
        # the buckets than in the count, and is worth waiting for.  Any other
        # difference with a count that stands still is damage, which no wait
        # mends: the copy is taken as it is.
        return (sum_value, raw), count == q[word + F.HIST_COUNT] != total - 1

    # The buckets are the truth for the count: equal to the count word in a
    # consistent copy, and still right when a writer was killed between its
    # stores (or never let go for 0.5 s).
    (sum_value, raw), _ = _settle(copy, live, patience)
    return HistogramValue.from_words(meta, raw, sum_value)


@functools.lru_cache(maxsize=256)
def _high_bits(n: int) -> int:
    """Return the bits 48 to 63 of each of ``n`` packed 64-bit digits."""
    return int.from_bytes(_HIGH_WORD * n, F.NATIVE_ORDER)


_HIGH_WORD = (0xFFFF << 48).to_bytes(8, F.NATIVE_ORDER)


def _nonzero_buckets(data: bytes) -> dict[int, int]:
    """Return {bucket: count} of the non-zero u64 words of ``data``.

    Only the span between the first and last non-zero byte is looked at
    word by word: a request histogram fills a few dozen of its buckets.
    """
    tail = len(data.rstrip(b"\0"))
    if not tail:
        return {}
    head = (len(data) - len(data.lstrip(b"\0"))) // 8
    words = memoryview(data)[head * 8 : (tail + 7) // 8 * 8].cast("q").tolist()
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
    known: dict[int, tuple[int, SlowEntry]] | None = None,
    newest: int | None = None,
) -> None:
    """Add a slow ring's complete entries to the worker, newest first.

    An entry is copied under its generation word (odd while written, then
    even and unique).  One decoded before whose generation has not moved
    since is the same entry, and is taken from ``known``.
    """
    capacity, entry_size = _ring_shape(b, off, rsize)
    if known is None:
        known = {}
    base = off + 16
    stride = entry_size // 8
    gens = q[base // 8 : base // 8 + capacity * stride : stride].tolist()[:capacity]
    if newest is None:
        order: Iterable[int] = range(len(gens))
    else:  # generations grow with each entry: the highest are the newest
        order = sorted(range(len(gens)), key=gens.__getitem__, reverse=True)[:newest]
    for i in order:
        gen = gens[i]
        if gen == 0:
            continue
        start = base + i * entry_size
        hit = known.get(start)
        if hit is not None and hit[0] == gen:
            worker.slow.append(hit[1])
            continue
        data, gen, settled = _stable(
            b, q, start // 8, start, start + entry_size, live, patience
        )
        if not settled or not gen:
            continue  # a writer killed mid-entry: the entry is incomplete
        entry = _slow_entry(worker, data, gen)
        known[start] = (gen, entry)
        worker.slow.append(entry)
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
    # Made by read_totals, whose live workers hold no counters or histograms.
    _totals: dict[tuple[str, LabelKey], Series] | None = field(
        default=None, repr=False, compare=False
    )
    # From a scan by plan: its dead and closed workers, known to be the ones
    # kept (their ids, sorted, and the workers themselves).
    _finals: tuple[tuple[int, ...], list[Worker]] | None = field(
        default=None, repr=False, compare=False
    )
    # From a scan by plan: the workers it read (the others were kept).
    _read: list[Worker] | None = field(default=None, repr=False, compare=False)

    def totals(self) -> dict[tuple[str, LabelKey], Series]:
        """Return counters and histograms summed over workers and the archive,
        and gauges per label set as :class:`GaugeTotal`."""
        if self._totals is not None:
            return self._totals
        return aggregate(self.workers, self.archive, self._finals)

    def slow(self, limit: int | None = None, sort: str = "end") -> list[SlowEntry]:
        """Return the slow entries of all workers and the archive, merged."""
        entries = [e for w in self.workers for e in w.slow] + list(self.archive.slow)
        if sort == "duration":
            entries.sort(key=lambda e: e.duration, reverse=True)
        else:
            entries.sort(key=lambda e: e.end, reverse=True)
        return entries[:limit] if limit is not None else entries


FINAL_STATES = ("dead", "closed")
LIVE_STATES = ("alive", "unknown")


def aggregate(
    workers: Iterable[Worker],
    archive: Archive | None = None,
    _finals: tuple[tuple[int, ...], list[Worker]] | None = None,
) -> dict[tuple[str, LabelKey], Series]:
    """Add workers up: counters and histograms summed, gauges as GaugeTotal.

    Gauges are taken from live workers (and workers of other hosts) only.
    The sum over dead and closed workers, whose files no longer change, is
    kept between calls, so a long-running reader (``serve``, ``top``, the
    page) pays for them once, not on every read.
    """
    workers = list(workers)
    key: tuple[int, ...] | None
    if _finals is not None:
        # A scan by plan: these are the kept workers (the plan holds them).
        key, final = _finals
        entry = _final_sums.get(key)
    else:
        final = [w for w in workers if w.state in FINAL_STATES]
        # Only workers held by the read cache are known never to change (a
        # caller may pass edited copies): those are summed once and kept.
        kept = all(_final_workers.get(id(w)) is w for w in final)
        key = tuple(sorted(id(w) for w in final)) if kept else None
        entry = _final_sums.get(key) if key is not None else None
        # The entry holds the workers themselves, so no other object can
        # have taken their ids; checked all the same.
        if entry is not None and not all(
            a is b for a, b in zip(entry[0], sorted(final, key=id), strict=True)
        ):
            entry = None
    if entry is not None:
        base = entry[1]
    else:
        base = {}
        for w in final:
            _add_series(base, w.series, gauges=False)
        for series in base.values():
            if series.kind == "histogram":
                # Every dead worker's cells' sums, added again at each read:
                # kept as the few floats that add up to them exactly.
                series.value.compact_sums()
        if key is not None:
            if len(_final_sums) >= 16:  # a reader of a few directories
                _final_sums.clear()
            by_id = sorted(final, key=id)
            _final_sums[key] = (by_id, base)
    # Live workers first, then dead and closed ones, then the archive: of
    # a name reused for another kind or unit, the newest is kept, the same
    # before a clean folds dead workers into the archive and after it.
    totals: dict[tuple[str, LabelKey], Series] = {}
    for w in workers:
        if w.state not in FINAL_STATES:
            _add_series(totals, w.series, gauges=True)
    if totals:
        _add_series(totals, list(base.values()), gauges=False)
    else:
        totals = {k: _copy_series(s) for k, s in base.items()}
    if archive is not None:
        _add_series(totals, archive.series, gauges=False)
    return totals


_final_sums: dict[
    tuple[int, ...], tuple[list[Worker], dict[tuple[str, LabelKey], Series]]
] = {}


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
            if have.unit != s.unit:
                continue  # the name reused for another unit: keep the first
            if have.value.same_scheme(s.value):
                have.value.merge(s.value)
            else:
                # The same quantity in other buckets: workers and archives
                # of format version 2 after an upgrade.  The totals take
                # this version's buckets.
                if s.value.gamma == F.GAMMA != have.value.gamma:
                    old, have.value = have.value, s.value.copy()
                    have.value.merge_moved(old)
                else:
                    have.value.merge_moved(s.value)
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
    return [name for name, _ in _list_with_inodes(directory)[0]]


def _list_with_inodes(
    directory: str,
) -> tuple[list[tuple[str, int]], tuple[int, ...]]:
    """Return (name, inode) of the stats files in ``directory``, sorted by
    name, and the directory's stamp (see :func:`_directory_stamp`) before.

    :raises DirectoryError: as :func:`list_stats_files`.
    """
    try:
        st = os.lstat(directory)
        if stat.S_ISLNK(st.st_mode):
            raise DirectoryError(
                directory, "is a symlink; symlinks are not followed"
            ) from None
        with os.scandir(directory) as it:
            found = [(e.name, e.inode()) for e in it if e.name.endswith(F.SUFFIX)]
    except FileNotFoundError:
        raise DirectoryError(directory, "does not exist") from None
    except NotADirectoryError:
        raise DirectoryError(directory, "is not a directory") from None
    except PermissionError:
        raise DirectoryError(directory, "cannot be read (permission denied)") from None
    except OSError as exc:
        raise DirectoryError(directory, f"cannot be read: {exc.strerror}") from None
    found.sort()
    return found, (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


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
# What was read (a _Want) -> path -> (identity, worker), for a few kinds
# of read at a time; the workers are also kept by id for aggregate().
_finals: dict[_Want, dict[str, tuple[tuple[int, ...], Worker, float]]] = {}
_final_workers: dict[int, Worker] = {}
_FINALS_MAX = 20_000
_FINAL_KINDS_MAX = 4


def _cached_final(path: str, identity: tuple[int, ...], want: _Want) -> Worker | None:
    """Return the worker of a dead or closed file read before, if unchanged.

    Such a file has no writer left; the same inode with the same change
    time and size is the same content.  It is read again all the same
    every REREAD_FINAL_SECONDS, for edits in place within a timestamp's
    tick.
    """
    kind = _finals.get(want)
    entry = kind.get(path) if kind is not None else None
    if entry is None:
        return None
    if identity != entry[0] or time.monotonic() - entry[2] > REREAD_FINAL_SECONDS:
        if kind is not None and kind.pop(path, None) is not None:
            _final_workers.pop(id(entry[1]), None)
        _layouts.pop(path, None)  # written again: its records too
        return None
    return entry[1]


def _remember_final(
    path: str,
    identity: tuple[int, ...],
    worker: Worker,
    want: _Want,
) -> None:
    if worker.state not in FINAL_STATES:
        return
    kind = _finals.get(want)
    if kind is None:
        if len(_finals) >= _FINAL_KINDS_MAX:  # names from a query string
            _forget_finals(_finals.pop(next(iter(_finals))))
        kind = _finals[want] = {}
    if len(kind) >= _FINALS_MAX:
        _forget_finals(kind)
        kind.clear()
    old = kind.get(path)
    if old is not None:
        _final_workers.pop(id(old[1]), None)
    kind[path] = (identity, worker, time.monotonic())
    _final_workers[id(worker)] = worker


def _directory_stamp(path: str) -> tuple[int, ...]:
    """Return what changes when a file of a directory is added or removed:
    its inode, modification and change times."""
    try:
        st = os.lstat(path)
    except OSError:
        return ()
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


_stamps: dict[str, tuple[int, ...]] = {}  # a directory's stamp at its last scan


def _identity(path: str) -> tuple[int, ...]:
    """Return what tells a file's content apart: inode, size, change times."""
    try:
        st = os.lstat(path)
    except OSError:
        return ()
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _forget_finals(kind: dict[str, tuple[tuple[int, ...], Worker, float]]) -> None:
    for _, worker, _ in kind.values():
        _final_workers.pop(id(worker), None)


def _forget_removed(directory: str, listed: set[str]) -> None:
    """Drop what is kept about files of ``directory`` that are gone."""
    prefix = directory.rstrip(os.sep) + os.sep
    for kind in list(_finals.values()):
        for path in [p for p in kind if p.startswith(prefix) and p not in listed]:
            entry = kind.pop(path, None)
            if entry is not None:
                _final_workers.pop(id(entry[1]), None)
    for path in [p for p in _layouts if p.startswith(prefix) and p not in listed]:
        _layouts.pop(path, None)
    for path in [p for p in _held if p.startswith(prefix) and p not in listed]:
        _release_held(path)
    from ._report import forget_entry_texts

    forget_entry_texts(directory, listed)


_listings: dict[str, frozenset[str]] = {}  # the names a directory held last


def drop_caches() -> None:
    """Forget what readers keep between reads, so the next read starts cold.

    For benchmarks and tests: a reader that comes back to a directory
    keeps decoded metric records, record layouts, slow entries and dead
    workers, which never change once written.
    """
    _metric_cache.clear()
    _layouts.clear()
    for path in list(_held):
        _release_held(path)
    for ident in list(_watched):
        _unwatch(ident)
    _sighted.clear()
    _finals.clear()
    _final_workers.clear()
    _final_sums.clear()
    _listings.clear()
    _stamps.clear()
    _plans.clear()
    from . import _archive
    from ._report import forget_entry_texts

    forget_entry_texts()
    _archive._keep((), Archive())


_CACHES = (
    "_held",
    "_watched",
    "_sighted",
    "_stamps",
    "_metric_cache",
    "_layouts",
    "_finals",
    "_final_workers",
    "_final_sums",
    "_listings",
    "_plans",
)


@contextlib.contextmanager
def fresh_caches() -> Iterator[None]:
    """Read inside with nothing kept from before, and keep nothing after.

    What was kept is put back on the way out: a benchmark times a first
    read between reads of a long-running reader without spoiling them.
    """
    from . import _archive, _report

    saved = [globals()[name] for name in _CACHES]
    saved_archive, saved_texts = _archive._kept, _report._entry_texts
    for name in _CACHES:
        globals()[name] = type(globals()[name])()
    _archive._kept, _report._entry_texts = None, {}
    try:
        yield
    finally:
        for path in list(_held):
            _release_held(path)
        for ident in list(_watched):
            _unwatch(ident)
        for name, value in zip(_CACHES, saved, strict=True):
            globals()[name] = value
        _archive._kept, _report._entry_texts = saved_archive, saved_texts


def read_directory(
    directory: str | os.PathLike[str] | None = None,
    *,
    slow: bool | int = True,
    names: Iterable[str] | None = None,
) -> Snapshot:
    """Read every stats file of a directory and its archive.

    ``slow=False`` leaves the slow rings unread (``Worker.slow`` empty), for
    readers that show no slow entries: a ring is most of a busy file; a
    number N reads the newest N entries of each ring.
    ``names`` reads only the metrics of these names (all when None), for
    readers that show a few: a worker's values are then checked only as far
    as they are read.

    In a process that reads again and again (``top``, ``serve``, an app),
    what never changes is kept between reads: decoded metric records, where
    each file's records are, dead and closed workers and their sums.  The
    objects returned are then shared with that store: treat them as
    read-only (copy a histogram before merging into it).

    :raises DirectoryError: the directory is missing or cannot be listed.
    """
    want = _Want(
        None if slow is True else max(0, int(slow)),
        None if names is None else frozenset(names),
    )
    return _read_directory(directory, want)


_FOLD = _Want(0, None, True)


def read_totals(directory: str | os.PathLike[str] | None = None) -> Snapshot:
    """Read a directory for its totals: what a Prometheus scrape needs.

    Like ``read_directory(directory, slow=False)``, except that live
    workers' counters and histograms are added straight into the totals
    (``Snapshot.totals()``) instead of being kept per worker: their
    ``series`` hold only gauges and texts.  Each histogram cell is checked
    with the others of its series at once, which is what makes this read
    cheaper; when a write was under way the directory is read again the
    careful way (:func:`read_directory`).

    :raises DirectoryError: the directory is missing or cannot be listed.
    """
    snapshot = _read_directory(directory, _FOLD)
    totals = _fold_totals(snapshot)
    if totals is None:
        return _read_directory(directory, _Want(0, None))
    snapshot._totals = totals
    return snapshot


def _fold_totals(snapshot: Snapshot) -> dict[tuple[str, LabelKey], Series] | None:
    """Return the totals of a folded read, or None when a histogram's
    buckets and counts disagree (a write under way: read again)."""
    # The archive comes last, as in aggregate(): a name it holds with other
    # buckets or another kind keeps the live workers' values.
    totals = aggregate(snapshot.workers, None, snapshot._finals)
    # By metric record (shared by every worker with the same one), then by
    # series: records that differ only in their help name the same series.
    counts: dict[int, list[Any]] = {}  # id(meta) -> [meta, total]
    # id(meta) -> [meta, packed buckets, parts, cells' sums, count, careful,
    # to keep]
    accs: dict[int, list[Any]] = {}
    read = snapshot._read if snapshot._read is not None else snapshot.workers
    for worker in read:
        for meta, value in zip(*worker._folded_counts, strict=True):
            acc = counts.get(id(meta))
            if acc is None:
                counts[id(meta)] = [meta, value]
            else:
                acc[1] += value
        for item in worker._folded_hists:
            meta = item[0]
            acc = accs.get(id(meta))
            if acc is None:
                acc = accs[id(meta)] = [meta, 0, 0, [], 0, [], []]
            if len(item) == 2:
                acc[5].append(item[1])
                continue
            acc[1] += item[1]
            acc[2] += 1
            acc[3].append(item[2])
            acc[4] += item[3]
            if item[4] is not None:
                acc[6].append(item[4])
    # A name of two kinds or units: aggregate() keeps the first live
    # worker's in file order, which the folded read does not follow (it
    # adds gauges, then counters, then histograms), over a dead worker's.
    # Rare: read carefully.  (A gauge in the totals so far is a live
    # worker's; a counter or a histogram is a dead one's.)
    for meta, value in counts.values():
        key = meta["key"]
        have = totals.get(key)
        if have is None:
            totals[key] = _series(meta, value, dict(meta["labels"]))
        elif have.kind == "counter":
            have.value += value
        else:  # a live gauge, or a dead worker's histogram: read carefully
            return None
    hists: dict[tuple[str, LabelKey], list[Any]] = {}
    for acc in accs.values():
        meta = acc[0]
        same = hists.get(meta["key"])
        if same is None:
            hists[meta["key"]] = acc
        elif same[0]["unit"] != meta["unit"]:
            continue  # the name reused for another unit: the first kept
        elif same[0]["lo"] == meta["lo"] and same[0]["gamma"] == meta["gamma"]:
            # Another record of the same series: one check for both.
            same[1] += acc[1]
            same[2] += acc[2]
            same[3].extend(acc[3])
            same[4] += acc[4]
            same[5].extend(acc[5])
            same[6].extend(acc[6])
        else:
            # The same quantity in other buckets (workers of two format
            # versions during an upgrade): rare, and merged by aggregate().
            return None
    for key, (meta, packed, parts, sums, count, careful, keep) in hists.items():
        if parts >= _PACKED_MAX_PARTS:
            return None
        # Each cell's buckets add up to its count, or to one more while its
        # writer is between the two (docs/FORMAT.md): equal sums mean every
        # cell was whole.
        if _digit_sum(packed) != count % _DIGIT_MODULUS:
            return None
        # The cells' sums added exactly, as aggregate() adds them: a scrape's
        # _sum is the same float whichever way it was read.
        hist = HistogramValue(meta["lo"], meta["gamma"], meta["integer"], count)
        hist._sums = sums
        hist._sum_due = True
        hist.nbuckets = meta["nbuckets"]
        hist._state = (packed, parts, {})
        for other in careful:
            hist.merge(other)
        have = totals.get(key)
        if have is None:
            totals[key] = _series(meta, hist, dict(meta["labels"]))
        elif (
            have.kind == "histogram"
            and have.unit == meta["unit"]
            and have.value.same_scheme(hist)
        ):
            have.value.merge(hist)
        else:
            # Other buckets, which aggregate() moves; a live gauge or
            # counter; a dead worker's counter or histogram of another unit,
            # which the live one replaces: rare, read carefully.
            return None
        for kept, word, entry in keep:
            kept[word] = entry
    _add_series(totals, snapshot.archive.series, gauges=False)
    return totals


def _series(meta: dict[str, Any], value: Any, labels: dict[str, str]) -> Series:
    return Series(
        meta["name"],
        F.KIND_NAMES[meta["kind"]],
        meta["help"],
        meta["unit"],
        labels,
        value,
        meta["key"],
    )


class _Plan(NamedTuple):
    """A directory's files as its last scan found them, for the next scan
    while nothing was added, removed or renamed: the workers in file name
    order, dead and closed ones in place (taken as they were) and None in
    the place of each file to read, with its index and path in ``reads``.
    """

    stamp: tuple[int, ...]
    oldest: float  # when the oldest dead or closed worker was read
    template: list[Worker | None]
    reads: list[tuple[int, str]]
    finals: tuple[tuple[int, ...], list[Worker]]  # for aggregate()


# (directory, what is read) -> the plan of its next scan
_plans: dict[tuple[str, _Want], _Plan] = {}


class _Vanished(Exception):
    """A listed file was gone when read: a clean raced the scan."""


def _scan_file(
    full: str, want: _Want, final_want: _Want, patience: _Patience, bad: list[BadFile]
) -> Worker | None:
    """Read one file of a scan: its worker (remembered if dead or closed),
    or None with the reason added to ``bad``.

    :raises _Vanished: the file is gone.
    """
    try:
        worker = _read_file(full, _Patience(FILE_WAIT, patience), want)
    except CorruptFileError as exc:
        if not os.path.lexists(full):
            raise _Vanished from None
        _log_bad_once(exc)
        bad.append(BadFile(full, exc.reason))
        return None
    if worker.state in FINAL_STATES:
        _remember_final(full, _identity(full), worker, final_want)
    return worker


def _planned_scan(path: str, want: _Want, final_want: _Want) -> Snapshot | None:
    """Scan by the last scan's plan if the directory is as it was then:
    only live (and unreadable) files are read; None if there is no plan."""
    plan = _plans.get((path, final_want))
    if plan is None:
        return None
    stamp = _directory_stamp(path)
    if not stamp or stamp != plan.stamp or _stamps.get(path) != stamp:
        return None
    if time.monotonic() - plan.oldest > REREAD_FINAL_SECONDS:
        return None
    archive = load_archive(path, slow=want.rings != 0)
    if archive.error:
        return None  # the ordinary scan reports it
    kept = _finals.get(final_want, {})
    patience = _Patience(SCAN_WAIT)
    patience.exited = _exited_pidfds()
    slots: list[Worker | None] = list(plan.template)
    read: list[Worker] = []
    bad: list[BadFile] = []
    died = False
    for i, full in plan.reads:
        if full in kept:  # died since the plan was made
            return None
        try:
            worker = _scan_file(full, want, final_want, patience, bad)
        except _Vanished:
            return None
        if worker is None:
            continue
        slots[i] = worker
        read.append(worker)
        died = died or worker.state in FINAL_STATES
    workers = [w for w in slots if w is not None] if bad else slots
    snapshot = Snapshot(path, time.time(), workers, bad, archive, [])  # type: ignore[arg-type]
    snapshot._read = read
    if died:  # a worker died since: the next scan makes a new plan
        _plans.pop((path, final_want), None)
    else:
        snapshot._finals = plan.finals
    return snapshot


def _make_plan(
    path: str,
    stamp: tuple[int, ...],
    final_want: _Want,
    workers: list[Worker],
    bad: list[BadFile],
    archive: Archive,
) -> None:
    kept = _finals.get(final_want, {})
    steps: list[tuple[str, Worker | None]] = []
    finals: list[Worker] = []
    oldest = time.monotonic()
    for worker in workers:
        entry = kept.get(worker.path)
        if worker.state in FINAL_STATES and entry is not None and entry[1] is worker:
            steps.append((worker.path, worker))
            finals.append(worker)
            oldest = min(oldest, entry[2])
        else:
            steps.append((worker.path, None))
    steps.extend(
        (b.path, None) for b in bad if b.path != os.path.join(path, ARCHIVE_NAME)
    )
    steps.sort(key=lambda step: step[0])
    template = [final for _, final in steps]
    reads = [(i, full) for i, (full, final) in enumerate(steps) if final is None]
    if len(_plans) >= 16:
        _plans.clear()
    key = tuple(sorted(id(w) for w in finals))
    _plans[(path, final_want)] = _Plan(stamp, oldest, template, reads, (key, finals))


def _settled_after(stamp: tuple[int, ...]) -> int:
    """Return how old (ns) a directory's times must be for a change to show.

    A change within the same tick of the file system's clock leaves the
    same times: 0.1 s is more than a tick of ext4, XFS, btrfs or tmpfs.
    Times in whole seconds may come from a file system that keeps no finer
    (ext4 with small inodes, ext3, some NFS servers; FAT keeps two).
    """
    if stamp[1] % 1_000_000_000 or stamp[2] % 1_000_000_000:
        return 100_000_000
    return 2_100_000_000


def _read_directory(directory: str | os.PathLike[str] | None, want: _Want) -> Snapshot:
    path, private = resolve_directory(directory)
    final_want = want._replace(fold=False)
    planned = _planned_scan(path, want, final_want)
    if planned is not None:
        planned.problems = directory_problems(path, private)
        return planned
    _plans.pop((path, final_want), None)
    patience = _Patience(SCAN_WAIT)
    patience.exited = _exited_pidfds()
    for _attempt in range(5):
        listing, stamp = _list_with_inodes(path)
        archive = load_archive(path, slow=want.rings != 0)
        workers: list[Worker] = []
        bad: list[BadFile] = []
        vanished = False
        # Dead and closed workers are read whole, folded read or not.
        kept = _finals.get(final_want, {})
        # No file was added, removed or renamed since the last scan: a dead
        # file with the inode it had is the same file (edits in place wait
        # for REREAD_FINAL_SECONDS).  Otherwise each one is looked at.
        unchanged = bool(stamp) and _stamps.get(path) == stamp
        now = time.monotonic()
        prefix = os.path.join(path, "")
        for name, inode in listing:
            if name in archive.folded:
                continue  # folded into the archive by a clean that is finishing
            full = prefix + name
            entry = kept.get(full)
            if entry is not None:
                if (
                    unchanged
                    and entry[0][0] == inode
                    and now - entry[2] <= REREAD_FINAL_SECONDS
                ):
                    workers.append(entry[1])
                    continue
                cached = _cached_final(full, _identity(full), final_want)
                if cached is not None:
                    workers.append(cached)
                    continue
            try:
                worker = _scan_file(full, want, final_want, patience, bad)
            except _Vanished:
                vanished = True
                break
            if worker is not None:
                workers.append(worker)
        if not vanished:
            break
    # After five scans that a clean kept racing, the last view is used.
    # Kept only when nothing changed while it was read, and not in the last
    # 0.1 s: a change within the same tick of the file system's clock would
    # leave the same times behind.
    if (
        stamp
        and stamp == _directory_stamp(path)
        and (time.time_ns() - max(stamp[1], stamp[2]) > _settled_after(stamp))
    ):
        if len(_stamps) >= 64 and path not in _stamps:
            _stamps.clear()  # a reader of a few directories; no growth
        _stamps[path] = stamp
        if not vanished and not archive.error:
            _make_plan(path, stamp, final_want, workers, bad, archive)
    else:
        _stamps.pop(path, None)
    names_now = frozenset(name for name, _ in listing)
    if _listings.get(path) != names_now:
        if path in _listings:
            _forget_removed(path, {os.path.join(path, n) for n in names_now})
        elif len(_listings) >= 64:
            _listings.clear()
        _listings[path] = names_now
    if archive.error:
        bad.append(BadFile(os.path.join(path, ARCHIVE_NAME), archive.error))
    problems = directory_problems(path, private)
    return Snapshot(path, time.time(), workers, bad, archive, problems)
