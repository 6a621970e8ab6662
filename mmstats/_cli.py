"""The ``mmstats`` command: show, top, slow, json, clean and dump stats files.

One click group serves three entry points: the ``mmstats`` console script,
``manage.py mmstats`` and ``flask mmstats``.  Each hands the group a
:class:`CliContext` with its output streams and its app's stats directory.
Exit statuses are listed in :data:`EXIT_STATUSES` and docs/CLI.md.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import logging
import os
import select
import shutil
import signal
import sys
import termios
import threading
import time
import traceback as tb
import tty
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, cast

import click
from rich.console import Console, RenderableType
from rich.live import Live
from rich.table import Table

from ._archive import ARCHIVE_NAME
from ._archive import clean as clean_directory
from ._reader import Snapshot, Worker, list_stats_files, read_directory, read_file
from ._render import (
    Rates,
    bad_table,
    clean_text,
    dump_view,
    problem_lines,
    safe,
    show_view,
    slow_table,
)
from ._report import (
    SUMMARY_NAMES,
    filtered,
    lifetime_rate,
    snapshot_json_text,
    summarize,
    uptime,
)
from ._writer import resolve_directory
from .exceptions import DirectoryError, MmstatsError

EXIT_OK = 0
EXIT_BAD_FILES = 1
EXIT_USAGE = 2
EXIT_DIRECTORY = 3
EXIT_EMPTY = 4
EXIT_INTERNAL = 5
EXIT_BROKEN_PIPE = 141
EXIT_STATUSES = {
    EXIT_OK: "success",
    EXIT_BAD_FILES: "some stats files could not be read (the others are shown)",
    EXIT_USAGE: "usage error: an unknown option or a bad value",
    EXIT_DIRECTORY: "the stats directory is missing or cannot be read",
    EXIT_EMPTY: "the stats directory holds no stats files",
    EXIT_INTERNAL: "unexpected internal error (rerun with --traceback)",
    EXIT_BROKEN_PIPE: "the reader of the output went away (as if by SIGPIPE)",
}

NARROW_WIDTH = 80
WIDE_WIDTH = 200


@dataclass
class CliContext:
    """What an entry point gives the command group: streams and defaults.

    :param directory: the stats directory of the host app (Django's
        ``MMSTATS["DIR"]``, Flask's ``MMSTATS_DIR``); ``None`` falls back to
        ``MMSTATS_DIR`` and then to the private default.
    :param missing_hint: what else to check when the stats directory does not
        exist (under Django: that the middleware is in ``MIDDLEWARE``).
    """

    out: IO[str]
    err: IO[str]
    directory: str | None = None
    missing_hint: str | None = None
    traceback: bool = False
    no_color: bool = False

    def width(self, wide: bool = False) -> int:
        """Return the output's width now: 80 columns, or wide with ``--wide``.

        Asked again on every refresh of ``top``, which follows the terminal
        when it is resized.
        """
        terminal = _isatty(self.out)
        columns = shutil.get_terminal_size((NARROW_WIDTH, 24)).columns
        if wide:
            width = columns if terminal else WIDE_WIDTH
        else:
            width = min(columns, NARROW_WIDTH) if terminal else NARROW_WIDTH
        return max(width, 40)

    def console(self, wide: bool = False) -> Console:
        """Return a console on ``out``: 80 columns, or wide with ``--wide``."""
        terminal = _isatty(self.out)
        no_color = self.no_color or "NO_COLOR" in os.environ or not terminal
        return _Console(
            # Piped, lines lose the spaces that pad them to the table's width.
            file=self.out if terminal else cast(IO[str], _Trimmed(self.out)),
            width=self.width(wide),
            no_color=no_color,
            color_system="auto" if terminal and not no_color else None,
            markup=False,
            emoji=False,
            highlight=False,
            soft_wrap=False,
            legacy_windows=False,
        )


class _Console(Console):
    """A rich console that leaves a closed pipe to the CLI's error handling.

    Rich exits with status 1 on its own, which here means "bad files".
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


class _Trimmed(io.TextIOBase):
    """A text stream that writes each line without its trailing spaces."""

    def __init__(self, out: IO[str]) -> None:
        super().__init__()
        self.out = out
        self.partial = ""

    def write(self, text: str) -> int:
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        if lines:
            self.out.write("".join(line.rstrip(" ") + "\n" for line in lines))
        return len(text)

    def flush(self) -> None:
        if self.partial:
            self.out.write(self.partial)
            self.partial = ""
        self.out.flush()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


# -- errors -------------------------------------------------------------------


class CliError(click.ClickException):
    """A one-line error, printed on the context's error stream."""

    exit_code = EXIT_BAD_FILES

    def __init__(self, message: str, err: IO[str] | None = None) -> None:
        super().__init__(clean_text(message))
        self.err = err

    def show(self, file: IO[Any] | None = None) -> None:
        """Print ``Error: <message>`` on one line."""
        stream = file or self.err or sys.stderr
        stream.write(f"Error: {self.format_message()}\n")
        stream.flush()


class BadFilesError(CliError):
    """Some stats files could not be read; the others were shown."""

    exit_code = EXIT_BAD_FILES


class DirectoryProblem(CliError):
    """The stats directory is missing or cannot be read."""

    exit_code = EXIT_DIRECTORY


class EmptyDirectory(CliError):
    """The stats directory holds no stats files."""

    exit_code = EXIT_EMPTY


class CannotListen(CliError):
    """The address to serve on is taken or not ours (a usage error)."""

    exit_code = EXIT_USAGE


class InternalError(CliError):
    """Something failed that is not the user's doing."""

    exit_code = EXIT_INTERNAL


@contextlib.contextmanager
def _errors(app: CliContext, traceback: bool) -> Iterator[None]:
    """Turn exceptions into one-line :class:`CliError` with an exit status."""
    try:
        yield
    except CliError as exc:
        exc.err = exc.err or app.err
        raise
    except (click.ClickException, click.exceptions.Exit):
        raise
    except BrokenPipeError:
        _quiet(app.out)
        raise click.exceptions.Exit(EXIT_BROKEN_PIPE) from None
    except DirectoryError as exc:
        _print_traceback(app, traceback)
        raise DirectoryProblem(f"{exc}; {_directory_hint(app, exc)}", app.err) from exc
    except MmstatsError as exc:
        _print_traceback(app, traceback)
        raise CliError(str(exc), app.err) from exc
    except Exception as exc:
        _print_traceback(app, traceback)
        raise InternalError(
            f"unexpected {type(exc).__name__}: {exc}; rerun with --traceback "
            "and report it.",
            app.err,
        ) from exc


def _directory_hint(app: CliContext, exc: DirectoryError) -> str:
    """Say what to do about a stats directory that cannot be read."""
    if _given_directory() is not None:
        where = "check the --dir you passed"
    elif app.directory is not None:
        where = "it is the app's stats directory setting; pass --dir to read another"
    else:
        where = "pass --dir or set MMSTATS_DIR to the directory the app writes to"
    if exc.reason == "does not exist":
        created = "workers create it when they record their first request"
        if app.missing_hint:
            created = f"{created} ({app.missing_hint})"
        return f"{created}; {where}."
    if "permission denied" in exc.reason:
        # The right directory, most likely: the workers' user made it 0700.
        return (
            "read it as the user the app's workers run as (the directory is"
            " theirs and private), or as root."
        )
    return f"{where}."


def _quiet(stream: IO[str]) -> None:
    """Point a stream whose reader went away at /dev/null.

    Otherwise the interpreter's final flush fails again and prints a
    warning (``mmstats slow | head``).
    """
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _print_traceback(app: CliContext, requested: bool) -> None:
    if requested or app.traceback:
        app.err.write(tb.format_exc())
        app.err.flush()


# -- the group ----------------------------------------------------------------


def _show_help(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """Print help on the context's output stream, not always sys.stdout."""
    if not value or ctx.resilient_parsing:
        return
    app = ctx.find_object(CliContext)
    click.echo(ctx.get_help(), file=app.out if app else None, color=ctx.color)
    ctx.exit()


class MmstatsCommand(click.Command):
    """A command whose ``--help`` goes to the context's output stream."""

    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        option = super().get_help_option(ctx)
        if option is not None:
            option.callback = _show_help
        return option


class MmstatsGroup(click.Group):
    """A group whose ``--help`` goes to the context's output stream."""

    command_class = MmstatsCommand

    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        option = super().get_help_option(ctx)
        if option is not None:
            option.callback = _show_help
        return option


CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 88}
_STATUS_HELP = "\n".join(f"  {code:<3}  {text}" for code, text in EXIT_STATUSES.items())


@click.group(
    cls=MmstatsGroup,
    context_settings=CONTEXT_SETTINGS,
    epilog="\b\nExit status:\n" + _STATUS_HELP,
)
@click.option(
    "--dir",
    "directory",
    metavar="DIR",
    help="Stats directory, for any subcommand (its own --dir wins).",
)
@click.pass_context
def cli(ctx: click.Context, directory: str | None) -> None:
    """Show the stats every worker of a web app writes, from any process.

    The stats directory is --dir (before or after the subcommand), else the
    app's setting (Django's MMSTATS["DIR"], Flask's MMSTATS_DIR), else
    $MMSTATS_DIR, else a private per-user default.  Set MMSTATS_TRACEBACK=1
    or pass --traceback to see the traceback behind an error.
    """
    _app(ctx)


def _given_directory() -> str | None:
    """Return the --dir given to the subcommand, else to a group, else None.

    The group is not always the root: ``flask mmstats`` is a group under
    flask's own.
    """
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        given = ctx.params.get("directory")
        if given is not None:
            return cast(str, given)
        ctx = ctx.parent
    return None


def _app(ctx: click.Context) -> CliContext:
    """Return the host's context, or one on sys.stdout and sys.stderr."""
    app = ctx.find_object(CliContext)
    if app is None:
        app = ctx.obj = CliContext(out=sys.stdout, err=sys.stderr)
    return app


def _directory(app: CliContext, given: str | None) -> str:
    """Return the stats directory: --dir, the app's, $MMSTATS_DIR or the default."""
    if given is None:
        given = _given_directory()
    if given == "":
        # An unset variable (--dir "$STATS"), not the current directory,
        # which clean would fold and leave a lock file in.
        raise click.BadParameter(
            "the stats directory must not be empty; pass the directory the app "
            "writes to",
            param_hint="--dir",
        )
    return resolve_directory(given if given is not None else app.directory)[0]


_Body = Callable[..., None]


def _common(func: _Body) -> Callable[..., None]:
    """Add --dir and --traceback and turn errors into exit statuses."""

    @functools.wraps(func)
    @click.pass_context
    def command(
        ctx: click.Context, /, directory: str | None, traceback: bool, **kwargs: Any
    ) -> None:
        app = _app(ctx)
        with _errors(app, traceback):
            func(app, _directory(app, directory), **kwargs)

    command = click.option(
        "--traceback",
        is_flag=True,
        envvar="MMSTATS_TRACEBACK",
        help="Show the traceback behind an error ($MMSTATS_TRACEBACK=1).",
    )(command)
    command = click.option(
        "--dir",
        "directory",
        metavar="DIR",
        help="Stats directory (default: the app's, $MMSTATS_DIR or private).",
    )(command)
    return command


_wide_option = click.option(
    "--wide", "-w", is_flag=True, help="Use the terminal's full width, more columns."
)


def _prog() -> str:
    """Return how the user called us: mmstats, manage.py mmstats, flask mmstats."""
    ctx = click.get_current_context(silent=True)
    # The path to our group: flask's own group is the root of flask mmstats.
    while ctx is not None and not isinstance(ctx.command, MmstatsGroup):
        ctx = ctx.parent
    return ctx.command_path if ctx is not None and ctx.command_path else "mmstats"


def _read(
    path: str, slow: bool = True, names: frozenset[str] | None = None
) -> Snapshot:
    """Read a directory, failing with status 4 when there is nothing in it."""
    snapshot = read_directory(path, slow=slow, names=names)
    _fail_if_empty(snapshot)
    return snapshot


def _fail_if_empty(snapshot: Snapshot) -> None:
    if snapshot.workers or snapshot.bad or snapshot.archive.workers:
        return
    path = snapshot.directory
    if snapshot.problems:
        # The reason workers have no file there, rather than advice that
        # cannot work while it lasts.
        raise EmptyDirectory(
            " ".join(snapshot.problems) + " It holds no stats files yet."
        )
    raise EmptyDirectory(
        f"Stats directory {path!r} holds no stats files; start the app with "
        f"MMSTATS_DIR={path} or pass --dir with the directory it writes to."
    )


def _warn_unknown_names(
    app: CliContext, snapshot: Snapshot, names: frozenset[str]
) -> None:
    """Say on stderr which asked-for metrics no worker and no archive has:
    a mistyped name would otherwise give a document without it, silently."""
    found = {s.name for w in snapshot.workers for s in w.series}
    found.update(s.name for s in snapshot.archive.series)
    missing = sorted(names - found)
    if missing and (snapshot.workers or snapshot.archive.workers):
        listed = ", ".join(repr(name) for name in missing)
        app.err.write(f"Warning: no metric named {listed} in {snapshot.directory!r}.\n")
        app.err.flush()


def _fail_on_bad_files(
    app: CliContext, snapshot: Snapshot, listed: str = "listed above"
) -> None:
    """Fail with status 1 after the output when some files were unreadable."""
    if snapshot.bad:
        n = sum(os.path.basename(b.path) != ARCHIVE_NAME for b in snapshot.bad)
        what = [f"{n} stats file{'' if n == 1 else 's'}"] if n else []
        if snapshot.archive.error:
            what.append("the archive")
        raise BadFilesError(
            f"{' and '.join(what)} in {snapshot.directory!r} could not be read "
            f"({listed}); the other files were shown.",
            app.err,
        )


# -- show and top -------------------------------------------------------------


@cli.command()
@_wide_option
@_common
def show(app: CliContext, path: str, wide: bool) -> None:
    """One row per worker, requests in flight, dead workers and totals."""
    snapshot = _read(path, slow=False, names=SUMMARY_NAMES)
    app.console(wide).print(show_view(snapshot, wide, prog=_prog()))
    _fail_on_bad_files(app, snapshot)


@cli.command()
@_wide_option
@click.option(
    "--interval",
    "-n",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many refreshes (default: until q or Ctrl-C).",
)
@_common
def top(
    app: CliContext, path: str, wide: bool, interval: float, iterations: int | None
) -> None:
    """Refresh show's tables, with request rates between refreshes.

    Press q or Ctrl-C to quit.  When the output is not a terminal, each
    refresh is printed after the previous one.
    """
    console = app.console(wide)
    try:
        with _die_of_signals_unwound(), _Keys() as keys:
            frames = _frames(
                path, wide, interval, iterations, keys.wait, console.is_terminal
            )
            if console.is_terminal:
                _live(console, frames, lambda: app.width(wide))
            else:
                for n, frame in enumerate(frames):
                    if n:
                        console.print()
                    console.print(frame)
    except KeyboardInterrupt:
        return


class _Terminated(BaseException):
    """SIGTERM or SIGHUP arrived while top ran (BaseException, as Ctrl-C's)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated(signum)


@contextlib.contextmanager
def _die_of_signals_unwound() -> Iterator[None]:
    """Die of SIGTERM or SIGHUP only after the terminal is restored.

    Their default action ends the process at once, leaving the terminal in
    cbreak mode with no echo and the cursor hidden (``timeout 60 mmstats
    top``, a ``kill``).  Raised as an exception they unwind the redraw and
    the key reader first; then the process dies of the signal as before.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers
        return
    saved: dict[signal.Signals, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            saved[signum] = signal.signal(signum, _raise_terminated)
    try:
        yield
    except _Terminated as exc:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        os.kill(os.getpid(), exc.signum)
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def _live(
    console: Console, frames: Iterator[RenderableType], width: Callable[[], int]
) -> None:
    with Live(
        console=console,
        auto_refresh=False,
        redirect_stdout=False,
        redirect_stderr=False,
        vertical_overflow="crop",
    ) as live:
        for frame in frames:
            # A terminal made narrower would wrap lines laid out for the
            # old width, and the redraw in place would leave them behind.
            console.width = width()
            live.update(frame, refresh=True)


def _frames(
    path: str,
    wide: bool,
    interval: float,
    iterations: int | None,
    wait: Callable[[float], bool],
    keys: bool = True,
) -> Iterator[RenderableType]:
    """Yield one view per refresh; stop after ``iterations`` or on q."""
    previous: tuple[Snapshot, float] | None = None
    count = 0
    while True:
        snapshot = read_directory(path, slow=False, names=SUMMARY_NAMES)
        now = time.monotonic()
        rates = _rates(previous[0], snapshot, now - previous[1]) if previous else None
        if rates is not None:
            rates.keys = keys
        yield show_view(snapshot, wide, rates, prog=_prog())
        count += 1
        if iterations is not None and count >= iterations:
            return
        previous = (snapshot, now)
        if wait(interval):
            return


def _rates(before: Snapshot, after: Snapshot, seconds: float) -> Rates:
    """Return requests per second between two snapshots of a directory."""
    seconds = max(seconds, 1e-3)
    old = {w.path: summarize(w.series).requests for w in before.workers}
    per_worker: dict[str, float] = {}
    for w in after.workers:
        requests = summarize(w.series).requests
        if w.path in old:
            per_worker[w.path] = max(0, requests - old[w.path]) / seconds
        else:
            span = min(uptime(w, after.read_at) or seconds, seconds)
            per_worker[w.path] = lifetime_rate(requests, span) or 0.0
    total_before = summarize(before.totals().values()).requests
    total_after = summarize(after.totals().values()).requests
    total = (
        (total_after - total_before) / seconds if total_after >= total_before else None
    )
    return Rates(per_worker, total, seconds)


def _in_foreground(fd: int) -> bool:
    """Return whether this process is in the terminal's foreground.

    A background job (``mmstats top > log &``) that changed the terminal's
    mode would be stopped by SIGTTOU: it reads no keys, as ``top -b``.
    """
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False


class _Keys:
    """Read single key presses from a terminal on stdin while top runs.

    The terminal goes into cbreak mode (no echo, no line buffering, signals
    kept so Ctrl-C still interrupts) and is always restored on exit.
    """

    def __init__(self) -> None:
        self.fd: int | None = None
        self.saved: list[Any] | None = None

    def __enter__(self) -> _Keys:
        try:
            fd = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError):
            return self
        if os.isatty(fd) and _in_foreground(fd):
            self.saved = termios.tcgetattr(fd)
            self.fd = fd
            tty.setcbreak(fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None and self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)

    def wait(self, seconds: float) -> bool:
        """Wait ``seconds``; return True as soon as q is pressed."""
        if self.fd is None:
            time.sleep(seconds)
            return False
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready and os.read(self.fd, 1) in (b"q", b"Q"):
                return True
        return False


# -- slow, json, clean, dump --------------------------------------------------


@cli.command()
@_wide_option
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Show at most this many entries (0: all).",
)
@click.option(
    "--sort",
    type=click.Choice(["end", "duration"]),
    default="end",
    show_default=True,
    help="Newest first, or slowest first.",
)
@_common
def slow(app: CliContext, path: str, wide: bool, limit: int, sort: str) -> None:
    """Slow requests of all workers and of the archive, merged."""
    snapshot = _read(path)
    entries = snapshot.slow(limit or None, sort)
    console = app.console(wide)
    problems = problem_lines(snapshot)
    if problems:
        console.print(problems)
    if entries:
        total = len(snapshot.slow()) if limit else None
        console.print(slow_table(entries, snapshot.read_at, wide, total))
    else:
        console.print("No slow requests recorded.")
    if snapshot.bad:
        console.print(bad_table(snapshot.bad, snapshot.directory))
    _fail_on_bad_files(app, snapshot)


