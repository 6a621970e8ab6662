"""Histogram buckets: quantile accuracy and exact merging."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

import mmstats


def exact_quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile, the definition the reader uses."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@pytest.mark.parametrize("seed", range(5))
def test_time_quantiles_within_5_percent_from_1us_to_1h(
    stats_dir: Path, seed: int
) -> None:
    """p50, p90 and p99 are within 5 % for any mix of 1 µs to 1 h."""
    rng = random.Random(seed)
    values = [10 ** rng.uniform(-6, math.log10(3600)) for _ in range(5000)]
    stats = mmstats.Stats(stats_dir, f"qt{seed}")
    hist = stats.histogram("t")
    for v in values:
        hist.observe(v)
    read = mmstats.read_file(stats.path or "").value("t")
    for q in (0.5, 0.9, 0.99):
        exact = exact_quantile(values, q)
        assert read.quantile(q) == pytest.approx(exact, rel=0.05)


@pytest.mark.parametrize("value", [1e-6 * 1.0001, 3.3e-5, 0.0123, 1.0, 59.9, 3599.0])
def test_any_single_time_is_reported_within_5_percent(
    stats_dir: Path, value: float
) -> None:
    """Each value, alone, is its own p50 within 5 %."""
    stats = mmstats.Stats(stats_dir, f"one{value}")
    stats.histogram("t").observe(value)
    read = mmstats.read_file(stats.path or "").value("t")
    assert read.quantile(0.5) == pytest.approx(value, rel=0.05)


def test_count_quantiles_within_5_percent_from_1_to_100000(stats_dir: Path) -> None:
    """Queries per request from 1 to 100,000: small counts exact, all within 5 %."""
    rng = random.Random(3)
    values = [float(int(10 ** rng.uniform(0, 5))) for _ in range(5000)]
    stats = mmstats.Stats(stats_dir, "counts")
    hist = stats.histogram("q", unit="queries")
    for v in values:
        hist.observe(v)
    read = mmstats.read_file(stats.path or "").value("q")
    for q in (0.5, 0.9, 0.99):
        assert read.quantile(q) == pytest.approx(exact_quantile(values, q), rel=0.05)
    for small in range(0, 13):
        solo = mmstats.Stats(stats_dir, f"small{small}")
        solo.histogram("q", unit="queries").observe(small)
        assert mmstats.read_file(solo.path or "").value("q").quantile(0.5) == small


def test_histograms_of_workers_and_threads_merge_exactly(stats_dir: Path) -> None:
    """Merging two workers' histograms equals one histogram of all values."""
    rng = random.Random(9)
    a_values = [rng.expovariate(10) for _ in range(2000)]
    b_values = [rng.expovariate(2) for _ in range(2000)]
    a = mmstats.Stats(stats_dir, "merge_a")
    b = mmstats.Stats(stats_dir, "merge_b")
    both = mmstats.Stats(stats_dir, "merge_both")
    for v in a_values:
        a.histogram("t").observe(v)
        both.histogram("t").observe(v)
    for v in b_values:
        b.histogram("t").observe(v)
        both.histogram("t").observe(v)
    merged = mmstats.read_file(a.path or "").value("t")
    merged.merge(mmstats.read_file(b.path or "").value("t"))
    reference = mmstats.read_file(both.path or "").value("t")
    assert merged.buckets == reference.buckets
    assert merged.count == reference.count == 4000
    assert merged.sum == pytest.approx(reference.sum, rel=1e-12)
