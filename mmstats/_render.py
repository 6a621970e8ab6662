"""Rich tables for the CLI: workers, requests in flight, slow requests, a file.

Every string read from a stats file is untrusted: :func:`clean_text` escapes
control characters and the result only ever goes into :class:`rich.text.Text`
objects, which rich never parses as markup.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ._reader import BadFile, HistogramValue, Series, Slot, SlowEntry, Snapshot, Worker
from ._report import LIVE_STATES, Summary, lifetime_rate, summarize, uptime

DASH = "-"
MIB = 1024 * 1024

# C0 and C1 controls, DEL, and the invisible format characters that can
# reorder or hide text on a terminal (bidi overrides, zero-width marks).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def clean_text(value: str) -> str:
    """Return ``value`` with control characters written as escapes.

    ``\\n``, ``\\r`` and ``\\t`` keep their names; other characters below
    U+0100 become ``\\xNN`` and the rest ``\\uNNNN``.
    """
    return _UNSAFE.sub(_escape_char, value)


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(value: str, style: str = "") -> Text:
    """Return untrusted text as a Text that rich shows literally."""
    return Text(clean_text(value), style=style)


# -- numbers with units ---------------------------------------------------------


def fmt_seconds(value: float | None) -> str:
    """Return a duration with its unit: ``0.35ms``, ``120ms``, ``2.50s``."""
    if value is None:
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
    if value is None or value < 0:
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
    if value is None:
        return DASH
    mib = value / MIB
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


def fmt_number(value: float | None, digits: int = 1) -> str:
    """Return a plain number, or a dash when unknown."""
    if value is None:
        return DASH
    return f"{value:.{digits}f}"


def fmt_time(value: float, now: float, full: bool = False) -> str:
    """Return a local wall-clock time; the date only when it is not today."""
    if value <= 0:
        return DASH
    local = time.localtime(value)
    if full:
        return time.strftime("%Y-%m-%d %H:%M:%S", local) + f".{int(value % 1 * 1000):03d}"
    if local[:3] == time.localtime(now)[:3]:
        return time.strftime("%H:%M:%S", local)
    return time.strftime("%m-%d %H:%M", local)


def fmt_timestamp(value: float) -> str:
    """Return a time both as local time and as Unix seconds, for ``dump``."""
    if value <= 0:
        return "never (0)"
    return f"{fmt_time(value, value, full=True)} ({value:.3f})"


# -- tables -------------------------------------------------------------------------


def _table(title: str | Text | None = None, caption: str | None = None) -> Table:
    return Table(
        title=title,
        caption=caption,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
        title_justify="left",
        caption_justify="left",
        header_style="bold",
        highlight=False,
    )


def _num(table: Table, header: str, min_width: int | None = None) -> None:
    table.add_column(header, justify="right", no_wrap=True, min_width=min_width)


def _txt(table: Table, header: str, ratio: int | None = None, fold: bool = False) -> None:
    overflow = "fold" if fold else "ellipsis"
    table.add_column(
        header, no_wrap=not fold, overflow=overflow, ratio=ratio, min_width=4
    )


@dataclass
class Rates:
    """Request rates measured between two snapshots, for ``top``."""

    per_worker: dict[str, float]
    total: float | None
    interval: float


def show_view(
    snapshot: Snapshot, wide: bool = False, rates: Rates | None = None
) -> RenderableType:
    """Return everything ``show`` prints: workers, requests, dead, bad files."""
    now = snapshot.read_at
    parts: list[RenderableType] = [_headline(snapshot)]
    shown = [w for w in snapshot.workers if w.state != "dead"]
    dead = [w for w in snapshot.workers if w.state == "dead"]
    parts.append(worker_table(snapshot, shown, wide, rates))

    busy = [(w, s) for w in shown if w.state in LIVE_STATES for s in w.slots]
    if busy:
        parts.append(in_flight_table(busy, now, wide))
    if dead:
        parts.append(dead_table(dead, now, wide))
    if snapshot.bad:
        parts.append(bad_table(snapshot.bad))
    return Group(*parts)


def _headline(snapshot: Snapshot) -> Text:
    counts: dict[str, int] = {}
    for w in snapshot.workers:
        counts[w.state] = counts.get(w.state, 0) + 1
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    line = Text("Stats directory ")
    line.append_text(safe(snapshot.directory, "bold"))
    line.append(f"\n{len(snapshot.workers)} workers ({states or 'none'}), ")
    line.append(f"{snapshot.archive.workers} archived; read at ")
    line.append(fmt_time(snapshot.read_at, snapshot.read_at, full=True))
    return line


def worker_table(
    snapshot: Snapshot, workers: Sequence[Worker], wide: bool, rates: Rates | None
) -> Table:
    """Return one row per worker and a totals row."""
    if rates is None:
        caption = "Avg/s: requests per second since the worker started."
        rate_header = "Avg/s"
    else:
        caption = (
            f"Req/s: requests per second over the last {rates.interval:.1f} s. "
            "Press q to quit."
        )
        rate_header = "Req/s"
    if snapshot.archive.workers:
        caption += " Totals include the archive of cleaned workers."
    table = _table(caption=caption)
    _worker_columns(table, wide, rate_header)

    now = snapshot.read_at
    for w in sorted(workers, key=lambda w: (w.state, w.pid)):
        summary = summarize(w.series)
        rate = (
            rates.per_worker.get(w.path)
            if rates is not None
            else lifetime_rate(summary.requests, uptime(w, now))
        )
        table.add_row(*_worker_cells(w, summary, rate, now, wide))
    table.add_section()
    table.add_row(*_total_cells(snapshot, workers, rates, wide), style="bold")
    return table


def _worker_columns(table: Table, wide: bool, rate_header: str) -> None:
    _num(table, "PID")
    _txt(table, "State")
    if wide:
        _txt(table, "Name", ratio=1)
        _txt(table, "Host", ratio=1)
    _num(table, "Up")
    _num(table, "Reqs")
    _num(table, rate_header)
    for cls in ("2xx", "3xx", "4xx", "5xx"):
        _num(table, cls)
    if wide:
        _num(table, "Exc")
    _num(table, "Busy")
    _num(table, "p50")
    _num(table, "p99")
    _num(table, "Q/req")
    _num(table, "RSS")


def _worker_cells(
    w: Worker, s: Summary, rate: float | None, now: float, wide: bool
) -> list[Text | str]:
    cells: list[Text | str] = [str(w.pid), w.state]
    if wide:
        cells += [safe(w.name), safe(w.hostname)]
    cells += [fmt_age(uptime(w, now)), str(s.requests), fmt_number(rate)]
    cells += _summary_cells(s, wide)
    return cells


def _summary_cells(s: Summary, wide: bool) -> list[Text | str]:
    cells: list[Text | str] = [str(s.responses.get(c, 0)) for c in ("2xx", "3xx", "4xx", "5xx")]
    if wide:
        cells.append(str(s.exceptions))
    cells += [
        f"{s.in_flight:.0f}",
        fmt_seconds(s.p50),
        fmt_seconds(s.p99),
        fmt_number(s.queries_per_request),
        fmt_mib(s.rss_bytes),
    ]
    return cells


def _total_cells(
    snapshot: Snapshot, shown: Sequence[Worker], rates: Rates | None, wide: bool
) -> list[Text | str]:
    totals = summarize(snapshot.totals().values())
    # Gauges of dead and closed workers are their last values, not current
    # ones: the busy and RSS totals only add up the workers still running.
    live = summarize(s for w in shown if w.state in LIVE_STATES for s in w.series)
    totals.in_flight = live.in_flight
    totals.rss_bytes = live.rss_bytes
    if rates is not None:
        rate = rates.total
    else:
        rate = _sum_rates(snapshot.workers, snapshot.read_at)
    cells: list[Text | str] = ["total", ""]
    if wide:
        cells += ["", ""]
    cells += ["", str(totals.requests), fmt_number(rate)]
    return cells + _summary_cells(totals, wide)


def _sum_rates(workers: Iterable[Worker], now: float) -> float | None:
    rates = [
        lifetime_rate(summarize(w.series).requests, uptime(w, now))
        for w in workers
        if w.state in LIVE_STATES
    ]
    known = [r for r in rates if r is not None]
    return sum(known) if known else None


def in_flight_table(
    busy: Sequence[tuple[Worker, Slot]], now: float, wide: bool
) -> Table:
    """Return the requests the live workers are serving now."""
    table = _table(title="Requests in flight")
    _num(table, "PID")
    _txt(table, "Method")
    _txt(table, "Path", ratio=3)
    _txt(table, "View", ratio=2)
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


def dead_table(dead: Sequence[Worker], now: float, wide: bool) -> Table:
    """Return the dead workers and the requests they were serving."""
    table = _table(
        title="Dead workers (died without closing their file)",
        caption="Run `mmstats clean` to fold them into the archive.",
    )
    _num(table, "PID")
    _num(table, "Reqs")
    _txt(table, "Last done")
    _txt(table, "Method")
    _txt(table, "Serving when it died", ratio=3)
    _txt(table, "View", ratio=2)
    _txt(table, "Started")
    if wide:
        _txt(table, "Host", ratio=1)
        _num(table, "Queries")
    for w in sorted(dead, key=lambda w: w.pid):
        requests = str(summarize(w.series).requests)
        last = fmt_time(w.heartbeat, now, wide)
        slots: list[Slot | None] = list(w.slots) or [None]
        for i, slot in enumerate(slots):
            head: list[Text | str] = [str(w.pid), requests, last] if i == 0 else ["", "", ""]
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


def bad_table(bad: Sequence[BadFile]) -> Table:
    """Return the files that could not be read, and why."""
    table = _table(title="Files that could not be read")
    _txt(table, "File", ratio=1)
    _txt(table, "Reason", ratio=2, fold=True)
    for b in bad:
        table.add_row(safe(b.path), safe(b.reason))
    return table


# -- slow requests -----------------------------------------------------------------


def slow_table(entries: Sequence[SlowEntry], now: float, wide: bool) -> Table:
    """Return slow requests, one row each, with every recorded field."""
    caption = (
        "Time: request duration. DB: database time. dMem, dLoad: change of "
        "resident memory and of the 1-minute load average during the request."
    )
    table = _table(title=f"Slow requests ({len(entries)})", caption=caption)
    _txt(table, "End")
    _num(table, "PID")
    if wide:
        _txt(table, "Host", ratio=1)
        _txt(table, "Method")
        _txt(table, "Path", ratio=3)
        _txt(table, "View", ratio=2)
    for header in ("Status", "Time", "Queries" if wide else "Q", "DB", "dMem", "dLoad"):
        _num(table, header)
    if not wide:
        _txt(table, "Request / view / host", ratio=1)
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


# -- one file ------------------------------------------------------------------------


def dump_view(w: Worker, now: float) -> RenderableType:
    """Return every field of one stats file."""
    parts: list[RenderableType] = [header_table(w), series_table(w.series)]
    for s in w.series:
        if isinstance(s.value, HistogramValue):
            parts.append(bucket_table(s))
    parts.append(slot_table(w.slots, now))
    parts.append(slow_dump_table(w.slow))
    return Group(*parts)


def header_table(w: Worker) -> Table:
    """Return the header fields of a file as name/value rows."""
    table = _table(title="File")
    _txt(table, "Field")
    _txt(table, "Value", ratio=1, fold=True)
    rows: list[tuple[str, Text | str]] = [
        ("path", safe(w.path)),
        ("name", safe(w.name)),
        ("pid", str(w.pid)),
        ("hostname", safe(w.hostname)),
        ("command", safe(w.command)),
        ("boot_id", safe(w.boot_id)),
        ("state", w.state),
        ("version", str(w.version)),
        ("start_time", fmt_timestamp(w.start_time)),
        ("created", fmt_timestamp(w.created)),
        ("closed", "yes" if w.closed else "no"),
        ("closed_at", fmt_timestamp(w.closed_at)),
        ("heartbeat", fmt_timestamp(w.heartbeat)),
        ("size", f"{w.size} bytes"),
        ("used", f"{w.used} bytes"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def series_table(series: Sequence[Series]) -> Table:
    """Return every series of a file with its value and unit."""
    table = _table(title=f"Series ({len(series)})")
    _txt(table, "Name", ratio=2, fold=True)
    _txt(table, "Kind")
    _txt(table, "Labels", ratio=2, fold=True)
    _txt(table, "Value", ratio=3, fold=True)
    _txt(table, "Help", ratio=2, fold=True)
    for s in sorted(series, key=lambda s: (s.name, sorted(s.labels.items()))):
        table.add_row(
            safe(s.name), s.kind, safe(_labels(s.labels)), _value(s), safe(s.help)
        )
    return table


def _labels(labels: dict[str, str]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(labels.items())) or DASH


def _value(s: Series) -> Text:
    unit = f" {s.unit}" if s.unit else ""
    value = s.value
    if isinstance(value, HistogramValue):
        parts = [f"count={value.count}", f"sum={value.sum:.6g}{unit}"]
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            got = value.quantile(q)
            parts.append(f"{name}={DASH if got is None else f'{got:.6g}'}{unit}")
        return Text(" ".join(parts))
    if isinstance(value, str):
        return safe(repr(value))
    if isinstance(value, float):
        return Text(f"{value:.6g}{unit}")
    return Text(f"{value}{unit}")


def bucket_table(s: Series) -> Table:
    """Return every non-empty bucket of a histogram with its bounds."""
    hist: HistogramValue = s.value
    title = Text(f"Buckets of {s.name}")
    if s.labels:
        title.append_text(safe("{" + _labels(s.labels) + "}"))
    unit = s.unit or "value"
    table = _table(
        title=title,
        caption=f"lo={hist.lo:g} gamma={hist.gamma:g} integer={hist.integer}",
    )
    _num(table, "Bucket")
    _num(table, f"Above ({unit})")
    _num(table, f"Up to ({unit})")
    _num(table, "Count")
    for k in sorted(hist.buckets):
        low, high = hist.bounds(k)
        table.add_row(str(k), f"{low:.6g}", f"{high:.6g}", str(hist.buckets[k]))
    if not hist.buckets:
        table.add_row(DASH, DASH, DASH, "0")
    return table


def slot_table(slots: Sequence[Slot], now: float) -> Table:
    """Return the requests a file's slots hold (being served, or at death)."""
    table = _table(title=f"Slots in use ({len(slots)})")
    for header in ("Index", "Thread"):
        _num(table, header)
    _txt(table, "Method")
    _txt(table, "Path", ratio=3, fold=True)
    _txt(table, "View", ratio=2, fold=True)
    _txt(table, "Started")
    _num(table, "Queries")
    _num(table, "DB time")
    for slot in slots:
        table.add_row(
            str(slot.index),
            str(slot.thread),
            safe(slot.method),
            safe(slot.path),
            safe(slot.view or DASH),
            fmt_time(slot.started, now, True),
            str(slot.queries),
            f"{slot.db_seconds:.6f}s",
        )
    return table


def slow_dump_table(entries: Sequence[SlowEntry]) -> Table:
    """Return a file's slow ring with every field, unabridged."""
    table = _table(title=f"Slow ring ({len(entries)} entries)")
    _num(table, "Seq")
    _txt(table, "Start / end")
    _txt(table, "Request / view / host", ratio=1, fold=True)
    for header in ("Status", "Time", "Queries", "DB", "dMem", "dLoad"):
        _num(table, header)
    for e in entries:
        when = Text(fmt_time(e.start, e.start, True) + "\n" + fmt_time(e.end, e.end, True))
        request = safe(f"{e.method} {e.path}")
        request.append("\n")
        request.append_text(safe(e.view or DASH))
        request.append("\n")
        request.append_text(safe(e.hostname))
        table.add_row(
            str(e.seq),
            when,
            request,
            str(e.status),
            f"{e.duration:.6f}s",
            str(e.queries),
            f"{e.db_seconds:.6f}s",
            f"{e.memory_delta:+d}B",
            f"{e.load_delta:+.4f}",
        )
    return table