@cli.command("json")
@click.option(
    "--compact/--indent",
    default=None,
    help="One line, or indented (default: indented on a terminal, else one line).",
)
@click.option(
    "--slow",
    "slow_limit",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Keep the newest N entries of each slow ring (default: all).",
)
@click.option(
    "--metrics",
    metavar="NAMES",
    default=None,
    help="Keep only these metrics (names separated by commas).",
)
@_common
def json_command(
    app: CliContext,
    path: str,
    compact: bool | None,
    slow_limit: int | None,
    metrics: str | None,
) -> None:
    """Everything in the directory as one JSON document (schema 1).

    The document is printed even when the exit status is 1 or 4.
    """
    names = None
    if metrics is not None:
        names = frozenset(n.strip() for n in metrics.split(",") if n.strip())
    snapshot = read_directory(
        path, slow=True if slow_limit is None else slow_limit, names=names
    )
    if names is not None or slow_limit is not None:
        snapshot = filtered(snapshot, names, slow_limit)
    if names:
        _warn_unknown_names(app, snapshot, names)
    if compact is None:
        compact = not app.out.isatty()
    app.out.write(snapshot_json_text(snapshot, None if compact else 2) + "\n")
    app.out.flush()
    _fail_on_bad_files(app, snapshot, "listed in bad_files")
    _fail_if_empty(snapshot)


