"""Prometheus exposition of a stats directory, and the WSGI app that serves it.

Counters and histograms are summed over every worker of the directory and
the archive of cleaned ones, so they never go backwards when workers are
recycled; gauges are given per live worker (label ``pid``) and summed.
The classic text format is served unless the scraper asks for OpenMetrics.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

from . import _format as F
from ._reader import HistogramValue, Series, Snapshot, read_totals
from .exceptions import MmstatsError

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "mmstats_"
CLASSIC_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
LIVE_STATES = ("alive", "unknown")
STATES = ("alive", "dead", "closed", "unknown")
# Gauges each worker reads from its host, not of its own: given per pid only.
HOST_GAUGES = frozenset({"load1"})

_NAME_BAD = re.compile(r"[^a-zA-Z0-9_:]")
_PREFIX_OK = re.compile(r"(?:[a-zA-Z_:][a-zA-Z0-9_:]*)?")
_LABEL_BAD = re.compile(r"[^a-zA-Z0-9_]")


# mmstats' own series, named with the default prefix in the files: exported
# with the prefix once.  Any other name gets the prefix, even one that
# begins with it, so that ``requests`` and ``mmstats_requests`` stay two
# families (one family written twice fails the whole scrape).
OWN_NAMES = frozenset({"mmstats_dropped_labels"})


def metric_name(prefix: str, name: str) -> str:
    """Return a valid Prometheus metric name for a stats name.

    mmstats' own ``mmstats_dropped_labels`` gets the default prefix once.
    """
    own = name in OWN_NAMES and name.startswith(prefix)
    full = _NAME_BAD.sub("_", name if own else prefix + name)
    return full if not full[:1].isdigit() else "_" + full


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if the names it starts are valid metric names.

    mmstats' own families (``workers``, ``scrape_error``, ...) are named
    with it as it is: a character a metric name may not hold would make
    Prometheus refuse the whole scrape.

    :raises ValueError: it holds such a character or starts with a digit.
    """
    if not isinstance(prefix, str) or not _PREFIX_OK.fullmatch(prefix):
        raise ValueError(
            "the prefix must be letters, digits, '_' and ':', not starting with "
            f"a digit, such as {DEFAULT_PREFIX!r}, not {prefix!r}"
        )
    return prefix


def label_name(name: str) -> str:
    """Return a valid Prometheus label name."""
    clean = _LABEL_BAD.sub("_", name) or "_"
    if clean[:1].isdigit() or clean.startswith("__"):
        clean = "_" + clean.lstrip("_")
    return clean


def escape_label(value: str) -> str:
    """Escape a label value: backslash, double quote and newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(value: str) -> str:
    """Escape HELP text: backslash and newline."""
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """Format a sample value the way both text formats accept."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value)) + ".0"
    return repr(value)


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return _label_text(tuple(pairs))


@functools.lru_cache(maxsize=4096)
def _label_text(pairs: tuple[tuple[str, str], ...]) -> str:
    # The same label sets come back at every scrape: made once.
    body = ",".join(f'{label_name(k)}="{escape_label(v)}"' for k, v in pairs)
    return "{" + body + "}" if body else ""


def wants_openmetrics(accept: str | None) -> bool:
    """Return whether an Accept header asks for OpenMetrics."""
    return bool(accept) and "application/openmetrics-text" in (accept or "")


# mmstats' own families (gauges), named before any metric's.
OWN_FAMILIES = (
    "workers",
    "archived_workers",
    "worker_deaths",
    "requests_cut_by_deaths",
    "unreadable_files",
    "directory_problems",
    "scrape_error",
)


def _names_of(name: str, kind: str) -> tuple[str, ...]:
    """Return the names a family of this name and kind takes: its own and
    its samples', in both formats."""
    if kind == "counter":
        base = name.removesuffix("_total")
        return (base, base + "_total", base + "_created")
    if kind == "histogram":
        return (
            name,
            *(name + end for end in ("_bucket", "_count", "_sum", "_created")),
        )
    return (name,)


