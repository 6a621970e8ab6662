"""The writer API: fields, models, labels, files and directories."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import mmstats
from mmstats import _format as F


class JobStats(mmstats.Stats):
    done = mmstats.Counter("Jobs finished")
    queue = mmstats.Gauge("Jobs waiting")
    runtime = mmstats.Histogram("Job run time", unit="seconds")
    version = mmstats.Text("Deployed version", max_bytes=8)
    by_queue = mmstats.Counter("Jobs by queue", labels=("queue",))


def only_worker(directory: Path) -> mmstats.Worker:
    snapshot = mmstats.read_directory(directory)
    assert snapshot.bad == []
    [worker] = [w for w in snapshot.workers if w.pid == os.getpid()]
    return worker


def run_python(
    code: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


class TestFields:
    def test_declared_fields_read_back_exactly(self, stats_dir: Path) -> None:
        """Every declared field's value is read back as written."""
        stats = JobStats(stats_dir, "fields")
        stats.done.incr()
        stats.done.incr(41)
        stats.queue.set(12)
        stats.queue.incr(2.5)
        stats.queue.decr(0.5)
        stats.runtime.observe(0.25)
        stats.runtime.observe(2.0)
        stats.version.set("v1.2")
        stats.by_queue.labels(queue="mail").incr(3)
        stats.by_queue.labels(queue="sms").incr()

        worker = only_worker(stats_dir)
        assert worker.value("done") == 42
        assert worker.value("queue") == 14.0
        hist = worker.value("runtime")
        assert (hist.count, hist.sum) == (2, 2.25)
        assert worker.value("version") == "v1.2"
        assert worker.value("by_queue", {"queue": "mail"}) == 3
        assert worker.value("by_queue", {"queue": "sms"}) == 1
        assert worker.find("done").help == "Jobs finished"
        assert worker.find("runtime").unit == "seconds"

    def test_procedural_api_with_labels(self, stats_dir: Path) -> None:
        """Names known only at run time work with labels, one series per set."""
        stats = mmstats.Stats(stats_dir, "proc")
        stats.counter("jobs", labels={"queue": "mail"}).incr()
        stats.counter("jobs", labels={"queue": "mail"}).incr(2)
        stats.counter("jobs", labels={"queue": "bulk"}).incr(5)
        stats.gauge("temp", "Temperature", {"room": "a"}).set(-3.5)
        stats.histogram("sizes", unit="bytes").observe(1024)

        worker = only_worker(stats_dir)
        assert worker.value("jobs", {"queue": "mail"}) == 3
        assert worker.value("jobs", {"queue": "bulk"}) == 5
        assert worker.total("jobs") == 8
        assert worker.value("temp", {"room": "a"}) == -3.5
        assert worker.value("sizes").count == 1

    def test_counter_refuses_to_decrease(self, stats_dir: Path) -> None:
        """A counter never goes down: a negative increment is a ValueError."""
        stats = mmstats.Stats(stats_dir, "neg")
        with pytest.raises(
            ValueError, match=r"Counter 'c' cannot decrease: incr\(-1\)"
        ):
            stats.counter("c").incr(-1)

    def test_counter_takes_integers_only(self, stats_dir: Path) -> None:
        """A float increment of a counter is refused, not rounded."""
        stats = mmstats.Stats(stats_dir, "float")
        with pytest.raises(TypeError):
            stats.counter("c").incr(1.5)  # type: ignore[arg-type]

    def test_fields_of_subclasses_and_mixins_are_all_made(
        self, stats_dir: Path
    ) -> None:
        """Fields come from every class of the model: a subclass adds to and
        redeclares its base's, a plain mixin's count too, and each instance
        holds its own series (#2)."""

        class Common:
            started = mmstats.Counter("Jobs started")

        class MoreStats(Common, JobStats):
            done = mmstats.Gauge("Redeclared: the subclass wins")
            failed = mmstats.Counter("Jobs failed")

        stats = MoreStats(stats_dir, "more")
        other = MoreStats(stats_dir, "more")
        stats.started.incr(2)
        stats.failed.incr()
        stats.done.set(1.5)
        stats.queue.set(4)
        assert stats.started is other.started  # one series per name and file
        assert not hasattr(MoreStats, "failed")  # on the instance only
        worker = only_worker(stats_dir)
        assert worker.value("started") == 2
        assert worker.value("failed") == 1
        assert worker.find("done").kind == "gauge"
        assert worker.value("done") == 1.5
        assert worker.value("queue") == 4

    def test_refused_increment_changes_nothing(self, stats_dir: Path) -> None:
        """An increment the file cannot hold (a float, a total past 2**63 - 1)
        raises and leaves the counter counting on from its value (#2)."""
        stats = mmstats.Stats(stats_dir, "refused")
        counter = stats.counter("c")
        counter.incr(5)
        with pytest.raises(TypeError):
            counter.incr(1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="invalid value"):
            counter.incr(2**63)
        counter.incr(2)
        assert only_worker(stats_dir).value("c") == 7

    def test_an_empty_directory_is_refused_not_the_current_one(self) -> None:
        """``Stats("")`` (an unset variable, most likely) is an error, not a
        file in whatever directory the process runs in."""
        with pytest.raises(
            ValueError, match=r"^directory must be a non-empty path, not ''$"
        ):
            mmstats.Stats("", "empty")

    def test_same_name_other_kind_is_refused(self, stats_dir: Path) -> None:
        """One name is one kind of metric in a file."""
        stats = mmstats.Stats(stats_dir, "kinds")
        stats.counter("x").incr()
        with pytest.raises(
            ValueError, match="'x' is a counter; it cannot also be a gauge"
        ):
            stats.gauge("x")

    def test_text_is_cut_at_a_character_boundary(self, stats_dir: Path) -> None:
        """A long text keeps whole UTF-8 characters only."""
        stats = JobStats(stats_dir, "text")
        stats.version.set("héllo wörld")  # é and ö are two bytes each
        assert only_worker(stats_dir).value("version") == "héllo w"
        stats.version.set("€€€")  # three bytes each: two fit in 8
        assert only_worker(stats_dir).value("version") == "€€"

    def test_gauge_set_from_many_threads_keeps_the_last_value(
        self, stats_dir: Path
    ) -> None:
        """Setting a gauge from another thread replaces, not adds to, the value."""
        stats = mmstats.Stats(stats_dir, "gset")
        gauge = stats.gauge("g")
        gauge.set(100)
        thread = threading.Thread(target=gauge.set, args=(7,))
        thread.start()
        thread.join()
        assert only_worker(stats_dir).value("g") == 7
        gauge.incr()
        assert only_worker(stats_dir).value("g") == 8

    def test_histogram_time_as_context_manager_and_decorator(
        self, stats_dir: Path
    ) -> None:
        """time() observes elapsed seconds both ways."""
        stats = JobStats(stats_dir, "timer")
        with stats.runtime.time():
            pass

        @stats.runtime.time()
        def work(x: int) -> int:
            return x * 2

        assert work(21) == 42
        hist = only_worker(stats_dir).value("runtime")
        assert hist.count == 2
        assert 0 <= hist.sum < 5


