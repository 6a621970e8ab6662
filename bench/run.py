"""Measure mmstats against the alternatives and rewrite docs/PERFORMANCE.md.

    python bench/run.py            # the full run, under 10 minutes on 2 cores
    python bench/run.py --quick    # a smoke run of every section, in seconds

Each section runs in a process of its own (bench/writes.py, inproc.py,
load.py, reading.py) and writes its results as JSON; this script gathers
them, adds the machine and versions, and writes the report and the plot.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import _util
import report

SECTIONS = ("writes", "inproc", "opens", "load", "reading")
SCRIPTS = {
    "writes": "writes.py",
    "inproc": "inproc.py",
    "load": "load.py",
    "reading": "reading.py",
}
PACKAGES = (
    "mmstats",
    "Django",
    "Flask",
    "Werkzeug",
    "prometheus_client",
    "django-prometheus",
    "statsd",
    "gunicorn",
    "click",
    "rich",
    "matplotlib",
)
OPENS_REQUESTS = 3000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: seconds, numbers mean nothing"
    )
    parser.add_argument(
        "--output",
        help="report to write (default: docs/PERFORMANCE.md; with --quick, a file"
        " in a new temporary directory)",
    )
    parser.add_argument(
        "--plot",
        help="PNG plot to write (default: performance-read.png beside the report)",
    )
    parser.add_argument("--json", help="also write all results to this JSON file")
    parser.add_argument(
        "--from-json",
        metavar="JSON",
        help="measure nothing: rewrite the report from results saved with --json",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this section (repeatable)",
    )
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="never install wrk, even as root (the full run otherwise tries apt-get)",
    )
    parser.add_argument(
        "--scratch",
        help="where to make the scratch directory (default: /dev/shm, a tmpfs"
        " like the /run directories stats files belong in, else $TMPDIR)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch directory"
    )
    return parser.parse_args()


# -- tools and the machine ----------------------------------------------------------


def find_wrk(quick: bool, no_install: bool) -> tuple[str | None, str]:
    """Return wrk's path, installing it with apt-get when allowed."""
    wrk = shutil.which("wrk")
    if wrk:
        return wrk, ""
    if quick or no_install or os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "wrk is not installed: install it with `apt-get install wrk`"
    print("wrk is missing; installing it: apt-get install -y wrk", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for attempt in ([], ["update"]):
        if attempt:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "wrk"], env=env, capture_output=True
        )
        wrk = shutil.which("wrk")
        if wrk:
            return wrk, ""
    return None, "wrk is not installed and `apt-get install -y wrk` failed"


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "--version"], capture_output=True, text=True)
    words = (out.stdout + out.stderr).split()
    return words[1] if len(words) > 1 else "unknown"


def machine(workdir: str) -> dict[str, str]:
    """Describe the machine, the versions and the date."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            kib = int(f.readline().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    fs = subprocess.run(
        ["stat", "-f", "-c", "%T", workdir], capture_output=True, text=True
    ).stdout.strip()
    info = {
        "Date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": cpu,
        "Cores (nproc)": str(os.cpu_count()),
        "Memory": mem,
        "Kernel": f"{platform.system()} {platform.release()}",
        "Scratch filesystem": fs or "unknown",
        "Load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "Python": f"{platform.python_version()} ({platform.python_implementation()})",
    }
    for name in PACKAGES:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = "not installed"
    head = subprocess.run(
        ["git", "-C", _util.ROOT, "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", _util.ROOT, "status", "--porcelain", "--", "mmstats"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if head:
        info["mmstats"] += f" (commit {head}{', mmstats/ modified' if dirty else ''})"
    return info


# -- sections ---------------------------------------------------------------------


def section_env(workdir: str, name: str) -> dict[str, str]:
    """Environment of a section: its own stats and prometheus directories."""
    stats = os.path.join(workdir, f"{name}-mmstats")
    prom = os.path.join(workdir, f"{name}-prom")
    os.makedirs(stats, mode=0o700, exist_ok=True)
    os.makedirs(prom, exist_ok=True)
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env.update(
        MMSTATS_DIR=stats,
        PROMETHEUS_MULTIPROC_DIR=prom,
        PYTHONPATH=_util.ROOT + (os.pathsep + path if path else ""),
    )
    for name in ("MMSTATS_NAME", "DJANGO_SETTINGS_MODULE", "FLASK_APP"):
        env.pop(name, None)
    return env


def run_section(name: str, workdir: str, quick: bool, timeout: float) -> Any:
    """Run one section's script; return its results or an error."""
    out = os.path.join(workdir, f"{name}.json")
    argv = [
        sys.executable,
        os.path.join(_util.BENCH, SCRIPTS[name]),
        "--json",
        out,
        "--workdir",
        workdir,
    ]
    if quick:
        argv.append("--quick")
    try:
        proc = subprocess.run(
            argv, env=section_env(workdir, name), timeout=timeout, cwd=_util.ROOT
        )
    except subprocess.TimeoutExpired:
        return {"error": f"{SCRIPTS[name]} ran over {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": f"{SCRIPTS[name]} exited with status {proc.returncode}"}
    with open(out, encoding="utf-8") as f:
        return json.load(f)


