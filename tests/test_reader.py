"""The reader treats every file as untrusted input."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import mmstats
from mmstats import _format as F


def healthy(directory: Path, name: str = "good") -> str:
    """Write a file with a few metrics from this process; return its path."""
    stats = mmstats.Stats(directory, name)
    stats.counter("c").incr(3)
    stats.histogram("h").observe(0.5)
    stats.text("t").set("hello")
    recorder = mmstats.RequestRecorder(directory, name, slow_seconds=0, slow_log_size=4)
    recorder.finish(recorder.start("GET", "/x"), 200)
    return stats.path or ""


def plant(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path


def set_u32(data: bytearray, offset: int, value: int) -> None:
    data[offset : offset + 4] = value.to_bytes(4, sys.byteorder)


def set_u64(data: bytearray, offset: int, value: int) -> None:
    data[offset : offset + 8] = value.to_bytes(8, sys.byteorder)


class TestBadFiles:
    @pytest.fixture
    def good(self, stats_dir: Path) -> bytes:
        return Path(healthy(stats_dir)).read_bytes()

    def scan(self, stats_dir: Path) -> tuple[list[mmstats.Worker], dict[str, str]]:
        snapshot = mmstats.read_directory(stats_dir)
        bad = {os.path.basename(b.path): b.reason for b in snapshot.bad}
        return snapshot.workers, bad

    def test_every_bad_file_is_named_and_the_healthy_one_still_read(
        self, stats_dir: Path, good: bytes
    ) -> None:
        """Empty, foreign, corrupt, versioned, huge, symlink, FIFO, text: each named."""
        plant(stats_dir, "empty.1.a.mmstats", b"")
        plant(stats_dir, "short.1.a.mmstats", good[:100])
        plant(stats_dir, "magic.1.a.mmstats", b"NOTMMSTA" + good[8:])
        newer = bytearray(good)
        set_u32(newer, F.H_VERSION, F.VERSION + 1)
        plant(stats_dir, "newer.1.a.mmstats", bytes(newer))
        older = bytearray(good)
        set_u32(older, F.H_VERSION, 0)
        plant(stats_dir, "older.1.a.mmstats", bytes(older))
        huge = bytearray(good)
        set_u64(huge, F.H_USED, 1 << 60)
        plant(stats_dir, "huge.1.a.mmstats", bytes(huge))
        plant(stats_dir, "random.1.a.mmstats", random.Random(7).randbytes(len(good)))
        plant(stats_dir, "text.1.a.mmstats", b"just some notes\n" * 400)
        (stats_dir / "link.1.a.mmstats").symlink_to(stats_dir / "magic.1.a.mmstats")
        os.mkfifo(stats_dir / "fifo.1.a.mmstats")

        workers, bad = self.scan(stats_dir)

        assert [w.name for w in workers] == ["good"]
        assert workers[0].value("c") == 3
        assert "shorter than the 4096-byte header" in bad["empty.1.a.mmstats"]
        assert "shorter than the 4096-byte header" in bad["short.1.a.mmstats"]
        assert "no mmstats magic" in bad["magic.1.a.mmstats"]
        newer_reason = (
            f"format version {F.VERSION + 1}, newer than this reader's {F.VERSION}"
        )
        assert newer_reason in bad["newer.1.a.mmstats"]
        assert "format version 0, older" in bad["older.1.a.mmstats"]
        assert "used length" in bad["huge.1.a.mmstats"]
        assert "no mmstats magic" in bad["random.1.a.mmstats"]
        assert "no mmstats magic" in bad["text.1.a.mmstats"]
        assert "symlink" in bad["link.1.a.mmstats"]
        assert "not a regular file" in bad["fifo.1.a.mmstats"]
        assert len(bad) == 10

    def test_file_cut_at_every_length_is_refused_or_read_never_crashes(
        self, stats_dir: Path, good: bytes
    ) -> None:
        """Every prefix of a real file either reads or raises CorruptFileError."""
        used = int.from_bytes(good[F.H_USED : F.H_USED + 8], sys.byteorder)
        target = plant(stats_dir, "cut.1.a.mmstats", good[:used])
        outcomes = {"read": 0, "refused": 0}
        for length in range(used, -1, -1):
            os.truncate(target, length)
            try:
                mmstats.read_file(target)
                outcomes["read"] += 1
            except mmstats.CorruptFileError as exc:
                assert str(exc).startswith(str(target))
                outcomes["refused"] += 1
        # Only the whole file is complete: every shorter cut is refused.
        assert outcomes == {"read": 1, "refused": used}

    def test_corrupt_records_are_refused(self, stats_dir: Path, good: bytes) -> None:
        """A record with a bad size or type names the file and the byte."""
        bad_size = bytearray(good)
        set_u32(bad_size, F.HEADER_SIZE + 4, 3)
        plant(stats_dir, "size.1.a.mmstats", bytes(bad_size))
        bad_type = bytearray(good)
        set_u32(bad_type, F.HEADER_SIZE, 99)
        plant(stats_dir, "type.1.a.mmstats", bytes(bad_type))

        workers, bad = self.scan(stats_dir)
        assert len(workers) == 1
        assert "record at byte 4096 of bad size 3" in bad["size.1.a.mmstats"]
        assert "unknown type 99" in bad["type.1.a.mmstats"]

    def test_random_damage_never_raises_anything_but_corrupt_file(
        self, stats_dir: Path, good: bytes
    ) -> None:
        """Flipping random bytes past the header gives a value or a clean refusal."""
        rng = random.Random(1234)
        used = int.from_bytes(good[F.H_USED : F.H_USED + 8], sys.byteorder)
        target = stats_dir / "flip.1.a.mmstats"
        for _ in range(300):
            data = bytearray(good)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(F.HEADER_SIZE, used)] = rng.randrange(256)
            target.write_bytes(data)
            try:
                mmstats.read_file(target)
            except mmstats.CorruptFileError:
                pass

    def test_missing_directory_is_a_directory_error(self, tmp_path: Path) -> None:
        """A missing directory raises DirectoryError naming it."""
        with pytest.raises(mmstats.DirectoryError, match="does not exist"):
            mmstats.read_directory(tmp_path / "nope")


def test_reader_follows_a_file_that_grows_while_read(stats_dir: Path) -> None:
    """A writer adding metrics and threads while a reader reads: never an error."""
    stats = mmstats.Stats(stats_dir, "grow")
    stats.counter("start").incr()
    stop = threading.Event()
    errors: list[str] = []

    def read_loop() -> None:
        last = 0
        while not stop.is_set():
            worker = mmstats.read_file(stats.path or "")
            n = len(worker.series)
            if n < last:
                errors.append(f"series went from {last} to {n}")
            last = n

    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        for i in range(3000):
            stats.histogram(f"h{i}").observe(i)
    finally:
        stop.set()
        reader.join()
    assert errors == []
    worker = mmstats.read_file(stats.path or "")
    assert len(worker.series) == 3001
    assert os.path.getsize(stats.path or "") > 1 << 20  # it grew across chunks


def test_reader_in_another_process_sees_a_growing_file(stats_dir: Path) -> None:
    """A reader process mapping the file before it grows still reads it all later."""
    stats = mmstats.Stats(stats_dir, "grow2")
    stats.counter("c").incr()
    for i in range(600):
        stats.histogram(f"h{i}").observe(1.0)
    code = textwrap.dedent(
        f"""
        import mmstats
        w = mmstats.read_file({stats.path!r})
        print(len(w.series), w.value("c"))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split() == ["601", "1"], out.stderr


def test_clean_dry_run_writes_nothing(stats_dir: Path) -> None:
    """A dry run reports what it would fold and leaves the directory as it was."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import mmstats; mmstats.Stats({os.fspath(stats_dir)!r}, 'gone')"
            ".counter('c').incr()",
        ],
        check=True,
        timeout=60,
    )
    assert proc.returncode == 0
    before = sorted(p.name for p in stats_dir.iterdir())
    result = mmstats.clean(os.fspath(stats_dir), dry_run=True)
    assert [os.path.basename(w.path) for w in result.folded] == before
    assert sorted(p.name for p in stats_dir.iterdir()) == before