class _Writer:
    """Collects exposition lines for one format."""

    def __init__(self, openmetrics: bool, prefix: str) -> None:
        self.openmetrics = openmetrics
        self.prefix = prefix
        self.lines: list[str] = []
        # Names taken by a family so far: a name written by two families
        # makes Prometheus refuse the whole exposition.
        self.taken: set[str] = set()
        for own in OWN_FAMILIES:
            self.taken.update(_names_of(prefix + own, "gauge"))

    def unique(self, name: str, kind: str) -> str:
        """Return ``name`` for a metric's family, or, when a family already
        takes one of its names, the name with ``app_`` after the prefix
        (then with ``_`` added until free), and take its names."""
        candidate = name
        if any(n in self.taken for n in _names_of(candidate, kind)):
            rest = name[len(self.prefix) :] if name.startswith(self.prefix) else name
            candidate = f"{self.prefix}app_{rest}"
            while any(n in self.taken for n in _names_of(candidate, kind)):
                candidate += "_"
        self.taken.update(_names_of(candidate, kind))
        return candidate

    def family(self, name: str, kind: str, help: str, unit: str = "") -> str:
        """Write HELP and TYPE; return the name its samples use.

        A counter's samples end in ``_total``; its family name does too in
        the classic format but not in OpenMetrics.
        """
        family = name
        if kind == "counter":
            base = name.removesuffix("_total")
            family = base if self.openmetrics else base + "_total"
        text = escape_help(help or name)
        if self.openmetrics:
            text = text.replace('"', '\\"')
        self.lines.append(f"# HELP {family} {text}")
        self.lines.append(f"# TYPE {family} {kind}")
        if self.openmetrics and unit and family.endswith("_" + unit):
            self.lines.append(f"# UNIT {family} {unit}")
        return family + "_total" if kind == "counter" and self.openmetrics else family

    def sample(
        self, name: str, labels: Iterable[tuple[str, str]], value: float
    ) -> None:
        self.lines.append(f"{name}{_labels(labels)} {format_value(value)}")

    def text(self) -> bytes:
        if self.openmetrics:
            self.lines.append("# EOF")
        return ("\n".join(self.lines) + "\n").encode("utf-8", "backslashreplace")


def _histogram(w: _Writer, family: str, s: Series) -> None:
    """Write the log buckets that end a doubling as ``le`` buckets (every
    eighth: exact powers of two), then count and sum."""
    hist = _in_format3_buckets(s.value, s.unit)
    labels = sorted(s.labels.items())
    inner = _labels(labels)[1:-1]
    head = family + "_bucket{" + (inner + "," if inner else "")
    cumulative = hist.cumulative()
    top = len(cumulative) - 1
    count = cumulative[-1] if cumulative else 0
    lines = w.lines
    for k, le in _le_bounds(hist.lo, hist.gamma, hist.nbuckets):
        at = cumulative[k] if k <= top else count
        lines.append(f'{head}le="{le}"}} {at}')
    lines.append(f'{head}le="+Inf"}} {count}')
    if w.openmetrics and not hist.sum >= 0:
        # OpenMetrics allows no negative or NaN _sum (negative or NaN
        # observations), and _count only with _sum: the buckets remain.
        return
    w.sample(family + "_count", labels, count)
    w.sample(family + "_sum", labels, hist.sum)


def _in_format3_buckets(hist: HistogramValue, unit: str) -> HistogramValue:
    """Return ``hist`` in the buckets writers of this version make for
    ``unit``, moved there (count and sum exact) if it has others.

    A series only format 2 workers or an archive made before the upgrade
    hold would otherwise keep format 2's ``le`` bounds, beside series of
    the same family with format 3's: a family whose series have other
    bounds cannot be added up by ``le``.
    """
    lo, hi = F.range_for(unit)
    if hist.lo == lo and hist.gamma == F.GAMMA:
        return hist
    moved = HistogramValue(
        lo, F.GAMMA, hist.integer, 0, 0.0, {}, F.bucket_count(lo, hi)
    )
    moved.merge_moved(hist)
    return moved


@functools.lru_cache(maxsize=64)
def _le_bounds(lo: float, gamma: float, nbuckets: int) -> tuple[tuple[int, str], ...]:
    """Return the exported buckets of a scheme: (log bucket, its ``le`` text)."""
    last = nbuckets - 2  # the final bucket also holds everything above
    probe = HistogramValue(lo, gamma, False, nbuckets=nbuckets)
    stride = F.buckets_per_doubling(gamma)
    return tuple(
        (k, format_value(probe.bounds(k)[1])) for k in range(0, last + 1, stride)
    )


def render(
    snapshot: Snapshot | None,
    *,
    openmetrics: bool = False,
    prefix: str = DEFAULT_PREFIX,
    error: str | None = None,
) -> bytes:
    """Return the exposition of a snapshot in the classic or OpenMetrics format.

    ``snapshot`` is None when the directory could not be read; ``error``
    then says why, and the exposition holds only the scrape error gauge.
    """
    w = _Writer(openmetrics, prefix)
    if snapshot is not None:
        _render_totals(w, snapshot, prefix)
        _render_gauges(w, snapshot, prefix)
        _render_workers(w, snapshot, prefix)

    name = w.family(
        prefix + "scrape_error",
        "gauge",
        "1 if the stats directory could not be read; the error label says why",
    )
    w.sample(name, [("error", error)] if error else [], 1 if error else 0)
    return w.text()


