"""Rich tables for the CLI: workers, requests in flight, slow requests, a file.

Every string read from a stats file is untrusted: :func:`clean_text` escapes
control characters and the result only ever goes into :class:`rich.text.Text`
objects, which rich never parses as markup.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.text import Text

from ._grid import Grid
from ._reader import BadFile, HistogramValue, Series, Slot, SlowEntry, Snapshot, Worker
from ._report import LIVE_STATES, Summary, lifetime_rate, summarize, uptime

DASH = "-"
MIB = 1024 * 1024

# Control characters, and what shows as nothing or reorders text around it:
# the soft hyphen, joiners and fillers, zero-width and bidirectional
# controls (U+061C and U+200E/F, U+202A..E, U+2066..9), separators, the
# byte-order mark, annotation and tag characters; lone surrogates.  The
# page's script (static/page.js) escapes the same.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f"
    "\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\ufeff\uffa0\ufff9-\ufffb"
    "\ud800-\udfff\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def clean_text(value: str) -> str:
    """Return ``value`` with control characters written as escapes.

    ``\\n``, ``\\r`` and ``\\t`` keep their names; other characters below
    U+0100 become ``\\xNN`` and the rest ``\\uNNNN``.  A byte that was not
    UTF-8, carried as a surrogate (a file name), becomes ``\\xNN`` too.
    """
    return _UNSAFE.sub(_escape_char, value)


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the byte that was there
        code -= 0xDC00
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def safe(value: str, style: str = "", fold: bool = False) -> Text:
    """Return untrusted text as a Text that rich shows literally.

    In a table cell it is cut with an ellipsis at the column's width, or
    with ``fold`` wrapped onto as many lines as it needs.
    """
    if fold:
        return Text(clean_text(value), style=style, overflow="fold")
    return Text(clean_text(value), style=style, no_wrap=True, overflow="ellipsis")


def folded(value: str, style: str = "") -> Text:
    """Return untrusted text that wraps in full rather than being cut."""
    return safe(value, style, fold=True)


# -- numbers with units -------------------------------------------------------


def fmt_seconds(value: float | None) -> str:
    """Return a duration with its unit: ``0.35ms``, ``120ms``, ``2.50s``."""
    if value is None or not math.isfinite(value):
        return DASH
    if value < 0.01:
        return f"{value * 1000:.2f}ms"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 100:
        return f"{value:.2f}s"
    return fmt_age(value)


def fmt_age(value: float | None) -> str:
    """Return a long span compactly: ``45s``, ``12m05s``, ``3h12m``, ``2d03h``."""
    if value is None or not math.isfinite(value) or value < 0:
        return DASH
    seconds = int(value)
    if seconds < 100:
        return f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def fmt_mib(value: float | None) -> str:
    """Return a byte count in MiB: ``85MiB``, ``9.5MiB``."""
    if value is None or not math.isfinite(value):
        return DASH
    mib = value / MIB
    if mib >= 1024:
        return f"{mib / 1024:.1f}GiB"
    return f"{mib:.1f}MiB" if mib < 10 else f"{mib:.0f}MiB"


def fmt_signed_bytes(value: int) -> str:
    """Return a signed byte delta: ``+1.5MiB``, ``-64KiB``, ``0B``."""
    if value == 0:
        return "0B"
    sign = "+" if value > 0 else "-"
    size = abs(value)
    if size < 1024:
        return f"{sign}{size}B"
    if size < MIB:
        return f"{sign}{size / 1024:.0f}KiB"
    return f"{sign}{size / MIB:.1f}MiB"


def fmt_count(value: int, exact: bool = False) -> str:
    """Return a count in at most five characters: ``9999``, ``12.3k``, ``4.56M``."""
    if exact or abs(value) < 10_000:
        return str(value)
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            scaled = value / scale
            return (
                f"{scaled:.1f}{suffix}"
                if abs(scaled) < 100
                else f"{scaled:.0f}{suffix}"
            )
    return str(value)


def fmt_rate(value: float | None) -> str:
    """Return a rate: one decimal below 100, none above."""
    if value is None:
        return DASH
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def fmt_number(value: float | None, digits: int = 1) -> str:
    """Return a plain number, or a dash when unknown."""
    if value is None:
        return DASH
    return f"{value:.{digits}f}"


def fmt_time(value: float, now: float, full: bool = False) -> str:
    """Return a local wall-clock time; the date only when it is not today."""
    if not math.isfinite(value) or value <= 0:
        return DASH
    try:
        local = time.localtime(value)
    except (OverflowError, OSError, ValueError):  # past year 9999: a bad file
        return f"{value:.6g}"
    if full:  # with the zone: Django's command runs in the app's TIME_ZONE
        millis = int(value * 1000) % 1000
        zone = time.strftime(" %Z", local).rstrip()
        return time.strftime("%Y-%m-%d %H:%M:%S", local) + f".{millis:03d}{zone}"
    if math.isfinite(now) and local[:3] == time.localtime(now)[:3]:
        return time.strftime("%H:%M:%S", local)
    return time.strftime("%m-%d %H:%M", local)


def fmt_timestamp(value: float) -> str:
    """Return a time both as local time and as Unix seconds, for ``dump``."""
    if value == 0:
        return "never (0)"
    if not math.isfinite(value) or value < 0:
        return f"invalid ({value!r})"
    return f"{fmt_time(value, value, full=True)} ({value:.6f})"


# -- tables -------------------------------------------------------------------


def _table(
    title: str | Text | None = None,
    caption: str | None = None,
    footer: bool = False,
) -> Grid:
    return Grid(title=title, caption=caption, show_footer=footer)


def _num(
    table: Grid, header: str, min_width: int | None = None, drop: int | None = None
) -> None:
    table.add_column(
        header, justify="right", no_wrap=True, min_width=min_width, drop=drop
    )


def _txt(table: Grid, header: str, min_width: int = 4, drop: int | None = None) -> None:
    # Text columns may shrink when the table is too wide; the cells (see
    # safe()) decide whether they are cut with an ellipsis or folded.
    table.add_column(header, overflow="fold", min_width=min_width, drop=drop)


@dataclass
class Rates:
    """Request rates measured between two snapshots, for ``top``."""

    per_worker: dict[str, float]
    total: float | None
    interval: float
    keys: bool = True  # q quits: top runs on a terminal


def show_view(
    snapshot: Snapshot,
    wide: bool = False,
    rates: Rates | None = None,
    prog: str = "mmstats",
) -> RenderableType:
    """Return everything ``show`` prints: workers, requests, dead, bad files."""
    now = snapshot.read_at
    parts: list[RenderableType] = [_headline(snapshot)]
    problems = problem_lines(snapshot)
    if problems:
        parts.append(problems)
    shown = [w for w in snapshot.workers if w.state != "dead"]
    dead = [w for w in snapshot.workers if w.state == "dead"]
    if snapshot.workers or snapshot.archive.workers:
        parts.append(worker_table(snapshot, shown, wide, rates))
    else:  # an empty table says less (top waits on a directory like this)
        parts.append(
            Text(
                "No workers yet: each writes its file when it records its"
                " first request.",
                style="dim",
            )
        )

    busy = [(w, s) for w in shown if w.state in LIVE_STATES for s in w.slots]
    if busy:
        parts.append(in_flight_table(busy, now, wide))
    if dead:
        parts.append(dead_table(dead, now, wide, prog))
    if snapshot.bad:
        parts.append(bad_table(snapshot.bad, snapshot.directory))
    return Group(*parts)


def problem_lines(snapshot: Snapshot) -> Text | None:
    """Return why workers may be missing or incomplete, one line each."""
    lines = [f"Warning: {p}" for p in snapshot.problems]
    lines += [
        f"Warning: worker {w.pid} ({w.state}): {w.problem}"
        for w in snapshot.workers
        if w.problem
    ]
    if not lines:
        return None
    text = Text(style="bold")
    for i, line in enumerate(lines):
        text.append(("\n" if i else "") + clean_text(line))
    return text


def _headline(snapshot: Snapshot) -> Text:
    counts: dict[str, int] = {}
    for w in snapshot.workers:
        counts[w.state] = counts.get(w.state, 0) + 1
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    line = Text("Stats directory ")
    line.append_text(safe(snapshot.directory, "bold"))
    n = len(snapshot.workers)
    line.append(f"\n{n} worker{'' if n == 1 else 's'} ({states or 'none'}), ")
    if snapshot.archive.error:
        line.append("the archive unreadable; read at ")  # listed below the tables
    else:
        archived = snapshot.archive
        died = f" ({archived.died} of them died)" if archived.died else ""
        line.append(f"{archived.workers} archived{died}; read at ")
    line.append(fmt_time(snapshot.read_at, snapshot.read_at, full=True))
    return line


def worker_table(
    snapshot: Snapshot, workers: Sequence[Worker], wide: bool, rates: Rates | None
) -> Grid:
    """Return one row per worker, and the totals as the footer."""
    if rates is None:
        caption = "Avg/s: requests per second since the worker started."
        rate_header = "Avg/s"
    else:
        caption = f"Req/s: requests per second over the last {rates.interval:.1f} s" + (
            "; press q to quit." if rates.keys else "."
        )
        rate_header = "Req/s"
    if snapshot.archive.workers:
        caption += " Totals include the archive of cleaned workers."
    table = _table(caption=caption, footer=True)
    _worker_columns(table, wide, rate_header)

    now = snapshot.read_at
    summaries = {id(w): summarize(w.series) for w in snapshot.workers}
    for w in workers:
        if id(w) not in summaries:
            summaries[id(w)] = summarize(w.series)
    for w in sorted(workers, key=lambda w: (w.state, w.pid)):
        summary = summaries[id(w)]
        rate = (
            rates.per_worker.get(w.path)
            if rates is not None
            else lifetime_rate(summary.requests, uptime(w, now))
        )
        table.add_row(*_worker_cells(w, summary, rate, now, wide))
    for column, cell in zip(
        table.columns,
        _total_cells(snapshot, workers, rates, wide, summaries),
        strict=True,
    ):
        column.footer = cell
    return table


# The worker table's columns left out first when a terminal is too narrow
# for them (PID, State and Reqs always stay).
_WORKER_DROPS = {
    "Name": 0,
    "Host": 1,
    "Exc": 2,
    "3xx": 3,
    "Up": 4,
    "Q/req": 5,
    "2xx": 6,
    "RSS": 7,
    "4xx": 8,
    "p50": 9,
    "Avg/s": 10,
    "Req/s": 10,
    "Busy": 11,
    "5xx": 12,
    "p99": 13,
}


def _worker_columns(table: Grid, wide: bool, rate_header: str) -> None:
    drops = _WORKER_DROPS
    _num(table, "PID")
    _txt(table, "State", min_width=5)
    if wide:
        _txt(table, "Name", drop=drops["Name"])
        _txt(table, "Host", drop=drops["Host"])
    _num(table, "Up", drop=drops["Up"])
    _num(table, "Reqs")
    _num(table, rate_header, drop=drops[rate_header])
    for cls in ("2xx", "3xx", "4xx", "5xx"):
        _num(table, cls, drop=drops[cls])
    if wide:
        _num(table, "Exc", drop=drops["Exc"])
    _num(table, "Busy", drop=drops["Busy"])
    _num(table, "p50", drop=drops["p50"])
    _num(table, "p99", drop=drops["p99"])
    _num(table, "Q/req", drop=drops["Q/req"])
    _num(table, "RSS", drop=drops["RSS"])


def _worker_cells(
    w: Worker, s: Summary, rate: float | None, now: float, wide: bool
) -> list[Text | str]:
    cells: list[Text | str] = [str(w.pid), w.state]
    if wide:
        cells += [safe(w.name), safe(w.hostname)]
    cells += [fmt_age(uptime(w, now)), fmt_count(s.requests, wide), fmt_rate(rate)]
    cells += _summary_cells(s, wide)
    return cells


def _summary_cells(s: Summary, wide: bool) -> list[Text | str]:
    p50, p99 = s.percentiles()
    cells: list[Text | str] = [
        fmt_count(s.responses.get(c, 0), wide) for c in ("2xx", "3xx", "4xx", "5xx")
    ]
    if wide:
        cells.append(str(s.exceptions))
    cells += [
        f"{s.in_flight:.0f}",
        fmt_seconds(p50),
        fmt_seconds(p99),
        fmt_number(s.queries_per_request),
        fmt_mib(s.rss_bytes),
    ]
    return cells


def _total_cells(
    snapshot: Snapshot,
    shown: Sequence[Worker],
    rates: Rates | None,
    wide: bool,
    summaries: dict[int, Summary],
) -> list[Text | str]:
    totals = summarize(snapshot.totals().values())
    # Gauges of dead and closed workers are their last values, not current
    # ones: the busy and RSS totals only add up the workers still running.
    live = [summaries[id(w)] for w in shown if w.state in LIVE_STATES]
    totals.in_flight = sum(s.in_flight for s in live)
    rss = [s.rss_bytes for s in live if s.rss_bytes is not None]
    totals.rss_bytes = sum(rss) if rss else None
    if rates is not None:
        rate = rates.total
    else:
        rate = _sum_rates(snapshot.workers, snapshot.read_at, summaries)
    cells: list[Text | str] = ["total", ""]
    if wide:
        cells += ["", ""]
    cells += ["", fmt_count(totals.requests, wide), fmt_rate(rate)]
    return cells + _summary_cells(totals, wide)


def _sum_rates(
    workers: Iterable[Worker], now: float, summaries: dict[int, Summary]
) -> float | None:
    rates = [
        lifetime_rate(summaries[id(w)].requests, uptime(w, now))
        for w in workers
        if w.state in LIVE_STATES
    ]
    known = [r for r in rates if r is not None]
    return sum(known) if known else None


def in_flight_table(
    busy: Sequence[tuple[Worker, Slot]], now: float, wide: bool
) -> Grid:
    """Return the requests the live workers are serving now."""
    table = _table(title="Requests in flight")
    _num(table, "PID")
    _txt(table, "Method")
    _txt(table, "Path")
    _txt(table, "View")
    _num(table, "Elapsed")
    _num(table, "Queries")
    if wide:
        _num(table, "DB time")
        _txt(table, "Started")
    for w, slot in sorted(busy, key=lambda b: b[1].started):
        cells: list[Text | str] = [
            str(w.pid),
            safe(slot.method),
            safe(slot.path),
            safe(slot.view or DASH),
            fmt_seconds(max(0.0, now - slot.started)),
            str(slot.queries),
        ]
        if wide:
            cells += [fmt_seconds(slot.db_seconds), fmt_time(slot.started, now, True)]
        table.add_row(*cells)
    return table


def dead_table(
    dead: Sequence[Worker], now: float, wide: bool, prog: str = "mmstats"
) -> Grid:
    """Return the dead workers and the requests they were serving."""
    table = _table(
        title="Dead workers (died without closing their file)",
        caption=f"Run `{prog} clean` to fold them into the archive.",
    )
    _num(table, "PID")
    _num(table, "Reqs")
    _txt(table, "Last done")
    _txt(table, "Method")
    _txt(table, "Serving when it died")
    _txt(table, "View")
    _txt(table, "Started")
    if wide:
        _txt(table, "Host")
        _num(table, "Queries")
    for w in sorted(dead, key=lambda w: w.pid):
        requests = str(summarize(w.series).requests)
        last = fmt_time(w.heartbeat, now, wide)
        slots: list[Slot | None] = list(w.slots) or [None]
        for i, slot in enumerate(slots):
            head: list[Text | str] = (
                [str(w.pid), requests, last] if i == 0 else ["", "", ""]
            )
            table.add_row(*head, *_dead_slot_cells(w, slot, now, wide))
    return table


def _dead_slot_cells(
    w: Worker, slot: Slot | None, now: float, wide: bool
) -> list[Text | str]:
    if slot is None:
        cells: list[Text | str] = [DASH, Text("(idle)"), DASH, DASH]
        queries = DASH
    else:
        cells = [
            safe(slot.method),
            safe(slot.path),
            safe(slot.view or DASH),
            fmt_time(slot.started, now, wide),
        ]
        queries = str(slot.queries)
    if wide:
        cells += [safe(w.hostname), queries]
    return cells


def bad_table(bad: Sequence[BadFile], directory: str) -> Grid:
    """Return the files that could not be read, and why.

    Files of the stats directory are named relative to it.
    """
    table = _table(title="Files that could not be read")
    _txt(table, "File")
    _txt(table, "Reason")
    for b in bad:
        inside = os.path.dirname(b.path) == directory
        name = os.path.basename(b.path) if inside else b.path
        table.add_row(folded(name), folded(b.reason))
    return table


# -- slow requests ------------------------------------------------------------


def slow_table(
    entries: Sequence[SlowEntry], now: float, wide: bool, total: int | None = None
) -> Grid:
    """Return slow requests, one row each, with every recorded field;
    ``total`` is how many there are when ``entries`` are the first few."""
    caption = (
        "Time: request duration. DB: database time. dMem, dLoad: change of "
        "resident memory and of the 1-minute load average during the request."
    )
    shown = len(entries)
    count = f"{shown} of {total}" if total is not None and total > shown else str(shown)
    table = _table(title=f"Slow requests ({count})", caption=caption)
    _txt(table, "End")
    _num(table, "PID")
    if wide:
        _txt(table, "Host")
        _txt(table, "Method")
        _txt(table, "Path")
        _txt(table, "View")
    for header in ("Status", "Time", "Queries" if wide else "Q", "DB", "dMem", "dLoad"):
        _num(table, header)
    if not wide:
        _txt(table, "Request / view / host")
    for e in entries:
        table.add_row(*_slow_cells(e, now, wide))
    return table


def _slow_cells(e: SlowEntry, now: float, wide: bool) -> list[Text | str]:
    numbers = [
        str(e.status),
        fmt_seconds(e.duration),
        str(e.queries),
        fmt_seconds(e.db_seconds),
        fmt_signed_bytes(e.memory_delta),
        f"{e.load_delta:+.2f}",
    ]
    if wide:
        head: list[Text | str] = [
            fmt_time(e.end, now, True),
            str(e.pid),
            safe(e.hostname),
            safe(e.method),
            safe(e.path),
            safe(e.view or DASH),
        ]
        return head + numbers
    request = safe(f"{e.method} {e.path}")
    request.append("\n")
    request.append_text(safe(e.view or DASH, "italic"))
    request.append("\n")
    request.append_text(safe(e.hostname, "dim"))
    return [fmt_time(e.end, now), str(e.pid), *numbers, request]


# -- one file -----------------------------------------------------------------


def dump_view(w: Worker, now: float) -> RenderableType:
    """Return every field of one stats file."""
    parts: list[RenderableType] = [header_table(w), series_table(w.series)]
    for s in w.series:
        if isinstance(s.value, HistogramValue):
            parts += [bucket_table(s), bucket_summary(s)]
    parts.append(slot_table(w.slots, now))
    parts.append(slow_dump_table(w.slow))
    return Group(*parts)


def header_table(w: Worker) -> Grid:
    """Return the header fields of a file as name/value rows."""
    table = _table(title="File")
    _txt(table, "Field")
    _txt(table, "Value")
    rows: list[tuple[str, Text | str]] = [
        ("path", folded(w.path)),
        ("name", folded(w.name)),
        ("pid", str(w.pid)),
        ("hostname", folded(w.hostname)),
        ("command", folded(w.command)),
        ("boot_id", folded(w.boot_id)),
        ("state", w.state),
        ("version", str(w.version)),
        ("start_time", fmt_timestamp(w.start_time)),
        ("created", fmt_timestamp(w.created)),
        ("closed", "yes" if w.closed else "no"),
        ("closed_at", fmt_timestamp(w.closed_at)),
        ("heartbeat", fmt_timestamp(w.heartbeat)),
        ("size", f"{w.size} bytes"),
        ("used", f"{w.used} bytes"),
        ("problem", folded(w.problem or "none")),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def series_table(series: Sequence[Series]) -> Grid:
    """Return every series of a file: name and help, labels, unit and value."""
    table = _table(title=f"Series ({len(series)})")
    _txt(table, "Name / help")
    _txt(table, "Kind")
    _txt(table, "Labels")
    _txt(table, "Unit")
    # Numbers are not folded mid-digit: the other columns give way first
    # (a text value folds all the same, as its cell says).
    table.add_column("Value", no_wrap=True, min_width=5)
    for s in sorted(series, key=lambda s: (s.name, sorted(s.labels.items()))):
        name = folded(s.name, "bold")
        if s.help:
            name.append("\n")
            name.append_text(folded(s.help))
        table.add_row(
            name, s.kind, folded(_labels(s.labels)), folded(s.unit or DASH), _value(s)
        )
    return table


def _labels(labels: dict[str, str]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(labels.items())) or DASH


def _value(s: Series) -> Text:
    value = s.value
    # Exact: a float as its shortest repr, which reads back to the same value.
    if isinstance(value, HistogramValue):
        return Text(f"count={value.count}\nsum={_exact_sum(value)}")
    if isinstance(value, str):
        return folded(repr(value))
    if isinstance(value, float):
        return Text(repr(value))
    return Text(str(value))


def _exact_sum(hist: HistogramValue) -> str:
    """Return a histogram's sum exactly: a whole sum of counts without
    ".0", any other as the shortest repr of its float."""
    total = hist.sum
    if hist.integer and total.is_integer():
        return str(int(total))
    return repr(total)


def bucket_table(s: Series) -> Grid:
    """Return every non-empty bucket of a histogram with its bounds.

    A histogram of counts (whole numbers) gives the whole numbers each
    bucket holds; any other the bounds, above the lower and up to the upper.
    """
    hist: HistogramValue = s.value
    title = Text("Buckets of ")
    title.append_text(safe(s.name))
    if s.labels:
        title.append_text(safe("{" + _labels(s.labels) + "}"))
    unit = clean_text(s.unit) or "value"
    table = _table(title=title)
    _num(table, "Bucket")
    _num(table, f"From ({unit})" if hist.integer else f"Above ({unit})")
    _num(table, f"To ({unit})" if hist.integer else f"Up to ({unit})")
    _num(table, "Count")
    for k in sorted(hist.buckets):
        low, high = hist.bounds(k)
        if hist.integer:
            # Counts are never negative: bucket 0 holds the zeros.
            first = 0 if k == 0 else math.floor(low) + 1
            row = [str(first), str(math.floor(high))]
        else:
            row = [f"{low:.6g}", f"{high:.6g}"]
        table.add_row(str(k), *row, str(hist.buckets[k]))
    if not hist.buckets:
        table.add_row(DASH, DASH, DASH, "0")
    return table


def bucket_summary(s: Series) -> Text:
    """Return the line under a bucket table: totals, quantiles and scheme."""
    hist: HistogramValue = s.value
    unit = clean_text(s.unit) or "value"
    quantiles = " ".join(
        f"{name}={_g(hist.quantile(q))}"
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
    )
    return Text(
        f"count={hist.count} sum={_exact_sum(hist)} {quantiles} ({unit});"
        f" lo={hist.lo:g} gamma={hist.gamma:g} integer={hist.integer}",
        style="dim",
    )


def _g(value: float | None) -> str:
    return DASH if value is None else f"{value:.6g}"


def slot_table(slots: Sequence[Slot], now: float) -> Grid:
    """Return the requests a file's slots hold (being served, or at death)."""
    table = _table(title=f"Slots in use ({len(slots)})")
    _num(table, "Index")
    _txt(table, "Started / thread", min_width=23)
    _txt(table, "Request")
    for slot in slots:
        when = Text(f"{fmt_time(slot.started, now, True)}\nthread {slot.thread}")
        request = folded(f"{slot.method} {slot.path}")
        request.append("\n")
        request.append_text(folded(f"view: {slot.view or DASH}"))
        request.append(f"\nqueries: {slot.queries}, db: {slot.db_seconds:.6f}s")
        table.add_row(str(slot.index), when, request)
    return table


def slow_dump_table(entries: Sequence[SlowEntry]) -> Grid:
    """Return a file's slow ring with every field, unabridged."""
    table = _table(title=f"Slow ring ({len(entries)} entries)")
    _num(table, "Seq")
    _txt(table, "Start / end", min_width=23)
    _txt(table, "Request")
    for e in entries:
        when = Text(
            f"{fmt_time(e.start, e.start, True)}\n{fmt_time(e.end, e.end, True)}"
        )
        request = folded(f"{e.method} {e.path}")
        request.append("\n")
        request.append_text(folded(f"view: {e.view or DASH}"))
        request.append("\n")
        request.append_text(folded(f"host: {e.hostname}"))
        request.append(
            f"\nstatus: {e.status}, duration: {e.duration:.6f}s, "
            f"queries: {e.queries}, db: {e.db_seconds:.6f}s, "
            f"memory: {e.memory_delta:+d}B, load: {e.load_delta:+.4f}"
        )
        table.add_row(str(e.seq), when, request)
    return table
