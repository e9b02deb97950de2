"""Latency metrics: one HDR histogram per metric, cheap to record, mergeable across processes.

Metrics (all latencies, recorded in seconds, stored in microseconds):

================  ==============================================================
``ack``           intended send time -> ack received
``fanout``        intended send time -> live new_message at one receiver
``connect``       connect start -> connected (Socket.IO connect acknowledged)
``reconnect``     connection dropped -> connected again
``rejoin``        connected -> every active room re-joined
``fetch``         the REST backfill requests (sent -> answers parsed)
``merge``         merging the fetched messages into the session's timeline
``backfill``      connection dropped -> re-joined, fetched and merged
``typing``        typing sent -> user_typing at one other member
``read_receipt``  mark_read sent -> message_read at one other member
``recover``       connection dropped -> reconnected with the session recovered (Socket.IO CSR)
================  ==============================================================

Recording is the hot path (two or more samples per ack at tens of thousands of acks per
second), and hdrh's pure-Python ``record_value`` costs ~2.5 µs. So :meth:`Metrics.record`
only appends the float to a buffer; :meth:`Metrics.flush` converts whole batches to µs and
adds them to the histograms with numpy, using hdrh's own index formula, so the result is
bit-identical to per-value ``record_value`` (tests/test_metrics.py proves it). Nothing outside this module
needs to know hdrh's internals.

The Locust bridge (:class:`roombench.locust.stats.LocustBridge`) puts each metric into Locust's stats table once
per second in one go, instead of one request event per sample.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

import numpy as np
from hdrh.histogram import HdrHistogram

#: Every metric name; :meth:`Metrics.record` refuses others.
METRICS: tuple[str, ...] = (
    "ack", "fanout", "connect", "reconnect", "rejoin", "fetch", "merge", "backfill", "typing", "read_receipt",
    "recover",
)

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIGNIFICANT_FIGURES = 3
#: A buffer is flushed into its histogram once it holds this many samples.
FLUSH_EVERY = 8192

_PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def new_histogram() -> HdrHistogram:
    """An empty histogram with roombench's settings (µs, 1 µs .. 1 h, 3 significant digits)."""
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_FIGURES)


def _counts_view(h: HdrHistogram) -> np.ndarray:
    """A writable numpy view of the histogram's ctypes counts array (no copy)."""
    return np.ctypeslib.as_array(h.counts)


def _counts_indexes(h: HdrHistogram, values: np.ndarray) -> np.ndarray:
    """hdrh's ``_counts_index_for`` for an int64 array of positive values, vectorized.

    Mirrors ``_get_bucket_index`` / ``_get_sub_bucket_index`` / ``_counts_index``:
    pow2ceiling = 64 - clz(v | sub_bucket_mask) is the bit length, taken exactly from
    frexp's exponent (values < 2**53 convert to float without rounding).
    """
    _, pow2ceiling = np.frexp((values | h.sub_bucket_mask).astype(np.float64))
    bucket_index = pow2ceiling.astype(np.int64) - (h.unit_magnitude + h.sub_bucket_half_count_magnitude + 1)
    sub_bucket_index = values >> (bucket_index + h.unit_magnitude)
    bucket_base_index = (bucket_index + 1) << h.sub_bucket_half_count_magnitude
    return bucket_base_index + (sub_bucket_index - h.sub_bucket_half_count)


def to_micros(seconds: np.ndarray) -> np.ndarray:
    """Seconds -> int64 µs, rounded like ``round(s * 1e6)`` and clamped to [1 µs, 1 h]; NaNs dropped."""
    us = np.clip(np.rint(seconds * 1e6), LOWEST_US, HIGHEST_US)
    if np.isnan(us).any():
        us = us[~np.isnan(us)]
    return us.astype(np.int64)


def add_values(h: HdrHistogram, values: np.ndarray) -> None:
    """Record every value of an int64 array into ``h``, exactly as ``record_value`` one by one would."""
    if not len(values):
        return
    idx = _counts_indexes(h, values)
    if idx.min() < 0 or idx.max() >= h.counts_len:
        raise ValueError(f"values outside the histogram's range [{h.lowest_trackable_value}, "
                         f"{h.highest_trackable_value}]: clamp them first")
    binned = np.bincount(idx)
    _counts_view(h)[: len(binned)] += binned.astype(np.uint64)
    h.total_count += int(len(values))
    h.min_value = min(h.min_value, int(values.min()))
    h.max_value = max(h.max_value, int(values.max()))


