"""Metrics: batched HDR recording is exact, merges are lossless, the Locust bridge mirrors Locust."""

from __future__ import annotations

import random

import numpy as np
import pytest
from locust.stats import bucket_response_time

from roombench.measure.metrics import (
    FLUSH_EVERY,
    HIGHEST_US,
    METRICS,
    Metrics,
    locust_buckets,
    mean,
    new_histogram,
    percentiles,
)

pytestmark = pytest.mark.timeout(60)

PCTS = [0.0, 1.0, 25.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0]
EDGES = [1, 2, 3, 1023, 1024, 1025, 2047, 2048, 2049, 4095, 4096, 4097, 65535, 65536,
         999_999, 1_000_000, 2**31 - 1, 2**31, 2**31 + 1, HIGHEST_US - 1, HIGHEST_US]


def random_micros(rng: random.Random, n: int) -> list[int]:
    """Log-uniform from 1 µs to 1 h, plus the edges."""
    return EDGES + [min(HIGHEST_US, int(10 ** rng.uniform(0, 9.5564))) for _ in range(n)]


def assert_same_histogram(a, b) -> None:  # noqa: ANN001 - hdrh has no types
    assert list(a.counts) == list(b.counts)
    assert a.get_total_count() == b.get_total_count()
    assert a.get_min_value() == b.get_min_value()
    assert a.get_max_value() == b.get_max_value()
    assert a.get_percentile_to_value_dict(PCTS) == b.get_percentile_to_value_dict(PCTS)
    assert a.get_mean_value() == b.get_mean_value()


def test_metric_names_are_documented() -> None:
    assert METRICS == ("ack", "fanout", "connect", "reconnect", "rejoin", "fetch", "merge", "backfill",
                       "typing", "read_receipt", "recover")
    import roombench.measure.metrics as module

    for name in METRICS:
        assert f"``{name}``" in module.__doc__


def test_batched_recording_equals_record_value_one_by_one() -> None:
    rng = random.Random(1)
    values = random_micros(rng, 3 * FLUSH_EVERY + 123)  # several automatic flushes and a tail
    rng.shuffle(values)
    metrics, ref = Metrics(), new_histogram()
    for v in values:
        metrics.record("ack", v / 1e6)
        ref.record_value(v)
    h = metrics.histogram("ack")
    assert h.equals(ref)
    assert (h.total_count, h.min_value, h.max_value) == (ref.total_count, ref.min_value, ref.max_value)
    assert_same_histogram(h, ref)


def test_out_of_range_samples_are_clamped_and_nan_ignored() -> None:
    metrics, ref = Metrics(), new_histogram()
    for seconds, us in ((0.0, 1), (-3.0, 1), (4e-7, 1), (7200.0, HIGHEST_US), (float("inf"), HIGHEST_US)):
        metrics.record("fanout", seconds)
        ref.record_value(us)
    metrics.record("fanout", float("nan"))
    assert_same_histogram(metrics.histogram("fanout"), ref)
    metrics.record("fanout", float("nan"))  # a batch of NaNs alone adds nothing
    metrics.track_locust(["fanout"])
    metrics.record("fanout", float("nan"))
    assert metrics.drain_aggregates() == {}
    assert metrics.histogram("fanout").total_count == 5


def test_unknown_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown metric 'acks'"):
        Metrics().record("acks", 0.1)


def test_merge_and_encode_decode_equal_one_metrics_fed_everything() -> None:
    rng = random.Random(2)
    a, b, single = Metrics(), Metrics(), Metrics()
    for name in ("ack", "fanout", "fetch"):
        for v in random_micros(rng, 5000):
            (a if rng.random() < 0.4 else b).record(name, v / 1e6)
            single.record(name, v / 1e6)
    b.record("typing", 0.002)
    single.record("typing", 0.002)

    merged = Metrics()
    merged.merge(a)
    merged.merge(b)
    shipped = Metrics.decode(a.encode())  # as between worker and master processes
    shipped.merge(Metrics.decode(b.encode()))
    assert set(a.encode()) == {"ack", "fanout", "fetch"}
    for m in (merged, shipped):
        for name in METRICS:
            assert_same_histogram(m.histogram(name), single.histogram(name))
        assert m.summary() == single.summary()


def test_summary_is_in_milliseconds_and_matches_hdrh() -> None:
    metrics = Metrics()
    for ms in (1, 2, 3, 4, 100):
        metrics.record("connect", ms / 1000)
    s = metrics.summary()
    # hdrh puts each count at its bucket's median: 1000, 2000, 3001, 4001, 100000 µs
    assert s["connect"] == {"count": 5, "mean": 22.0, "p50": 3.001, "p90": 100.031, "p99": 100.031,
                            "p999": 100.031, "max": 100.031}
    assert s["merge"] == {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "p999": None,
                          "max": None}
    assert set(s) == set(METRICS)
    h = metrics.histogram("connect")
    assert s["connect"]["mean"] == round(h.get_mean_value() / 1000, 3)
    assert s["connect"]["p999"] == round(h.get_value_at_percentile(99.9) / 1000, 3)


def test_vectorized_mean_and_percentiles_match_hdrh() -> None:
    rng = random.Random(3)
    for n in (1, 7, 20_000):
        m = Metrics()
        for v in random_micros(rng, n)[: n + 3]:
            m.record("ack", v / 1e6)
        h = m.histogram("ack")
        assert mean(h) == h.get_mean_value()
        assert percentiles(h, PCTS) == h.get_percentile_to_value_dict(PCTS)


def test_locust_buckets_match_bucket_response_time() -> None:
    ties = [500, 1500, 2500, 99_500, 99_999, 100_000, 105_000, 115_000, 995_000, 999_999, 1_000_000,
            1_050_000, 1_150_000, 9_950_000, 10_000_000, 10_500_000, 11_500_000, HIGHEST_US, 1, 499, 501]
    rng = random.Random(4)
    us = ties + random_micros(rng, 20_000)
    got = locust_buckets(np.array(us, dtype=np.int64)).tolist()
    assert got == [bucket_response_time(u / 1000) for u in us]
