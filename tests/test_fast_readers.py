"""The readers' fast paths give the same answers as the plain ones.

The grid against rich's Table, the pieced-together JSON against one
``json.dumps`` of the whole document, packed histograms against plain
dicts, and the caches a long-running reader keeps (record layouts, slow
entries, dead files by inode) against files that grow and are replaced.
"""

from __future__ import annotations

import io
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text

import mmstats
from mmstats import _format as F
from mmstats import _reader
from mmstats._grid import Grid
from mmstats._reader import HistogramValue
from mmstats._report import (
    SUMMARY_NAMES,
    dumps,
    snapshot_json_text,
    snapshot_to_json,
)
from tests.workers import Workers

# -- the grid -------------------------------------------------------------------


def _render(renderable: object, width: int, color: bool) -> str:
    out = io.StringIO()
    console = Console(
        file=out,
        width=width,
        force_terminal=color,
        color_system="truecolor" if color else None,
        legacy_windows=False,
    )
    console.print(renderable)
    return out.getvalue()


def _sample_grid(rows: int = 5, styled: bool = False) -> Grid:
    grid = Grid(
        title="Requests in flight",
        caption="A caption far longer than the narrow table above it, so it wraps.",
        show_footer=True,
    )
    grid.add_column("PID", justify="right", no_wrap=True)
    grid.add_column("State", overflow="fold", min_width=4)
    grid.add_column("Path", overflow="fold", min_width=4)
    grid.add_column("Time", justify="right", no_wrap=True, min_width=6)
    for i in range(rows):
        state = Text("alive", style="green" if styled else "")
        grid.add_row(str(100 + i), state, f"/日本/{i}", f"{i * 1.5:.1f}s")
    footers: list[str | Text] = ["total", "", Text("x"), "9s"]
    for column, cell in zip(grid.columns, footers, strict=True):
        column.footer = cell
    return grid


@pytest.mark.parametrize("color", [False, True])
@pytest.mark.parametrize("styled", [False, True])
def test_grid_prints_what_rich_table_prints(color: bool, styled: bool) -> None:
    grid = _sample_grid(styled=styled)
    # Plain cells are laid out by the grid itself; styled ones by rich.
    assert (grid._widths(80) is None) == styled
    assert _render(grid, 80, color) == _render(grid.to_table(), 80, color)


def test_grid_hands_narrow_terminals_and_multiline_cells_to_rich() -> None:
    grid = _sample_grid()
    grid.add_row("1", "x" * 60, "y" * 60, "1s")
    narrow = _render(grid, 50, False)
    assert narrow == _render(grid.to_table(), 50, False)
    assert max(len(line) for line in narrow.splitlines()) <= 50
    grid = _sample_grid(1)
    grid.add_row("2", "two\nlines", "/", "0s")
    assert _render(grid, 80, False) == _render(grid.to_table(), 80, False)


# -- histograms -----------------------------------------------------------------


def _words(counts: dict[int, int], n: int) -> bytes:
    words = [0] * n
    for k, c in counts.items():
        words[k] = c
    return b"".join(w.to_bytes(8, F.NATIVE_ORDER, signed=True) for w in words)


META = {"lo": 1e-6, "gamma": F.GAMMA, "integer": False, "nbuckets": 64}


def test_packed_histograms_merge_like_dicts() -> None:
    rng = random.Random(7)
    total = HistogramValue(1e-6, F.GAMMA, False, nbuckets=64)
    plain: dict[int, int] = {}
    for _ in range(300):
        counts = {rng.randrange(64): rng.randrange(1, 1000) for _ in range(5)}
        hist = HistogramValue.from_words(META, _words(counts, 64), 1.5)
        total.merge(hist)
        for k, c in counts.items():
            plain[k] = plain.get(k, 0) + c
    assert total.buckets == plain
    assert total.count == sum(plain.values())
    assert total.sum == pytest.approx(450.0)


def test_counts_too_large_to_pack_stay_exact() -> None:
    big = {3: 2**50, 5: 1}
    hist = HistogramValue.from_words(META, _words(big, 64), 0.0)
    other = HistogramValue.from_words(META, _words({3: 1}, 64), 0.0)
    hist.merge(other)
    other.merge(HistogramValue.from_words(META, _words(big, 64), 0.0))
    assert hist.buckets == other.buckets == {3: 2**50 + 1, 5: 1}


