"""Run the test suite as a few pytest processes at once: ``python tests/parallel.py [-j 3]``.

Most of the suite's wall time is waiting (servers starting, runs of a few seconds, drains),
not CPU: one process used ~0.3 cores over 10 minutes. pytest-xdist cannot run it (its
workers' threads deadlock under the gevent monkey-patching every test process needs), so
this splits the test files into ``-j`` groups of about equal expected time and runs one
plain pytest per group. Each group's output is printed whole when it ends; the exit code
is the worst group's. Extra arguments go to every pytest (e.g. ``-x``, ``-k``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: seconds a file's tests took, roughly (a full run's --durations); unknown files count 5
WEIGHTS = {
    "bench/test_sweep.py": 75, "bench/test_signals.py": 45, "bench/test_chaos.py": 30, "bench/test_run.py": 40,
    "bench/test_abort.py": 25, "bench/test_ciout.py": 25, "bench/test_compare.py": 30, "bench/test_progress.py": 20,
    "bench/test_recovery_report.py": 12, "bench/test_plot.py": 15, "locust/test_distributed.py": 30,
    "locust/test_webui.py": 30, "locust/test_users.py": 25, "locust/test_live.py": 12, "chat/test_recovery.py": 30,
    "chat/test_backfill.py": 18, "chat/test_server_restarts.py": 18, "chat/test_session.py": 12,
    "chat/test_order.py": 12, "chat/test_clock.py": 6, "servers/test_proxy.py": 20, "servers/test_process.py": 15,
    "servers/test_node.py": 20, "servers/test_redis.py": 10, "servers/test_reference.py": 10,
    "measure/test_storms.py": 14, "measure/test_intervals.py": 14, "test_generator.py": 45,
    "transport/test_recovery.py": 8, "transport/test_plainws.py": 12, "transport/test_tls.py": 8,
    "wire/test_profile.py": 10, "wire/test_fuzz.py": 10, "check/test_points.py": 15, "check/test_suggest.py": 8,
}


def groups(n: int) -> list[list[str]]:
    """The test files in ``n`` groups, heaviest first into the lightest group."""
    files = sorted((str(p.relative_to(HERE)) for p in HERE.rglob("test_*.py")),
                   key=lambda f: -WEIGHTS.get(f, 5))
    out: list[list[str]] = [[] for _ in range(n)]
    load = [0.0] * n
    for f in files:
        i = load.index(min(load))
        out[i].append(f)
        load[i] += WEIGHTS.get(f, 5)
    return [g for g in out if g]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-j", type=int, default=3, help="pytest processes (default 3)")
    a, extra = p.parse_known_args(argv)
    if a.j < 1:
        p.error("-j must be >= 1")
    t0 = time.monotonic()
    running = []
    for g in groups(a.j):
        log = tempfile.TemporaryFile()
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, *(f"tests/{f}" for f in g)]
        running.append((g, log, subprocess.Popen(cmd, cwd=HERE.parent, stdout=log, stderr=subprocess.STDOUT)))
    worst = 0
    try:
        for g, log, proc in running:
            rc = proc.wait()
            worst = max(worst, rc)
            log.seek(0)
            print(f"== {len(g)} files: exit {rc}", flush=True)
            sys.stdout.write(log.read().decode(errors="replace"))
            sys.stdout.flush()
    finally:
        for _, _, proc in running:  # interrupted: none of the groups outlives us
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    print(f"== {len(running)} groups in {time.monotonic() - t0:.0f} s: {'ok' if worst == 0 else 'FAILED'}")
    return worst


if __name__ == "__main__":
    sys.exit(main())
