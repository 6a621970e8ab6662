"""mmstats: /proc for a web application.

Each worker process writes its counters, gauges, histograms, texts, the
requests it is serving and its slow requests into a memory-mapped file of
its own; readers in other processes show every worker at once.
"""

from __future__ import annotations

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
from ._recorder import RequestRecorder, current_request, exception_name, record_query
from ._serve import StatsApp
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

__version__ = "0.1.0"

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
]
