"""Byte layout of a stats file, shared by the writer and the reader.

The layout is documented byte by byte in docs/FORMAT.md; keep the two in
step, and bump :data:`VERSION` (and the golden files under tests/) whenever
an offset or a record changes.
"""

from __future__ import annotations

import bisect
import functools
import math
import struct
import sys

MAGIC = b"MMSTATS\x00"
VERSION = 3
# Versions a reader reads: version 2 differs only in its histogram buckets
# (GAMMA_V2), which a metric record names.
READ_VERSIONS = (2, 3)
HEADER_SIZE = 4096
BYTE_ORDER_MARK = 0x0102030405060708
SUFFIX = ".mmstats"

# Header offsets.  Every scalar is 8-byte aligned so that one machine store
# writes it and one machine load reads it: a reader never sees half a value.
H_MAGIC = 0
H_VERSION = 8  # u32
H_HEADER_SIZE = 12  # u32
H_BYTE_ORDER = 16  # u64
H_USED = 24  # u64: end of the published records
H_PID = 32  # i64
H_START_TICKS = 40  # u64: field 22 of /proc/<pid>/stat
H_START_TIME = 48  # f64: process start, Unix seconds
H_CREATED = 56  # f64
H_CLOSED = 64  # u64: 1 once the process exited cleanly
H_CLOSED_AT = 72  # f64
H_HEARTBEAT = 80  # f64: end of the last recorded request
H_PIDNS = 88  # u64: inode of /proc/self/ns/pid
H_FLAGS = 96  # u64: bits of FLAG_*, set by the writer, 0 in a healthy file
H_BOOT_ID = 104  # 40 bytes: u16 length + text
H_HOSTNAME = 144  # 256 bytes: u16 length + text
H_NAME = 400  # 128 bytes
H_COMMAND = 528  # 512 bytes
H_END = 1040

# Header flags.  Bits only ever get set, each with one store of the word by
# the one thread holding the writer's lock.
FLAG_GROW_FAILED = 1  # the file could not grow: records added since are lost

BOOT_ID_SIZE = 40
HOSTNAME_SIZE = 256
NAME_SIZE = 128
COMMAND_SIZE = 512

# Records.  Each starts with u32 type and u32 size (the whole record, a
# multiple of 8) and is written completely before the used length that
# publishes it moves past it.
R_PAD = 0
R_METRIC = 1
R_CELL = 2
R_SLOT = 3
R_RING = 4
RECORD_HEADER = 8
RECORD_HEAD = struct.Struct("=II")

KIND_COUNTER = 1
KIND_GAUGE = 2
KIND_HISTOGRAM = 3
KIND_TEXT = 4
KIND_NAMES = {
    KIND_COUNTER: "counter",
    KIND_GAUGE: "gauge",
    KIND_HISTOGRAM: "histogram",
    KIND_TEXT: "text",
}

# Metric record: type, size, id, kind, flags, nbuckets, lo, gamma, text_max,
# blob length, then a UTF-8 JSON blob {"name", "help", "unit", "labels"}.
METRIC_FIXED = struct.Struct("=IIIIIIddII")
FLAG_INTEGER = 1
# A text holds at most this many bytes: a reader copies no more per cell.
MAX_TEXT_BYTES = 1 << 20

# Cell record: type, size, metric id, thread slot, then the payload.
CELL_FIXED = struct.Struct("=IIII")
CELL_PAYLOAD = 16
# Histogram payload: count, sum, then one u64 per bucket.  No sequence word:
# the writer stores the bucket, then the sum, then the count, and a reader
# takes a copy whose count equals the sum of its buckets (docs/FORMAT.md).
HIST_COUNT, HIST_SUM, HIST_BUCKETS = 0, 1, 2
# Text payload: seq, stamp, length, then the bytes.
TEXT_SEQ, TEXT_STAMP, TEXT_LEN, TEXT_DATA = 0, 1, 2, 3

# Request slot record: type, size, slot index, pad, then these u64 words.
SLOT_FIXED = struct.Struct("=IIII")
S_SEQ, S_STATE, S_STARTED, S_THREAD, S_QUERIES, S_DB_SECONDS = range(6)
S_STRINGS = 6  # word index where the strings start
METHOD_SIZE = 16
PATH_SIZE = 512
VIEW_SIZE = 256
SLOT_SIZE = 16 + 8 * S_STRINGS + METHOD_SIZE + PATH_SIZE + VIEW_SIZE

