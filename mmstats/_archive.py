"""The archive: dead workers' counters, histograms and slow entries, folded.

``clean`` folds the files of dead and closed workers into one JSON archive
per directory and then removes them, so totals never go backwards when
workers are recycled.  The archive names every file it folded; a reader
skips those files, so a scan that races a clean counts each worker once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _format as F

if TYPE_CHECKING:
    from ._reader import Series, SlowEntry, Worker

log = logging.getLogger(__name__)

ARCHIVE_NAME = "mmstats-archive.json"
LOCK_NAME = "mmstats-archive.lock"
# Version 2 writes the slow entries on a line of their own after the rest,
# so that readers that want no slow entries (show, scrapes) parse only the
# first line; version 1 (one JSON object) is still read.
ARCHIVE_VERSION = 2
SLOW_KEEP = 256
FOLDED_KEEP_SECONDS = 3600.0
# A worker's temporary file lives for microseconds; one older than this was
# left by a process killed while creating its file.
STALE_NEW_SECONDS = 600.0


@dataclass
class Archive:
    """What earlier cleans folded; empty when there is no archive yet."""

    series: list[Series] = field(default_factory=list)
    slow: list[SlowEntry] = field(default_factory=list)
    folded: dict[str, float] = field(default_factory=dict)
    workers: int = 0
    error: str | None = None
    # Of the workers folded, those that had died without closing their file
    # (killed or crashed), and the requests they were serving then.
    died: int = 0
    died_serving: int = 0

    def to_json(self) -> dict[str, Any]:
        """Return the archive as one JSON object (version 1's layout)."""
        return {
            "version": ARCHIVE_VERSION,
            "workers": self.workers,
            "died": self.died,
            "died_serving": self.died_serving,
            "folded": self.folded,
            "series": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "help": s.help,
                    "unit": s.unit,
                    "labels": s.labels,
                    "value": _value_to_json(s.value),
                }
                for s in self.series
            ],
            "slow": [e.to_json() for e in self.slow],
        }


def _value_to_json(value: Any) -> Any:
    """Return a counter's value, or a histogram's with its exact sum."""
    from ._reader import HistogramValue, exact_parts

    if not isinstance(value, HistogramValue):
        return value
    data = value.to_json()
    # The sum of every worker folded, kept exactly: the totals before and
    # after a clean then round to the same float.
    parts = exact_parts(value.sums())
    if len(parts) > 1:
        data["sum_parts"] = parts
    return data


def _from_json(data: Any, slow_entries: Any = ()) -> Archive:
    """Build an archive from its JSON: ``data`` the whole of a version 1
    archive, or the first line of a version 2 one with ``slow_entries`` the
    second (None: not read, the archive then has no slow entries)."""
    from ._reader import HistogramValue, Series, SlowEntry

    version = data.get("version") if isinstance(data, dict) else None
    if version == 1:
        slow_entries = data["slow"]
    elif version != ARCHIVE_VERSION:
        raise ValueError("not an mmstats archive of version 1 or 2")
    series = []
    for item in data["series"]:
        kind = item["kind"]
        if kind == "histogram":
            value: Any = HistogramValue.from_json(item["value"])
        elif kind == "counter":
            value = int(item["value"])
            if value < 0:
                raise ValueError(f"counter {item['name']!r} is negative")
        else:
            continue
        labels = {str(k): str(v) for k, v in item["labels"].items()}
        series.append(
            Series(
                str(item["name"]),
                kind,
                str(item["help"]),
                str(item["unit"]),
                labels,
                value,
            )
        )
    slow = [
        SlowEntry(
            seq=0,
            pid=int(e["pid"]),
            hostname=str(e["hostname"]),
            method=str(e["method"]),
            path=str(e["path"]),
            view=str(e["view"]),
            status=int(e["status"]),
            start=float(e["start"]),
            end=float(e["end"]),
            duration=float(e["duration_seconds"]),
            queries=int(e["queries"]),
            db_seconds=float(e["db_seconds"]),
            memory_delta=int(e["memory_delta_bytes"]),
            load_delta=float(e["load_delta"]),
        )
        for e in (slow_entries or ())
    ]
    folded = {str(k): float(v) for k, v in data["folded"].items()}
    # Written since archives count deaths; 0 in older ones.
    died, serving = int(data.get("died", 0)), int(data.get("died_serving", 0))
    if min(died, serving) < 0:
        raise ValueError("a count of deaths is negative")
    return Archive(series, slow, folded, int(data["workers"]), None, died, serving)


# The archive read last, by file identity, and whether its slow entries
# were read: readers that come back (top, serve, the page) parse it again
# only after a clean has rewritten it.
_kept: tuple[tuple[Any, ...], Archive, bool] | None = None


def _keep(identity: tuple[Any, ...], archive: Archive, slow: bool = True) -> None:
    global _kept
    _kept = (identity, archive, slow)


