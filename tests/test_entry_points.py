"""Every subcommand through all three entry points prints the same (#4).

``mmstats``, ``python -m django mmstats`` (and ``call_command``) and
``flask mmstats`` run as subprocesses against one directory written by real
workers: one alive serving a request, one killed with SIGKILL in the middle
of one, one closed, one with hostile strings.  Each entry point must print
what the ``mmstats`` command prints, which tests/test_cli.py holds to the
values the workers wrote; ``json`` must also match the reader API, and
``clean`` through each entry point must keep the totals.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.conf import global_settings

import mmstats
from mmstats._report import snapshot_to_json
from tests.workers import ROOT, Workers, populate, totals_of

# Django runs with its TIME_ZONE (the default, as the test settings leave
# it); the other entry points are given the same zone so times read alike.
ZONE = global_settings.TIME_ZONE

Run = Callable[[list[str]], subprocess.CompletedProcess[str]]

# What each subcommand is run with; dump is given the killed worker's file.
SUBCOMMANDS = {
    "show": ["show", "--wide"],
    "top": ["top", "--iterations", "1", "--wide"],
    "slow": ["slow", "--wide"],
    "slow --sort duration": ["slow", "--wide", "--sort", "duration", "--limit", "5"],
    "json": ["json"],
    "clean --dry-run": ["clean", "--dry-run"],
    "dump": ["dump", "--wide"],
}


def _environ(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MMSTATS_DIR", "NO_COLOR", "DJANGO_SETTINGS_MODULE")
    }
    env.update(COLUMNS="250", TZ=ZONE, PYTHONPATH=os.fspath(ROOT), **extra)
    return env


def _runner(entry: str, directory: Path, tmp: Path) -> tuple[Run, str]:
    """Return a runner of ``entry``'s subcommands and the name it calls
    itself in its output."""
    if entry == "mmstats":
        script = Path(sys.executable).with_name("mmstats")
        command = [os.fspath(script)] if script.exists() else []
        command = command or [sys.executable, "-m", "mmstats._cli"]
        env = _environ(MMSTATS_DIR=os.fspath(directory))
        prog = "mmstats"
    elif entry == "django":
        command = [sys.executable, "-m", "django", "mmstats"]
        env = _environ(
            DJANGO_SETTINGS_MODULE="tests.django_settings",
            MMSTATS_TEST_DJANGO_DIR=os.fspath(directory),
        )
        prog = "python -m django mmstats"
    else:
        (tmp / "entry_flask_app.py").write_text(
            "from flask import Flask\n"
            "app = Flask(__name__)\n"
            f"app.config['MMSTATS_DIR'] = {os.fspath(directory)!r}\n"
        )
        flask = Path(sys.executable).with_name("flask")
        command = [os.fspath(flask), "--app", "entry_flask_app", "mmstats"]
        env = _environ()
        env["PYTHONPATH"] = os.pathsep.join([os.fspath(tmp), os.fspath(ROOT)])
        prog = "flask mmstats"

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp,
            timeout=120,
        )

    return run, prog


def stable(text: str, prog: str, alive: int) -> list[str]:
    """Return the lines of an output without what changes from one read to
    the next (the time of the read, the live worker's uptime and rate, the
    elapsed time of its request) or between entry points (their name)."""
    lines = []
    for line in text.replace(f"`{prog} ", "`PROG ").splitlines():
        line = re.sub(r"read at .*$", "read at -", line)
        cells = line.split()
        if cells[:2] == [str(alive), "alive"]:
            del cells[6], cells[4]  # Avg/s, Up
        elif cells[:2] == [str(alive), "GET"]:
            del cells[4]  # Elapsed
        elif cells[:1] == ["total"]:
            del cells[2]  # Avg/s
        lines.append(" ".join(cells))
    return lines


def _json(text: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(text)
    document.pop("read_at")
    return document


@pytest.fixture(scope="module")
def printed(
    populated: Workers, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], subprocess.CompletedProcess[str]]:
    """Every subcommand's output through every entry point, read while the
    workers are as populate left them."""
    tmp = tmp_path_factory.mktemp("entry")
    killed = os.fspath(populated.files["killed"])
    outputs = {}
    for entry in ("mmstats", "django", "flask"):
        run, _ = _runner(entry, populated.directory, tmp)
        for name, args in SUBCOMMANDS.items():
            outputs[entry, name] = run(args + [killed] if name == "dump" else args)
    return outputs


@pytest.mark.parametrize("entry", ["django", "flask"])
@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_each_entry_point_prints_what_mmstats_prints(
    printed: dict[tuple[str, str], subprocess.CompletedProcess[str]],
    populated: Workers,
    tmp_path: Path,
    entry: str,
    name: str,
) -> None:
    mine, theirs = printed[entry, name], printed["mmstats", name]
    assert mine.returncode == theirs.returncode == 0, mine.stderr + theirs.stderr
    assert mine.stderr == theirs.stderr == ""
    if name == "json":
        assert _json(mine.stdout) == _json(theirs.stdout)
        return
    _, prog = _runner(entry, populated.directory, tmp_path)
    alive = populated.pids["alive"]
    got = stable(mine.stdout, prog, alive)
    assert got == stable(theirs.stdout, "mmstats", alive)
    assert len(got) > 5  # something was printed to compare


def test_what_mmstats_prints_is_what_the_workers_wrote(
    printed: dict[tuple[str, str], subprocess.CompletedProcess[str]],
    populated: Workers,
) -> None:
    """The outputs compared above hold the workers' values: the killed
    worker is dead with the request it was serving, the totals add up, the
    dump is of the file asked for, and json is the reader API's document."""
    show = printed["mmstats", "show"].stdout
    dead = [
        line
        for line in show.splitlines()
        if line.startswith(str(populated.pids["killed"]))
    ]
    assert len(dead) == 1 and "POST" in dead[0] and "/checkout/42" in dead[0]
    assert "shop.checkout" in dead[0]
    total = next(line for line in show.splitlines() if line.startswith("total"))
    assert total.split()[1] == "15"
    dump = printed["mmstats", "dump"].stdout
    assert re.search(rf"^\s*pid\s+{populated.pids['killed']}\s*$", dump, re.M)
    assert re.search(r"^\s*state\s+dead\s*$", dump, re.M)
    document = _json(printed["mmstats", "json"].stdout)
    expected = json.loads(
        json.dumps(snapshot_to_json(mmstats.read_directory(populated.directory)))
    )
    expected.pop("read_at")
    assert document == expected
    dry = " ".join(printed["mmstats", "clean --dry-run"].stdout.split())
    for role in ("killed", "closed", "hostile"):
        assert f"Would remove {populated.files[role]}" in dry
    assert os.fspath(populated.files["alive"]) not in dry


