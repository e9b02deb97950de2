"""live.json (``--live-out``): the run's progress, rewritten atomically once per interval.

Each generator process makes a :func:`snapshot` when it closes an interval; a worker ships
it to the master, which writes the merged one once every worker's snapshot of that
interval is in (a half-merged interval would show half the rate). Schema
``roombench.live/1``::

    {"schema", "elapsed_s", "users", "connected",
     "interval": {"start", "length", "acks_per_s", "deliveries_per_s", "p99_ms": {"ack", "fanout"}},
     "totals": {LedgerCounts so far}, "overdue", "saturated", "loop_lag_p99_ms", "cpu_max_fraction"}

``totals.lost`` mid-run is every pair not (yet) received, in flight included; ``overdue``
is the part of it whose message is older than the ack timeout, the ones that are likely
lost (a backfill may still recover them).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from roombench.generator import Generator
from roombench.measure.intervals import Interval, merge_intervals
from roombench.measure.metrics import percentiles
from roombench.measure.summary import SATURATED_CPU_FRACTION, saturating_probes, write_json

LIVE_SCHEMA = "roombench.live/1"
LIVE_METRICS = ("ack", "fanout")


class _CpuMeter:
    """This process's CPU share of a core since the last call."""

    def __init__(self) -> None:
        self._t, self._cpu = time.perf_counter(), time.process_time()

    def fraction(self) -> float:
        t, cpu = time.perf_counter(), time.process_time()
        out = (cpu - self._cpu) / max(t - self._t, 1e-9)
        self._t, self._cpu = t, cpu
        return out


def snapshot(gen: Generator, iv: Interval, cpu: _CpuMeter) -> dict[str, Any]:
    """What one process contributes to live.json for the interval it just closed."""
    horizon = time.perf_counter() - gen.scenario.ack_timeout
    sessions = list(gen.sessions.values())
    return {
        "started": gen.started,
        "users": len(sessions),
        "connected": sum(1 for s in sessions if getattr(getattr(s, "transport", None), "connected", False)),
        "interval": iv.to_json(),
        "totals": gen.ledger.counts().to_dict(),
        # once per interval, O(messages in flight): not the record path
        "overdue": sum(n for t, n in gen.ledger.pending_by_time() if t < horizon),
        "cpu_fraction": cpu.fraction(),
    }


def merge_snapshots(snaps: list[dict[str, Any]], now: float | None = None) -> dict[str, Any]:
    """live.json from every process's snapshot of the same interval."""
    now = time.time() if now is None else now
    iv = merge_intervals([[Interval.from_json(s["interval"])] for s in snaps])[0]
    length = iv.length or 1e-9
    totals: dict[str, int] = {}
    for s in snaps:
        for k, v in s["totals"].items():
            totals[k] = totals.get(k, 0) + v
    hists = {m: iv.histogram(m) for m in LIVE_METRICS}
    p99 = {m: (round(percentiles(h, [99.0])[99.0] / 1000, 3) if h is not None else None) for m, h in hists.items()}
    lag = iv.histogram("loop_lag")
    lag_p99 = percentiles(lag, [99.0])[99.0] / 1000 if lag is not None and lag.total_count else 0.0
    cpu = max(s["cpu_fraction"] for s in snaps)
    return {
        "schema": LIVE_SCHEMA,
        "elapsed_s": round(now - min(s["started"] for s in snaps), 3),
        "users": sum(s["users"] for s in snaps),
        "connected": sum(s["connected"] for s in snaps),
        "interval": {
            "start": iv.start, "length": round(iv.length, 3),
            "acks_per_s": round(iv.counts.get("acked", 0) / length, 1),
            "deliveries_per_s": round(iv.counts.get("delivered_live", 0) / length, 1),
            "p99_ms": p99,
            # the interval's own ack / fan-out histograms (encoded): --abort-on-fail counts the
            # samples over an SLO's bound exactly (bench.abort)
            "histograms": {m: h.encode().decode() for m in LIVE_METRICS if (h := iv.histogram(m)) is not None},
        },
        "totals": totals,
        "overdue": sum(s["overdue"] for s in snaps),
        "saturated": (lag is not None and saturating_probes(lag) > 0) or cpu > SATURATED_CPU_FRACTION,
        "loop_lag_p99_ms": round(lag_p99, 3),
        "cpu_max_fraction": round(cpu, 3),
    }


class LiveMaster:
    """Master side: collects the workers' snapshots, writes each interval once all are in."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._latest: dict[str, dict[str, Any]] = {}
        self._written = float("-inf")

    def add(self, node: str, snap: dict[str, Any], workers: int) -> bool:
        """Note one worker's snapshot; True when live.json was rewritten."""
        self._latest[node] = snap
        start = snap["interval"]["start"]
        same = [s for s in self._latest.values() if s["interval"]["start"] == start]
        if start <= self._written or len(same) < workers:
            return False
        write_json(self.path, merge_snapshots(same))
        self._written = start
        return True


def attach(gen: Generator, path: str | Path, send: Any | None = None) -> None:
    """Write live.json (``send`` None) or ship each snapshot with ``send(snap)`` (a worker)."""
    cpu = _CpuMeter()

    def on_interval(iv: Interval) -> None:
        snap = snapshot(gen, iv, cpu)
        if send is None:
            write_json(path, merge_snapshots([snap]))
        else:
            send(snap)

    gen.on_interval.append(on_interval)
