#!/usr/bin/env python3
"""Set up a development environment for mmstats, run the demo or the tests.

Standard library only, so it runs before anything is installed. See
``python3 dev.py --help``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent
DJANGO_SITE = ROOT / "example_projects" / "django_site"
MANAGE_PY = DJANGO_SITE / "manage.py"
VAR_DIR = ROOT / "var"
# What the demo leaves under its var directory (--var).
DEMO_MMSTATS = "demo-mmstats"
DEMO_DATABASE = "demo-db.sqlite3"
DEMO_SERVER_LOG = "demo-gunicorn.log"

MIN_PYTHON = (3, 11)
HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_REQUESTS = 300
DEFAULT_CONCURRENCY = 8
GUNICORN_WORKERS = 4
STARTUP_TIMEOUT = 30.0
REQUEST_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
COMMAND_TIMEOUT = 120.0
PIP_JSON_URL = "https://pypi.org/pypi/pip/json"

# Debian packages the tests need, installed by "dev.py test --with-system".
SYSTEM_PACKAGES: tuple[str, ...] = ()

USAGE = """\
commands:
  demo   create .venv, install mmstats with the demo extra, start the Django
         example under gunicorn (4 workers) on 127.0.0.1, send it a few
         hundred mixed requests, then print "manage.py mmstats show" and
         "manage.py mmstats slow" and stop the server
  test   create .venv, install mmstats with the test extra and run pytest;
         arguments dev.py does not know are passed on to pytest

examples:
  python3 dev.py demo
  python3 dev.py demo --port 8800 --requests 1000
  python3 dev.py test
  python3 dev.py test -x -k slow_ring tests/test_reader.py
"""


class DevError(Exception):
    """A step failed; the message is printed as one line."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command named on the command line and return the exit status."""
    if sys.version_info < MIN_PYTHON:
        wanted = ".".join(map(str, MIN_PYTHON))
        print(f"dev.py: needs Python {wanted} or newer, not {sys.version.split()[0]}.")
        return 2

    parser = _build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command != "test" and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    # SIGTERM and SIGHUP raise SystemExit, so "finally" blocks stop the
    # server, as they do for Ctrl-C.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    try:
        if args.command == "demo":
            return run_demo(args)
        return run_tests(args, _pytest_args(extra))
    except DevError as exc:
        print(f"dev.py: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("\ndev.py: interrupted", file=sys.stderr)
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dev.py",
        description="Development entry point of mmstats: run the demo or the tests.",
        epilog=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--venv",
        metavar="DIR",
        type=Path,
        default=ROOT / ".venv",
        help="virtual environment to create or reuse (default: .venv)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="run the Django example under gunicorn and show its stats",
        description="Run the Django example under gunicorn and show its stats.",
        allow_abbrev=False,
    )
    demo.add_argument(
        "--port",
        metavar="N",
        type=_port,
        default=DEFAULT_PORT,
        help=f"port on {HOST} to serve on (default: {DEFAULT_PORT})",
    )
    demo.add_argument(
        "--requests",
        metavar="N",
        type=_positive_int,
        default=DEFAULT_REQUESTS,
        help=f"number of requests to send (default: {DEFAULT_REQUESTS})",
    )
    demo.add_argument(
        "--var",
        metavar="DIR",
        type=Path,
        default=VAR_DIR,
        help="where the demo keeps its stats, database and server log (default: var)",
    )
    demo.add_argument(
        "--concurrency",
        metavar="N",
        type=_positive_int,
        default=DEFAULT_CONCURRENCY,
        help=f"requests in flight at once (default: {DEFAULT_CONCURRENCY})",
    )

    test = commands.add_parser(
        "test",
        parents=[common],
        help="run the test suite with pytest",
        description=(
            "Run the test suite with pytest. Other arguments go to pytest; "
            "put them after -- if pytest and dev.py share an option."
        ),
        allow_abbrev=False,
    )
    test.add_argument(
        "--with-system",
        action="store_true",
        help="also install the Debian packages the tests need (uses apt-get)",
    )
    return parser


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _pytest_args(extra: list[str]) -> list[str]:
    return extra[1:] if extra[:1] == ["--"] else extra


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