def test_a_negative_bucket_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        HistogramValue.from_words(META, _words({2: -1}, 64), 0.0)


def test_merging_past_the_packing_limit_unpacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_reader, "_PACKED_MAX_PARTS", 4)
    total = HistogramValue(1e-6, F.GAMMA, False, nbuckets=64)
    for _ in range(10):
        total.merge(HistogramValue.from_words(META, _words({1: 2**47}, 64), 0.0))
    assert total.buckets == {1: 10 * 2**47}


def _reference_quantile(buckets: dict[int, int], q: float, h: HistogramValue) -> float:
    total = sum(buckets.values())
    rank = max(1, math.ceil(q * total))
    seen = 0
    for k in sorted(buckets):
        seen += buckets[k]
        if seen >= rank:
            return h.representative(k)
    raise AssertionError("rank past the buckets")


def test_quantiles_are_nearest_rank() -> None:
    rng = random.Random(3)
    for _ in range(200):
        counts = {
            rng.randrange(64): rng.randrange(1, 50) for _ in range(rng.randrange(1, 8))
        }
        packed = HistogramValue.from_words(META, _words(counts, 64), 0.0)
        plain = HistogramValue(1e-6, F.GAMMA, False, None, 0.0, dict(counts), 64)
        qs = (0.0, 0.01, 0.5, 0.9, 0.99, 1.0)
        want = [_reference_quantile(counts, q, plain) for q in qs]
        assert packed.quantiles(qs) == want
        assert plain.quantiles(qs) == want
    assert HistogramValue(1e-6, F.GAMMA, False).quantiles((0.5,)) == [None]


# -- whole directories --------------------------------------------------------------


def test_pieced_json_is_the_whole_document(populated: Workers) -> None:
    snapshot = mmstats.read_directory(populated.directory)
    assert any(w.slow for w in snapshot.workers)
    want = dumps(snapshot_to_json(snapshot), None)
    assert snapshot_json_text(snapshot) == want
    assert snapshot_json_text(snapshot) == want  # from the kept entry texts
    assert "<script>" not in want


def test_reading_some_names_reads_the_same_values(populated: Workers) -> None:
    full = mmstats.read_directory(populated.directory, slow=False)
    some = mmstats.read_directory(populated.directory, slow=False, names=SUMMARY_NAMES)
    for a, b in zip(full.workers, some.workers, strict=True):
        wanted = [s for s in a.series if s.name in SUMMARY_NAMES]
        assert wanted == b.series
        assert wanted


WRITER = """
import sys, mmstats
stats = mmstats.Stats(sys.argv[1], "grow")
for name in sys.argv[2:]:
    stats.counter(name).incr(len(name))
stats.histogram("h").observe(0.5)
print(stats.path, flush=True)
sys.stdin.readline()
for name in sys.argv[2:]:
    stats.counter(name + "_later").incr(7)
    stats.histogram("h").observe(2.0)
print("more", flush=True)
sys.stdin.readline()
"""


def test_a_file_that_grows_is_read_past_what_was_seen(stats_dir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, os.fspath(stats_dir), "a", "bb"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdout.readline()
        first = mmstats.read_directory(stats_dir).workers[0]
        assert first.value("a") == 1 and first.value("a_later") is None
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "more"
        again = mmstats.read_directory(stats_dir).workers[0]
        assert again.value("a_later") == 7 and again.value("bb_later") == 7
        assert again.value("h").count == 3
    finally:
        proc.stdin.write("\n")
        proc.stdin.close()
        proc.wait(10)


def test_a_replaced_file_is_read_anew(stats_dir: Path, tmp_path: Path) -> None:
    """A closed file kept by the reader, then a different file under its name."""
    for value in ("one", "three"):
        other = tmp_path / value
        other.mkdir(mode=0o700)
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, mmstats; s = mmstats.Stats(sys.argv[1], 'x'); "
                "s.counter('n').incr(len(sys.argv[2]))",
                os.fspath(other),
                value,
            ],
            check=True,
        )
    (one,) = (tmp_path / "one").iterdir()
    (three,) = (tmp_path / "three").iterdir()
    target = stats_dir / "x.1.replaced.mmstats"
    os.link(one, target)
    assert mmstats.read_directory(stats_dir).workers[0].value("n") == 3
    assert mmstats.read_directory(stats_dir).workers[0].value("n") == 3
    os.unlink(target)
    os.link(three, target)
    assert mmstats.read_directory(stats_dir).workers[0].value("n") == 5