def _render_totals(w: _Writer, snapshot: Snapshot, prefix: str) -> None:
    by_name: dict[str, list[Series]] = {}
    for s in snapshot.totals().values():
        if s.kind in ("counter", "histogram"):
            by_name.setdefault(s.name, []).append(s)
    for name in sorted(by_name):
        group = sorted(by_name[name], key=lambda s: sorted(s.labels.items()))
        first = group[0]
        unit = first.unit if first.kind == "histogram" else ""
        family = w.family(
            w.unique(metric_name(prefix, name), first.kind),
            first.kind,
            first.help,
            unit,
        )
        for s in group:
            if s.kind == "counter":
                w.sample(family, sorted(s.labels.items()), s.value)
            else:
                _histogram(w, family, s)


def _render_gauges(w: _Writer, snapshot: Snapshot, prefix: str) -> None:
    live = [wk for wk in snapshot.workers if wk.state in LIVE_STATES]
    by_name: dict[str, list[tuple[int, Series]]] = {}
    for worker in live:
        for s in worker.series:
            if s.kind == "gauge":
                by_name.setdefault(s.name, []).append((worker.pid, s))
    for name in sorted(by_name):
        rows = sorted(by_name[name], key=lambda r: (sorted(r[1].labels.items()), r[0]))
        family = w.family(
            w.unique(metric_name(prefix, name), "gauge"), "gauge", rows[0][1].help
        )
        sums: dict[tuple[tuple[str, str], ...], float] = {}
        for pid, s in rows:
            labels = sorted(s.labels.items())
            w.sample(family, [*labels, ("pid", str(pid))], s.value)
            key = tuple(labels)
            sums[key] = sums.get(key, 0.0) + s.value
        if name in HOST_GAUGES:
            continue  # the same host value in every worker: a sum means nothing
        total = w.family(
            w.unique(family + "_all_workers", "gauge"),
            "gauge",
            f"{rows[0][1].help or name}, summed over live workers",
        )
        for labels_key, value in sorted(sums.items()):
            w.sample(total, list(labels_key), value)


def _render_workers(w: _Writer, snapshot: Snapshot, prefix: str) -> None:
    states = {state: 0 for state in STATES}
    for worker in snapshot.workers:
        states[worker.state] = states.get(worker.state, 0) + 1
    family = w.family(prefix + "workers", "gauge", "Stats files by worker state")
    for state, n in sorted(states.items()):
        w.sample(family, [("state", state)], n)
    family = w.family(
        prefix + "archived_workers", "gauge", "Workers folded into the archive by clean"
    )
    w.sample(family, [], snapshot.archive.workers)
    # Deaths count on after clean: those folded and those still here.
    dead = [wk for wk in snapshot.workers if wk.state == "dead"]
    family = w.family(
        prefix + "worker_deaths",
        "counter",
        "Workers that died without closing their file (killed or crashed)",
    )
    w.sample(family, [], snapshot.archive.died + len(dead))
    family = w.family(
        prefix + "requests_cut_by_deaths",
        "counter",
        "Requests being served by workers when they died",
    )
    cut = sum(len(wk.slots) for wk in dead)
    w.sample(family, [], snapshot.archive.died_serving + cut)
    family = w.family(
        prefix + "unreadable_files", "gauge", "Files skipped as unreadable"
    )
    w.sample(family, [], len(snapshot.bad))
    family = w.family(
        prefix + "directory_problems",
        "gauge",
        "Reasons workers cannot write in the directory (mmstats show names them)",
    )
    w.sample(family, [], len(snapshot.problems))


def scrape(
    directory: str | os.PathLike[str] | None,
    *,
    openmetrics: bool = False,
    prefix: str = DEFAULT_PREFIX,
) -> bytes:
    """Read a directory and return its exposition; never raises for a bad one.

    :raises ValueError: ``prefix`` cannot start a metric name.
    """
    check_prefix(prefix)
    try:
        snapshot = read_totals(directory)
    except MmstatsError as exc:
        return render(None, openmetrics=openmetrics, prefix=prefix, error=str(exc))
    except Exception as exc:  # a scrape must always answer
        log.exception("mmstats could not read %r for a scrape", directory)
        return render(
            None,
            openmetrics=openmetrics,
            prefix=prefix,
            error=f"internal error: {exc!r}",
        )
    return render(snapshot, openmetrics=openmetrics, prefix=prefix)


def exposition(
    directory: str | os.PathLike[str] | None,
    accept: str | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> tuple[bytes, str]:
    """Return the body and content type answering a scrape with ``accept``."""
    openmetrics = wants_openmetrics(accept)
    body = scrape(directory, openmetrics=openmetrics, prefix=prefix)
    return body, OPENMETRICS_TYPE if openmetrics else CLASSIC_TYPE


StartResponse = Callable[..., Any]


class MetricsApp:
    """A WSGI app serving ``/metrics`` for a stats directory.

    Mount it anywhere; it answers every path with the exposition.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self.directory = directory
        self.prefix = check_prefix(prefix)

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> list[bytes]:
        body, content_type = exposition(
            self.directory, environ.get("HTTP_ACCEPT"), self.prefix
        )
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
        start_response("200 OK", headers)
        return [body]