@cli.command()
@click.option("--dry-run", "-n", is_flag=True, help="Say what would be done only.")
@_common
def clean(app: CliContext, path: str, dry_run: bool) -> None:
    """Fold dead and closed workers into the archive and remove their files.

    Live workers' files are never touched, and totals stay the same.
    """
    snapshot = read_directory(path)
    result = clean_directory(path, dry_run=dry_run)
    console = app.console()
    if result.folded:
        verb = "Would fold" if dry_run else "Folded"
        console.print(_folded_table(result.folded, f"{verb} into the archive"))
    else:
        console.print("Nothing to fold: no dead or closed workers.")
    for removed in result.removed:
        line = safe(f"{'Would remove' if dry_run else 'Removed'} {removed}")
        console.print(line)
    # Workers of other hosts (or pid namespaces) are kept too: whether they
    # live cannot be told from here.
    others = min(result.kept_alive, sum(w.state == "unknown" for w in snapshot.workers))
    alive = result.kept_alive - others
    left = f"Left {alive} live worker{'' if alive == 1 else 's'} alone"
    if others:
        left += f", and {others} of other hosts (whose state is unknown here)"
    console.print(f"{left}.")
    if snapshot.bad:
        console.print(bad_table(snapshot.bad, snapshot.directory))
    _fail_on_bad_files(app, snapshot)


