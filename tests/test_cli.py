"""The mmstats CLI, ``manage.py mmstats`` and ``flask mmstats`` (#4).

The stats directories here are written by real worker processes: one stays
alive serving a request, one is killed with SIGKILL mid-request, one exits
cleanly, and one records hostile strings.  The CLI runs as a subprocess, the
way users run it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import mmstats
from mmstats import _archive, _reader
from mmstats import _format as F
from mmstats._cli import EXIT_BAD_FILES, EXIT_DIRECTORY, EXIT_EMPTY, CliContext, run
from mmstats._render import clean_text, dump_view, show_view
from tests.workers import (
    ALIVE_REQUESTS,
    CLOSED_REQUESTS,
    HOSTILE_ARG,
    HOSTILE_PATH,
    HOSTILE_VIEW,
    KILLED_REQUESTS,
    ROOT,
    Workers,
    finish,
    populate,
    pty_fork,
    start_worker,
    totals_of,
)


def mmstats_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mmstats._cli`` the way a user would, output piped."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MMSTATS_DIR", "MMSTATS_TRACEBACK", "COLUMNS", "NO_COLOR")
    }
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mmstats._cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
        cwd=ROOT,
    )


def row(output: str, first: str) -> list[str]:
    """Return the tokens of the first output line starting with ``first``."""
    for line in output.splitlines():
        tokens = line.split()
        if tokens and tokens[0] == first:
            return tokens
    raise AssertionError(f"no line starts with {first!r} in:\n{output}")


SLOW_ROW = re.compile(
    r"^\s*(?:\d\d:\d\d:\d\d|\d\d-\d\d \d\d:\d\d)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\d+)"
    r"\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)"
)


def slow_rows(output: str) -> list[tuple[int, int, int, str, str, str, str]]:
    """Parse ``slow``: (pid, status, queries, method, path, view, host) per row."""
    lines = output.splitlines()
    rows = []
    for i, line in enumerate(lines):
        m = SLOW_ROW.match(line)
        if m:
            pid, status, _time, queries, _db, _mem, _load, method, path = m.groups()
            view, host = lines[i + 1].strip(), lines[i + 2].strip()
            rows.append((int(pid), int(status), int(queries), method, path, view, host))
    return rows


def expected_slow(workers: Workers) -> Counter[tuple[int, int, int, str, str]]:
    plans = {
        "alive": ALIVE_REQUESTS,
        "killed": KILLED_REQUESTS,
        "closed": CLOSED_REQUESTS,
    }
    return Counter(
        (workers.pids[role], status, queries, method, path)
        for role, requests in plans.items()
        for method, path, _view, status, queries, _fails in requests
    )


# -- show ---------------------------------------------------------------------


class TestShow:
    @pytest.mark.parametrize("command", ["show", "slow"])
    def test_piped_lines_end_without_padding(
        self, populated: Workers, command: str
    ) -> None:
        """Piped to a file or a program, no line ends in the spaces that pad
        it to the table's width."""
        result = mmstats_cli(command, "--dir", os.fspath(populated.directory))
        lines = result.stdout.splitlines()
        assert len(lines) > 5
        assert [line for line in lines if line != line.rstrip(" ")] == []

    @pytest.mark.parametrize("width", [72, 60, 50, 40])
    def test_narrow_terminals_leave_columns_out_rather_than_break_rows(
        self, populated: Workers, width: int
    ) -> None:
        """On a terminal narrower than the worker table, the columns least
        needed are left out, and the caption names them: each worker's row
        stays on one line with its PID, state and requests whole."""
        snapshot = mmstats.read_directory(populated.directory, slow=False)
        out = io.StringIO()
        console = Console(file=out, width=width, color_system=None)
        console.print(show_view(snapshot, False))
        text = out.getvalue()
        assert max(len(line) for line in text.splitlines()) <= width
        header = row(text, "PID")
        reqs = header.index("Reqs")
        assert header[:2] == ["PID", "State"]
        alive = row(text, str(populated.pids["alive"]))
        closed = row(text, str(populated.pids["closed"]))
        assert (alive[1], alive[reqs]) == ("alive", "7")
        assert (closed[1], closed[reqs]) == ("closed", "5")
        every = "PID State Up Reqs Avg/s 2xx 3xx 4xx 5xx Busy p50 p99 Q/req RSS"
        missing = [name for name in every.split() if name not in header]
        said = " ".join(text.split())
        if width <= 60:
            assert missing
        if missing:
            assert f"Left out to fit the width: {', '.join(missing)}." in said
        else:
            assert "Left out" not in said

    def test_dir_may_come_before_the_subcommand(
        self, populated: Workers, tmp_path: Path
    ) -> None:
        """``mmstats --dir DIR show`` reads DIR, as ``mmstats show --dir DIR``
        does; given in both places, the subcommand's wins."""
        d = os.fspath(populated.directory)
        before = mmstats_cli("--dir", d, "show")
        after = mmstats_cli("show", "--dir", d)
        assert before.returncode == after.returncode == 0, before.stderr
        requests = row(after.stdout, "total")[1]
        assert row(before.stdout, "total")[1] == requests
        missing = os.fspath(tmp_path / "nowhere")
        both = mmstats_cli("--dir", missing, "show", "--dir", d)
        assert both.returncode == 0 and row(both.stdout, "total")[1] == requests
        wrong = mmstats_cli("--dir", missing, "slow")
        assert wrong.returncode == EXIT_DIRECTORY
        assert "check the --dir you passed" in wrong.stderr

    def test_rows_show_the_counts_each_worker_wrote(self, populated: Workers) -> None:
        """Each worker's row has its requests, status classes, busy count and
        queries per request, as the worker recorded them."""
        result = mmstats_cli("show", "--dir", os.fspath(populated.directory))

        assert result.returncode == 0, result.stderr
        alive = row(result.stdout, str(populated.pids["alive"]))
        assert alive[1] == "alive"
        assert alive[3] == "7"
        assert alive[5:10] == ["3", "1", "2", "1", "1"]
        assert alive[12] == "1.3"  # 9 queries over 7 requests
        assert alive[13].endswith("MiB")
        closed = row(result.stdout, str(populated.pids["closed"]))
        assert closed[1] == "closed"
        assert (closed[3], closed[5], closed[8]) == ("5", "4", "1")

    def test_durations_and_sizes_carry_units(self, populated: Workers) -> None:
        """p50 and p99 are printed with ms or s, RSS with MiB."""
        result = mmstats_cli("show", "--dir", os.fspath(populated.directory))

        alive = row(result.stdout, str(populated.pids["alive"]))
        assert re.fullmatch(r"[\d.]+(ms|s)", alive[10])
        assert re.fullmatch(r"[\d.]+(ms|s)", alive[11])
        assert "Avg/s" in result.stdout

    def test_totals_row_adds_up_all_workers(self, populated: Workers) -> None:
        """The totals row equals Snapshot.totals(): 15 requests, 10 2xx, 1 3xx,
        2 4xx, 2 5xx; busy counts only the live worker's request."""
        result = mmstats_cli("show", "--dir", os.fspath(populated.directory))

        total = row(result.stdout, "total")
        assert total[1] == "15"
        assert total[3:8] == ["10", "1", "2", "2", "1"]
        assert total[10] == "0.7"  # 11 queries over 15 requests

    def test_busy_slot_of_a_live_worker_is_listed(self, populated: Workers) -> None:
        """A request being served shows its method, path, view and elapsed time."""
        result = mmstats_cli("show", "--dir", os.fspath(populated.directory))

        section = result.stdout.split("Requests in flight", 1)[1]
        busy = row(section, str(populated.pids["alive"]))
        assert busy[1:4] == ["GET", "/busy/", "shop.busy"]
        assert re.fullmatch(r"[\d.]+(ms|s)|\d+m\d\ds", busy[4])
        assert busy[5] == "2"

    def test_killed_worker_is_dead_with_its_last_request(
        self, populated: Workers
    ) -> None:
        """A worker killed mid-request is listed as dead, with the method and
        path it was serving, not in the main table."""
        result = mmstats_cli("show", "--dir", os.fspath(populated.directory))

        main, dead = result.stdout.split("Dead workers", 1)
        pid = str(populated.pids["killed"])
        assert pid not in main.split()
        line = row(dead, pid)
        assert line[1] == "2"
        assert line[3:6] == ["POST", "/checkout/42", "shop.checkout"]

    def test_output_fits_80_columns_and_wide_is_wider(self, populated: Workers) -> None:
        """Narrow output is at most 80 columns; --wide adds the Name column."""
        narrow = mmstats_cli("show", "--dir", os.fspath(populated.directory))
        wide = mmstats_cli("show", "--wide", "--dir", os.fspath(populated.directory))

        assert max(len(line) for line in narrow.stdout.splitlines()) <= 80
        assert "Name" not in narrow.stdout
        assert "Name" in wide.stdout
        name_column = row(wide.stdout, str(populated.pids["alive"]))[2]
        assert name_column == "alive"  # the worker's name is its role

    def test_console_script_runs_show(self, populated: Workers) -> None:
        """The installed ``mmstats`` console script runs the same command."""
        script = Path(sys.executable).with_name("mmstats")
        if not script.exists():
            pytest.skip("the mmstats console script is not installed in this env")
        result = subprocess.run(
            [os.fspath(script), "show", "--dir", os.fspath(populated.directory)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert row(result.stdout, "total")[1] == "15"

    def test_streams_are_injectable(self, populated: Workers) -> None:
        """run() writes the tables to the context's out stream, errors to err."""
        out, err = io.StringIO(), io.StringIO()
        app = CliContext(out=out, err=err, directory=os.fspath(populated.directory))

        assert run(["show"], app, "mmstats") == 0
        assert row(out.getvalue(), "total")[1] == "15"
        assert err.getvalue() == ""


# -- top ----------------------------------------------------------------------


def _wait_reading(pid: int, fd: int, deadline: float) -> tuple[int | None, bytes]:
    """Wait for a child on a pty to exit, reading what it prints meanwhile
    (a full pty would block it); return its exit status (None if it did not
    exit by the deadline) and what it printed."""
    import select

    status, output = None, b""
    while status is None and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            with contextlib.suppress(OSError):
                output += os.read(fd, 65536)
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(raw)
    return status, output


class TestTop:
    def test_top_prints_each_refresh_when_not_a_tty(self, populated: Workers) -> None:
        """With output to a pipe, top prints one frame per refresh and stops
        after --iterations; the later frames show rates between refreshes."""
        result = mmstats_cli(
            "top",
            "--iterations",
            "2",
            "--interval",
            "0.2",
            "--dir",
            os.fspath(populated.directory),
        )

        assert result.returncode == 0, result.stderr
        assert result.stdout.count("Stats directory") == 2
        first, second = result.stdout.split("Stats directory")[1:]
        assert "Avg/s" in first and "Req/s" not in first
        assert "Req/s: requests per second over the last" in second
        assert row(second, str(populated.pids["alive"]))[4] == "0.0"
        assert row(second, "total")[1] == "15"

    def test_top_on_an_empty_directory_says_what_it_waits_for(
        self, stats_dir: Path
    ) -> None:
        """No workers yet: a line saying when they appear, not an empty
        table between two rules."""
        result = mmstats_cli("top", "--iterations", "1", "--dir", os.fspath(stats_dir))

        assert result.returncode == 0, result.stderr
        assert "0 workers (none), 0 archived" in result.stdout
        assert "No workers yet: each writes its file when it records its first" in (
            result.stdout
        )
        assert "─" not in result.stdout and "PID" not in result.stdout

    @pytest.mark.parametrize("key", [b"q", b"\x03"], ids=["q", "ctrl-c"])
    def test_q_or_ctrl_c_quits_and_restores_the_terminal(
        self, populated: Workers, key: bytes
    ) -> None:
        """On a terminal, top runs until q or Ctrl-C, exits with status 0 and
        leaves the terminal in canonical mode with echo, cursor shown."""
        import termios

        pid, fd = pty_fork()
        if pid == 0:  # the child: run top on the pty
            # As from a shell on a terminal: a test run started in the
            # background (SIGINT ignored, which exec keeps) must not make
            # Ctrl-C do nothing.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            argv = ["top", "--interval", "0.2", "--dir", os.fspath(populated.directory)]
            os.execv(sys.executable, [sys.executable, "-m", "mmstats._cli", *argv])
        try:
            output, status = self._drive(pid, fd, key)
            attrs = termios.tcgetattr(fd)
        finally:
            os.close(fd)

        assert status == 0, output[-2000:]
        assert attrs[3] & termios.ICANON and attrs[3] & termios.ECHO
        assert output.endswith(b"\x1b[?25h") or b"\x1b[?25h" in output[-200:]

    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
    def test_terminated_top_restores_the_terminal_then_dies_of_the_signal(
        self, populated: Workers, signum: signal.Signals
    ) -> None:
        """SIGTERM or SIGHUP (``timeout 60 mmstats top``, a ``kill``) end top
        as before, by the signal, but only after the terminal is back in
        canonical mode with echo and the cursor shown."""
        import select
        import termios

        pid, fd = pty_fork()
        if pid == 0:  # the child: run top on the pty, signals at their default
            for default in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                signal.signal(default, signal.SIG_DFL)
            argv = ["top", "--interval", "0.2", "--dir", os.fspath(populated.directory)]
            os.execv(sys.executable, [sys.executable, "-m", "mmstats._cli", *argv])
        output, status = b"", None
        try:
            deadline = time.monotonic() + 60
            while b"Req/s" not in output and time.monotonic() < deadline:
                if select.select([fd], [], [], 0.2)[0]:
                    output += os.read(fd, 65536)
            os.kill(pid, signum)
            status, rest = _wait_reading(pid, fd, deadline)
            output += rest
            attrs = termios.tcgetattr(fd)
        finally:
            if status is None:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            os.close(fd)

        assert status == -signum, output[-2000:]
        assert attrs[3] & termios.ICANON and attrs[3] & termios.ECHO
        assert b"\x1b[?25h" in output[-200:]

    def test_top_in_a_background_job_runs_without_touching_the_terminal(
        self, populated: Workers, tmp_path: Path
    ) -> None:
        """``mmstats top --iterations 2 > log &`` from a terminal prints its
        refreshes and exits; changing the terminal's mode from a background
        process group had it stopped by SIGTTOU before its first frame."""

        log = tmp_path / "top.log"
        pid, fd = pty_fork()
        if pid == 0:  # a session on the pty, as a shell is, with a job
            job = os.fork()
            if job == 0:
                os.setpgid(0, 0)  # its own process group: in the background
                out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(out, 1)
                argv = ["top", "--iterations", "2", "--interval", "0.1"]
                argv += ["--dir", os.fspath(populated.directory)]
                os.execv(sys.executable, [sys.executable, "-m", "mmstats._cli", *argv])
            _, raw = os.waitpid(job, os.WUNTRACED)
            if os.WIFSTOPPED(raw):
                os.kill(job, signal.SIGKILL)
                os._exit(10 + os.WSTOPSIG(raw))
            os._exit(os.waitstatus_to_exitcode(raw))
        status = None
        try:
            status, _ = _wait_reading(pid, fd, time.monotonic() + 60)
        finally:
            if status is None:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            os.close(fd)

        assert status == 0, f"exit {status} (10 + n: stopped by signal n)"
        assert log.read_text().count("Stats directory") == 2

    def test_a_resized_terminal_gets_frames_of_its_new_width(
        self, populated: Workers
    ) -> None:
        """After the terminal is made narrower (SIGWINCH), each new frame of
        top is laid out for the new width, so no line wraps and the redraw
        in place stays aligned."""
        import fcntl
        import select
        import struct
        import termios

        def resize(fd: int, pid: int, columns: int) -> None:
            size = struct.pack("HHHH", 40, columns, 0, 0)
            fcntl.ioctl(fd, termios.TIOCSWINSZ, size)
            os.kill(pid, signal.SIGWINCH)

        pid, fd = pty_fork()
        if pid == 0:  # the child: run top on the pty
            # COLUMNS would fix the width; a shell does not export it.  It is
            # set below os.environ in a test run, hence an environment given.
            env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
            argv = ["top", "--interval", "0.1", "--dir", os.fspath(populated.directory)]
            os.execve(
                sys.executable, [sys.executable, "-m", "mmstats._cli", *argv], env
            )
        output, deadline = b"", time.monotonic() + 60
        try:
            resize(fd, pid, 100)
            frames_after = None
            while time.monotonic() < deadline:
                if select.select([fd], [], [], 0.1)[0]:
                    output += os.read(fd, 65536)
                frames = output.count(b"Stats directory")
                if frames_after is None and frames >= 2:
                    resize(fd, pid, 50)
                    frames_after = frames
                elif frames_after is not None and frames >= frames_after + 4:
                    break
            os.write(fd, b"q")
            os.waitpid(pid, 0)
        finally:
            os.close(fd)

        # Frame frames_after + 1 may have been drawn before the resize, and
        # the last one may be cut short: the two between are checked.
        plain = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", output).decode(errors="replace")
        frames_drawn = plain.replace("\r", "").split("Stats directory")
        assert frames_after is not None and len(frames_drawn) > frames_after + 4
        for frame in frames_drawn[frames_after + 2 : frames_after + 4]:
            assert "PID" in frame and "total" in frame, frame
            widths = [len(line) for line in ("Stats directory" + frame).split("\n")]
            assert max(widths) <= 50, frame

    @staticmethod
    def _drive(pid: int, fd: int, key: bytes) -> tuple[bytes, int | None]:
        """Read top's output until a refresh shows rates, press ``key``, wait."""
        import select

        output, sent, deadline = b"", False, time.monotonic() + 60
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    output += os.read(fd, 65536)
                except OSError:  # the child closed the terminal
                    pass
            if not sent and b"Req/s" in output:
                os.write(fd, key)
                sent = True
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return output, os.waitstatus_to_exitcode(status)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return output, None

    def test_rates_are_the_difference_over_the_interval(self, stats_dir: Path) -> None:
        """Req/s is (requests now - requests before) / seconds between reads."""
        from mmstats._cli import _rates

        recorder = mmstats.RequestRecorder(stats_dir, "rates", slow_seconds=10)
        for _ in range(2):
            recorder.finish(recorder.start("GET", "/"), 200)
        before = mmstats.read_directory(stats_dir)
        for _ in range(6):
            recorder.finish(recorder.start("GET", "/"), 200)
        after = mmstats.read_directory(stats_dir)

        rates = _rates(before, after, 2.0)
        [worker] = after.workers
        assert rates.per_worker[worker.path] == 3.0
        assert rates.total == 3.0


# -- slow ---------------------------------------------------------------------


class TestSlow:
    def test_every_request_is_listed_with_its_fields(self, populated: Workers) -> None:
        """With slow_seconds=0 each request is a slow entry: pid, status,
        queries, method, path, view and hostname match what was recorded."""
        result = mmstats_cli(
            "slow", "--limit", "0", "--dir", os.fspath(populated.directory)
        )

        assert result.returncode == 0, result.stderr
        rows = [
            r for r in slow_rows(result.stdout) if r[0] != populated.pids["hostile"]
        ]
        assert Counter(r[:5] for r in rows) == expected_slow(populated)
        host = socket.gethostname()
        views = {(r[3], r[4]): r[5] for r in rows}
        assert views[("POST", "/items/")] == "shop.create"
        assert views[("GET", "/missing")] == "-"
        assert all(host.startswith(r[6].rstrip("…")) for r in rows)

    def test_newest_first_like_the_reader(self, populated: Workers) -> None:
        """Entries come in the order of Snapshot.slow(): newest first."""
        result = mmstats_cli(
            "slow", "--limit", "0", "--dir", os.fspath(populated.directory)
        )

        got = [(r[0], r[1], r[4][:10]) for r in slow_rows(result.stdout)]
        want = mmstats.read_directory(populated.directory).slow()
        assert got == [(e.pid, e.status, clean_text(e.path)[:10]) for e in want]

    def test_sort_by_duration_and_limit(self, populated: Workers) -> None:
        """--sort duration puts the slowest first; --limit caps the rows."""
        result = mmstats_cli(
            "slow",
            "--sort",
            "duration",
            "--limit",
            "3",
            "--dir",
            os.fspath(populated.directory),
        )

        got = [(r[0], r[1]) for r in slow_rows(result.stdout)]
        snapshot = mmstats.read_directory(populated.directory)
        want = snapshot.slow(3, sort="duration")
        assert got == [(e.pid, e.status) for e in want]
        total = len(snapshot.slow())
        assert total > 3
        assert f"Slow requests (3 of {total})" in result.stdout

    def test_wide_shows_each_field_in_its_own_column(self, populated: Workers) -> None:
        """--wide has Host, Method, Path, View, Queries, DB, dMem, dLoad columns."""
        result = mmstats_cli(
            "slow", "--wide", "--limit", "0", "--dir", os.fspath(populated.directory)
        )

        header = next(line for line in result.stdout.splitlines() if "Status" in line)
        for name in ("End", "PID", "Host", "Method", "Path", "View", "Queries", "DB"):
            assert name in header
        create = next(
            line for line in result.stdout.splitlines() if "shop.create" in line
        )
        assert "POST" in create and "/items/" in create and " 302 " in create


# -- json ---------------------------------------------------------------------


class TestJson:
    def test_document_matches_the_reader(self, populated: Workers) -> None:
        """The JSON document has schema 1, the workers the reader sees with
        their pids, states and request counts, and the totals."""
        result = mmstats_cli("json", "--dir", os.fspath(populated.directory))

        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout, parse_constant=pytest.fail)
        snapshot = mmstats.read_directory(populated.directory)
        assert doc["schema"] == 1
        assert doc["directory"] == snapshot.directory
        assert doc["bad_files"] == []
        by_pid = {w["pid"]: w for w in doc["workers"]}
        assert set(by_pid) == {w.pid for w in snapshot.workers}
        for worker in snapshot.workers:
            got = by_pid[worker.pid]
            assert got["state"] == worker.state
            requests = [m for m in got["metrics"] if m["name"] == "requests"]
            assert requests[0]["value"] == worker.value("requests")
            assert len(got["slow"]) == len(worker.slow)
        totals = {(t["name"], json.dumps(t["labels"])): t for t in doc["totals"]}
        assert totals[("requests", "{}")]["value"] == 15
        assert totals[("in_flight", "{}")]["value"].keys() == {
            "sum",
            "min",
            "max",
            "workers",
        }
        hist = totals[("request_seconds", "{}")]
        assert hist["unit"] == "seconds"
        assert hist["value"]["count"] == 15
        assert {"p50", "p90", "p99", "buckets", "sum"} <= hist["value"].keys()

    def test_piped_output_is_one_line_unless_asked(self, populated: Workers) -> None:
        """Piped, the document is one line; --indent indents it; both parse to
        the same document."""
        d = os.fspath(populated.directory)
        piped = mmstats_cli("json", "--dir", d).stdout
        indented = mmstats_cli("json", "--dir", d, "--indent").stdout
        assert piped.count("\n") == 1 and indented.count("\n") > 50
        one, two = json.loads(piped), json.loads(indented)
        one.pop("read_at"), two.pop("read_at")
        assert one == two

    def test_slow_and_metrics_keep_the_schema(self, populated: Workers) -> None:
        """--slow N keeps the newest N entries of each ring and --metrics the
        named metrics, everywhere in the document."""
        d = os.fspath(populated.directory)
        full = json.loads(mmstats_cli("json", "--dir", d).stdout)
        doc = json.loads(
            mmstats_cli(
                "json", "--dir", d, "--slow", "1", "--metrics", "requests,in_flight"
            ).stdout
        )
        assert doc.keys() == full.keys()
        for worker, before in zip(doc["workers"], full["workers"], strict=True):
            assert worker["slow"] == before["slow"][:1]
            assert {m["name"] for m in worker["metrics"]} <= {"requests", "in_flight"}
            assert [m for m in worker["metrics"] if m["name"] == "requests"] == [
                m for m in before["metrics"] if m["name"] == "requests"
            ]
        assert {t["name"] for t in doc["totals"]} == {"requests", "in_flight"}
        none = json.loads(mmstats_cli("json", "--dir", d, "--slow", "0").stdout)
        assert all(w["slow"] == [] for w in none["workers"])
        assert any(w["slow"] for w in full["workers"])
        bad = mmstats_cli("json", "--dir", d, "--slow", "-1")
        assert bad.returncode == 2 and "--slow" in bad.stderr

    def test_metrics_names_no_worker_has_are_named_on_stderr(
        self, populated: Workers
    ) -> None:
        """A mistyped --metrics name still gives the document, with a one-line
        warning naming it; names that exist give none."""
        d = os.fspath(populated.directory)
        typo = mmstats_cli("json", "--dir", d, "--metrics", "requests,request_second")
        assert typo.returncode == 0
        doc = json.loads(typo.stdout)
        assert {t["name"] for t in doc["totals"]} == {"requests"}
        assert typo.stderr == (f"Warning: no metric named 'request_second' in {d!r}.\n")
        good = mmstats_cli("json", "--dir", d, "--metrics", "requests,in_flight")
        assert good.returncode == 0 and good.stderr == ""

    def test_dead_worker_keeps_its_slot(self, populated: Workers) -> None:
        """The killed worker is "dead" and its slot holds the request it served."""
        doc = json.loads(
            mmstats_cli("json", "--dir", os.fspath(populated.directory)).stdout
        )

        [dead] = [w for w in doc["workers"] if w["pid"] == populated.pids["killed"]]
        assert dead["state"] == "dead"
        assert dead["closed_at"] is None
        [slot] = dead["slots"]
        assert (slot["method"], slot["path"], slot["view"]) == (
            "POST",
            "/checkout/42",
            "shop.checkout",
        )
        assert slot["queries"] == 3

    def test_every_documented_field_is_present(self, populated: Workers) -> None:
        """Each worker, metric and the archive carry the documented keys."""
        doc = json.loads(
            mmstats_cli("json", "--dir", os.fspath(populated.directory)).stdout
        )

        assert set(doc) == {
            "schema",
            "directory",
            "read_at",
            "workers",
            "bad_files",
            "problems",
            "archive",
            "totals",
        }
        assert doc["problems"] == []
        worker_keys = {
            "file",
            "name",
            "pid",
            "hostname",
            "command",
            "state",
            "start_time",
            "created",
            "closed_at",
            "heartbeat",
            "version",
            "size",
            "problem",
            "metrics",
            "slots",
            "slow",
        }
        for worker in doc["workers"]:
            assert set(worker) == worker_keys
            for metric in worker["metrics"]:
                assert set(metric) == {
                    "name",
                    "kind",
                    "help",
                    "unit",
                    "labels",
                    "value",
                }
        assert {"workers", "folded", "metrics", "slow"} <= set(doc["archive"])

    def test_not_a_number_becomes_null(self) -> None:
        """NaN and infinities, which JSON has no word for, become null."""
        from mmstats._report import dumps

        text = dumps({"a": float("nan"), "b": [float("inf"), 1.5]})
        assert json.loads(text, parse_constant=pytest.fail) == {
            "a": None,
            "b": [None, 1.5],
        }


# -- clean --------------------------------------------------------------------


class TestClean:
    def test_clean_tells_live_workers_from_those_of_other_hosts(
        self, stats_dir: Path
    ) -> None:
        """A file of another host is kept (its liveness cannot be told here)
        and counted apart from this host's live workers."""
        stats = mmstats.Stats(stats_dir, "here")
        stats.counter("n", "n").incr()
        data = bytearray(Path(stats.path or "").read_bytes())
        host = b"elsewhere.invalid"
        data[F.H_HOSTNAME : F.H_HOSTNAME + 2 + len(host)] = (
            len(host).to_bytes(2, F.NATIVE_ORDER) + host
        )
        other = stats_dir / "there.4242.0badcafe.mmstats"
        other.write_bytes(bytes(data))
        other.chmod(0o600)
        assert {w.state for w in mmstats.read_directory(stats_dir).workers} == {
            "alive",
            "unknown",
        }
        result = mmstats_cli("clean", "--dir", os.fspath(stats_dir))

        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[-1] == (
            "Left 1 live worker alone, and 1 of other hosts (whose state is unknown"
            " here)."
        )
        assert other.exists() and Path(stats.path or "").exists()

    def test_clean_folds_dead_and_closed_and_keeps_totals(
        self, stats_dir: Path, worker_script: Path
    ) -> None:
        """clean removes only the dead and closed workers' files, and the
        counter and histogram totals are the same before and after."""
        workers = populate(stats_dir, worker_script, hostile=False)
        try:
            before = totals_of(stats_dir)

            dry = mmstats_cli("clean", "--dry-run", "--dir", os.fspath(stats_dir))
            assert dry.returncode == 0, dry.stderr
            assert "Would fold" in dry.stdout
            assert all(path.exists() for path in workers.files.values())

            result = mmstats_cli("clean", "--dir", os.fspath(stats_dir))
            assert result.returncode == 0, result.stderr
            assert "Folded into the archive" in result.stdout
            for role in ("killed", "closed"):
                assert str(workers.pids[role]) in result.stdout
                assert not workers.files[role].exists()
            assert workers.files["alive"].exists()
            assert "Left 1 live worker alone." in result.stdout
            assert totals_of(stats_dir) == before

            shown = mmstats_cli("show", "--dir", os.fspath(stats_dir))
            assert row(shown.stdout, "total")[1] == "14"
            assert "1 archived" not in shown.stdout and "2 archived" in shown.stdout
        finally:
            workers.stop()

    def test_the_archive_keeps_slow_entries_on_a_line_readers_may_skip(
        self, stats_dir: Path, worker_script: Path
    ) -> None:
        """clean writes the archive as two JSON lines, the slow entries last:
        a read that wants no slow entries (show, a scrape) parses only the
        first and has the same totals; slow and json still list the
        archived entries; an archive of version 1 (one object) still reads
        the same."""
        workers = populate(stats_dir, worker_script, hostile=False)
        try:
            assert mmstats_cli("clean", "--dir", os.fspath(stats_dir)).returncode == 0
            path = stats_dir / _archive.ARCHIVE_NAME
            head, entries, end = path.read_bytes().split(b"\n")
            assert json.loads(head)["version"] == 2 and "slow" not in json.loads(head)
            assert end == b"" and len(json.loads(entries)) > 0
            totals = totals_of(stats_dir)
            _reader.drop_caches()  # a first read, as a command makes
            lean = mmstats.read_directory(stats_dir, slow=False)
            full = mmstats.read_directory(stats_dir)
            assert len(full.archive.slow) == len(json.loads(entries))
            assert lean.archive.slow == []
            assert lean.totals().keys() == full.totals().keys()
            assert totals == {
                k: (
                    v.value if v.kind == "counter" else (v.value.count, v.value.buckets)
                )
                for k, v in lean.totals().items()
                if v.kind in ("counter", "histogram")
            }
            # The same archive as one object, as version 1 wrote it.
            one = {**json.loads(head), "version": 1, "slow": json.loads(entries)}
            path.write_text(json.dumps(one, indent=1))
            again = mmstats.read_directory(stats_dir)
            assert again.archive.error is None
            assert again.archive.slow == full.archive.slow
            assert totals_of(stats_dir) == totals
            slow = mmstats_cli("slow", "--dir", os.fspath(stats_dir))
            assert slow.returncode == 0, slow.stderr
        finally:
            workers.stop()

    def test_clean_of_a_directory_without_workers_succeeds(
        self, stats_dir: Path
    ) -> None:
        """Nothing to fold is not an error: status 0 and a message."""
        result = mmstats_cli("clean", "--dir", os.fspath(stats_dir))

        assert result.returncode == 0, result.stderr
        assert "Nothing to fold" in result.stdout


# -- dump ---------------------------------------------------------------------


class TestDump:
    @pytest.mark.parametrize("width", [60, 80])
    def test_numbers_are_never_broken_across_lines(
        self, stats_dir: Path, width: int
    ) -> None:
        """At 60 or 80 columns, a value such as a histogram's sum stays on
        one line: help texts and labels fold instead."""
        stats = mmstats.Stats(stats_dir, "digits")
        hist = stats.histogram(
            "took_seconds", "A help text long enough to need folding " * 3
        )
        for _ in range(3):
            hist.observe(0.1)  # sum 0.30000000000000004
        stats.counter("c", "c", {"label": "a long label value " * 3}).incr(
            1234567890123
        )
        [worker] = mmstats.read_directory(stats_dir).workers
        out = io.StringIO()
        Console(file=out, width=width, color_system=None).print(
            dump_view(worker, False)
        )
        text = out.getvalue()
        assert max(len(line) for line in text.splitlines()) <= width
        table = text.split("Series (2)", 1)[1].split("Buckets of", 1)[0]
        lines = table.splitlines()
        assert any("sum=0.30000000000000004" in line for line in lines), table
        assert any("1234567890123" in line for line in lines), table

    def test_dump_shows_every_field_of_a_dead_file(self, populated: Workers) -> None:
        """Header fields, every series, every histogram bucket with its bounds,
        the slot held at death and the slow ring are all printed."""
        path = populated.files["killed"]
        result = mmstats_cli("dump", "--wide", os.fspath(path))

        assert result.returncode == 0, result.stderr
        worker = mmstats.read_file(path)
        out = result.stdout
        for field_name in (
            "path",
            "name",
            "pid",
            "hostname",
            "command",
            "boot_id",
            "state",
            "version",
            "start_time",
            "created",
            "closed",
            "closed_at",
            "heartbeat",
            "size",
            "used",
        ):
            assert re.search(rf"^\s*{field_name}\s", out, re.M), field_name
        assert re.search(r"^\s*state\s+dead\s*$", out, re.M)
        assert re.search(rf"^\s*pid\s+{worker.pid}\s*$", out, re.M)
        for series in worker.series:
            assert series.name in out
        for series in worker.series:
            if series.kind != "histogram":
                continue
            section = out.split(f"Buckets of {series.name}", 1)[1]
            hist = series.value
            for k, count in hist.buckets.items():
                low, high = hist.bounds(k)
                if hist.integer:  # the whole numbers the bucket holds
                    first = 0 if k == 0 else math.floor(low) + 1
                    bounds = rf"{first}\s+{math.floor(high)}"
                    assert first <= math.floor(high), (series.name, k)
                else:
                    bounds = rf"{re.escape(f'{low:.6g}')}\s+{re.escape(f'{high:.6g}')}"
                line = rf"^\s*{k}\s+{bounds}\s+{count}\s*$"
                assert re.search(line, section, re.M), (series.name, k)
            summary = section.split("count=", 1)[1].split(" ", 2)
            assert summary[0] == str(hist.count)
            if hist.integer:
                assert summary[1] == f"sum={int(hist.sum)}", summary
        assert any(s.kind == "histogram" and s.value.integer for s in worker.series), (
            "the dead worker has a histogram of counts to show"
        )
        slots = out.split("Slots in use (1)", 1)[1]
        assert "POST" in slots and "/checkout/42" in slots and "shop.checkout" in slots
        assert "Slow ring (2 entries)" in out

    def test_dump_finds_a_file_by_name_in_the_directory(
        self, populated: Workers
    ) -> None:
        """A bare file name is looked up in --dir."""
        name = populated.files["closed"].name
        result = mmstats_cli("dump", name, "--dir", os.fspath(populated.directory))

        assert result.returncode == 0, result.stderr
        assert re.search(r"^\s*state\s+closed\s*$", result.stdout, re.M)

    def test_dump_of_a_bad_file_is_one_line(self, tmp_path: Path) -> None:
        """A file that is not a stats file gives one error line and status 1."""
        junk = tmp_path / "junk.mmstats"
        junk.write_bytes(b"not a stats file" * 400)
        result = mmstats_cli("dump", os.fspath(junk))

        assert result.returncode == EXIT_BAD_FILES
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith("Error: ") and "junk.mmstats" in line


# -- hostile strings ----------------------------------------------------------


class TestHostileStrings:
    COMMANDS = (
        ("show",),
        ("show", "--wide"),
        ("slow", "--limit", "0"),
        ("slow", "--limit", "0", "--wide"),
        ("json",),
    )

    def test_no_raw_control_characters_or_long_values(self, populated: Workers) -> None:
        """No ESC, BEL or raw newline from a file reaches the output; the 10 KB
        path is cut; narrow lines stay within 80 columns."""
        directory = os.fspath(populated.directory)
        runs = [mmstats_cli(*args, "--dir", directory) for args in self.COMMANDS]
        hostile = os.fspath(populated.files["hostile"])
        runs += [mmstats_cli("dump", hostile), mmstats_cli("dump", "--wide", hostile)]

        for result in runs:
            assert result.returncode == 0, result.stderr
            assert "\x1b" not in result.stdout and "\x07" not in result.stdout
            assert "red\x1b[0m\n" not in result.stdout
            assert "A" * 600 not in result.stdout
        for result in runs[0], runs[2], runs[5]:
            assert max(map(len, result.stdout.splitlines())) <= 80

    @pytest.mark.parametrize(
        ("raw", "shown"),
        [
            ("\u061c100-200", "\\u061c100-200"),  # Arabic letter mark: reorders
            ("a\xadb", "a\\xadb"),  # soft hyphen: invisible
            ("\u3164x", "\\u3164x"),  # Hangul filler: blank
            ("tag\U000e0041", "tag\\U000e0041"),  # tag characters: invisible
            ("\udcff", "\\xff"),  # a byte that was not UTF-8
            ("caf\u00e9 \u2764\ufe0f \U0001f600", "caf\u00e9 \u2764\ufe0f \U0001f600"),
        ],
    )
    def test_what_hides_or_reorders_text_is_escaped(self, raw: str, shown: str) -> None:
        """Characters that show as nothing, or reorder the text around them,
        are written as escapes; letters, symbols and emoji are not."""
        assert clean_text(raw) == shown

    def test_markup_and_escapes_are_shown_literally(self, populated: Workers) -> None:
        """Rich markup like [bold] is printed as text, and control characters
        appear as \\xNN and \\n escapes."""
        result = mmstats_cli("dump", "--wide", os.fspath(populated.files["hostile"]))

        escaped = "[bold]v[/bold]<script>\\x1b[31m\\n\\u202egnp.exe\\u2066\\u061c"
        escaped += "\\U000e0041"
        assert escaped in result.stdout
        assert "\\x1b[2J\\x1b]0;owned\\x07[red]arg[/red]" in result.stdout

    def test_json_escapes_html_and_keeps_the_exact_strings(
        self, populated: Workers
    ) -> None:
        """JSON output contains no raw <script> or control characters, and
        parsing it gives back the exact strings the worker wrote."""
        result = mmstats_cli("json", "--dir", os.fspath(populated.directory))

        assert "<script>" not in result.stdout
        doc = json.loads(result.stdout)
        [worker] = [w for w in doc["workers"] if w["pid"] == populated.pids["hostile"]]
        [entry] = worker["slow"]
        assert entry["view"] == HOSTILE_VIEW
        assert HOSTILE_PATH.startswith(entry["path"])
        assert HOSTILE_ARG in worker["command"]


# -- errors and exit statuses -------------------------------------------------


class TestErrors:
    @pytest.mark.parametrize("command", ["show", "top", "slow", "json", "clean"])
    def test_missing_directory_is_status_3_and_one_line(
        self, tmp_path: Path, command: str
    ) -> None:
        """A directory that does not exist: one line on stderr, status 3."""
        missing = tmp_path / "nope"
        result = mmstats_cli(command, "--dir", os.fspath(missing))

        assert result.returncode == EXIT_DIRECTORY
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith(
            f"Error: Stats directory {os.fspath(missing)!r} does not exist"
        )
        assert "Traceback" not in result.stderr

    @pytest.mark.parametrize("where", ["after", "before"])
    def test_an_empty_dir_is_a_usage_error_not_the_current_directory(
        self, tmp_path: Path, where: str
    ) -> None:
        """``--dir ""`` (an unset variable: ``--dir "$STATS"``) is refused
        with status 2; it was read as the current directory, where clean
        created a lock file and would fold any stats file."""
        args = ["clean", "--dir", ""] if where == "after" else ["--dir", "", "clean"]
        result = subprocess.run(
            [sys.executable, "-m", "mmstats._cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": os.fspath(ROOT)},
        )

        assert result.returncode == 2, result.stdout
        assert result.stderr.strip().splitlines()[-1] == (
            "Error: Invalid value for --dir: the stats directory must not be "
            "empty; pass the directory the app writes to"
        )
        assert list(tmp_path.iterdir()) == []

    def test_not_a_directory_is_status_3(self, tmp_path: Path) -> None:
        """A regular file given as the directory: status 3."""
        plain = tmp_path / "file"
        plain.write_text("x")
        result = mmstats_cli("show", "--dir", os.fspath(plain))

        assert result.returncode == EXIT_DIRECTORY
        assert "is not a directory" in result.stderr

    def test_a_directory_others_cannot_read_says_whose_it_is(self) -> None:
        """Run as another user on a worker's private directory, the error
        points at the user, not at the --dir that was right."""
        shared = Path(tempfile.mkdtemp(prefix="mmstats-cli-"))
        try:
            os.chmod(shared, 0o755)
            private = shared / "stats"
            private.mkdir(mode=0o700)
            mmstats.Stats(private, "private").counter("n", "n").incr()
            command = [sys.executable, "-m", "mmstats._cli", "show"]
            if os.getuid() == 0:  # root reads anything: be somebody else
                command = ["setpriv", "--reuid=65534", "--regid=65534"]
                command += ["--clear-groups", sys.executable, "-m", "mmstats._cli"]
                command += ["show"]
            else:
                os.chmod(private, 0)
            result = subprocess.run(
                [*command, "--dir", os.fspath(private)],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=ROOT,
            )
        finally:
            os.chmod(shared / "stats", 0o700)
            shutil.rmtree(shared, ignore_errors=True)
        assert result.returncode == EXIT_DIRECTORY, result.stderr
        assert result.stderr.splitlines() == [
            f"Error: Stats directory {os.fspath(private)!r} cannot be read"
            " (permission denied); read it as the user the app's workers run as"
            " (the directory is theirs and private), or as root."
        ]

    def test_an_unreadable_archive_is_named_as_the_archive(
        self, stats_dir: Path
    ) -> None:
        """A rotten archive is not counted as a stats file, and the headline
        does not claim that nothing was archived."""
        mmstats.Stats(stats_dir, "kept").counter("n", "n").incr()
        (stats_dir / _archive.ARCHIVE_NAME).write_text("{rotten")
        (stats_dir / "junk.1.a.mmstats").write_bytes(b"junk" * 2000)
        result = mmstats_cli("show", "--dir", os.fspath(stats_dir))

        assert result.returncode == EXIT_BAD_FILES
        assert "1 worker (1 alive), the archive unreadable; read at" in result.stdout
        assert result.stderr.splitlines() == [
            f"Error: 1 stats file and the archive in {os.fspath(stats_dir)!r} could"
            " not be read (listed above); the other files were shown."
        ]

    def test_missing_directory_from_the_environment(self, tmp_path: Path) -> None:
        """Without --dir, MMSTATS_DIR names the directory."""
        missing = os.fspath(tmp_path / "env-dir")
        result = mmstats_cli("show", env={"MMSTATS_DIR": missing})

        assert result.returncode == EXIT_DIRECTORY
        assert repr(missing) in result.stderr

    @pytest.mark.parametrize("command", ["show", "slow", "json"])
    def test_empty_directory_is_status_4(self, stats_dir: Path, command: str) -> None:
        """A directory without stats files: one line on stderr, status 4."""
        result = mmstats_cli(command, "--dir", os.fspath(stats_dir))

        assert result.returncode == EXIT_EMPTY
        [line] = result.stderr.splitlines()
        assert "holds no stats files" in line
        if command == "json":
            assert json.loads(result.stdout)["workers"] == []
        else:
            assert result.stdout == ""

    def test_bad_file_is_listed_and_good_ones_still_shown(
        self, stats_dir: Path, worker_script: Path
    ) -> None:
        """A corrupt file is listed with its reason after the table, the good
        worker is still shown, and the status is 1."""
        workers = Workers(stats_dir, worker_script)
        finish(start_worker(workers, "good", CLOSED_REQUESTS))
        workers.stop()
        bad = stats_dir / "broken.1.x.mmstats"
        bad.write_bytes(b"\x00" * 10)

        result = mmstats_cli("show", "--dir", os.fspath(stats_dir))

        assert result.returncode == EXIT_BAD_FILES
        table, listed = result.stdout.split("Files that could not be read", 1)
        assert row(table, str(workers.pids["good"]))[3] == "5"
        assert "broken.1.x.mmstats" in listed
        assert "shorter than" in " ".join(listed.split())
        [line] = result.stderr.splitlines()
        assert "1 stats file" in line and "(listed above)" in line

        doc = mmstats_cli("json", "--dir", os.fspath(stats_dir))
        assert doc.returncode == EXIT_BAD_FILES
        [entry] = json.loads(doc.stdout)["bad_files"]
        assert entry["path"] == os.fspath(bad)
        [line] = doc.stderr.splitlines()
        assert "1 stats file" in line and "(listed in bad_files)" in line

    def test_traceback_only_on_request(self, tmp_path: Path) -> None:
        """--traceback or MMSTATS_TRACEBACK=1 adds the traceback."""
        missing = os.fspath(tmp_path / "nope")
        plain = mmstats_cli("show", "--dir", missing)
        flag = mmstats_cli("show", "--traceback", "--dir", missing)
        env = mmstats_cli("show", "--dir", missing, env={"MMSTATS_TRACEBACK": "1"})

        assert "Traceback" not in plain.stderr
        assert "Traceback" in flag.stderr and flag.returncode == EXIT_DIRECTORY
        assert "Traceback" in env.stderr

    @pytest.mark.parametrize("command", ["show", "slow", "json"])
    def test_closed_pipe_is_status_141_and_quiet(
        self, populated: Workers, command: str
    ) -> None:
        """When the reader of the output is gone, the status is 141 (as if by
        SIGPIPE) and nothing is printed on stderr."""
        read_end, write_end = os.pipe()
        os.close(read_end)
        with subprocess.Popen(
            [sys.executable, "-m", "mmstats._cli", command],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env={**os.environ, "MMSTATS_DIR": os.fspath(populated.directory)},
            cwd=ROOT,
        ) as proc:
            os.close(write_end)
            _, stderr = proc.communicate(timeout=120)

        assert proc.returncode == 141
        assert stderr == b""

    def test_unknown_option_is_a_usage_error(self) -> None:
        """Click's usage errors exit with status 2."""
        result = mmstats_cli("show", "--bogus")

        assert result.returncode == 2
        assert "No such option" in result.stderr

    def test_help_lists_every_subcommand_and_status(self) -> None:
        """mmstats --help names the six subcommands and the exit statuses."""
        result = mmstats_cli("--help")

        assert result.returncode == 0
        for name in ("show", "top", "slow", "json", "clean", "dump"):
            assert re.search(rf"^\s+{name}\s", result.stdout, re.M)
        assert "Exit status" in result.stdout


# -- Django -------------------------------------------------------------------


def django_mmstats(
    populated: Workers, *args: str, settings: str | None = "tests.django_settings"
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m django mmstats ARGS`` with the test settings, whose
    MMSTATS["DIR"] is the populated directory; ``settings=None`` leaves
    DJANGO_SETTINGS_MODULE unset, for ARGS to name them."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DJANGO_SETTINGS_MODULE", "MMSTATS_DIR")
    }
    env["MMSTATS_TEST_DJANGO_DIR"] = os.fspath(populated.directory)
    env["PYTHONPATH"] = os.fspath(ROOT)
    if settings is not None:
        env["DJANGO_SETTINGS_MODULE"] = settings
    return subprocess.run(
        [sys.executable, "-m", "django", "mmstats", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


class TestDjangoCommand:
    def test_call_command_shows_the_directory_from_settings(
        self, populated: Workers, settings: Any
    ) -> None:
        """call_command("mmstats", "show") reads MMSTATS["DIR"] and writes to
        the command's stdout."""
        from django.core.management import call_command

        settings.MMSTATS = {"DIR": os.fspath(populated.directory)}
        out = io.StringIO()
        call_command("mmstats", "show", stdout=out)

        assert row(out.getvalue(), "total")[1] == "15"

    def test_call_command_with_dir_and_json(self, populated: Workers) -> None:
        """Options after the subcommand reach it: --dir, json."""
        from django.core.management import call_command

        out = io.StringIO()
        call_command(
            "mmstats", "json", "--dir", os.fspath(populated.directory), stdout=out
        )

        assert {w["pid"] for w in json.loads(out.getvalue())["workers"]} == set(
            populated.pids.values()
        )

    def test_dir_may_come_before_the_subcommand(
        self, populated: Workers, tmp_path: Path
    ) -> None:
        """``manage.py mmstats --dir DIR show`` reads DIR, as ``mmstats`` does;
        a --dir after the subcommand wins.  Django's parser refused it."""
        from django.core.management import call_command

        d = os.fspath(populated.directory)
        before, both = io.StringIO(), io.StringIO()
        call_command("mmstats", "--dir", d, "show", stdout=before)
        missing = os.fspath(tmp_path / "missing")
        call_command("mmstats", "--dir", missing, "show", "--dir", d, stdout=both)

        assert row(before.getvalue(), "total")[1] == "15"
        assert row(both.getvalue(), "total")[1] == "15"

    def test_errors_become_command_errors(self, tmp_path: Path) -> None:
        """A missing directory and a usage error raise one-line CommandErrors
        with the CLI's exit statuses."""
        from django.core.management import CommandError, call_command

        with pytest.raises(CommandError, match=r"does not exist") as missing:
            call_command("mmstats", "show", "--dir", os.fspath(tmp_path / "x"))
        assert missing.value.returncode == EXIT_DIRECTORY
        with pytest.raises(CommandError, match=r"No such option.*--bogus") as usage:
            call_command("mmstats", "show", "--bogus")
        assert usage.value.returncode == 2
        assert "\n" not in str(missing.value) + str(usage.value)

    def test_manage_py_runs_the_command(self, populated: Workers) -> None:
        """``django-admin mmstats show`` works from the command line, and
        --help lists the subcommands."""
        shown = django_mmstats(populated, "show")
        helped = django_mmstats(populated, "--help")
        missing = django_mmstats(populated, "show", "--dir", "/nonexistent/mmstats")

        assert shown.returncode == 0, shown.stderr
        assert row(shown.stdout, "total")[1] == "15"
        for name in ("show", "top", "slow", "json", "clean", "dump"):
            assert re.search(rf"^\s+{name}\s", helped.stdout, re.M), helped.stdout
        assert missing.returncode == EXIT_DIRECTORY
        assert missing.stderr.strip().count("\n") == 0
        assert "does not exist" in missing.stderr

    def test_a_usage_error_of_the_command_itself_is_one_line(
        self, populated: Workers
    ) -> None:
        """``manage.py mmstats --dir`` without its value: one line and status
        2, as a subcommand's usage error reads, not argparse's usage block;
        through call_command, a CommandError."""
        from django.core.management import CommandError, call_command

        result = django_mmstats(populated, "--dir")
        assert result.returncode == 2
        assert result.stderr.splitlines() == [
            "CommandError: argument --dir: expected one argument; see"
            " 'python -m django mmstats --help'."
        ]
        with pytest.raises(CommandError, match="expected one argument"):
            call_command("mmstats", "--dir")

    def test_django_options_may_follow_the_subcommand(self, populated: Workers) -> None:
        """``--settings``, ``--traceback``, ``-v 2`` and ``--no-color`` work
        after the subcommand as before it; the settings named are the ones
        read."""
        shown = django_mmstats(
            populated,
            *("show", "--wide", "--settings=tests.django_settings", "--traceback"),
            *("-v", "2", "--no-color"),
            settings=None,
        )

        assert shown.returncode == 0, shown.stderr
        assert row(shown.stdout, "total")[1] == "15"
        assert "\x1b[" not in shown.stdout


# -- Flask --------------------------------------------------------------------


def flask_mmstats(
    tmp_path: Path, directory: object, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run ``flask mmstats ARGS`` for an app whose MMSTATS_DIR is ``directory``
    (found through the flask.commands entry point: the app does not use
    MmStats)."""
    (tmp_path / "cli_flask_app.py").write_text(
        "from flask import Flask\n"
        "app = Flask(__name__)\n"
        f"app.config['MMSTATS_DIR'] = {directory!r}\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([os.fspath(tmp_path), os.fspath(ROOT)]),
    }
    flask = Path(sys.executable).with_name("flask")
    return subprocess.run(
        [os.fspath(flask), "--app", "cli_flask_app", "mmstats", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )


class TestFlaskCommand:
    def test_flask_command_uses_the_app_config(self, populated: Workers) -> None:
        """``flask mmstats show`` reads MMSTATS_DIR from the app's config."""
        from flask import Flask

        from mmstats_flask.cli import mmstats_command

        app = Flask("cli_test")
        app.config["MMSTATS_DIR"] = os.fspath(populated.directory)
        result = app.test_cli_runner().invoke(mmstats_command, ["show"])

        assert result.exit_code == 0, result.output
        assert row(result.output, "total")[1] == "15"

    def test_dir_may_come_before_the_subcommand(
        self, populated: Workers, tmp_path: Path
    ) -> None:
        """``flask mmstats --dir DIR show`` reads DIR over the app's config, as
        ``mmstats --dir DIR show`` does; a --dir after the subcommand wins."""
        from flask import Flask

        from mmstats_flask.cli import mmstats_command

        app = Flask("cli_test")
        app.config["MMSTATS_DIR"] = os.fspath(tmp_path / "missing")
        runner = app.test_cli_runner()
        d = os.fspath(populated.directory)
        before = runner.invoke(mmstats_command, ["--dir", d, "show"])
        missing = os.fspath(tmp_path / "missing")
        both = runner.invoke(mmstats_command, ["--dir", missing, "show", "--dir", d])

        assert before.exit_code == 0, before.output
        assert row(before.output, "total")[1] == "15"
        assert both.exit_code == 0, both.output
        assert row(both.output, "total")[1] == "15"

    def test_flask_command_exit_statuses(self, tmp_path: Path) -> None:
        """Errors keep the CLI's exit statuses under flask."""
        from flask import Flask

        from mmstats_flask.cli import mmstats_command

        app = Flask("cli_test")
        app.config["MMSTATS_DIR"] = os.fspath(tmp_path / "missing")
        runner = app.test_cli_runner()

        assert runner.invoke(mmstats_command, ["show"]).exit_code == EXIT_DIRECTORY
        assert runner.invoke(mmstats_command, ["show", "--bogus"]).exit_code == 2

    @pytest.mark.parametrize(
        "value", [123, b"/run/stats", ""], ids=["int", "bytes", "empty"]
    )
    def test_a_bad_mmstats_dir_in_the_config_is_one_line_and_status_2(
        self, value: object, tmp_path: Path
    ) -> None:
        """An app that does not use MmStats gets the command all the same (an
        entry point), with nothing having checked MMSTATS_DIR: a value that is
        not a path is named in one line, status 2, not a TypeError."""
        result = flask_mmstats(tmp_path, value, "show")

        assert result.returncode == 2, result.stderr
        assert result.stderr == (
            f"Error: MMSTATS_DIR must be a non-empty path, not {value!r}; fix it in"
            " app.config.\n"
        )

    def test_flask_cli_finds_the_command(
        self, populated: Workers, tmp_path: Path
    ) -> None:
        """The flask.commands entry point makes ``flask mmstats`` available."""
        result = flask_mmstats(tmp_path, os.fspath(populated.directory), "show")

        assert result.returncode == 0, result.stderr
        assert row(result.stdout, "total")[1] == "15"