def load_archive(directory: str, slow: bool = True) -> Archive:
    """Read the archive of ``directory``; a bad one comes back empty with an error.

    With ``slow`` False its slow entries are left unread (version 2 keeps
    them on a line of their own) and the archive comes back without them.
    """
    path = os.path.join(directory, ARCHIVE_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return Archive()
    except OSError as exc:
        return Archive(error=f"cannot be opened: {exc.strerror}")
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            identity = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if _kept is not None and _kept[0] == identity and (_kept[2] or not slow):
                return _kept[1]  # a clean replaces the file: a new inode
            raw = f.read(64 * 1024 * 1024)
        head, _, rest = raw.partition(b"\n")
        try:
            data = json.loads(head)
        except ValueError:  # a version 1 archive written over several lines
            data, rest = json.loads(raw), b""
        if slow and rest.strip():
            archive = _from_json(data, json.loads(rest))
        else:
            archive = _from_json(data, None)
        _keep(identity, archive, slow or data.get("version") == 1)
        return archive
    except (
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        OverflowError,
        RecursionError,
        MemoryError,
        OSError,
    ) as exc:
        return Archive(error=f"is not a readable archive: {exc or type(exc).__name__}")


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
    """Hold the directory's clean lock, so two cleans never interleave."""
    path = os.path.join(directory, LOCK_NAME)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass
class CleanResult:
    """What a clean folded and removed."""

    folded: list[Worker]
    removed: list[str]
    kept_alive: int
    dry_run: bool


def _write_archive(directory: str, archive: Archive) -> None:
    path = os.path.join(directory, ARCHIVE_NAME)
    tmp = f"{path}.{os.getpid()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            data = archive.to_json()
            slow = data.pop("slow")
            # Two lines, the slow entries last (JSON text holds no newline).
            json.dump(data, f, separators=(",", ":"))
            f.write("\n")
            json.dump(slow, f, separators=(",", ":"))
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        # rename is atomic: a reader sees the old archive or the new one.
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def clean(directory: str, dry_run: bool = False) -> CleanResult:
    """Fold dead and closed workers into the archive, then remove their files.

    Live workers' files are never touched.  Safe to run twice at once (the
    second waits for the first), while workers start, and after a clean
    killed at any point.  Also removes what killed processes left behind:
    temporary archives and temporary worker files.

    :raises MmstatsError: the existing archive is unreadable (it is left as
        it is, since writing over it would lose its totals), or the
        directory cannot be written.
    """
    from .exceptions import MmstatsError

    try:
        return _clean(directory, dry_run)
    except OSError as exc:
        where = exc.filename if isinstance(exc.filename, str) else directory
        raise MmstatsError(
            f"Cannot clean stats directory {directory!r}: {where!r}: "
            f"{exc.strerror or exc}; run clean as the user the workers run as."
        ) from None


def _clean(directory: str, dry_run: bool) -> CleanResult:
    from ._reader import aggregate, list_stats_files, read_file
    from .exceptions import CorruptFileError, MmstatsError

    names = list_stats_files(directory)  # DirectoryError when missing
    # A dry run only reads: it takes no lock, so it creates no lock file.
    lock = contextlib.nullcontext() if dry_run else _locked(directory)
    with lock:
        archive = load_archive(directory)
        if archive.error:
            raise MmstatsError(
                f"Archive {os.path.join(directory, ARCHIVE_NAME)!r} {archive.error}; "
                "move it aside to start a new one."
            )
        names = list_stats_files(directory)
        leftovers = [n for n in names if n in archive.folded]
        folded: list[Worker] = []
        alive = 0
        for name in names:
            if name in archive.folded:
                continue
            try:
                worker = read_file(os.path.join(directory, name))
            except CorruptFileError:
                continue
            if worker.state in ("dead", "closed"):
                folded.append(worker)
            else:
                alive += 1
        removed = [w.path for w in folded] + [
            os.path.join(directory, n) for n in leftovers
        ]
        litter = _litter(directory)
        if dry_run or not removed:
            if not dry_run:
                _remove(litter)
            return CleanResult(folded, removed + litter, alive, dry_run)

        now = time.time()
        totals = aggregate(folded, archive)
        slow = [e for w in folded for e in w.slow] + archive.slow
        slow.sort(key=lambda e: e.end, reverse=True)
        present = set(names)
        kept = {
            n: t
            for n, t in archive.folded.items()
            if n in present or now - t < FOLDED_KEEP_SECONDS
        }
        kept.update((os.path.basename(w.path), now) for w in folded)
        new = Archive(
            series=[s for s in totals.values() if s.kind in ("counter", "histogram")],
            slow=slow[:SLOW_KEEP],
            folded=kept,
            workers=archive.workers + len(folded),
            died=archive.died + sum(w.state == "dead" for w in folded),
            died_serving=archive.died_serving
            + sum(len(w.slots) for w in folded if w.state == "dead"),
        )
        _remove(litter)
        _write_archive(directory, new)
        # Killed from here on, the archive already names every file below:
        # readers skip them and the next clean removes them.
        _remove(removed)
        log.info(
            "Folded %d dead workers of %s into the archive", len(folded), directory
        )
        return CleanResult(folded, removed + litter, alive, dry_run)


def _litter(directory: str) -> list[str]:
    """Return files that killed processes left: temporary archives and files.

    Call with the clean lock held: any temporary archive is then stale.
    """
    found = []
    cutoff = time.time() - STALE_NEW_SECONDS
    with os.scandir(directory) as it:
        for entry in it:
            name = entry.name
            if name.startswith(ARCHIVE_NAME + ".") and name.endswith(".tmp"):
                found.append(entry.path)
            elif name.startswith(".") and name.endswith(".new"):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        found.append(entry.path)
    return sorted(found)


def _remove(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


__all__ = ["ARCHIVE_NAME", "Archive", "CleanResult", "clean", "load_archive", "F"]