def _folded_table(workers: Sequence[Worker], title: str) -> Table:
    table = Table(title=title, title_justify="left", box=None, padding=(0, 1))
    for header in ("PID", "State", "Reqs"):
        table.add_column(header, justify="right" if header != "State" else "left")
    table.add_column("File", overflow="fold")
    for w in workers:
        requests = summarize(w.series).requests
        table.add_row(str(w.pid), w.state, str(requests), safe(w.path))
    return table


@cli.command()
@click.argument("file", metavar="FILE")
@_wide_option
@_common
def dump(app: CliContext, path: str, file: str, wide: bool) -> None:
    """Every field of one stats file, live or dead.

    FILE is a path, or the name of a file in the stats directory.
    """
    target = file
    if not os.path.isabs(file) and not os.path.lexists(file):
        target = os.path.join(path, file)
    worker = read_file(target)
    app.console(wide).print(dump_view(worker, time.time()))


@cli.command()
@click.option(
    "--listen",
    default="127.0.0.1:9301",
    show_default=True,
    metavar="HOST:PORT",
    help="Address to serve on; loopback unless told otherwise.",
)
@click.option(
    "--prefix",
    default="mmstats_",
    show_default=True,
    help="Prefix of every exported metric name.",
)
@_common
def serve(app: CliContext, path: str, listen: str, prefix: str) -> None:
    """Serve the live page (/), /metrics (Prometheus) and /api/json over HTTP.

    Counters and histograms are summed over every worker and the archive;
    gauges are given per live worker.  Runs until interrupted.
    """
    from ._exporter import check_prefix
    from ._serve import make_stats_server, parse_listen

    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    try:
        check_prefix(prefix)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--prefix") from None
    try:
        server = make_stats_server(host, port, path, prefix)
    except OSError as exc:
        fix = (
            "with a free port"
            if exc.errno == errno.EADDRINUSE
            else ("with an address of this machine")
        )
        raise CannotListen(
            f"cannot listen on {listen}: {exc.strerror or exc}; pass --listen "
            f"HOST:PORT {fix}.",
        ) from None
    app.err.write(
        f"Serving {path}: page http://{listen}/, metrics http://{listen}/metrics "
        "(Ctrl-C stops)\n"
    )
    try:
        list_stats_files(path)
    except DirectoryError as exc:
        # Workers may create it on their first request: served all the same.
        app.err.write(f"Warning: {exc}; the page says so until it can be read.\n")
    app.err.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# -- entry points -------------------------------------------------------------


