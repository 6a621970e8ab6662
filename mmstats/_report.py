"""Turn what the reader returns into plain data: JSON documents and summaries.

The CLI's ``json`` subcommand, the web page and the Prometheus exporter share
:func:`snapshot_to_json`, so they agree on one schema (docs/CLI.md).
:func:`summarize` derives the numbers a worker table shows.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ._archive import Archive
from ._reader import (
    BadFile,
    GaugeTotal,
    HistogramValue,
    Series,
    Slot,
    SlowEntry,
    Snapshot,
    Worker,
)

SCHEMA_VERSION = 1
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
LIVE_STATES = ("alive", "unknown")
# The metrics a Summary is made of: all that show and top read of a worker.
SUMMARY_NAMES = frozenset(
    {
        "requests",
        "responses",
        "exceptions",
        "in_flight",
        "memory_rss_bytes",
        "request_seconds",
        "db_queries",
    }
)


# -- JSON ---------------------------------------------------------------------


def snapshot_to_json(snapshot: Snapshot) -> dict[str, Any]:
    """Return a snapshot as one JSON-ready document (schema 1).

    Every float is finite or ``None``, so ``json.dumps(..., allow_nan=False)``
    always succeeds.
    """
    doc = {
        "schema": SCHEMA_VERSION,
        "directory": snapshot.directory,
        "read_at": snapshot.read_at,
        "workers": [worker_to_json(w) for w in snapshot.workers],
        "bad_files": [bad_file_to_json(b) for b in snapshot.bad],
        "problems": list(snapshot.problems),
        "archive": archive_to_json(snapshot.archive),
        "totals": [series_to_json(s) for s in _sorted(snapshot.totals().values())],
    }
    clean: dict[str, Any] = finite(doc)
    return clean


def worker_to_json(worker: Worker, slow: bool = True) -> dict[str, Any]:
    """Return one worker's header fields, series, slots and slow entries."""
    doc = {
        "file": worker.path,
        "name": worker.name,
        "pid": worker.pid,
        "hostname": worker.hostname,
        "command": worker.command,
        "state": worker.state,
        "start_time": _time_or_none(worker.start_time),
        "created": _time_or_none(worker.created),
        "closed_at": _time_or_none(worker.closed_at) if worker.closed else None,
        "heartbeat": _time_or_none(worker.heartbeat),
        "version": worker.version,
        "size": worker.size,
        "problem": worker.problem,
        "metrics": [series_to_json(s) for s in _sorted(worker.series)],
        "slots": [slot_to_json(s) for s in worker.slots],
    }
    if slow:
        doc["slow"] = [slow_to_json(e) for e in worker.slow]
    return doc


def series_to_json(series: Series) -> dict[str, Any]:
    """Return a series with its value in JSON form."""
    return {
        "name": series.name,
        "kind": series.kind,
        "help": series.help,
        "unit": series.unit,
        "labels": dict(sorted(series.labels.items())),
        "value": value_to_json(series.value),
    }


def value_to_json(value: Any) -> Any:
    """Return a series value as JSON: histograms and gauge totals as objects."""
    if isinstance(value, HistogramValue):
        return value.to_json()
    if isinstance(value, GaugeTotal):
        return {
            "sum": value.sum,
            "min": value.min,
            "max": value.max,
            "workers": value.workers,
        }
    return value


def slot_to_json(slot: Slot) -> dict[str, Any]:
    """Return a request being served (a slot) as JSON."""
    return {
        "index": slot.index,
        "thread": slot.thread,
        "method": slot.method,
        "path": slot.path,
        "view": slot.view,
        "started": slot.started,
        "queries": slot.queries,
        "db_seconds": slot.db_seconds,
    }


def slow_to_json(entry: SlowEntry) -> dict[str, Any]:
    """Return a slow-ring entry as JSON."""
    return entry.to_json()


def bad_file_to_json(bad: BadFile) -> dict[str, Any]:
    """Return an unreadable file and the reason."""
    return {"path": bad.path, "reason": bad.reason}


def archive_to_json(archive: Archive) -> dict[str, Any]:
    """Return what earlier cleans folded into the archive."""
    return {
        "workers": archive.workers,
        "died": archive.died,
        "died_serving": archive.died_serving,
        "folded": dict(sorted(archive.folded.items())),
        "error": archive.error,
        "metrics": [series_to_json(s) for s in _sorted(archive.series)],
        "slow": [slow_to_json(e) for e in archive.slow],
    }