def add_histogram(dst: HdrHistogram, src: HdrHistogram) -> None:
    """``dst += src`` for histograms with identical settings (e.g. one decoded from a worker).

    Unlike ``HdrHistogram.add`` this keeps ``min`` right when ``dst`` is empty.
    """
    if not src.total_count:
        return
    if (dst.counts_len, dst.unit_magnitude, dst.sub_bucket_count) != (src.counts_len, src.unit_magnitude,
                                                                      src.sub_bucket_count):
        raise ValueError("cannot merge histograms with different settings")
    _counts_view(dst)[:] += _counts_view(src)
    dst.total_count += src.total_count
    dst.min_value = min(dst.min_value, src.min_value)
    dst.max_value = max(dst.max_value, src.max_value)


class LocustAggregate:
    """What one metric collected for Locust since the last drain: n, sum, min, max (µs) and
    Locust's rounded-millisecond buckets."""

    __slots__ = ("n", "sum_us", "min_us", "max_us", "buckets")

    def __init__(self) -> None:
        self.n = 0
        self.sum_us = 0
        self.min_us = sys.maxsize
        self.max_us = 0
        self.buckets: dict[int, int] = {}

    def add(self, values: np.ndarray, bucket_fn: Callable[[float], int] | None) -> None:
        """Fold a batch of µs samples in; ``bucket_fn`` None means Locust's default rounding."""
        self.n += int(len(values))
        self.sum_us += int(values.sum())
        self.min_us = min(self.min_us, int(values.min()))
        self.max_us = max(self.max_us, int(values.max()))
        if bucket_fn is None:
            keys, counts = np.unique(locust_buckets(values), return_counts=True)
        else:  # a custom bucket_response_time: call it once per distinct value
            uniq, counts = np.unique(values, return_counts=True)
            keys = np.array([bucket_fn(int(v) / 1000) for v in uniq.tolist()])
        b = self.buckets
        for k, c in zip(np.asarray(keys).tolist(), counts.tolist()):
            b[k] = b.get(k, 0) + c


def locust_buckets(us: np.ndarray) -> np.ndarray:
    """Locust's default ``bucket_response_time(us / 1000)`` for an int64 µs array, vectorized.

    Locust rounds the millisecond value to 1, 10, 100 or 1000 ms by magnitude with Python's
    ``round`` (half to even). A µs value is an exact rational ms, and every tie (x.5 of the
    unit) is exactly representable as a float, so integer half-even division matches it.
    """
    unit = np.where(us < 100_000, 1_000, np.where(us < 1_000_000, 10_000, np.where(us < 10_000_000, 100_000,
                                                                                      1_000_000)))
    q, r = np.divmod(us, unit)
    half = unit // 2
    q = q + ((r > half) | ((r == half) & (q % 2 == 1)))
    return q * (unit // 1_000)


class Metrics:
    """One HDR histogram per metric in :data:`METRICS` (values in µs), with cheap recording.

    ``record`` buffers; ``flush`` (called by every reader, and automatically every
    :data:`FLUSH_EVERY` samples) moves the buffers into the histograms in batches.
    """

    def __init__(self) -> None:
        self._hist: dict[str, HdrHistogram] = {name: new_histogram() for name in METRICS}
        # Raw seconds: the float -> µs conversion is done per batch by numpy, not per sample.
        self._buffers: dict[str, list[float]] = {name: [] for name in METRICS}
        # Per-metric Locust aggregates, only for metrics a LocustBridge asked for.
        self._locust: dict[str, LocustAggregate] = {}
        self._bucket_fn: Callable[[float], int] | None = None

    def record(self, name: str, seconds: float) -> None:
        """Record one latency in seconds (hot path: one append, a batch flush now and then).

        Stored as ``round(seconds * 1e6)`` µs clamped to [1 µs, 1 h]; NaN is ignored.
        """
        try:
            buf = self._buffers[name]
        except KeyError:
            raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}") from None
        buf.append(seconds)
        if len(buf) >= FLUSH_EVERY:
            self._flush_one(name, buf)

    def flush(self) -> None:
        """Move every buffered sample into its histogram (and into the Locust aggregates)."""
        for name, buf in self._buffers.items():
            if buf:
                self._flush_one(name, buf)

    def _flush_one(self, name: str, buf: list[float]) -> None:
        values = to_micros(np.array(buf, dtype=np.float64))
        buf.clear()
        if not len(values):  # only NaNs
            return
        add_values(self._hist[name], values)
        agg = self._locust.get(name)
        if agg is not None:
            agg.add(values, self._bucket_fn)

    def reset(self) -> None:
        """Forget every sample so far (end of a warm-up); Locust still gets them."""
        self.flush()
        self._hist = {name: new_histogram() for name in METRICS}

    def histogram(self, name: str) -> HdrHistogram:
        """The (flushed) histogram of one metric; values are microseconds."""
        self.flush()
        return self._hist[name]

    def encode(self) -> dict[str, str]:
        """name -> hdrh's base64 histogram string, for non-empty metrics (ship to another process)."""
        self.flush()
        return {name: _as_str(h.encode()) for name, h in self._hist.items() if h.total_count}

    @classmethod
    def decode(cls, d: dict[str, str]) -> Metrics:
        """Inverse of :meth:`encode`."""
        m = cls()
        for name, blob in d.items():
            if name not in m._hist:
                raise ValueError(f"unknown metric {name!r} in encoded metrics; known: {', '.join(METRICS)}")
            add_histogram(m._hist[name], HdrHistogram.decode(blob))
        return m

    def merge(self, other: Metrics) -> None:
        """Add every histogram of ``other`` into this one."""
        self.flush()
        other.flush()
        for name, h in other._hist.items():
            add_histogram(self._hist[name], h)

    def summary(self) -> dict[str, dict[str, float | None]]:
        """Per metric: count, mean, p50, p90, p99, p999, max — milliseconds, 3 decimals.

        An empty metric has count 0 and None for the rest.
        """
        self.flush()
        return {name: _summarize(h) for name, h in self._hist.items()}

    # -- Locust bridge support ----------------------------------------------------------

    def track_locust(self, names: Iterable[str], bucket_fn: Callable[[float], int] | None = None) -> None:
        """Start aggregating these metrics for Locust (``bucket_fn`` None: Locust's default rounding)."""
        self.flush()  # samples from before tracking started are not the bridge's
        self._bucket_fn = bucket_fn
        for name in names:
            if name not in self._hist:
                raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
            self._locust.setdefault(name, LocustAggregate())

    def drain_aggregates(self) -> dict[str, LocustAggregate]:
        """Flush, then hand over (and reset) the non-empty Locust aggregates."""
        self.flush()
        out = {name: agg for name, agg in self._locust.items() if agg.n}
        for name in out:
            self._locust[name] = LocustAggregate()
        return out