def subcommand_help(prog: str) -> str:
    """Return the subcommands and exit statuses as text, for a host's help."""
    ctx = click.Context(cli, info_name=prog)
    names = cli.list_commands(ctx)
    width = max(map(len, names))
    lines = [f"subcommands (see '{prog} SUBCOMMAND --help' for their options):"]
    for name in names:
        command = cli.get_command(ctx, name)
        summary = command.get_short_help_str(70) if command else ""
        lines.append(f"  {name:<{width}}  {summary}")
    lines += ["", "exit status:"]
    lines += [f"  {code:<3}  {text}" for code, text in EXIT_STATUSES.items()]
    return "\n".join(lines)


def invoke(args: Sequence[str] | None, app: CliContext, prog_name: str) -> int:
    """Run the group on ``args``; return the exit status.

    Errors propagate as :class:`click.ClickException` (``exit_code`` holds
    the status) so that a host command can translate them.
    """
    argv = list(args) if args is not None else None
    status = cli.main(args=argv, prog_name=prog_name, standalone_mode=False, obj=app)
    return status if isinstance(status, int) else EXIT_OK


def run(args: Sequence[str] | None, app: CliContext, prog_name: str) -> int:
    """Run the group on ``args``, print any error on ``app.err``; return the status."""
    try:
        return invoke(args, app, prog_name)
    except click.ClickException as exc:
        exc.show(file=app.err)
        return exc.exit_code
    except click.exceptions.Abort:
        app.err.write("Aborted!\n")
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mmstats`` console script."""
    # The reader logs each unreadable file; the tables already list them,
    # so the console script keeps those records off stderr.
    logging.getLogger("mmstats").addHandler(logging.NullHandler())
    app = CliContext(out=sys.stdout, err=sys.stderr)
    return run(argv, app, "mmstats")


if __name__ == "__main__":
    sys.exit(main())
