"""The benchmark command runs end to end in its quick mode (issue 9).

Only the shape of its report is checked, never a speed: the quick mode's
numbers mean nothing, and CI machines are shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("writes", "inproc", "opens", "load", "reading")
HEADINGS = (
    "# Performance",
    "## Machine and versions",
    "## Goals",
    "## Writes",
    "## Per request, in-process",
    "## Per request, under gunicorn",
    "## Files opened per request",
    "## Reading",
    "### Size",
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Run ``python bench/run.py --quick`` once into a scratch directory."""
    out = tmp_path_factory.mktemp("bench")
    report, plot, results = out / "PERFORMANCE.md", out / "read.png", out / "r.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMSTATS_")}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--output",
            str(report),
            "--plot",
            str(plot),
            "--json",
            str(results),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return {
        "proc": proc,
        "report": report,
        "plot": plot,
        "results": json.loads(results.read_text()) if results.exists() else None,
    }


@pytest.mark.integration
class TestQuickBenchmark:
    def test_command_succeeds(self, quick_run: dict[str, object]) -> None:
        """The quick run exits 0 and every section finishes without error."""
        proc = quick_run["proc"]
        assert isinstance(proc, subprocess.CompletedProcess)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        results = quick_run["results"]
        assert isinstance(results, dict)
        for name in SECTIONS:
            assert "error" not in results["results"][name], results["results"][name]

    def test_report_has_every_section(self, quick_run: dict[str, object]) -> None:
        """The report has the machine, the goals and every measured section."""
        text = Path(str(quick_run["report"])).read_text(encoding="utf-8")
        for heading in HEADINGS:
            assert f"\n{heading}\n" in f"\n{text}", heading
        assert "quick smoke run" in text
        for field in ("Date", "CPU", "Cores (nproc)", "Python", "Django", "Flask"):
            assert f"| {field} |" in text, field

    def test_every_goal_has_a_verdict(self, quick_run: dict[str, object]) -> None:
        """Each goal row ends in MET, MISSED or n/a, and the summary says so."""
        text = Path(str(quick_run["report"])).read_text(encoding="utf-8")
        goals = text.split("## Goals", 1)[1].split("\n## ", 1)[0]
        rows = [
            line
            for line in goals.splitlines()
            if line.startswith("| ") and not line.startswith("| Goal |")
        ]
        assert len(rows) >= 10, goals
        for row in rows:
            assert row.rstrip(" |").endswith(("**MET**", "**MISSED**", "n/a")), row
        assert "mmstats misses" in goals or "meets every goal" in goals

    def test_results_hold_every_measurement(self, quick_run: dict[str, object]) -> None:
        """The raw results carry writes, requests, reads, sizes and threads."""
        results = quick_run["results"]
        assert isinstance(results, dict)
        res = results["results"]
        ops = res["writes"]["writes"]["operations"]
        assert set(ops) == {
            "counter increment",
            "gauge set",
            "histogram observation",
            "text set",
            "labelled counter",
        }
        threads = {r["threads"] for r in res["writes"]["threads"]["rows"]}
        assert threads == {1, 2, 4, 8}
        assert "Django + mmstats" in res["inproc"]["us_per_request"]
        assert "rows" in res["load"] or "skipped" in res["load"]
        readers = {r["reader"] for r in res["reading"]["in_process"]["rows"]}
        assert {"mmstats show", "mmstats json", "mmstats scrape"} <= readers
        assert "prometheus_client collect" in readers
        assert res["reading"]["size"]["mmstats"]["size"] > 0

    def test_plot_is_a_png_when_matplotlib_is_installed(
        self, quick_run: dict[str, object]
    ) -> None:
        """The read-time plot is written as a PNG (with the bench extra)."""
        pytest.importorskip("matplotlib")
        data = Path(str(quick_run["plot"])).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
