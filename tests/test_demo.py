"""The README's first command, ``python3 dev.py demo``, runs to the end.

It serves the Django example under gunicorn, sends it requests and prints
``manage.py mmstats show`` and ``slow``; here in the test run's own virtual
environment, on a free port.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_demo_serves_requests_and_prints_the_stats(tmp_path: Path) -> None:
    """Every request answers as planned; show lists the 4 live workers with
    the requests they served and slow lists slow requests.  The run keeps
    its files under --var, leaving a user's own demo run in var/ alone."""
    result = subprocess.run(
        [
            sys.executable,
            "dev.py",
            "demo",
            "--var",
            str(tmp_path / "var"),
            "--venv",
            sys.prefix,
            "--port",
            str(_free_port()),
            "--requests",
            "120",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "120/120 requests, 0 unexpected" in out
    assert "==> manage.py mmstats show" in out
    assert "4 workers (4 alive)" in out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert total.split()[1] == "120"
    assert "==> manage.py mmstats slow" in out
    assert "Slow requests (" in out
    assert sorted(p.name for p in (tmp_path / "var").iterdir()) == [
        "demo-db.sqlite3",
        "demo-gunicorn.log",
        "demo-mmstats",
    ]
    assert len(list((tmp_path / "var" / "demo-mmstats").glob("*.mmstats"))) == 4
