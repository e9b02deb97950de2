"""What produced the numbers: machine and software metadata for results."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

PACKAGES = ("roombench", "locust", "python-socketio", "python-engineio", "websocket-client", "hdrhistogram",
            "orjson", "gevent", "uvicorn", "redis", "numpy", "matplotlib")


def versions() -> dict[str, str]:
    """Versions of Python and the packages that shape the measurements."""
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _run(argv: list[str], cwd: Path | None = None) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def git_revision() -> str | None:
    """The source tree's git revision, if it is a checkout."""
    return _run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, OS, tool and package versions, git revision."""
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "node": _run(["node", "--version"]),
        "redis_server": _run(["redis-server", "--version"]),
        "versions": versions(),
        "git_revision": git_revision(),
    }
