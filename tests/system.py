"""Programs the integration tests need from Debian, installed when absent."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def ensure_program(program: str, *packages: str) -> str:
    """Return ``program``'s path, installing Debian ``packages`` if it is missing.

    Skips the test, with the reason, where the packages cannot be installed
    (not root, no apt-get, or apt-get failing).
    """
    found = shutil.which(program)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{program} is not installed and apt-get cannot install it here")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=600)
    install = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    found = shutil.which(program)
    if not found:
        pytest.skip(f"apt-get could not install {program}: {install.stderr[-300:]}")
    return found