def test_call_command_prints_what_mmstats_prints(
    printed: dict[tuple[str, str], subprocess.CompletedProcess[str]],
    populated: Workers,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``call_command("mmstats", ...)`` in this process, every subcommand."""
    from django.core.management import call_command

    settings.MMSTATS = {"DIR": os.fspath(populated.directory)}
    monkeypatch.setenv("COLUMNS", "250")
    alive = populated.pids["alive"]
    killed = os.fspath(populated.files["killed"])
    for name, args in SUBCOMMANDS.items():
        out, err = io.StringIO(), io.StringIO()
        given = args + [killed] if name == "dump" else args
        call_command("mmstats", *given, stdout=out, stderr=err)
        assert err.getvalue() == "", name
        theirs = printed["mmstats", name].stdout
        if name == "json":
            assert _json(out.getvalue()) == _json(theirs)
        else:
            got = stable(out.getvalue(), "manage.py mmstats", alive)
            assert got == stable(theirs, "mmstats", alive), name


@pytest.mark.parametrize("entry", ["mmstats", "django", "flask"])
def test_clean_through_each_entry_point_keeps_thetotals_of(
    tmp_path: Path, worker_script: Path, entry: str
) -> None:
    directory = tmp_path / "stats"
    directory.mkdir(mode=0o700)
    workers = populate(directory, worker_script, hostile=False)
    try:
        before = totals_of(directory)
        run, _ = _runner(entry, directory, tmp_path)
        done = run(["clean"])
        assert done.returncode == 0, done.stderr
        assert totals_of(directory) == before
        left = sorted(p.name for p in directory.glob("*.mmstats"))
        assert left == [workers.files["alive"].name]
        assert mmstats.read_directory(directory).archive.workers == 2
    finally:
        workers.stop()
