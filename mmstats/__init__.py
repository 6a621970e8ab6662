"""mmstats: /proc for a web application.

Each worker process writes its counters, gauges, histograms, texts, the
requests it is serving and its slow requests into a memory-mapped file of
its own; readers in other processes show every worker at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._recorder import (
    RequestRecorder,
    current_request,
    exception_name,
    record_query,
    set_view,
)
from ._stats import (
    Counter,
    CounterSeries,
    Family,
    Gauge,
    GaugeSeries,
    Histogram,
    HistogramSeries,
    Stats,
    Text,
    TextSeries,
)
from ._writer import default_directory, resolve_directory
from .exceptions import (
    CorruptFileError,
    DirectoryError,
    MmstatsError,
    UnsupportedVersionError,
)

if TYPE_CHECKING:
    from ._archive import CleanResult, clean
    from ._exporter import MetricsApp, exposition, scrape
    from ._page import json_document, live_page
    from ._reader import (
        BadFile,
        GaugeTotal,
        HistogramValue,
        Series,
        Slot,
        SlowEntry,
        Snapshot,
        Worker,
        aggregate,
        read_directory,
        read_file,
    )
    from ._serve import StatsApp

__version__ = "0.1.0"

# The readers are imported on first use: an app that only writes stats (a
# web worker) does not pay for the reader, the exporter and the web server.
_LAZY = {
    "CleanResult": "_archive",
    "clean": "_archive",
    "MetricsApp": "_exporter",
    "exposition": "_exporter",
    "scrape": "_exporter",
    "json_document": "_page",
    "live_page": "_page",
    "BadFile": "_reader",
    "GaugeTotal": "_reader",
    "HistogramValue": "_reader",
    "Series": "_reader",
    "Slot": "_reader",
    "SlowEntry": "_reader",
    "Snapshot": "_reader",
    "Worker": "_reader",
    "aggregate": "_reader",
    "read_directory": "_reader",
    "read_file": "_reader",
    "StatsApp": "_serve",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mmstats' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BadFile",
    "CleanResult",
    "CorruptFileError",
    "Counter",
    "CounterSeries",
    "DirectoryError",
    "Family",
    "Gauge",
    "GaugeSeries",
    "GaugeTotal",
    "Histogram",
    "HistogramSeries",
    "HistogramValue",
    "MetricsApp",
    "MmstatsError",
    "RequestRecorder",
    "Series",
    "Slot",
    "SlowEntry",
    "Snapshot",
    "Stats",
    "StatsApp",
    "Text",
    "TextSeries",
    "UnsupportedVersionError",
    "Worker",
    "aggregate",
    "clean",
    "current_request",
    "default_directory",
    "exception_name",
    "exposition",
    "json_document",
    "live_page",
    "read_directory",
    "read_file",
    "record_query",
    "resolve_directory",
    "scrape",
    "set_view",
]
