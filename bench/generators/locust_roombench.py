"""roombench inside Locust, as users run it, plus the benchmark's marks (see marks.py).

The scenario comes from the usual roombench options on Locust's command line (run.py
passes --transport, --window, --room-size, --rate ...): ledger, HDR histograms and the
Locust stats bridge are all on. This file only adds the marks: at the window's start the
histograms are reset; at its end the ack and fan-out histograms are read and shipped
(encoded) so that several processes merge exactly.
"""

from __future__ import annotations

from typing import Any

import gevent
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner

from bench.generators import marks
from roombench.locust.users import ChatUser, current_generator
from roombench.measure.metrics import percentiles

__all__ = ["ChatUser"]


@events.test_start.add_listener
def _start_marks(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        return
    gen = current_generator(environment)

    def connected() -> int:
        return sum(1 for s in list(gen.sessions.values()) if s.joined.is_set())

    def end() -> dict[str, Any]:
        out: dict[str, Any] = {"lat": {}, "hdr": {}, "errors": dict(gen.errors)}
        for name in ("ack", "fanout"):
            h = gen.metrics.histogram(name)
            p = percentiles(h, [50.0, 99.0]) if h.total_count else {50.0: 0, 99.0: 0}
            out["lat"][name] = {"n": h.total_count, "p50_ms": p[50.0] / 1000, "p99_ms": p[99.0] / 1000}
            out["hdr"][name] = h.encode().decode("ascii") if h.total_count else ""
        out["acks"] = out["lat"]["ack"]["n"]
        out["deliveries"] = out["lat"]["fanout"]["n"]
        return out

    gevent.spawn(marks.drive, connected, gen.metrics.reset, end)