class TestLabelCap:
    def test_values_past_the_cap_go_to_one_overflow_series(
        self, stats_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Past the cap, one overflow series and a dropped-labels counter."""
        stats = mmstats.Stats(stats_dir, "cap", label_limit=3)
        with caplog.at_level(logging.WARNING, logger="mmstats"):
            for i in range(10):
                stats.counter("hits", labels={"user": f"u{i}"}).incr()
        worker = only_worker(stats_dir)
        kept = [s for s in worker.series if s.name == "hits"]
        assert len(kept) == 4
        assert worker.value("hits", {"user": "_overflow"}) == 7
        assert worker.total("hits") == 10
        assert worker.value("mmstats_dropped_labels", {"metric": "hits"}) == 7
        warnings = [
            r for r in caplog.records if "cap of 3 label sets" in r.getMessage()
        ]
        assert len(warnings) == 1
        assert warnings[0].getMessage() == (
            "Metric 'hits' reached its cap of 3 label sets; further values go to"
            " the series {user='_overflow'} and are counted in"
            " mmstats_dropped_labels{metric='hits'}."
        )

    def test_default_cap_is_100(self, stats_dir: Path) -> None:
        """Without a setting, 100 label sets are kept per metric."""
        stats = mmstats.Stats(stats_dir, "cap100")
        for i in range(150):
            stats.counter("hits", labels={"k": str(i)}).incr()
        worker = only_worker(stats_dir)
        assert len([s for s in worker.series if s.name == "hits"]) == 101


class TestFiles:
    def test_file_is_created_on_first_write_only(self, stats_dir: Path) -> None:
        """Importing and declaring leaves no file; the first write makes one."""
        stats = JobStats(stats_dir, "lazy")
        stats.by_queue.labels(queue="x")
        assert stats.path is None
        assert list(stats_dir.iterdir()) == []
        stats.done.incr()
        assert stats.path is not None
        assert [p.name for p in stats_dir.iterdir()] == [os.path.basename(stats.path)]

    def test_file_name_tells_app_and_worker_apart(self, stats_dir: Path) -> None:
        """The name holds the app name, the pid and a random part."""
        stats = mmstats.Stats(stats_dir, "my app!")
        stats.counter("c").incr()
        name = os.path.basename(stats.path or "")
        app, pid, token, suffix = name.split(".")
        assert (app, pid, suffix) == ("my_app_", str(os.getpid()), "mmstats")
        assert len(token) == 8

    def test_directory_from_environment(self, env_stats_dir: Path) -> None:
        """MMSTATS_DIR is used when no directory is given."""
        stats = mmstats.Stats(name="envdir")
        stats.counter("c").incr()
        assert os.path.dirname(stats.path or "") == os.fspath(env_stats_dir)

    def test_files_are_private(self, stats_dir: Path) -> None:
        """Files are created with mode 0600."""
        stats = mmstats.Stats(stats_dir, "mode")
        stats.counter("c").incr()
        assert os.stat(stats.path or "").st_mode & 0o777 == 0o600

    def test_file_names_never_look_like_options(self, stats_dir: Path) -> None:
        """A writer started as ``python -c`` (argv[0] is "-c") names its file
        after python, and names from MMSTATS_NAME lose leading dashes,
        so `mmstats dump FILE` takes the file as it is."""
        code = "import sys, mmstats\nmmstats.Stats(sys.argv[1]).counter('c').incr()\n"
        subprocess.run([sys.executable, "-c", code, stats_dir], check=True)
        dashed = {**os.environ, "MMSTATS_NAME": "--x"}
        subprocess.run([sys.executable, "-c", code, stats_dir], check=True, env=dashed)
        names = sorted(p.name.split(".")[0] for p in stats_dir.iterdir())
        assert names == ["python", "x"]
        [python_file] = stats_dir.glob("python.*")
        dumped = subprocess.run(
            [sys.executable, "-m", "mmstats._cli", "dump", python_file.name],
            cwd=stats_dir,
            capture_output=True,
            text=True,
        )
        assert dumped.returncode == 0, dumped.stderr

    def test_a_process_writes_one_file_per_directory_whatever_its_names(
        self, stats_dir: Path
    ) -> None:
        """A second Stats with another name writes into the process's file,
        named by the first: readers count a process as one worker."""
        first = mmstats.Stats(stats_dir, "app")
        first.counter("requests").incr()
        extra = mmstats.Stats(stats_dir, "extra")
        extra.counter("jobs").incr(2)
        assert extra.path == first.path
        [worker] = mmstats.read_directory(stats_dir).workers
        assert worker.name == "app"
        assert (worker.value("requests"), worker.value("jobs")) == (1, 2)

    def test_header_tells_who_wrote_the_file(self, stats_dir: Path) -> None:
        """pid, host, start time, command and format version are in the header."""
        stats = mmstats.Stats(stats_dir, "header")
        stats.counter("c").incr()
        worker = only_worker(stats_dir)
        assert worker.pid == os.getpid()
        assert worker.hostname == os.uname().nodename
        assert worker.state == "alive"
        assert worker.version == F.VERSION == 3
        assert worker.name == "header"
        assert "python" in worker.command or "pytest" in worker.command
        assert 0 < worker.start_time <= worker.created

    def test_clean_exit_marks_the_file_closed(self, stats_dir: Path) -> None:
        """A process that exits normally leaves a file marked closed."""
        result = run_python(
            f"""
            import mmstats
            mmstats.Stats({os.fspath(stats_dir)!r}, "exit").counter("c").incr(7)
            """
        )
        assert result.returncode == 0, result.stderr
        [worker] = mmstats.read_directory(stats_dir).workers
        assert worker.state == "closed"
        assert worker.closed_at >= worker.created
        assert worker.value("c") == 7

    def test_crashed_process_leaves_a_readable_dead_file(self, stats_dir: Path) -> None:
        """SIGKILL leaves the file readable, its state dead, its values intact."""
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"import mmstats, sys, time\n"
                f"stats = mmstats.Stats({os.fspath(stats_dir)!r}, 'crash')\n"
                f"stats.counter('c').incr(5)\n"
                f"print('ready', flush=True)\n"
                f"time.sleep(60)\n",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        assert mmstats.read_directory(stats_dir).workers[0].state == "alive"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        [worker] = mmstats.read_directory(stats_dir).workers
        assert worker.state == "dead"
        assert worker.value("c") == 5


class TestUnusableDirectory:
    def test_directory_of_another_user_switches_stats_off_with_one_warning(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A world-writable directory owned by someone else is refused; no crash."""
        shared = tmp_path / "shared"
        shared.mkdir()
        os.chmod(shared, 0o777)
        os.chown(shared, 65534, 65534)
        stats = mmstats.Stats(shared, "foreign")
        with caplog.at_level(logging.WARNING, logger="mmstats"):
            for _ in range(3):
                stats.counter("c").incr()
                stats.histogram("h").observe(1.0)
                stats.text("t").set("x")
        assert stats.disabled is not None and "world-writable" in stats.disabled
        assert list(shared.iterdir()) == []
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert os.fspath(shared) in warnings[0].getMessage()

    def test_private_default_directory_with_open_mode_is_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The private default must be mode 0700: 0755 switches stats off."""
        runtime = tmp_path / "run"
        (runtime / "mmstats").mkdir(parents=True)
        os.chmod(runtime / "mmstats", 0o755)
        monkeypatch.delenv("MMSTATS_DIR", raising=False)
        monkeypatch.setenv("XDG_RUNTIME_DIR", os.fspath(runtime))
        stats = mmstats.Stats(name="defaultmode")
        stats.counter("c").incr()
        assert stats.disabled is not None and "not 700" in stats.disabled

    def test_private_default_directory_is_created_0700(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without MMSTATS_DIR the default is created private to the user."""
        monkeypatch.delenv("MMSTATS_DIR", raising=False)
        monkeypatch.setenv("XDG_RUNTIME_DIR", os.fspath(tmp_path))
        stats = mmstats.Stats(name="defaultdir")
        stats.counter("c").incr()
        assert stats.disabled is None
        assert os.stat(tmp_path / "mmstats").st_mode & 0o777 == 0o700

    def test_symlinked_directory_is_refused(self, tmp_path: Path) -> None:
        """A stats directory that is a symlink is not followed."""
        real = tmp_path / "real"
        real.mkdir(mode=0o700)
        link = tmp_path / "link"
        link.symlink_to(real)
        stats = mmstats.Stats(link, "symdir")
        stats.counter("c").incr()
        assert stats.disabled is not None and "symlink" in stats.disabled
        assert list(real.iterdir()) == []
