"""py-spy profiles of the Python generators during the measured window (``run.py --profile``).

py-spy samples the process from outside (``--nonblocking``: without stopping it, so the
profile costs the generator next to nothing); ``--format raw`` writes collapsed stacks
that :func:`top` sums into self and inclusive time per function. C code (syscalls, the
libev loop, greenlet switches) is charged to the Python line that called it: e.g. the
``send`` line of gevent's socket is the send syscall, ``Hub.run`` is the event loop.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def start(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """Start sampling ``pid`` for ``seconds``; None when py-spy is not installed."""
    # the venv's own bin first: `make genbench` runs .venv/bin/python without the venv on PATH
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if exe is None:
        print("--profile: py-spy not found (pip install py-spy); measuring without it", flush=True)
        return None
    argv = [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", "250",
            "--nonblocking", "--format", "raw", "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _function(frame: str) -> str:
    # "name (path/file.py:123)" -> "name (file.py)": lines of one function add up
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1].split(':')[0]})" if where else frame


def top(path: Path, n: int = 15) -> dict[str, Any]:
    """The ``n`` functions with the most self and inclusive time, in % of samples."""
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        total += k
        frames = [_function(f) for f in stack.split(";")]
        self_t[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    pct = 100.0 / max(total, 1)
    return {"samples": total,
            "self": [[f, round(c * pct, 1)] for f, c in self_t.most_common(n)],
            "inclusive": [[f, round(c * pct, 1)] for f, c in incl.most_common(n)]}
