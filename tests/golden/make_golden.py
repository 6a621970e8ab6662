"""Write the golden stats file that pins format version 3.

Run in a fresh process: ``python tests/golden/make_golden.py OUT``.  Every
value that would differ between runs (pid, times, host, thread id) is fixed,
so two runs write the same bytes.  Changing the output of this script means
a format version bump.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
from pathlib import Path

import mmstats
import mmstats._recorder as recorder_module
from mmstats import _format as F


def _fixed_clock(start: float, step: float):  # type: ignore[no-untyped-def]
    state = [start]

    def clock() -> float:
        state[0] += step
        return state[0]

    return clock


def write(out: Path) -> None:
    """Write a file with every record type and fixed header fields to ``out``."""
    directory = tempfile.mkdtemp(prefix="mmstats-golden-")
    recorder_module._perf = _fixed_clock(100.0, 0.25)
    recorder_module._wall = _fixed_clock(1_700_000_000.0, 1.0)
    real_get_ident = recorder_module.threading.get_ident
    recorder_module.threading.get_ident = lambda: 777  # type: ignore[attr-defined]
    mmstats.RequestRecorder.rss = lambda self: 50 * 1024 * 1024  # type: ignore[method-assign]
    os.getloadavg = lambda: (0.5, 0.5, 0.5)

    stats = mmstats.Stats(directory, "golden")
    stats.counter("jobs", "Jobs done", {"queue": "mail"}).incr(7)
    stats.gauge("temperature", "Room temperature").set(21.5)
    hist = stats.histogram("runtime", "Run time")
    for value in (0.000_002, 0.003, 0.25, 1.5, 7200.0):
        hist.observe(value)
    stats.histogram("rows", "Rows per job", unit="count").observe(42)
    stats.text("version", "Deployed version", max_bytes=16).set("v1.2.3-ü")

    recorder = mmstats.RequestRecorder(
        directory, "golden", slow_seconds=0, slow_log_size=2
    )
    done = recorder.start("GET", "/orders/42", "shop.views.order")
    recorder_module.record_query(0.125)
    recorder.finish(done, 200)
    recorder.start("POST", "/cart/add", "shop.views.cart_add")  # left in flight

    recorder_module.threading.get_ident = real_get_ident  # type: ignore[attr-defined]
    path = stats.path or ""
    data = bytearray(Path(path).read_bytes())
    used = int.from_bytes(data[F.H_USED : F.H_USED + 8], sys.byteorder)
    del data[used:]

    def put_u64(offset: int, value: int) -> None:
        data[offset : offset + 8] = value.to_bytes(8, sys.byteorder)

    def put_f64(offset: int, value: float) -> None:
        data[offset : offset + 8] = struct.pack("=d", value)

    def put_text(offset: int, size: int, value: bytes) -> None:
        data[offset : offset + size] = bytes(size)
        data[offset : offset + 2] = len(value).to_bytes(2, sys.byteorder)
        data[offset + 2 : offset + 2 + len(value)] = value

    put_u64(F.H_PID, 12345)
    put_u64(F.H_START_TICKS, 99)
    put_f64(F.H_START_TIME, 1_699_999_000.0)
    put_f64(F.H_CREATED, 1_699_999_500.0)
    put_u64(F.H_CLOSED, 1)
    put_f64(F.H_CLOSED_AT, 1_700_000_100.0)
    put_u64(F.H_PIDNS, 4026531836)
    put_text(F.H_BOOT_ID, F.BOOT_ID_SIZE, b"00000000-0000-0000-0000-000000000000")
    put_text(F.H_HOSTNAME, F.HOSTNAME_SIZE, b"golden-host")
    put_text(F.H_COMMAND, F.COMMAND_SIZE, b"gunicorn: worker [golden]")
    out.write_bytes(bytes(data))
    os.unlink(path)


if __name__ == "__main__":
    write(Path(sys.argv[1]))