def finite(value: Any) -> Any:
    """Return ``value`` with every NaN or infinite float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def dumps(doc: Any, indent: int | None = 2) -> str:
    """Serialize a document as strict JSON that is also safe inside HTML.

    Non-ASCII characters are escaped, and so are ``<``, ``>`` and ``&``: they
    only ever occur inside strings, where ``\\u003c`` means the same thing,
    so the text can be embedded in a ``<script>`` element unchanged.
    """
    try:
        text = json.dumps(doc, indent=indent, allow_nan=False, ensure_ascii=True)
    except ValueError:  # a NaN or infinity the document still held
        text = json.dumps(
            finite(doc), indent=indent, allow_nan=False, ensure_ascii=True
        )
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def snapshot_json_text(snapshot: Snapshot, indent: int | None = None) -> str:
    """Return :func:`dumps` of :func:`snapshot_to_json`, built faster.

    Without indentation the document is put together from pieces encoded
    one by one, and the text of each slow entry (which never changes once
    written) is kept between calls, so a reader that comes back (the web
    page, ``serve``) encodes only the entries that are new.
    """
    if indent is not None:
        return dumps(snapshot_to_json(snapshot), indent)
    head = _encode(
        {
            "schema": SCHEMA_VERSION,
            "directory": snapshot.directory,
            "read_at": snapshot.read_at,
        }
    )
    tail = _encode(
        {
            "bad_files": [bad_file_to_json(b) for b in snapshot.bad],
            "problems": list(snapshot.problems),
            "archive": archive_to_json(snapshot.archive),
            "totals": [series_to_json(s) for s in _sorted(snapshot.totals().values())],
        }
    )
    workers = ", ".join(_worker_text(w) for w in snapshot.workers)
    text = f'{head[:-1]}, "workers": [{workers}], {tail[1:]}'
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _encode(value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=False, ensure_ascii=True)
    except ValueError:  # a NaN or infinity
        return json.dumps(finite(value), allow_nan=False, ensure_ascii=True)


def _worker_text(worker: Worker) -> str:
    body = _encode(worker_to_json(worker, slow=False))  # "slow" goes last
    if worker.slow:
        file = (worker.created.hex(), worker.pid)
        kept = _entry_texts.get(worker.path)
        if kept is None or kept[0] != file:
            if len(_entry_texts) >= _ENTRY_FILES_MAX:
                _entry_texts.clear()
            kept = _entry_texts[worker.path] = (file, {})
        texts = kept[1]
        if len(texts) > _ENTRY_TEXTS_MAX:
            texts.clear()
        entries = ", ".join(_entry_text(texts, e) for e in worker.slow)
    else:
        entries = ""
    return f'{body[:-1]}, "slow": [{entries}]}}'


# Encoded slow entries: path -> ((created, pid) of the file, seq -> text).
_entry_texts: dict[str, tuple[tuple[str, int], dict[int, str]]] = {}
_ENTRY_FILES_MAX = 20_000
_ENTRY_TEXTS_MAX = 100_000  # per file: more than a ring holds


def forget_entry_texts(
    directory: str | None = None, listed: set[str] | None = None
) -> None:
    """Forget the kept texts of slow entries: all, or of files of
    ``directory`` not in ``listed``."""
    if directory is None or listed is None:
        _entry_texts.clear()
        return
    prefix = directory.rstrip(os.sep) + os.sep
    for path in [p for p in _entry_texts if p.startswith(prefix) and p not in listed]:
        _entry_texts.pop(path, None)


def _entry_text(texts: dict[int, str], entry: SlowEntry) -> str:
    text = texts.get(entry.seq)
    if text is None:
        text = texts[entry.seq] = _entry_json(entry)
    return text


def _entry_json(e: SlowEntry) -> str:
    """Return ``_encode(e.to_json())``, written out field by field (faster)."""
    s, n = _quote, _number
    return (
        f'{{"end": {n(e.end)}, "start": {n(e.start)}, "pid": {int(e.pid)},'
        f' "hostname": {s(e.hostname)}, "method": {s(e.method)},'
        f' "path": {s(e.path)}, "view": {s(e.view)}, "status": {int(e.status)},'
        f' "duration_seconds": {n(e.duration)}, "queries": {int(e.queries)},'
        f' "db_seconds": {n(e.db_seconds)},'
        f' "memory_delta_bytes": {int(e.memory_delta)},'
        f' "load_delta": {n(e.load_delta)}}}'
    )


_quote = json.encoder.encode_basestring_ascii


def _number(value: float) -> str:
    """Return a float as JSON writes it; NaN and infinities become null."""
    return float.__repr__(value) if math.isfinite(value) else "null"


def filtered(
    snapshot: Snapshot, names: frozenset[str] | None, slow: int | None
) -> Snapshot:
    """Return the snapshot with only the named metrics and newest slow entries."""

    def series(found: list[Series]) -> list[Series]:
        return found if names is None else [s for s in found if s.name in names]

    def entries(found: list[SlowEntry]) -> list[SlowEntry]:
        return found if slow is None else found[:slow]

    def worker(w: Worker) -> Worker:
        kept, newest = series(w.series), entries(w.slow)
        if len(kept) == len(w.series) and len(newest) == len(w.slow):
            return w  # the same object: sums of unchanging workers are kept
        return replace(w, series=kept, slow=newest)

    workers = [worker(w) for w in snapshot.workers]
    archive = replace(
        snapshot.archive,
        series=series(snapshot.archive.series),
        slow=entries(snapshot.archive.slow),
    )
    return replace(snapshot, workers=workers, archive=archive)


def _time_or_none(value: float) -> float | None:
    """Return a Unix time, or None for the 0 that means "never"."""
    return value if value > 0 else None


def _sorted(series: Iterable[Series]) -> list[Series]:
    return sorted(series, key=lambda s: (s.name, sorted(s.labels.items())))


# -- summaries ----------------------------------------------------------------


@dataclass
class Summary:
    """The request numbers of one worker, or of all of them added up."""

    requests: int = 0
    responses: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(STATUS_CLASSES, 0)
    )
    exceptions: int = 0
    in_flight: float = 0.0
    rss_bytes: float | None = None
    request_seconds: HistogramValue | None = None
    db_queries: HistogramValue | None = None

    @property
    def p50(self) -> float | None:
        """Return the median request time in seconds."""
        return self.percentiles()[0]

    @property
    def p99(self) -> float | None:
        """Return the 99th percentile of request time in seconds."""
        return self.percentiles()[1]

    def percentiles(self) -> list[float | None]:
        """Return the median and the 99th percentile of request time."""
        hist = self.request_seconds
        if hist is None:
            return [None, None]
        return hist.quantiles((0.5, 0.99))

    @property
    def queries_per_request(self) -> float | None:
        """Return the mean number of database queries per request."""
        hist = self.db_queries
        return hist.mean if hist is not None else None


def summarize(series: Iterable[Series]) -> Summary:
    """Add up the recorder's metrics found in ``series``.

    Works on one worker's series and on :meth:`Snapshot.totals`, where gauges
    are :class:`GaugeTotal` values.
    """
    summary = Summary()
    for s in series:
        _add(summary, s)
    return summary


def _add(summary: Summary, s: Series) -> None:
    if s.kind == "counter":
        _add_counter(summary, s)
    elif s.kind == "gauge":
        value = s.value.sum if isinstance(s.value, GaugeTotal) else float(s.value)
        if s.name == "in_flight":
            summary.in_flight += value
        elif s.name == "memory_rss_bytes":
            summary.rss_bytes = (summary.rss_bytes or 0.0) + value
    elif s.kind == "histogram" and s.name in ("request_seconds", "db_queries"):
        have = getattr(summary, s.name)
        if have is None:
            setattr(summary, s.name, s.value.copy())
        elif have.same_scheme(s.value):  # an app's own metric of that name may not
            have.merge(s.value)


def _add_counter(summary: Summary, s: Series) -> None:
    if s.name == "requests":
        summary.requests += s.value
    elif s.name == "responses":
        cls = s.labels.get("class", "")
        summary.responses[cls] = summary.responses.get(cls, 0) + s.value
    elif s.name == "exceptions":
        summary.exceptions += s.value


def uptime(worker: Worker, now: float) -> float | None:
    """Return how long the worker ran (or has run so far), in seconds.

    A live worker counts up to ``now``; a closed one to when it closed; a
    dead one to its last finished request, the last time it is known to
    have been alive.
    """
    if worker.start_time <= 0:
        return None
    if worker.state in LIVE_STATES:
        end = now
    elif worker.closed and worker.closed_at > 0:
        end = worker.closed_at
    else:
        end = worker.heartbeat
    if end <= worker.start_time:
        return None
    return end - worker.start_time


def lifetime_rate(requests: int, seconds: float | None) -> float | None:
    """Return requests per second over ``seconds``, or None if unknown."""
    if not seconds or seconds <= 0:
        return None
    return requests / seconds
