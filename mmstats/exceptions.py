"""Errors raised by mmstats."""

from __future__ import annotations


class MmstatsError(Exception):
    """Base class of every mmstats error."""


class CorruptFileError(MmstatsError):
    """A file is not a readable stats file."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class UnsupportedVersionError(CorruptFileError):
    """A stats file has a format version this reader does not know."""

    def __init__(self, path: str, version: int, supported: int) -> None:
        newer = "newer" if version > supported else "older"
        super().__init__(
            path,
            f"has format version {version}, {newer} than this reader's {supported}; "
            "use a matching mmstats version to read it",
        )
        self.version = version


class DirectoryError(MmstatsError):
    """A stats directory is missing or cannot be read."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"Stats directory {path!r} {reason}")
        self.path = path
        self.reason = reason