def run_opens(workdir: str, quick: bool) -> dict[str, Any]:
    """Count files opened per request, under strace when it is installed."""
    n = 300 if quick else OPENS_REQUESTS
    strace = shutil.which("strace")
    env = section_env(workdir, "opens")
    script = os.path.join(_util.BENCH, "inproc.py")
    if strace is None:
        return {
            "method": "an audit hook on `open` only: strace is not installed"
            " (apt-get install strace), so opens made inside C libraries are"
            " not seen",
            "apps": {},
        }
    trace = os.path.join(workdir, "opens.strace")
    proc = subprocess.run(
        [
            strace,
            "-f",
            "-qq",
            "-e",
            "trace=open,openat,openat2",
            "-o",
            trace,
            sys.executable,
            script,
            "--opens-only",
            str(n),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=_util.ROOT,
    )
    if proc.returncode != 0:
        return {"error": f"strace run failed: {proc.stderr.strip()[-500:]}"}
    seconds = dict(line.split() for line in proc.stdout.split("\n") if line.strip())
    with open(trace, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    apps = {}
    for tag, label in (
        ("wsgi", "WSGI + mmstats"),
        ("flask", "Flask + mmstats"),
        ("django", "Django + mmstats"),
    ):
        inside = False
        paths: list[str] = []
        for line in lines:
            if f"marker-{tag}-start" in line:
                inside = True
            elif f"marker-{tag}-end" in line:
                inside = False
            elif inside:
                m = re.search(r'"([^"]*)"', line)
                paths.append(m.group(1) if m else line)
        took = float(seconds.get(tag, "0"))
        allowed = int(took) + 1  # the load average, at most once a second
        odd = [p for p in paths if p != "/proc/loadavg"]
        apps[label] = {
            "requests": n,
            "seconds": took,
            "opens": len(paths),
            "opens_per_request": len(paths) / n,
            "paths": sorted(set(paths))[:10],
            "ok": not odd and len(paths) <= allowed,
        }
    return {
        "method": f"`strace -f -e trace=open,openat,openat2` around {n:,} requests"
        " per app, served in-process after a warm-up",
        "apps": apps,
    }


def run_sections(
    sections: list[str], workdir: str, quick: bool, started: float
) -> dict[str, Any]:
    """Run the sections one after the other; a failed one records its error."""
    results: dict[str, Any] = {}
    timeout = 300 if quick else 900
    for name in sections:
        print(f"[{time.perf_counter() - started:5.0f} s] {name}", flush=True)
        section_start = time.perf_counter()
        if name == "opens":
            results[name] = run_opens(workdir, quick)
            _add_audit(results[name], results.get("inproc", {}))
        else:
            results[name] = run_section(name, workdir, quick, timeout)
        results[name]["section_seconds"] = time.perf_counter() - section_start
        if "error" in results[name]:
            print(f"  FAILED: {results[name]['error']}", file=sys.stderr)
    return results


def _add_audit(opens: dict[str, Any], inproc: dict[str, Any]) -> None:
    """Add the audit hook's counts; they are the measurement without strace."""
    if "opens" not in inproc or "error" in opens:
        return
    opens["audit"] = inproc["opens"]
    if not opens["apps"]:
        opens["apps"] = {
            name: dict(
                counts,
                opens_per_request=counts["opens"] / counts["requests"],
                ok=counts["opens"] == 0 and counts["fd_growth"] == 0,
            )
            for name, counts in inproc["opens"].items()
        }


def write_outputs(
    results: dict[str, Any],
    meta: dict[str, Any],
    args: argparse.Namespace,
    output: str,
) -> None:
    """Write the report, the plot and, when asked, the raw results."""
    out_dir = os.path.dirname(os.path.abspath(output))
    plot_path = args.plot or os.path.join(out_dir, "performance-read.png")
    os.makedirs(os.path.dirname(os.path.abspath(plot_path)), exist_ok=True)
    plotted = report.plot(results, plot_path)
    plot_name = os.path.relpath(plot_path, out_dir) if plotted else None
    os.makedirs(out_dir, exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        f.write(report.render(results, meta, plot_name))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)

    plot_note = f" and {plot_path}" if plotted else " (no plot: no matplotlib)"
    print(f"Wrote {output}{plot_note}")
    for goal, measured, target, ok in report.goals(results):
        verdict = "n/a" if ok is None else ("MET" if ok else "MISSED")
        print(f"  {verdict:6} {goal}: {measured} (target {target})")
    print(f"Run time: {meta['run_seconds']:.0f} s")


def scratch_directory(given: str | None) -> str:
    """Make the scratch directory, on a tmpfs when there is one."""
    if given is None and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        given = "/dev/shm"
    workdir = tempfile.mkdtemp(prefix="mmstats-bench-", dir=given)
    os.chmod(workdir, 0o700)
    return workdir


def rewrite(args: argparse.Namespace) -> int:
    """Rewrite the report and plot from results saved by an earlier run."""
    with open(args.from_json, encoding="utf-8") as f:
        saved = json.load(f)
    output = args.output or os.path.join(_util.ROOT, "docs", "PERFORMANCE.md")
    args.json = None
    write_outputs(saved["results"], saved["meta"], args, output)
    return 0


def main() -> int:
    args = parse_args()
    if args.from_json:
        return rewrite(args)
    started = time.perf_counter()
    workdir = scratch_directory(args.scratch)
    if args.output:
        output = args.output
    elif args.quick:  # never over the real report
        output = os.path.join(tempfile.mkdtemp(prefix="mmstats-quick-"), "PERF.md")
    else:
        output = os.path.join(_util.ROOT, "docs", "PERFORMANCE.md")
    keep = args.keep
    mode = "quick" if args.quick else "full"
    print(f"mmstats benchmark ({mode}); scratch directory {workdir}")

    try:
        wrk, wrk_problem = find_wrk(args.quick, args.no_install)
        if wrk:
            os.environ["BENCH_WRK"] = wrk
        else:
            print(f"NOTE: {wrk_problem}; the gunicorn rows are skipped.")
        meta: dict[str, Any] = {"quick": args.quick, "machine": machine(workdir)}
        meta["machine"]["wrk"] = wrk_version(wrk) if wrk else "not installed"

        sections = args.only or list(SECTIONS)
        results = run_sections(sections, workdir, args.quick, started)

        meta["run_seconds"] = time.perf_counter() - started
        loads = os.getloadavg()
        meta["machine"]["Load average at end"] = " ".join(f"{x:.2f}" for x in loads)
        parts = ", ".join(
            f"{k} {v['section_seconds']:.0f} s" for k, v in results.items()
        )
        meta["machine"]["Run time"] = f"{meta['run_seconds']:.0f} s ({parts})"
        write_outputs(results, meta, args, output)
    finally:
        if keep:
            print(f"Kept the scratch directory {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    failed = [name for name, r in results.items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
