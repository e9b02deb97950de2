"""`--abort-on-fail`: stop a run as soon as an SLO can no longer be met (k6's abortOnFail).

Only a *proof* stops a run; anything the rest of the run could still repair does not. From
live.json (written by the Locust child every interval) we can prove:

* **A count that only grows** (``errors``, ``ack_timeouts``, ``duplicates``, ``out_of_order``,
  ``unexpected``, ``sent``, ``acked``) gated with ``<``, ``<=`` or ``==``: once the count so far
  passes the limit, the final count will too.
* **A latency percentile bound** ``ack.p99<L`` (p50 .. p99.9, max): a sample over L never goes
  away, and the run can record at most N_max samples (the open loop's intended sends:
  users x (rate x run seconds + 2), times room_size for fan-out). The final pXX exceeds L
  once more than (1 - XX/100) x N_max samples are known to exceed it. Known exceedances, a
  lower bound: per interval after the warm-up, the samples in HDR buckets wholly over L (live.json
  carries each interval's ack and fan-out histograms; from an older child only its p99: then
  at least its top 1%); with no warm-up, every ack timeout is recorded at >= the timeout, so if
  the timeout is over L each one exceeds it too (the larger of the two counts). A closed loop (``--window``) has no N_max:
  its latency gates are not aborted on.
* **Not ``lost``**: a message is only lost for good after the end-of-run reconcile (it fetches
  every gap over REST); ``lost`` so far counts messages still in flight or awaiting recovery,
  so it can still fall. ``lost`` gates are decided at the end, never aborted on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from roombench.measure.metrics import count_over
from roombench.measure.summary import Slo

MONOTONE = ("errors", "ack_timeouts", "duplicates", "out_of_order", "unexpected", "sent", "acked", "ack_errors")
_STAT_PCT = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9, "max": 100.0}
_LIVE_METRICS = {"ack": "acks_per_s", "fanout": "deliveries_per_s"}


@dataclass
class AbortWatch:
    """Feed it live.json snapshots; ``reason`` is set once an SLO is proven lost."""

    slos: list[Slo]
    users: int
    rate: float
    run_s: float
    room_size: int
    warmup: float
    ack_timeout_ms: float
    closed_loop: bool
    reason: str | None = None
    failed: Slo | None = None
    _exceed: dict[tuple[str, float], dict[float, int]] = field(default_factory=dict)

    def n_max(self, metric: str) -> float:
        """An upper bound on the samples of ``metric`` the whole run can record."""
        sends = self.users * (self.rate * self.run_s + 2)
        return sends * (self.room_size if metric == "fanout" else 1)

    def update(self, live: dict[str, Any]) -> str | None:
        """Take one snapshot; the reason (once) an SLO can no longer be met, else None."""
        if self.reason is None:
            for slo in self.slos:
                why = self._check(slo, live)
                if why:
                    self.reason, self.failed = f"{slo.expr} can no longer hold: {why}", slo
                    break
        return self.reason

    def _check(self, slo: Slo, live: dict[str, Any]) -> str | None:
        if slo.name in ("delivery", "generator"):
            return None
        if slo.name == "errors" or slo.name in MONOTONE:
            return self._count(slo, live)
        if slo.name in _LIVE_METRICS and (slo.stat or "p99") in _STAT_PCT and slo.op in ("<", "<="):
            return self._latency(slo, live)
        return None

    def _count(self, slo: Slo, live: dict[str, Any]) -> str | None:
        if slo.op not in ("<", "<=", "=="):
            return None
        if slo.name == "errors":
            errors = live.get("errors")
            if not isinstance(errors, dict):
                return None  # the child does not report errors live: decided at the end
            value = sum(errors.values()) if slo.stat in (None, "total") else errors.get(slo.stat, 0)
        else:
            value = live.get("totals", {}).get(slo.name)
            if value is None:
                return None
        over = value >= slo.limit if slo.op == "<" else value > slo.limit
        return f"{slo.name} is already {value} and only grows" if over else None

    def _latency(self, slo: Slo, live: dict[str, Any]) -> str | None:
        if self.closed_loop:
            return None
        metric, pct = slo.name, _STAT_PCT[slo.stat or "p99"]
        seen = self._exceed.setdefault((metric, slo.limit), {})
        iv = live.get("interval") or {}
        start, length = iv.get("start"), iv.get("length") or 0.0
        past_warmup = float(live.get("elapsed_s", 0.0)) - 2 * length > self.warmup
        if start is not None and past_warmup and start not in seen:
            seen[start] = _over_in_interval(iv, metric, slo.limit)
        known = sum(seen.values())
        timeouts = int(live.get("totals", {}).get("ack_timeouts", 0))
        if metric == "ack" and self.warmup == 0 and self.ack_timeout_ms > slo.limit * 1.001:
            known = max(known, timeouts)
        allowed = (1 - pct / 100) * self.n_max(metric) + (1 if pct < 100 else 0)  # +1: rounding of the rank
        if known > allowed:
            return (f"at least {known} {metric} samples are over {slo.limit:g} ms, and the run can record at most "
                    f"{self.n_max(metric):.0f}, so its {slo.stat or 'p99'} ends over the limit")
        return None


def _over_in_interval(iv: dict[str, Any], metric: str, limit_ms: float) -> int:
    """Samples of one live interval surely over ``limit_ms``: exact from its histogram (buckets
    whose lowest value is over the limit), else the top 1% when its p99 is clearly over it."""
    encoded = (iv.get("histograms") or {}).get(metric)
    if encoded:
        return count_over(HdrHistogram.decode(encoded), limit_ms * 1000)
    p99 = (iv.get("p99_ms") or {}).get(metric)
    # floor: a lower bound; HDR's p99 is a bucket's highest value (3 digits), so only a p99
    # clearly over the limit proves samples over it
    n = math.floor(float(iv.get(_LIVE_METRICS[metric], 0.0)) * float(iv.get("length") or 0.0) + 1e-6)
    if p99 is None or not n or p99 <= limit_ms * 1.001 + 0.001:
        return 0
    return max(1, n - math.ceil(0.99 * n))
