"""What another user, or a hostile request, can and cannot do (#7).

The default stats directory is private: created 0700, its owner and mode
checked on the very directory the files are then created in, without
following a symlink.  Files are created exclusively, mode 0600, never
through a symlink; readers follow no symlink either.  No query string,
header, cookie or body ever reaches a stats file.  The exporter's loopback
default is checked in tests/test_exporter.py
(``test_serve_binds_loopback_by_default``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import mmstats
import mmstats._writer as writer_module
from mmstats import _writer

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534
SECRET = "s3cr3t-7f1c9a"  # must never be found in a stats file


def stats_off(stats: mmstats.Stats) -> str:
    """Write through ``stats`` and return why stats are off (they must be)."""
    stats.counter("c").incr()
    stats.histogram("h").observe(1.0)
    assert stats.disabled is not None
    return stats.disabled


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make ``$XDG_RUNTIME_DIR/mmstats`` the private default directory."""
    monkeypatch.delenv("MMSTATS_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", os.fspath(tmp_path))
    return tmp_path / "mmstats"


class TestDefaultDirectory:
    def test_created_0700_and_owned_even_with_umask_0(self, runtime: Path) -> None:
        """The default directory is created 0700 (whatever the umask) and its
        file 0600."""
        old = os.umask(0)
        try:
            stats = mmstats.Stats(name="umask")
            stats.counter("c").incr()
        finally:
            os.umask(old)
        st = os.lstat(runtime)
        assert (st.st_uid, st.st_mode & 0o777) == (os.getuid(), 0o700)
        assert os.lstat(stats.path or "").st_mode & 0o777 == 0o600

    def test_pre_created_by_another_user_is_refused(
        self, runtime: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A default directory another user made first (even 0700) is refused:
        stats off with one warning naming the owner; nothing written."""
        runtime.mkdir(mode=0o700)
        os.chown(runtime, NOBODY, NOBODY)
        with caplog.at_level(logging.WARNING, logger="mmstats"):
            reason = stats_off(mmstats.Stats(name="foreign"))
        assert f"owned by uid {NOBODY}, not {os.getuid()}" in reason
        assert len(warnings_of(caplog)) == 1
        assert list(runtime.iterdir()) == []
        [problem] = mmstats.read_directory().problems
        assert f"private default but is owned by uid {NOBODY}" in problem

    def test_world_writable_default_is_refused(self, runtime: Path) -> None:
        """A default directory of ours that others can write is refused."""
        runtime.mkdir()
        os.chmod(runtime, 0o777)
        assert "has mode 777, not 700" in stats_off(mmstats.Stats(name="open"))
        assert list(runtime.iterdir()) == []

    def test_symlink_as_the_default_is_never_followed(
        self, runtime: Path, tmp_path: Path
    ) -> None:
        """A symlink planted where the default directory goes is refused by
        writers and readers alike; its target stays empty."""
        target = tmp_path / "elsewhere"
        target.mkdir(mode=0o700)
        runtime.symlink_to(target)
        assert "symlink" in stats_off(mmstats.Stats(name="symlinked"))
        assert list(target.iterdir()) == []
        with pytest.raises(mmstats.DirectoryError, match="is a symlink"):
            mmstats.read_directory()

    def test_directory_swapped_after_the_check_is_not_followed(
        self, stats_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """If the checked directory is replaced by a symlink between the check
        and the file's creation, the file still goes into the directory that
        was checked (through its fd), never into the symlink's target."""
        victim = tmp_path / "victim"
        victim.mkdir(mode=0o700)
        moved = tmp_path / "moved"
        real_check = _writer._check_directory

        def check_then_swap(path: str, st: os.stat_result, private: bool) -> None:
            real_check(path, st, private)
            os.rename(path, moved)
            os.symlink(victim, path)

        monkeypatch.setattr(_writer, "_check_directory", check_then_swap)
        stats = mmstats.Stats(stats_dir, "swapped")
        stats.counter("c").incr(5)

        assert list(victim.iterdir()) == []
        [created] = moved.glob("swapped.*.mmstats")
        assert mmstats.read_file(created).value("c") == 5


class TestFiles:
    @pytest.mark.parametrize("where", ["final", "temporary", "dangling"])
    def test_symlink_planted_under_the_next_name_is_never_followed(
        self,
        stats_dir: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
        where: str,
    ) -> None:
        """A symlink at the file's next name (or its temporary name, or one
        pointing nowhere) is not followed, truncated or written through, and
        creates nothing at its target: stats off with one warning."""
        monkeypatch.setattr(writer_module, "file_token", lambda: "0badf00d")
        base = f"planted.{os.getpid()}.0badf00d"
        victim = tmp_path / "victim"
        if where != "dangling":
            victim.write_bytes(b"precious" * 1000)
        before = victim.stat() if victim.exists() else None
        name = f".{base}.new" if where == "temporary" else f"{base}.mmstats"
        (stats_dir / name).symlink_to(victim)

        with caplog.at_level(logging.WARNING, logger="mmstats"):
            reason = stats_off(mmstats.Stats(stats_dir, "planted"))

        assert "File exists" in reason
        assert len(warnings_of(caplog)) == 1
        if before is None:
            assert not victim.exists()
        else:
            after = victim.stat()
            assert victim.read_bytes() == b"precious" * 1000
            assert (after.st_size, after.st_mtime_ns) == (
                before.st_size,
                before.st_mtime_ns,
            )
        assert (stats_dir / name).is_symlink()  # left as it was

    def test_file_is_a_fresh_private_regular_file(self, stats_dir: Path) -> None:
        """The file is regular, ours, 0600, with one link (the temporary name
        is gone) and no stray temporary file beside it."""
        stats = mmstats.Stats(stats_dir, "fresh")
        stats.counter("c").incr()
        st = os.lstat(stats.path or "")
        assert (st.st_uid, st.st_mode & 0o7777, st.st_nlink) == (os.getuid(), 0o600, 1)
        assert [p.name for p in stats_dir.iterdir()] == [
            os.path.basename(stats.path or "")
        ]


class TestReadersFollowNoSymlink:
    def test_symlinked_directory_is_refused(
        self, stats_dir: Path, tmp_path: Path
    ) -> None:
        """A stats directory given as a symlink: DirectoryError, CLI status 3."""
        stats = mmstats.Stats(stats_dir, "real")
        stats.counter("c").incr()
        link = tmp_path / "link"
        link.symlink_to(stats_dir)
        with pytest.raises(mmstats.DirectoryError, match="symlinks are not followed"):
            mmstats.read_directory(link)
        result = cli("show", "--dir", os.fspath(link))
        assert result.returncode == 3
        assert "is a symlink" in result.stderr

    def test_symlinked_archive_is_not_read(
        self, stats_dir: Path, tmp_path: Path
    ) -> None:
        """An archive that is a symlink (to an archive with big totals) is not
        followed: its totals are not counted and it is named as bad."""
        stats = mmstats.Stats(stats_dir, "arch")
        stats.counter("requests").incr(2)
        forged = tmp_path / "forged.json"
        forged.write_text(
            json.dumps(
                {
                    "version": 1,
                    "workers": 9,
                    "folded": {},
                    "series": [
                        {
                            "name": "requests",
                            "kind": "counter",
                            "help": "",
                            "unit": "",
                            "labels": {},
                            "value": 10**9,
                        }
                    ],
                    "slow": [],
                }
            )
        )
        (stats_dir / "mmstats-archive.json").symlink_to(forged)

        snapshot = mmstats.read_directory(stats_dir)
        assert snapshot.totals()[("requests", ())].value == 2
        [bad] = snapshot.bad
        assert bad.path.endswith("mmstats-archive.json")
        assert "cannot be opened" in bad.reason

    def test_symlinked_lock_and_temporary_archive_are_never_written_through(
        self, stats_dir: Path, tmp_path: Path
    ) -> None:
        """clean refuses a symlinked lock file with one line (its target is not
        created); a symlink at a temporary archive name is removed, not
        followed."""
        victim = tmp_path / "victim"
        victim.write_text("precious")
        lock_target = tmp_path / "would-be-created"
        (stats_dir / "mmstats-archive.lock").symlink_to(lock_target)
        result = cli("clean", "--dir", os.fspath(stats_dir))
        assert result.returncode == 1
        [line] = result.stderr.splitlines()
        assert "Cannot clean stats directory" in line and "mmstats-archive.lock" in line
        assert not lock_target.exists()

        (stats_dir / "mmstats-archive.lock").unlink()
        planted = stats_dir / "mmstats-archive.json.4242.tmp"
        planted.symlink_to(victim)
        assert cli("clean", "--dir", os.fspath(stats_dir)).returncode == 0
        assert not planted.is_symlink()
        assert victim.read_text() == "precious"

    def test_dump_of_a_symlink_is_refused(
        self, stats_dir: Path, tmp_path: Path
    ) -> None:
        """`mmstats dump LINK` does not follow the link, even when named."""
        stats = mmstats.Stats(stats_dir, "dumped")
        stats.counter("c").incr()
        link = tmp_path / "link.mmstats"
        link.symlink_to(stats.path or "")
        result = cli("dump", os.fspath(link))
        assert result.returncode == 1
        assert "symlinks are not followed" in result.stderr


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMSTATS_")}
    return subprocess.run(
        [sys.executable, "-m", "mmstats._cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


# -- nothing secret is stored ----------------------------------------------------


def assert_no_secret(directory: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No file of the directory, and no mmstats log record, holds SECRET."""
    forms = [SECRET.encode(), SECRET.encode("utf-16-le"), SECRET[::-1].encode()]
    mmstats.clean(os.fspath(directory))  # the archive too
    files = [p for p in directory.iterdir() if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        for form in forms:
            assert form not in data, path
    ours = [r for r in caplog.records if r.name.startswith("mmstats")]
    assert ours  # the file's creation, at least
    assert not [r for r in ours if SECRET in r.getMessage()]


@pytest.fixture
def secret_requests() -> list[dict[str, Any]]:
    """Requests carrying SECRET in every place but the path."""
    return [
        {"path": "/a", "query": f"token={SECRET}"},
        {"path": "/b", "headers": {"Authorization": f"Bearer {SECRET}"}},
        {"path": "/c", "headers": {"Cookie": f"session={SECRET}"}},
        {"path": "/d", "headers": {"X-Api-Key": SECRET}},
        {"path": "/e", "method": "POST", "data": f"password={SECRET}"},
        {"path": "/f", "method": "POST", "json": {"secret": SECRET}},
        {"path": "/g%3Ftoken%3D" + SECRET},  # an encoded "?" in the path
    ]


class TestNothingSecretIsStored:
    def test_wsgi(
        self,
        stats_dir: Path,
        secret_requests: list[dict[str, Any]],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """mmstats_wsgi stores no query string, header, cookie or body."""
        from werkzeug.test import Client

        from mmstats_wsgi import StatsMiddleware

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            environ["wsgi.input"].read()
            start_response("200 OK", [("Set-Cookie", f"s={SECRET}")])
            return [SECRET.encode()]

        client = Client(StatsMiddleware(app, stats_dir, "secrets", slow_seconds=0))
        with caplog.at_level(logging.DEBUG, logger="mmstats"):
            for req in secret_requests:
                response = client.open(
                    req["path"],
                    method=req.get("method", "GET"),
                    query_string=req.get("query"),
                    headers=req.get("headers"),
                    data=req.get("data"),
                    json=req.get("json"),
                    buffered=True,
                )
                assert response.status_code == 200
        [worker] = mmstats.read_directory(stats_dir).workers
        assert worker.value("requests") == len(secret_requests)
        assert_no_secret(stats_dir, caplog)

    def test_django(
        self,
        settings: Any,
        stats_dir: Path,
        secret_requests: list[dict[str, Any]],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """mmstats_django stores no query string, header, cookie or body."""
        from django.test import Client

        settings.MMSTATS = {"DIR": os.fspath(stats_dir), "SLOW_REQUEST_SECONDS": 0}
        client = Client()
        with caplog.at_level(logging.DEBUG, logger="mmstats"):
            for req in secret_requests:
                path = "/ok/%3Ftoken%3D" + SECRET if "%3F" in req["path"] else "/ok/"
                headers = {
                    f"HTTP_{k.upper().replace('-', '_')}": v
                    for k, v in req.get("headers", {}).items()
                }
                if req.get("query"):
                    path += "?" + req["query"]
                if req.get("method") == "POST":
                    body = req.get("data") or json.dumps(req.get("json"))
                    client.generic(
                        "POST",
                        path,
                        body,
                        "application/x-www-form-urlencoded",
                        **headers,
                    )
                else:
                    client.get(path, **headers)
        [worker] = mmstats.read_directory(stats_dir).workers
        assert worker.value("requests") == len(secret_requests)
        assert_no_secret(stats_dir, caplog)

    def test_flask(
        self,
        stats_dir: Path,
        secret_requests: list[dict[str, Any]],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """mmstats_flask stores no query string, header, cookie or body."""
        from flask import Flask, request

        from mmstats_flask import MmStats

        app = Flask("secrets")
        app.config.update(MMSTATS_DIR=os.fspath(stats_dir), MMSTATS_NAME="fsecrets")
        app.config["MMSTATS_SLOW_REQUEST_SECONDS"] = 0
        MmStats(app)

        @app.route("/<path:anything>", methods=["GET", "POST"])
        def echo(anything: str) -> str:
            request.get_data()
            return SECRET

        client = app.test_client()
        with caplog.at_level(logging.DEBUG, logger="mmstats"):
            for req in secret_requests:
                response = client.open(
                    req["path"],
                    method=req.get("method", "GET"),
                    query_string=req.get("query"),
                    headers=req.get("headers"),
                    data=req.get("data"),
                    json=req.get("json"),
                    buffered=True,
                )
                assert response.status_code == 200
        worker = [
            w for w in mmstats.read_directory(stats_dir).workers if w.name == "fsecrets"
        ][0]
        assert worker.value("requests") == len(secret_requests)
        assert_no_secret(stats_dir, caplog)
