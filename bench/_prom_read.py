"""Collect a prometheus_client multiprocess directory and print the exposition.

The whole-command counterpart of ``mmstats show`` in the reading benchmark:
``python bench/_prom_read.py DIR``.
"""

from __future__ import annotations

import sys

from prometheus_client import CollectorRegistry, generate_latest, multiprocess


def main() -> None:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=sys.argv[1])
    sys.stdout.buffer.write(generate_latest(registry))


if __name__ == "__main__":
    main()
