"""The tool side of the benchmark's mark protocol, for the two locustfiles and raw_client.py.

Every generator process under test talks to ``run.py`` the same way, whatever the tool:

1. ``before`` (rss, t) as it starts, then it connects its users;
2. ``ready`` (connected, rss, t) once every user it expects (``BENCH_USERS``) is
   connected and joined, or ``BENCH_READY_TIMEOUT`` s passed;
3. it waits for ``run.py`` to write the control file (``BENCH_CTL``): the wall-clock
   start and end of the measured window, the same for every process of the run;
4. ``start`` at the window's start (counters reset), ``end`` at its end with what was
   counted inside it (acks, deliveries, latency percentiles).

Lines go to stdout as ``@@bench {json}`` in one write each, so the lines of several
processes sharing the pipe (``locust --processes``) never interleave.
``run.py`` reads CPU itself (psutil) at the same wall-clock instants. No gevent here:
inside Locust ``time.sleep`` is gevent's (Locust monkey-patches on import), and
raw_client.py has no gevent at all.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import psutil

PREFIX = "@@bench "


def emit(event: str, **fields: Any) -> None:
    """One mark line on stdout."""
    line = PREFIX + json.dumps({"ev": event, "pid": os.getpid(), "t": time.time(), **fields}) + "\n"
    os.write(1, line.encode())


def rss() -> int:
    """This process's resident memory in bytes."""
    return int(psutil.Process().memory_info().rss)


def expected_users() -> int:
    """How many users this process runs (its share of ``-u``)."""
    return int(os.environ.get("BENCH_USERS", "1"))


def _window(path: str, deadline: float) -> tuple[float, float] | None:
    while time.time() < deadline:
        try:
            with open(path) as f:
                w = json.load(f)
            return float(w["start"]), float(w["end"])
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)
    return None


def sleep_until(t: float) -> None:
    """Sleep until wall-clock time ``t`` (the driver and the tools share the window's instants)."""
    time.sleep(max(0.0, t - time.time()))


def drive(connected: Callable[[], int], start: Callable[[], None], end: Callable[[], dict[str, Any]]) -> None:
    """The protocol above; ``connected`` counts ready users, ``start`` resets the
    counters, ``end`` returns what was counted since. Run it in its own greenlet."""
    expected = expected_users()
    t0 = time.time()
    emit("before", rss=rss())
    deadline = t0 + float(os.environ.get("BENCH_READY_TIMEOUT", "60"))
    n = connected()
    while n < expected and time.time() < deadline:
        time.sleep(0.1)
        n = connected()
    emit("ready", connected=n, expected=expected, rss=rss(), t_begin=t0)
    window = _window(os.environ["BENCH_CTL"], time.time() + 120)
    if window is None:
        return
    sleep_until(window[0])
    start()
    emit("start")
    sleep_until(window[1])
    emit("end", **end())