def _as_str(blob: bytes | str) -> str:
    return blob.decode("ascii") if isinstance(blob, bytes) else blob


def _summarize(h: HdrHistogram) -> dict[str, float | None]:
    if not h.total_count:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "p999": None, "max": None}
    p = percentiles(h, _PERCENTILES)
    return {
        "count": h.total_count,
        "mean": round(mean(h) / 1000, 3),
        "p50": round(p[50.0] / 1000, 3),
        "p90": round(p[90.0] / 1000, 3),
        "p99": round(p[99.0] / 1000, 3),
        "p999": round(p[99.9] / 1000, 3),
        "max": round(h.get_max_value() / 1000, 3),
    }


def count_over(h: HdrHistogram, limit_us: float) -> int:
    """Samples surely over ``limit_us``: those in buckets whose lowest value is over it."""
    return sum(it.count_at_value_iterated_to for it in h.get_recorded_iterator()
               if h.get_lowest_equivalent_value(it.value_iterated_to) > limit_us)


def percentiles(h: HdrHistogram, wanted: Iterable[float]) -> dict[float, int]:
    """hdrh's ``get_percentile_to_value_dict`` (values in µs), with a numpy cumulative sum
    instead of a Python loop over ~23k counters."""
    cum = np.cumsum(_counts_view(h))
    out: dict[float, int] = {}
    for pct in wanted:
        i = int(np.searchsorted(cum, h.get_target_count_at_percentile(pct), side="left"))
        if i >= len(cum):
            out[pct] = 0
            continue
        value = h.get_value_from_index(i)
        out[pct] = h.get_highest_equivalent_value(value) if pct else h.get_lowest_equivalent_value(value)
    return out


def mean(h: HdrHistogram) -> float:
    """hdrh's ``get_mean_value`` (µs: each count sits at its bucket's median), vectorized."""
    if not h.total_count:
        return 0.0
    counts = _counts_view(h)
    idx = np.flatnonzero(counts).astype(np.int64)
    # get_value_from_index
    half, mag, unit = h.sub_bucket_half_count, h.sub_bucket_half_count_magnitude, h.unit_magnitude
    bucket = (idx >> mag) - 1
    sub = (idx & (half - 1)) + half
    first = bucket < 0
    sub = np.where(first, sub - half, sub)
    bucket = np.where(first, 0, bucket)
    values = sub << (bucket + unit)
    # _hdr_median_equiv_value: lowest equivalent + half the equivalent range
    _, pow2ceiling = np.frexp((values | h.sub_bucket_mask).astype(np.float64))
    b = pow2ceiling.astype(np.int64) - (unit + mag + 1)
    s = values >> (b + unit)
    lowest = s << (b + unit)
    size = np.left_shift(1, unit + b + (s >= h.sub_bucket_count))
    medians = lowest + (size >> 1)
    total = sum(int(c) * int(m) for c, m in zip(counts[idx].tolist(), medians.tolist()))
    return float(total) / h.total_count