# Slow ring record: type, size, capacity, entry size, then the entries.
RING_FIXED = struct.Struct("=IIII")
MAX_RING_ENTRIES = 100_000
# Histograms have at most this many buckets; readers refuse more.
MAX_BUCKETS = 100_000
(
    E_GEN,
    E_END,
    E_DURATION,
    E_STATUS,
    E_QUERIES,
    E_DB_SECONDS,
    E_MEMORY_DELTA,
    E_LOAD_DELTA,
    E_START,
) = range(9)
E_STRINGS = 9
ENTRY_SIZE = 8 * E_STRINGS + METHOD_SIZE + PATH_SIZE + VIEW_SIZE

# Histogram buckets grow by GAMMA = 2 ** (1/8), eight to a doubling: any
# value is reported within (GAMMA - 1) / (GAMMA + 1) = 4.33 % of itself.
# Bucket 0 holds values at or below ``lo`` (zero among them), the last
# bucket everything above the range; bucket k holds (bound k-1, bound k],
# where bound k is ``lo * 2 ** (k / 8)``: every eighth bound is ``lo`` times
# an exact power of two, and with ``lo`` a power of two so is the bound.
# These are the buckets of Prometheus native histograms and OpenTelemetry
# exponential histograms at scale 3.  Files of version 2 have GAMMA_V2,
# whose bound k is ``lo * GAMMA_V2 ** k``.
BUCKETS_PER_DOUBLING = 8
GAMMA = 2.0 ** (1 / BUCKETS_PER_DOUBLING)
LOG_GAMMA = math.log(GAMMA)
GAMMA_V2 = 1.08

# Ranges by unit: time covers 2**-20 s (about 1 µs) to a day, counts 1 to
# ten million.
SECONDS_RANGE = (2.0**-20, 86400.0 * 1.2)
COUNT_RANGE = (0.5, 1e7)
INTEGER_UNITS = frozenset({"", "count", "queries", "requests", "bytes", "items"})


def range_for(unit: str) -> tuple[float, float]:
    """Return the range a histogram of ``unit`` covers: its ``lo`` and top."""
    return SECONDS_RANGE if unit == "seconds" else COUNT_RANGE


def bucket_count(lo: float, hi: float) -> int:
    """Return how many buckets cover ``lo`` to ``hi`` plus under and overflow."""
    return math.ceil(math.log(hi / lo) / LOG_GAMMA) + 2


def bucket_bound(lo: float, gamma: float, k: int) -> float:
    """Return bound ``k`` of a scheme: the top of bucket ``k``.

    Writers bisect these bounds and readers report them, so both compute
    them here, the same way.
    """
    if gamma == GAMMA:
        return lo * math.pow(2.0, k / BUCKETS_PER_DOUBLING)
    return lo * float(gamma**k)


def buckets_per_doubling(gamma: float) -> int:
    """Return how many buckets of a scheme make a doubling (at least one)."""
    return max(1, round(math.log(2.0) / math.log(gamma)))


@functools.cache
def bucket_bounds(lo: float, nbuckets: int) -> tuple[float, ...]:
    """Return the upper bound of every bucket but the last, which has none."""
    return tuple(bucket_bound(lo, GAMMA, k) for k in range(nbuckets - 1))


def bucket_index(lo: float, value: float, nbuckets: int = 0) -> int:
    """Return the bucket of ``value``: the first whose bound is not below it.

    The writer bisects the same bounds.  ``nbuckets`` defaults to the
    scheme that starts at ``lo``.
    """
    if not nbuckets:
        hi = SECONDS_RANGE[1] if lo == SECONDS_RANGE[0] else COUNT_RANGE[1]
        nbuckets = bucket_count(lo, hi)
    return bisect.bisect_left(bucket_bounds(lo, nbuckets), value)


def round8(n: int) -> int:
    """Round ``n`` up to a multiple of 8."""
    return (n + 7) & ~7


def cut_utf8(data: bytes, limit: int) -> bytes:
    """Cut ``data`` to at most ``limit`` bytes without splitting a character."""
    if len(data) <= limit:
        return data
    end = limit
    # Back off over continuation bytes (0b10xxxxxx) to a character start:
    # at most three, since no character is longer than four bytes.  Bytes
    # that are not UTF-8 at all are cut where they are.
    while end > limit - 3 and end > 0 and (data[end] & 0xC0) == 0x80:
        end -= 1
    if (data[end] & 0xC0) == 0x80:
        end = limit
    return data[:end]


def encode(value: str) -> bytes:
    """Return ``value`` as UTF-8 bytes; never raises.

    Bytes that a decoder smuggled in as surrogates (``surrogateescape``, as
    in WSGI paths and host names) come back as they were; any other lone
    surrogate is written as a ``\\udXXX`` escape.
    """
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace")


NATIVE_ORDER = sys.byteorder
