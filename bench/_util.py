"""Helpers shared by the benchmark sections: rounds, medians and results.

Every section measures its contenders in interleaved rounds (each round
times every contender once, in an order shuffled anew each round),
so that a slow spell of a shared machine hits all of them alike.  Code that
runs in this process is timed in the thread's CPU time (:data:`clock`).  A result
is the median over the rounds; a ratio is formed from medians of the same
run, never from timings of different runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import socket
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

# CPU time of the measuring thread: time spent descheduled on a busy, shared
# machine does not count, while system calls made by the code under test do.
clock = time.thread_time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
APPS = os.path.join(BENCH, "apps")


def interleave(
    contenders: dict[str, Callable[[], float]],
    rounds: int,
    warmup: int = 1,
    seed: int = 9,
) -> dict[str, list[float]]:
    """Call each contender once per round, in a new order; return the samples.

    A contender returns its own measurement (seconds per operation, requests
    per second, ...).  The order is shuffled every round, so no contender
    always follows the same neighbour, and garbage is collected before each
    call, so none pays for the garbage another left.  Warm-up rounds are run
    the same way and dropped.
    """
    names = list(contenders)
    order = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        order.shuffle(names)
        for name in names:
            gc.collect()
            value = contenders[name]()
            if r >= warmup:
                samples[name].append(value)
    return {name: samples[name] for name in contenders}


def median(values: Sequence[float]) -> float:
    """Return the median of ``values`` (NaN when there are none)."""
    return statistics.median(values) if values else float("nan")


def summary(values: Sequence[float], scale: float = 1.0) -> dict[str, Any]:
    """Return median, min, max, count and the samples, times ``scale``."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {
        "median": median(values) * scale,
        "min": min(values) * scale,
        "max": max(values) * scale,
        "n": len(values),
        "values": [v * scale for v in values],
    }


def paired_deltas(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Return ``a[i] - b[i]`` for rounds measured together."""
    return [x - y for x, y in zip(a, b, strict=False)]


def timed(func: Callable[[], object]) -> float:
    """Return the CPU seconds one call of ``func`` takes."""
    start = clock()
    func()
    return clock() - start


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def section_args(description: str) -> argparse.Namespace:
    """Parse the options every section takes: ``--quick`` and ``--json``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--json", required=True, help="where to write results")
    parser.add_argument("--workdir", required=True, help="scratch directory")
    return parser.parse_args()


def write_results(path: str, results: dict[str, Any]) -> None:
    """Write a section's results as JSON."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, sort_keys=True)


def log(message: str) -> None:
    """Print a progress line on stderr."""
    print(f"  {message}", file=sys.stderr, flush=True)
