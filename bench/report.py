"""Turn the sections' results into docs/PERFORMANCE.md and the read-time plot.

The goals come from the project's issues; each is judged from ratios
measured in the same run and marked MET or MISSED, plainly.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

Results = dict[str, Any]

COUNTER = "counter increment"
HISTOGRAM = "histogram observation"
MP = "prometheus_client multiprocess"
SP = "prometheus_client single-process"
RAW = "raw memoryview slot"
DJANGO_PROM = "Django + django-prometheus (multiprocess)"
FLAT = 1.25  # "stays as fast": at most this times the time over fresh workers


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 100 or digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"


def _ratio(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.2f}×"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**MET**" if ok else "**MISSED**")


def _spread(top: list[float] | None, bottom: list[float] | None) -> str:
    """Return the middle half of the per-round ratios ``top / bottom``."""
    if not top or not bottom:
        return ""
    ratios = sorted(a / b for a, b in zip(top, bottom, strict=False) if b)
    if len(ratios) < 4:
        return ""
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return f" (rounds: {q1:.2f}–{q3:.2f}×)"


def _iqr(values: list[float] | None) -> str:
    """Return the middle half of per-round ratios already formed."""
    if not values or len(values) < 4:
        return ""
    q1, _, q3 = statistics.quantiles(sorted(values), n=4)
    return f" (rounds: {q1:.2f}–{q3:.2f}×)"


def _net_values(results: Results, op: str, contender: str) -> list[float] | None:
    for row in results["writes"]["operations"].get(op, []):
        if row["contender"] == contender and "net_ns" in row:
            return list(row["net_ns"].get("values", []))
    return None


def _read_values(rd: Results, reader: str, scenario: str, key: str) -> list[float]:
    for row in rd.get(key, {}).get("rows", []):
        if row["reader"] == reader and row["scenario"] == scenario:
            return list(row["ms"].get("values", []))
    return []


def _net(results: Results, op: str, contender: str) -> float | None:
    for row in results["writes"]["operations"].get(op, []):
        if row["contender"] == contender and "net_ns" in row:
            return float(row["net_ns"]["median"])
    return None


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _read_ms(results: Results, reader: str, scenario: str, key: str) -> float | None:
    for row in results.get(key, {}).get("rows", []):
        if row["reader"] == reader and row["scenario"] == scenario:
            return float(row["ms"]["median"])
    return None


# -- goals ----------------------------------------------------------------------


def goals(res: Results) -> list[tuple[str, str, str, bool | None]]:
    """Return (goal, measured, target, met) for every speed goal."""
    rows: list[tuple[str, str, str, bool | None]] = []
    w = res.get("writes")
    if w and "writes" in w:
        mm = _net(w, COUNTER, "mmstats")
        mm_v = _net_values(w, COUNTER, "mmstats")
        r = _div(_net(w, COUNTER, MP), mm)
        rows.append(
            (
                "`incr()` vs prometheus_client multiprocess `Counter.inc()`",
                f"{_ratio(r)} faster" + _spread(_net_values(w, COUNTER, MP), mm_v),
                "≥ 8× faster",
                None if r is None else r >= 8,
            )
        )
        r = _div(_net(w, COUNTER, SP), mm)
        rows.append(
            (
                "`incr()` vs prometheus_client single-process `Counter.inc()`",
                f"{_ratio(r)} faster" + _spread(_net_values(w, COUNTER, SP), mm_v),
                "faster (> 1×)",
                None if r is None else r > 1,
            )
        )
        r = _div(mm, _net(w, COUNTER, RAW))
        rows.append(
            (
                "`incr()` vs a raw `memoryview` slot increment",
                f"{_ratio(r)} the cost" + _spread(mm_v, _net_values(w, COUNTER, RAW)),
                "≤ 3× the cost",
                None if r is None else r <= 3,
            )
        )
        r = _div(_net(w, HISTOGRAM, MP), _net(w, HISTOGRAM, "mmstats"))
        rows.append(
            (
                "`Histogram.observe()` vs prometheus_client multiprocess",
                f"{_ratio(r)} faster"
                + _spread(
                    _net_values(w, HISTOGRAM, MP), _net_values(w, HISTOGRAM, "mmstats")
                ),
                "≥ 5× faster",
                None if r is None else r >= 5,
            )
        )
        calls = w.get("c_calls", {}).get("mmstats counter incr()")
        if calls is not None:
            rows.append(
                (
                    "`incr()` takes no lock and makes no system call",
                    f"{sum(calls.values()):g} calls into C per `incr()`",
                    "0 calls into C",
                    not calls,
                )
            )
        threads = w.get("threads", {}).get("rows", [])
        lost = sum(t["lost"] for t in threads if t["contender"] == "mmstats")
        if threads:
            rows.append(
                (
                    "No lost increments from 1, 2, 4 and 8 threads",
                    f"{lost} lost",
                    "0 lost",
                    lost == 0,
                )
            )

    inproc = res.get("inproc")
    if inproc and "added" in inproc:
        added = inproc["added"]
        mm = added.get("Django + mmstats", {}).get("added_us", {}).get("median")
        prom = added.get(DJANGO_PROM, {}).get("added_us", {}).get("median")
        r = _div(mm, prom)
        spread = _spread(
            added.get("Django + mmstats", {}).get("added_us", {}).get("values"),
            added.get(DJANGO_PROM, {}).get("added_us", {}).get("values"),
        )
        rows.append(
            (
                "Django middleware cost vs django-prometheus's pair (multiprocess),"
                " in-process",
                f"{_ratio(r)}{spread}: {_fmt(mm)} µs vs {_fmt(prom)} µs added"
                if r is not None
                else inproc.get("missing", "n/a"),
                "≤ 0.20× (a fifth)",
                None if r is None else r <= 0.2,
            )
        )

    load = res.get("load")
    if load and "rows" in load:
        row = load["rows"].get("Django + mmstats", {})
        r = row.get("ratio", {}).get("median")
        dp = load["rows"].get(DJANGO_PROM, {}).get("ratio", {}).get("median")
        rows.append(
            (
                "gunicorn (2 sync workers) + wrk, hello-world Django, requests/s"
                " with vs without",
                f"{_ratio(r)}{_iqr(row.get('ratio', {}).get('values'))};"
                f" django-prometheus: {_ratio(dp)}",
                "≥ 0.95×",
                None if r is None else r >= 0.95,
            )
        )
    elif load and "skipped" in load:
        rows.append(
            (
                "gunicorn (2 sync workers) + wrk, Django requests/s with vs without",
                "not measured: " + load["skipped"].split(":")[0],
                "≥ 0.95×",
                None,
            )
        )

    opens = res.get("opens")
    if opens and "apps" in opens:
        worst = max(
            (a["opens_per_request"] for a in opens["apps"].values()), default=None
        )
        ok = None if worst is None else all(a["ok"] for a in opens["apps"].values())
        rows.append(
            (
                "Memory and load readings open no file per request"
                f" ({opens['method']})",
                f"{_fmt(worst, 4)} opens per request (worst app)",
                "no open per request",
                ok,
            )
        )

    rows.extend(_reading_goals(res.get("reading")))
    return rows


def _reading_goals(rd: Results | None) -> list[tuple[str, str, str, bool | None]]:
    rows: list[tuple[str, str, str, bool | None]] = []
    if not rd or "in_process" not in rd:
        return rows
    base = str(rd["base"])
    n = f"{base} workers"

    def ms(reader: str, scenario: str, key: str = "in_process") -> float | None:
        return _read_ms(rd, reader, scenario, key)

    def spread(a: tuple[str, str], b: tuple[str, str], key: str = "in_process") -> str:
        return _spread(_read_values(rd, *a, key), _read_values(rd, *b, key))

    pc = ("prometheus_client collect", base)
    ps = ("prometheus_client collect + generate_latest", base)

    collect = ms("prometheus_client collect", base)
    scrape_prom = ms("prometheus_client collect + generate_latest", base)
    for cmd in ("show", "json"):
        # A command reads once: the verdict is on a read with nothing kept.
        for variant, how, goal in (
            (" (cold)", "a first read, nothing kept from earlier reads", True),
            ("", "read again in the same process, as `top` and the page do", False),
        ):
            mine = ms(f"mmstats {cmd}{variant}", base)
            r = _div(mine, collect)
            rows.append(
                (
                    f"`mmstats {cmd}` in-process ({how}) vs MultiProcessCollector"
                    f" collect, {n}",
                    f"{_ratio(r)} the time"
                    f"{spread((f'mmstats {cmd}{variant}', base), pc)}:"
                    f" {_fmt(mine, 2)} vs {_fmt(collect, 2)} ms",
                    "< 0.20×" if goal else "(no goal; for comparison)",
                    (None if r is None else r < 0.2) if goal else None,
                )
            )
    # How far the goals of the cold reads could be reached at all.
    for reader, what in (
        (
            "floor: json.dumps of the json document",
            "The standard library's `json.dumps` alone of the document"
            " `mmstats json` prints (made once), the floor of a `mmstats json`",
        ),
        (
            "floor: open, map and close every file",
            "Opening, mapping and closing every file, nothing parsed, the"
            " floor of any first read",
        ),
    ):
        mine = ms(reader, base)
        if mine is None:
            continue
        r = _div(mine, collect)
        rows.append(
            (
                f"{what}, vs MultiProcessCollector collect, {n}",
                f"{_ratio(r)} the time{spread((reader, base), pc)}:"
                f" {_fmt(mine, 2)} vs {_fmt(collect, 2)} ms",
                "(no goal; for comparison)",
                None,
            )
        )
    for cmd in ("show", "json"):
        mine = ms(f"mmstats {cmd}", base, "commands")
        theirs = ms("prometheus_client collect + generate_latest", base, "commands")
        r = _div(mine, theirs)
        rows.append(
            (
                f"`mmstats {cmd}` whole command vs a whole prometheus_client"
                f" collect command (interpreter start and imports included), {n}",
                f"{_ratio(r)} the time"
                f"{spread((f'mmstats {cmd}', base), ps, 'commands')}:"
                f" {_fmt(mine, 0)} vs {_fmt(theirs, 0)} ms",
                "(no goal; for comparison)",
                None,
            )
        )
    for cmd in ("show", "json"):
        reader = f"mmstats {cmd} (cold)"
        fresh = ms(reader, base)
        after = ms(reader, "recycled-clean")
        r = _div(after, fresh)
        mine_after = (reader, "recycled-clean")
        rows.append(
            (
                f"`mmstats {cmd}` (cold) after {rd['recycled']:,} recycled workers"
                f" and `clean`, vs {n} fresh",
                f"{_ratio(r)} the time" + spread(mine_after, (reader, base)),
                f"≤ {FLAT:.2f}× (as fast)",
                None if r is None else r <= FLAT,
            )
        )
        r2 = _div(after, collect)
        rows.append(
            (
                f"`mmstats {cmd}` (cold) after {rd['recycled']:,} recycled workers"
                " and `clean`, vs MultiProcessCollector collect over"
                f" {n}",
                f"{_ratio(r2)} the time" + spread(mine_after, pc),
                "< 0.20×",
                None if r2 is None else r2 < 0.2,
            )
        )
    # Prometheus scrapes a running exporter: the verdict is on a scrape
    # that follows others; the first one is shown for comparison.
    for reader, how, goal in (
        ("mmstats scrape", "by a running exporter, workers idle since the last", True),
        (
            "mmstats scrape (busy)",
            "by a running exporter, every counter and histogram of every worker"
            " changed since the last",
            True,
        ),
        ("mmstats scrape (cold)", "the first, nothing kept", False),
    ):
        mine = ms(reader, base)
        r = _div(mine, scrape_prom)
        rows.append(
            (
                f"Scrape ({how}) vs MultiProcessCollector + generate_latest, {n}",
                f"{_ratio(r)} the time{spread((reader, base), ps)}:"
                f" {_fmt(mine, 2)} vs {_fmt(scrape_prom, 2)} ms",
                "< 0.20×" if goal else "(no goal; for comparison)",
                (None if r is None else r < 0.2) if goal else None,
            )
        )
    mine = ms("mmstats scrape", base)
    for scenario, label in (
        ("recycled-clean", "and `clean`"),
        ("recycled", "without `clean`"),
    ):
        after = ms("mmstats scrape", scenario)
        r = _div(after, mine)
        rows.append(
            (
                f"Scrape after {rd['recycled']:,} recycled workers {label},"
                f" vs {n} fresh",
                f"{_ratio(r)} the time"
                + spread(("mmstats scrape", scenario), ("mmstats scrape", base)),
                f"≤ {FLAT:.2f}× (flat)",
                None if r is None else r <= FLAT,
            )
        )
    page = rd.get("page")
    if page:
        pct = page["core_percent"]
        rows.append(
            (
                f"Live page open in {page['tabs']} tabs polling every"
                f" {page['interval']:g} s, {n}: CPU of `mmstats serve`",
                f"{pct:.2f} % of one core ({page['polls']} polls in"
                f" {page['seconds']:.0f} s, {len(page['failures'])} failed)",
                "< 2 % of one core",
                pct < 2.0 and not page["failures"],
            )
        )
    return rows


# -- the page -------------------------------------------------------------------


def _workers(n: str | int) -> str:
    return f"{n} worker" if str(n) == "1" else f"{n} workers"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def render(res: Results, meta: Results, plot_name: str | None) -> str:
    """Return the Markdown of docs/PERFORMANCE.md."""
    out: list[str] = []
    out += [
        "# Performance",
        "",
        "Measured by `python bench/run.py` (in"
        f" {_duration(meta['run_seconds'])} on the machine below);"
        " rerun it to rewrite this page. `python bench/run.py --quick` is the"
        " smoke run CI makes, whose numbers mean nothing.",
        "",
        "Every figure is the median of interleaved rounds: each round measures"
        " every contender once, in an order shuffled anew each round and after"
        " a garbage collection, so that a busy spell of a shared machine falls"
        " on all of them alike."
        " Code run in the benchmark's own process is timed in the CPU time of"
        " its thread (`time.thread_time`, which counts the system calls it"
        " makes but not the time it waits for a core); whole commands in the"
        " CPU time the kernel accounts to them; gunicorn and the thread runs in"
        " wall time."
        " Ratios compare medians of the same run. Absolute timings depend on the"
        " machine and its load; the ratios are the result.",
        "",
    ]
    if meta.get("quick"):
        out += [
            "**This is a quick smoke run: too few rounds for its numbers to mean"
            " anything.**",
            "",
        ]
    out += ["## Machine and versions", ""]
    out += _table(["", ""], [[f"{k}", f"{v}"] for k, v in meta["machine"].items()])
    out += [""]

    goal_rows = goals(res)
    missed = [g for g in goal_rows if g[3] is False]
    out += ["## Goals", ""]
    if missed:
        out += [
            f"mmstats misses {len(missed)} of the {len(goal_rows)} goals below:",
            "",
        ]
        out += [
            f"- {goal}: {measured}, target {target}."
            for goal, measured, target, _ in missed
        ]
        out += [""]
    else:
        out += ["mmstats meets every goal below that could be measured.", ""]
    out += [
        "Goals come from the project's issues. The verdict judges the ratio of"
        " medians; *rounds* gives the middle half (25th to 75th percentile) of"
        " the same ratio taken round by round, to show how firm it is on this"
        " machine. Write ratios use net times (the"
        " empty loop subtracted, which makes them stricter); *as fast* and"
        f" *flat* are read as at most {FLAT:.2f}× the time over the same number"
        " of fresh workers, measured in the same rounds.",
        "",
    ]
    out += _table(
        ["Goal", "Measured", "Target", "Verdict"],
        [[g, m, t, _verdict(ok)] for g, m, t, ok in goal_rows],
    )
    out += [""]

    for name, section in (
        ("writes", _writes_section),
        ("inproc", _inproc_section),
        ("load", _load_section),
        ("opens", _opens_section),
        ("reading", _reading_section),
    ):
        data = res.get(name)
        if data is None:
            continue
        if "error" in data:
            out += [f"## {name}", "", f"This section failed: `{data['error']}`", ""]
            continue
        out += section(data, plot_name)
    return "\n".join(out).rstrip() + "\n"


def _writes_section(w: Results, plot_name: str | None) -> list[str]:
    out = [
        "## Writes",
        "",
        "CPU nanoseconds per operation, timed with `timeit` in loops of about"
        " 10 ms."
        f" *Net* subtracts the empty loop ({_fmt(w['writes']['loop_ns'])} ns);"
        " ratios use net times. prometheus_client's multiprocess metrics write"
        " its mmap files (`PROMETHEUS_MULTIPROC_DIR`); its single-process ones"
        " are made in the same process with its in-memory value class. statsd"
        " is the `statsd` package sending UDP to a port on 127.0.0.1 bound and"
        " drained by the benchmark. Labelled counters look their child up on"
        " every call (`.labels(status='200')`), as request code does.",
        "",
    ]
    for op, rows in w["writes"]["operations"].items():
        mm = _net(w, op, "mmstats")
        table = []
        for row in rows:
            if "net_ns" not in row:
                table.append([row["contender"], "n/a", "n/a", "n/a", row["note"]])
                continue
            net = row["net_ns"]["median"]
            table.append(
                [
                    row["contender"],
                    _fmt(row["gross_ns"]["median"]),
                    _fmt(net),
                    _ratio(_div(net, mm)),
                    f"`{row['statement']}`",
                ]
            )
        out += [f"### {op.capitalize()}", ""]
        out += _table(
            ["Contender", "ns/op", "net ns/op", "vs mmstats", "Statement"], table
        )
        out += [""]

    out += [
        "### Calls into C per write",
        "",
        "Counted with `sys.setprofile` over 1,000 writes once the record exists."
        " Taking a lock or making a system call is a call into C; mmstats' stores"
        " into the mapped file are not calls at all.",
        "",
    ]
    out += _table(
        ["Write", "C functions called per write"],
        [
            [
                name,
                ", ".join(f"`{k}` ×{v:g}" for k, v in calls.items()) or "none",
            ]
            for name, calls in w["c_calls"].items()
        ],
    )
    out += ["", "### Threads", ""]
    out += [
        "Counter increments per second from 1, 2, 4 and 8 threads of one process"
        f" ({w['threads']['rows'][0]['increments']:,} increments per row, split"
        " evenly over the threads); *lost* compares what the counter reads"
        " afterwards with what was added. Python's GIL runs one thread at a time,"
        " so the rate cannot grow with threads; what matters is that nothing is"
        " lost and nothing waits on a lock.",
        "",
    ]
    out += _table(
        ["Contender", "Threads", "Increments/s", "Lost"],
        [
            [
                r["contender"],
                str(r["threads"]),
                _fmt(r["per_second"]["median"], 0),
                str(r["lost"]),
            ]
            for r in w["threads"]["rows"]
        ],
    )
    return out + [""]


def _inproc_section(d: Results, plot_name: str | None) -> list[str]:
    out = [
        "## Per request, in-process",
        "",
        "Hello-world apps called through their WSGI entry point in one process"
        " (call, iterate the body, `close()`), CPU microseconds per request. The"
        " Django apps share a middleware list of SecurityMiddleware,"
        " CommonMiddleware and XFrameOptionsMiddleware; mmstats' middleware goes"
        " first, django-prometheus's pair goes around the rest, in multiprocess"
        " mode. *Added* is the median over rounds of the difference with the bare"
        " app measured in the same round.",
        "",
    ]
    rows = []
    for name, s in d["us_per_request"].items():
        added = d["added"].get(name)
        rows.append(
            [
                name,
                _fmt(s["median"], 1),
                f"{_fmt(s['min'], 1)}–{_fmt(s['max'], 1)}",
                _fmt(added["added_us"]["median"], 1) if added else "",
            ]
        )
    out += _table(["App", "µs/request", "range", "added µs"], rows)
    if d.get("missing"):
        out += ["", f"django-prometheus was not measured: {d['missing']}."]
    return out + [""]


def _load_section(d: Results, plot_name: str | None) -> list[str]:
    out = ["## Per request, under gunicorn", ""]
    if "skipped" in d:
        return out + [f"**Not measured.** {d['skipped']}", ""]
    out += [
        "gunicorn with 2 sync workers per app, all servers up at once on"
        f" 127.0.0.1, loaded by `{d['wrk']}` with 1 thread and"
        f" {d['connections']} connections for {d['seconds_per_run']:g} s per run,"
        f" {d['rounds']} interleaved rounds. wrk shares the 2 cores with the"
        " workers. *Ratio* is the median of per-round ratios to the bare app.",
        "",
    ]
    rows = []
    for name, r in d["rows"].items():
        rows.append(
            [
                name,
                _fmt(r["rps"]["median"], 0),
                f"{_fmt(r['rps']['min'], 0)}–{_fmt(r['rps']['max'], 0)}",
                _ratio(r.get("ratio", {}).get("median")) if r.get("base") else "",
                _fmt(r["errors"], 0),
            ]
        )
    out += _table(
        ["App", "requests/s", "range", "ratio to bare", "errors + non-2xx"], rows
    )
    return out + [""]


def _opens_section(d: Results, plot_name: str | None) -> list[str]:
    out = [
        "## Files opened per request",
        "",
        f"Method: {d['method']}. The load average is read at most once a second"
        " (glibc's `getloadavg` opens `/proc/loadavg`), so up to one open per"
        " second of serving is expected; memory is read with `pread` on a"
        " descriptor opened once.",
        "",
    ]
    rows = []
    for name, a in d["apps"].items():
        rows.append(
            [
                name,
                f"{a['requests']:,}",
                _fmt(a["seconds"], 2),
                str(a["opens"]),
                _fmt(a["opens_per_request"], 4),
                ", ".join(f"`{p}`" for p in a["paths"]) or "none",
            ]
        )
    out += _table(["App", "requests", "seconds", "opens", "per request", "paths"], rows)
    if d.get("audit"):
        out += [
            "",
            "An audit hook on `open` (opens made from Python) during the same"
            " kind of run saw: "
            + "; ".join(
                f"{k}: {v['opens']} opens in {v['requests']:,} requests,"
                f" descriptors grew by {v['fd_growth']}"
                for k, v in d["audit"].items()
            )
            + ".",
        ]
    return out + [""]


def _reading_section(d: Results, plot_name: str | None) -> list[str]:
    out = [
        "## Reading",
        "",
        f"Each worker is a forked process that served {d['requests_per_live_worker']:,}"
        " requests (10 views with Zipf-like traffic; 85 % 200, 5 % 302, 5 % 404,"
        " 2 % 403, 3 % 500 raised as exceptions; 0 to 11 queries; log-normal"
        f" durations with a median of {d['median_request_seconds'] * 1000:g} ms)"
        " through mmstats' WSGI middleware (slow ring threshold"
        f" {d['slow_seconds']:g} s) and recorded the same metrics with"
        " prometheus_client in multiprocess mode: counters requests, responses"
        " by class, exceptions by class and requests per view; histograms"
        " request_seconds (default buckets), db_queries, db_seconds and"
        " view_seconds per view; gauges in_flight (`livesum`), memory and load"
        " (`all`). The mmstats workers stay alive while they are read. Directories"
        " of N workers hold hard links to the first N workers' files.",
        "",
        "*In-process* times the function each command runs (`mmstats show` and"
        " `mmstats json` through their click command with output to memory,"
        " `mmstats.scrape(dir)`; `MultiProcessCollector.collect()` and"
        " `generate_latest`), CPU milliseconds per call. A process that reads"
        " again and again (`top`, `serve`, the page, an exporter) keeps what"
        " never changes between reads: decoded metric records, where each"
        " file's records are, decoded slow entries, dead workers; it keeps"
        " live workers' files mapped and watches their processes through pid"
        " descriptors; and it decodes a histogram cell again only when its"
        " bytes changed. The workers here are idle while they are read, so a"
        " read that follows another finds every cell as it was; *scrape (busy)*"
        " is the other extreme: before each timed scrape (and outside its"
        " time) one observation is written into every histogram cell and one"
        " increment into every counter cell of every live worker, in the order"
        " their writers store them, so that nothing is as it was. Rows marked"
        " *(cold)* drop all of that before each call, which is what one"
        " `mmstats show` or `mmstats json` command does; prometheus_client"
        " keeps nothing between collects. The scrapes (the *mmstats scrape*"
        " rows and *collect + generate_latest*) of each directory are timed in"
        " a process of their own, in rounds among themselves, as an exporter"
        " reads one directory; the other rows share this process, whose"
        " readers keep what they read of every directory.",
        "",
    ]
    if plot_name:
        out += [f"![Read time against worker count]({plot_name})", ""]
    readers = []
    for row in d["in_process"]["rows"]:
        if row["reader"] not in readers:
            readers.append(row["reader"])
    scenarios = [str(n) for n in d["counts"]] + ["recycled", "recycled-clean"]
    names = {
        "recycled": f"{d['base']} + {d['recycled']:,} recycled, no clean",
        "recycled-clean": f"{d['base']} + {d['recycled']:,} recycled, after clean",
    }
    rows = []
    for reader in readers:
        cells = [reader]
        for s in scenarios:
            v = _read_ms(d, reader, s, "in_process")
            cells.append(_fmt(v, 2) if v is not None else "—")
        rows.append(cells)
    out += _table(
        ["In-process, ms"] + [names.get(s, _workers(s)) for s in scenarios], rows
    )
    c = d["clean"]
    out += [
        "",
        f"`mmstats clean` over the recycled directory folded {c['folded']:,}"
        f" workers in {_fmt(c['seconds'], 2)} s and left {c['files_left']} files."
        " prometheus_client has no counterpart: after `mark_process_dead` (what"
        " its docs ask gunicorn's `child_exit` hook to call) a dead worker's"
        " counter and histogram files stay, and are read on every collect.",
        "",
        "*Whole commands* run each command as a subprocess, interpreter start"
        " and imports included (`mmstats show`, `mmstats json`, and"
        " `python bench/_prom_read.py DIR`, which collects and prints"
        " `generate_latest`), CPU milliseconds (user and system) per run.",
        "",
    ]
    readers = []
    scen: list[str] = []
    for row in d["commands"]["rows"]:
        if row["reader"] not in readers:
            readers.append(row["reader"])
        if row["scenario"] not in scen and row["scenario"] != "-":
            scen.append(row["scenario"])
    rows = []
    for reader in readers:
        cells = [reader]
        for s in scen:
            v = _read_ms(d, reader, s, "commands") or _read_ms(
                d, reader, "-", "commands"
            )
            cells.append(_fmt(v, 0) if v is not None else "—")
        rows.append(cells)
    out += _table(["Whole command, ms"] + [_workers(s) for s in scen], rows)

    page = d.get("page")
    if page:
        out += [
            "",
            "### The live page",
            "",
            f"`mmstats serve` over {_workers(d['base'])}, with {page['tabs']}"
            f" clients asking every {page['interval']:g} s (each from its own"
            " offset, as open tabs do) for the document the page's script asks"
            " for: its metrics and the newest"
            f" {page.get('slow_per_worker', 100)} slow entries of each worker, as"
            " its script asks once it knows how many workers there are"
            f" ({page['document_bytes']:,} bytes). The server's CPU time (user"
            " and system, from /proc) over"
            f" {page['seconds']:.0f} s of polling: {page['cpu_seconds']:.2f} s,"
            f" {page['core_percent']:.2f} % of one core; {page['polls']} polls,"
            f" {len(page['failures'])} failed.",
        ]

    size = d["size"]
    mm, prom = size["mmstats"], size["prometheus_client"]
    out += [
        "",
        "### Size",
        "",
        "Bytes per worker after its requests (median over the live workers)."
        " *Size* is the files' length, *on disk* the blocks allocated, *in use*"
        " the bytes holding records. mmstats allocates its file in 256 KiB"
        " chunks with `fallocate`, so a full disk fails at allocation rather"
        " than with SIGBUS on a store; prometheus_client's files are sparse."
        " prometheus_client files per worker: "
        + ", ".join(size["prometheus_client_files"])
        + ".",
        "",
    ]
    out += _table(
        ["", "files", "size", "on disk", "in use"],
        [
            [
                name,
                _fmt(v["files"], 0),
                _fmt(v["size"], 0),
                _fmt(v["disk"], 0),
                _fmt(v["used"], 0),
            ]
            for name, v in (("mmstats", mm), ("prometheus_client", prom))
        ],
    )
    return out + [""]


def plot(res: Results, path: str) -> bool:
    """Draw read time against worker count; return False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    d = res.get("reading")
    if not d or "in_process" not in d:
        return False
    counts = d["counts"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    styles = {
        "mmstats show": ("tab:blue", "-", "o"),
        "mmstats json": ("tab:cyan", "-", "s"),
        "mmstats scrape": ("tab:green", "-", "^"),
        "prometheus_client collect": ("tab:red", "--", "o"),
        "prometheus_client collect + generate_latest": ("tab:orange", "--", "^"),
    }
    for reader, (color, line, marker) in styles.items():
        ys = [_read_ms(d, reader, str(n), "in_process") for n in counts]
        if any(y is None for y in ys):
            continue
        ax.plot(counts, ys, color=color, linestyle=line, marker=marker, label=reader)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(counts)
    ax.set_xticklabels([str(n) for n in counts])
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("worker files")
    ax.set_ylabel("CPU milliseconds per read (median, in-process)")
    ax.set_title("Read time against worker count")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