@pytest.mark.parametrize(
    "value", [0.0, -0.0, 1e-300, 12345.678, float("nan"), float("inf"), -float("inf")]
)
def test_slow_entries_are_written_as_json_writes_them(value: float) -> None:
    from mmstats._reader import SlowEntry
    from mmstats._report import _encode, _entry_json

    entry = SlowEntry(
        7, 4242, "hôst<", "GET", '/a"b\\c\x00\u2028\ud800', "v</script>", 503,
        value, 2.5, value, 12, value, -(2**40), value,
    )  # fmt: skip
    assert _entry_json(entry) == _encode(entry.to_json())


def test_a_shared_histogram_reads_the_same_from_many_threads() -> None:
    """Dead workers' values are shared by the threads of serve; unpacking one
    in a thread must never double or lose buckets seen from another."""
    import threading

    counts = {k: k + 1 for k in range(0, 64, 3)}
    want = HistogramValue(1e-6, F.GAMMA, False, None, 0.0, dict(counts), 64)
    errors: list[str] = []
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(30):
            shared = HistogramValue.from_words(META, _words(counts, 64), 0.0)
            start = threading.Barrier(6)

            def use(
                which: int,
                shared: HistogramValue = shared,
                start: threading.Barrier = start,
            ) -> None:
                start.wait()
                for _ in range(20):
                    if which % 3 == 0:
                        got = dict(shared.buckets)
                    elif which % 3 == 1:
                        total = HistogramValue(1e-6, F.GAMMA, False, nbuckets=64)
                        total.merge(shared)
                        got = total.buckets
                    else:
                        got = dict(shared.copy().buckets)
                    if got != counts:
                        errors.append(f"{which}: {got}")

            threads = [threading.Thread(target=use, args=(i,)) for i in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert shared == want
    finally:
        sys.setswitchinterval(old)
    assert errors == []


def test_the_count_of_packed_buckets_is_their_sum() -> None:
    rng = random.Random(11)
    for _ in range(100):
        counts = {rng.randrange(64): rng.randrange(1, 2**47) for _ in range(9)}
        hist = HistogramValue.from_words(META, _words(counts, 64), 0.0)
        for _ in range(rng.randrange(5)):
            hist.merge(HistogramValue.from_words(META, _words(counts, 64), 0.0))
        expected = sum(hist.copy().buckets.values())
        assert hist.count == expected


@pytest.mark.parametrize("cell", [" lead", "trail ", "  ", "a  b"])
def test_cells_with_edge_spaces_print_as_rich_prints_them(cell: str) -> None:
    grid = Grid()
    grid.add_column("R", justify="right")
    grid.add_column("L")
    grid.add_row(cell, cell)
    grid.add_row("x" * 9, "y" * 9)
    assert _render(grid, 80, False) == _render(grid.to_table(), 80, False)


def test_fresh_caches_read_cold_and_put_back_what_was_kept(
    populated: Workers,
) -> None:
    warm = mmstats.read_directory(populated.directory)
    kept = dict(_reader._layouts)
    assert kept
    with _reader.fresh_caches():
        assert not _reader._layouts
        cold = mmstats.read_directory(populated.directory)
        assert _reader._layouts
    assert _reader._layouts == kept
    assert [w.series for w in cold.workers] == [w.series for w in warm.workers]


def test_reading_the_newest_entries_reads_those_of_a_full_read(
    populated: Workers,
) -> None:
    full = mmstats.read_directory(populated.directory)
    assert any(len(w.slow) > 1 for w in full.workers)
    for n in (0, 1, 2, 1000):
        some = mmstats.read_directory(populated.directory, slow=n)
        for a, b in zip(full.workers, some.workers, strict=True):
            assert b.slow == a.slow[:n]