# Output -----------------------------------------------------------------


def step(message: str) -> None:
    """Print a one-line status for the step that starts now."""
    print(f"==> {message}", flush=True)


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _run(
    command: Sequence[str | Path],
    *,
    what: str,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> None:
    """Run *command*, raising :class:`DevError` naming *what* if it fails."""
    sys.stdout.flush()
    try:
        result = subprocess.run(
            [str(part) for part in command],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DevError(f"{what} did not finish within {timeout:.0f} s.") from None
    except OSError as exc:
        raise DevError(f"{what} could not start: {exc}.") from None
    if result.returncode != 0:
        raise DevError(f"{what} failed with status {result.returncode}.")


# Virtual environment ------------------------------------------------------


def ensure_venv(venv: Path) -> Path:
    """Return the Python of *venv*, creating or re-creating the venv if needed."""
    python = venv / "bin" / "python"
    if _venv_works(python):
        step(f"Using {_relative(venv)} ({_python_version(python)})")
        return python

    redirect = _redirect_target(venv)
    if redirect is not None:
        # Recent tox releases write a PEP 832 ".venv" file naming one of
        # their environments; dev.py needs the name for its own venv.
        step(f"Replacing {_relative(venv)}, a redirect file to {redirect}")
        venv.unlink()

    if venv.is_symlink():
        raise DevError(
            f"{_relative(venv)!r} is a symlink to a missing or broken virtual "
            "environment; remove the symlink or pass --venv DIR."
        )
    if venv.exists():
        # Refuse to delete a folder that does not look like a venv: --venv
        # may point at something else by mistake.
        if not (venv / "pyvenv.cfg").is_file():
            raise DevError(
                f"{_relative(venv)!r} exists but is not a virtual environment; "
                "move it away or pass --venv DIR."
            )
        step(f"Re-creating {_relative(venv)}, which is broken")
        shutil.rmtree(venv)
    else:
        step(f"Creating {_relative(venv)} with {sys.executable}")

    _create_venv(venv)
    if not _venv_works(python):
        raise DevError(
            f"the new virtual environment {_relative(venv)!r} has no working "
            "pip; delete it and try again."
        )
    return python


def _redirect_target(venv: Path) -> str | None:
    """Return the path in *venv* if it is a one-line redirect file, else None."""
    if venv.is_symlink() or not venv.is_file() or venv.stat().st_size > 4096:
        return None
    try:
        lines = venv.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    return lines[0].strip() if len(lines) == 1 and lines[0].strip() else None


def _venv_works(python: Path) -> bool:
    """Return whether *python* runs, is recent enough and has pip."""
    # A venv breaks when the Python it was made from goes away (a pyenv
    # version removed, a distribution upgrade): its bin/python is then a
    # dangling symlink, or runs without the venv's packages.
    if not python.exists():
        return False

    probe = (
        "import sys, pip; "
        "sys.exit(0 if sys.prefix != sys.base_prefix "
        f"and sys.version_info >= {MIN_PYTHON!r} else 1)"
    )
    try:
        result = subprocess.run(
            [str(python), "-c", probe],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _python_version(python: Path) -> str:
    result = subprocess.run(
        [str(python), "-c", "import platform; print(platform.python_version())"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    return f"Python {result.stdout.strip() or '?'}"


def _create_venv(venv: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "venv", str(venv)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode == 0:
        return

    # Debian's python3 without the python3-venv package has no ensurepip,
    # so "venv" fails after creating a venv without pip. Start again
    # without pip and install pip from its wheel on PyPI.
    if "ensurepip" not in result.stdout + result.stderr:
        raise DevError(
            f"creating {_relative(venv)!r} failed: "
            f"{_last_line(result.stderr or result.stdout)}"
        )
    step("This Python has no ensurepip; installing pip from PyPI instead")
    shutil.rmtree(venv, ignore_errors=True)
    _run(
        [sys.executable, "-m", "venv", "--without-pip", venv],
        what="python3 -m venv --without-pip",
    )
    bootstrap_pip(venv / "bin" / "python")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def bootstrap_pip(python: Path) -> None:
    """Install pip into the venv of *python* from the newest pip wheel on PyPI."""
    try:
        with urllib.request.urlopen(PIP_JSON_URL, timeout=60) as response:
            release = json.load(response)
        wheel = _pick_pip_wheel(release)
    except OSError as exc:
        raise DevError(
            f"could not read {PIP_JSON_URL}: {exc}; check the network."
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DevError(
            f"unexpected answer from {PIP_JSON_URL}: {exc!r}; install "
            "python3-venv (Debian) or use a Python that has ensurepip."
        ) from None

    with tempfile.TemporaryDirectory(prefix="dev-py-pip-") as tmp:
        path = Path(tmp) / wheel["filename"]
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(wheel["url"], timeout=120) as response:
                with path.open("wb") as out:
                    while chunk := response.read(1 << 16):
                        digest.update(chunk)
                        out.write(chunk)
        except OSError as exc:
            raise DevError(f"could not download {wheel['url']}: {exc}.") from None
        if digest.hexdigest() != wheel["sha256"]:
            raise DevError(
                f"{wheel['filename']} does not match its sha256 on PyPI; try again."
            )

        # A wheel is a zip archive that Python can import from, so pip runs
        # straight out of its own wheel to install that wheel.
        _run(
            [python, f"{path}/pip", "install", "--quiet", "--no-index", path],
            what=f"installing {wheel['filename']}",
        )


def _pick_pip_wheel(release: dict[str, Any]) -> dict[str, str]:
    for file in release["urls"]:
        filename = str(file["filename"])
        url = str(file["url"])
        if filename.endswith("-py3-none-any.whl") and url.startswith("https://"):
            return {
                "filename": filename,
                "url": url,
                "sha256": file["digests"]["sha256"],
            }
    raise ValueError("no py3-none-any wheel in the newest pip release")


def install_project(python: Path, extra: str) -> None:
    """Install mmstats in editable mode with *extra* into the venv of *python*."""
    step(f"Installing mmstats in editable mode with the {extra!r} extra")
    # -qq keeps pip to errors only; pip prints those whatever happens.
    _run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-qq",
            "--disable-pip-version-check",
            "-e",
            f".[{extra}]",
        ],
        what=f"pip install -e '.[{extra}]'",
    )


def install_system_packages() -> None:
    """Install the Debian packages in ``SYSTEM_PACKAGES`` with apt-get."""
    if not SYSTEM_PACKAGES:
        step("No Debian packages are needed by the tests")
        return
    if shutil.which("apt-get") is None:
        raise DevError("--with-system needs apt-get (Debian or Ubuntu); leave it off.")

    prefix = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    step(f"Installing Debian packages: {' '.join(SYSTEM_PACKAGES)}")
    _run([*prefix, "apt-get", "update", "-qq"], what="apt-get update", env=env)
    _run(
        [*prefix, "apt-get", "install", "-y", "-qq", "--no-install-recommends"]
        + list(SYSTEM_PACKAGES),
        what="apt-get install",
        env=env,
    )


# Tests -------------------------------------------------------------------


def run_tests(args: argparse.Namespace, pytest_args: list[str]) -> int:
    """Set up the venv and run pytest; return pytest's exit status."""
    python = ensure_venv(args.venv)
    install_project(python, "test")
    if args.with_system:
        install_system_packages()

    command = [str(python), "-m", "pytest", *pytest_args]
    step(f"Running {shlex.join(['python', *command[1:]])}")
    return subprocess.call(command, cwd=ROOT)


# Demo --------------------------------------------------------------------


def run_demo(args: argparse.Namespace) -> int:
    """Run the Django example under gunicorn, load it and show its stats."""
    check_port_free(args.port)
    python = ensure_venv(args.venv)
    install_project(python, "demo")

    var = args.var.resolve()
    stats_dir, database = var / DEMO_MMSTATS, var / DEMO_DATABASE
    _fresh_private_dir(stats_dir)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "django_site.settings",
        "DJANGO_SITE_DB": str(database),
        "MMSTATS_DIR": str(stats_dir),
        "PYTHONUNBUFFERED": "1",
    }
    step(f"Migrating and seeding the example database {_relative(database)}")
    for command in (["migrate", "--noinput"], ["seed"]):
        _run(
            [python, MANAGE_PY, *command, "-v", "0"],
            what=f"manage.py {command[0]}",
            cwd=DJANGO_SITE,
            env=env,
        )

    server = GunicornServer(python, args.port, env, var / DEMO_SERVER_LOG)
    failures = 0
    try:
        server.start()
        results = send_requests(
            server.base_url, plan_requests(args.requests), args.concurrency
        )
        failures += report(results)
        for subcommand in ("show", "slow"):
            failures += show_command(python, subcommand, env)
    finally:
        server.stop()
    return 1 if failures else 0


def check_port_free(port: int) -> None:
    """Raise :class:`DevError` (status 2) if *port* on ``HOST`` is taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # gunicorn sets SO_REUSEADDR too: connections of an earlier run that
        # linger in TIME_WAIT must not make the port look busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DevError(
                    f"port {port} on {HOST} is busy; pass --port N to use another",
                    status=2,
                ) from None
            raise DevError(
                f"cannot listen on {HOST}:{port}: {exc.strerror}; "
                "pass --port N to use another",
                status=2,
            ) from None


def _fresh_private_dir(path: Path) -> None:
    """Create *path* empty and private (0700), removing what was there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
    path.mkdir(mode=0o700, parents=True)
    path.chmod(0o700)


class GunicornServer:
    """The Django example under gunicorn, in a process group of its own."""

    def __init__(self, python: Path, port: int, env: dict[str, str], log: Path) -> None:
        # The venv's gunicorn script rather than "python -m gunicorn", so
        # the workers' command line, which stats files record, says gunicorn.
        self.gunicorn = python.parent / "gunicorn"
        self.port = port
        self.env = env
        self.base_url = f"http://{HOST}:{port}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start gunicorn and wait until the example answers."""
        step(
            f"Starting gunicorn with {GUNICORN_WORKERS} sync workers on "
            f"{self.base_url} (log: {_relative(self.log)})"
        )
        command = [
            str(self.gunicorn),
            "django_site.wsgi:application",
            "--chdir",
            str(DJANGO_SITE),
            "--bind",
            f"{HOST}:{self.port}",
            "--workers",
            str(GUNICORN_WORKERS),
            "--worker-class",
            "sync",
            "--timeout",
            "30",
            "--graceful-timeout",
            "5",
            "--access-logfile",
            "-",
        ]
        # Recent gunicorn releases open a control socket under ~/.gunicorn;
        # the demo needs none, and older releases reject the option.
        if self._supports("--no-control-socket"):
            command.append("--no-control-socket")

        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            # A session of its own keeps Ctrl-C in the terminal away from
            # gunicorn, so stop() decides how it ends, and lets stop() kill
            # the workers along with the master.
            self.process = subprocess.Popen(
                command,
                cwd=DJANGO_SITE,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_until_ready()

    def _supports(self, option: str) -> bool:
        try:
            result = subprocess.run(
                [str(self.gunicorn), "--help"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
            )
        except OSError as exc:
            raise DevError(
                f"cannot run {self.gunicorn}: {exc.strerror}; "
                "delete the venv and run dev.py again."
            ) from None
        return option in result.stdout

    def _wait_until_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        # The in-app metrics endpoint is not counted in the stats, so the
        # readiness probe does not add a request to what the demo shows.
        url = f"{self.base_url}/stats/metrics"

        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DevError(
                    f"gunicorn exited with status {self.process.returncode} "
                    f"at startup; see {_relative(self.log)}:\n" + _tail(self.log)
                )
            try:
                with _OPENER.open(url, timeout=2) as response:
                    body = response.read()
            except urllib.error.HTTPError as exc:
                exc.close()
                raise DevError(
                    f"GET {url} answered {exc.code} instead of 200; see "
                    f"{_relative(self.log)}:\n" + _tail(self.log)
                ) from None
            except OSError:
                time.sleep(0.2)
                continue
            # Another server could have taken the port since it was checked.
            if b"# TYPE mmstats_" not in body:
                raise DevError(f"{url} is not the example site; pass --port N.")
            return
        raise DevError(
            f"gunicorn did not answer within {STARTUP_TIMEOUT:.0f} s; see "
            f"{_relative(self.log)}."
        )

    def stop(self) -> None:
        """Stop gunicorn and its workers: SIGTERM, then SIGKILL if needed."""
        if self.process is None:
            return

        with _signals_ignored():
            if self.process.poll() is None:
                step("Stopping gunicorn")
                self.process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=STOP_TIMEOUT)

            # Whatever is left of the process group (the master if it did
            # not stop in time, workers it left behind) is killed outright.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """Ignore Ctrl-C, SIGTERM and SIGHUP, so a second one cannot cut cleanup."""
    signums = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(f"    {line}" for line in text.splitlines()[-lines:])


# No proxies: the demo's requests must only ever go to 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class PlannedRequest:
    """A request to send and the status it should get."""

    path: str
    expected: int


@dataclass(frozen=True)
class Result:
    """What came back for a :class:`PlannedRequest`."""

    request: PlannedRequest
    status: int | None
    seconds: float
    error: str = ""


CATEGORY_SLUGS = ("books", "garden", "kitchen", "music", "tools")

# (weight, path maker, expected status) for the ordinary requests.
MIX: tuple[tuple[int, Callable[[random.Random], str], int], ...] = (
    (30, lambda rng: "/fast/", 200),
    (12, lambda rng: f"/many-queries/?n={rng.choice((5, 20, 50, 200))}", 200),
    (10, lambda rng: f"/products/?page={rng.randint(1, 10)}", 200),
    (
        8,
        lambda rng: (
            f"/products/?format=json&category={rng.choice(CATEGORY_SLUGS)}"
            f"&page={rng.randint(1, 3)}"
        ),
        200,
    ),
    (8, lambda rng: f"/products/{rng.randint(1, 200)}/", 200),
    (6, lambda rng: "/async/", 200),
    (6, lambda rng: f"/stream/?chunks={rng.choice((5, 10, 20))}", 200),
    (6, lambda rng: "/not-found/", 404),
    (2, lambda rng: "/products/999999/", 404),
    (4, lambda rng: "/boom/", 500),
    (3, lambda rng: "/forbidden/", 403),
)


def plan_requests(total: int, seed: int = 8765) -> list[PlannedRequest]:
    """Return *total* mixed requests, about one in 40 of them slow.

    Slow ones either sleep or run thousands of queries, so the slow ring
    shows both kinds.
    """
    rng = random.Random(seed)
    slow_count = min(total, max(1, total // 40))

    plan = [
        PlannedRequest(
            f"/slow/?s={rng.choice((0.6, 0.8, 1.0, 1.5))}"
            if index % 2 == 0
            else f"/many-queries/?n={rng.choice((4000, 6000))}",
            200,
        )
        for index in range(slow_count)
    ]
    weights = [weight for weight, _, _ in MIX]
    for _ in range(total - slow_count):
        _, make_path, expected = rng.choices(MIX, weights)[0]
        plan.append(PlannedRequest(make_path(rng), expected))
    rng.shuffle(plan)
    return plan


def send_requests(
    base_url: str, plan: list[PlannedRequest], concurrency: int
) -> list[Result]:
    """Send the requests of *plan*, *concurrency* at a time, showing progress."""
    step(f"Sending {len(plan)} requests, {concurrency} at a time")
    progress = _Progress(len(plan))
    results: list[Result] = []

    executor = ThreadPoolExecutor(concurrency, thread_name_prefix="demo-client")
    try:
        futures: list[Future[Result]] = [
            executor.submit(_fetch, base_url, planned) for planned in plan
        ]
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            progress.update(result)
    finally:
        # Without waiting: after Ctrl-C the requests not yet sent are
        # dropped, and the ones in flight end when the server stops.
        executor.shutdown(wait=False, cancel_futures=True)
        progress.close()
    return results


def _fetch(base_url: str, planned: PlannedRequest) -> Result:
    start = time.monotonic()
    try:
        with _OPENER.open(base_url + planned.path, timeout=REQUEST_TIMEOUT) as response:
            response.read()
            status: int | None = response.status
        error = ""
    except urllib.error.HTTPError as exc:
        exc.read()
        exc.close()
        status, error = exc.code, ""
    except OSError as exc:
        status, error = None, str(getattr(exc, "reason", exc))
    return Result(planned, status, time.monotonic() - start, error)


class _Progress:
    """A progress line redrawn in place on a terminal, else a line per tenth."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.unexpected = 0
        self.tty = sys.stdout.isatty()
        self.every = max(1, total // 10)
        self.started = self.drawn = time.monotonic()

    def update(self, result: Result) -> None:
        self.done += 1
        self.unexpected += result.status != result.request.expected
        now = time.monotonic()
        last = self.done == self.total
        if self.tty and not last and now - self.drawn < 0.1:
            return
        if not self.tty and not last and self.done % self.every:
            return

        self.drawn = now
        line = (
            f"    {self.done}/{self.total} requests, {self.unexpected} unexpected, "
            f"{now - self.started:.1f} s"
        )
        if self.tty:
            sys.stdout.write(f"\r{line}\x1b[K")
            sys.stdout.flush()
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.tty and self.done:
            sys.stdout.write("\n")
            sys.stdout.flush()


def report(results: list[Result]) -> int:
    """Print a summary of *results*; return the number of unexpected ones."""
    statuses = collections.Counter(
        "error" if r.status is None else str(r.status) for r in results
    )
    counts = ", ".join(
        f"{count} x {status}" for status, count in sorted(statuses.items())
    )
    slowest = max((r.seconds for r in results), default=0.0)
    print(f"    statuses: {counts}; slowest {slowest:.2f} s")

    unexpected = [r for r in results if r.status != r.request.expected]
    for result in unexpected[:5]:
        got = result.error or result.status
        print(
            f"    unexpected: GET {result.request.path} gave {got}, "
            f"expected {result.request.expected}"
        )
    if unexpected:
        print(f"dev.py: {len(unexpected)} requests did not get the expected status.")
    return len(unexpected)


def show_command(python: Path, subcommand: str, env: dict[str, str]) -> int:
    """Run ``manage.py mmstats <subcommand>``; return 1 if it failed, else 0."""
    step(f"manage.py mmstats {subcommand}")
    try:
        _run(
            [python, MANAGE_PY, "mmstats", subcommand],
            what=f"manage.py mmstats {subcommand}",
            cwd=DJANGO_SITE,
            env=env,
            timeout=COMMAND_TIMEOUT,
        )
    except DevError as exc:
        print(f"dev.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
