"""roombench.locust.stats: metrics as rows of Locust's own table, as StatsEntry.log would."""

from __future__ import annotations

import random

import locust
import locust.stats
import pytest
from locust.env import Environment
from locust.stats import StatsEntry

from roombench.locust.stats import LocustBridge, log_failures
from roombench.measure.metrics import (
    FLUSH_EVERY,
    Metrics,
)

pytestmark = pytest.mark.timeout(60)



def us_samples(rng: random.Random, n: int) -> list[int]:
    """Latencies from 1 µs to a minute, dense where Locust's rounding changes."""
    return [1 + int(rng.choice((200, 3_000, 40_000, 700_000, 9_000_000, 60_000_000)) * rng.random())
            for _ in range(n)]


def assert_entries_match(got: StatsEntry, ref: StatsEntry) -> None:
    assert got.num_requests == ref.num_requests
    assert got.num_none_requests == ref.num_none_requests
    assert got.min_response_time == ref.min_response_time
    assert got.max_response_time == ref.max_response_time
    assert got.avg_response_time == pytest.approx(ref.avg_response_time, rel=1e-9)
    assert dict(got.response_times) == dict(ref.response_times)
    assert got.median_response_time == ref.median_response_time
    for p in (0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        assert got.get_response_time_percentile(p) == ref.get_response_time_percentile(p)
    assert sum(got.num_reqs_per_sec.values()) == got.num_requests


def bridge_vs_per_sample() -> None:
    env = Environment(events=locust.events)
    metrics = Metrics()
    metrics.record("ack", 0.5)  # before the bridge: not the bridge's
    bridge = LocustBridge(env, metrics, {"ack": ("ack", "send_message"), "fanout": ("fanout", "new_message")})
    ref = StatsEntry(env.stats, "ref", "ref")
    rng = random.Random(5)
    for _ in range(3):  # several flushes accumulate
        for us in us_samples(rng, FLUSH_EVERY + 500):
            metrics.record("ack", us / 1e6)
            ref.log(us / 1000, 0)  # type: ignore[arg-type]  # Locust logs float ms too
        metrics.record("merge", 0.001)  # not bridged: ignored by Locust, kept in HDR
        bridge.flush()
    bridge.flush()  # nothing new: no change
    assert_entries_match(env.stats.get("send_message", "ack"), ref)
    assert_entries_match(env.stats.total, ref)
    assert env.stats.get("new_message", "fanout").num_requests == 0
    assert metrics.histogram("merge").total_count == 3
    assert metrics.histogram("ack").total_count == ref.num_requests + 1


def test_locust_bridge_matches_per_sample_logging() -> None:
    bridge_vs_per_sample()


def test_locust_bridge_honours_custom_bucketing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locust.stats, "bucket_response_time", lambda rt: int(rt) // 7 * 7)
    bridge_vs_per_sample()


def test_log_failures_mirrors_failed_request_events() -> None:
    env = Environment(events=locust.events)
    stats = env.stats
    log_failures(env, "ack", "send_message", 5, "ack timeout")
    log_failures(env, "ack", "send_message", 2, "ack timeout")
    log_failures(env, "ack", "send_message", 0, "ack timeout")
    for _ in range(7):  # what events.request.fire(response_time=None, exception=...) does
        stats.log_request("ref", "ref", None, 0)  # type: ignore[arg-type]
        stats.log_error("ref", "ref", "ack timeout")
    got, ref = stats.get("send_message", "ack"), stats.get("ref", "ref")
    for attr in ("num_requests", "num_none_requests", "num_failures", "total_response_time", "min_response_time"):
        assert getattr(got, attr) == getattr(ref, attr)
    assert sum(got.num_fail_per_sec.values()) == 7
    assert stats.total.num_failures == 14 and stats.total.num_requests == 14
    occurrences = sorted((e.name, e.occurrences) for e in stats.errors.values())
    assert occurrences == [("ref", 7), ("send_message", 7)]
    log_failures(env, "ack", "other", 3, "boom", count_requests=False)
    assert (stats.get("other", "ack").num_failures, stats.get("other", "ack").num_requests) == (3, 0)
