"""Interval histograms: what each metric measured in each interval (1 s by default) of a run.

A generator process keeps one :class:`IntervalLog`. Once per interval (a greenlet, not the
record path) :meth:`IntervalLog.tick` subtracts the previous snapshot of every metric's HDR
counts array from the current one, which gives exactly the samples recorded in that
interval, and the deltas of the ledger counts and the generator's counters. Interval starts
are multiples of ``interval_s`` in unix time, so the intervals of several worker processes
line up and :func:`merge_intervals` adds them exactly (same start: histograms and counts
summed).

Files (beside summary.json):

``<metric>.hlog``
    HdrHistogram interval log (the standard text format: ``#[StartTime: ...]``,
    ``#[BaseTime: ...]``, a legend, then ``start,length,max,base64`` lines with times
    relative to BaseTime); values in µs, the max column in ms. Readable by
    ``hdrh.log.HistogramLogReader`` and HdrHistogram's Java tools.
``intervals.json``
    ``{"schema": "roombench.intervals/1", "interval_s", "intervals": [{"start", "length",
    "counts"}]}``.

Per-interval ``lost`` is not a delta: a pair in flight looks missing until it arrives, so
the running ``lost`` only means "not yet". After the run's reconcile,
:meth:`IntervalLog.assign_lost` puts each pair that stayed missing in the interval of its
message's intended send time; the per-interval ``lost`` then sums to the run's ``lost``.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader, HistogramLogWriter

from roombench.exceptions import ReportError, RoombenchError
from roombench.measure.metrics import METRICS, Metrics, _counts_view, add_histogram, new_histogram

SCHEMA = "roombench.intervals/1"
INTERVALS_FILE = "intervals.json"
HLOG_SUFFIX = ".hlog"
#: the hlog max column is the interval's max divided by this (µs -> ms)
MAX_VALUE_UNIT_RATIO = 1000.0

__all__ = ["Interval", "IntervalLog", "load_intervals", "merge_intervals", "read_hlog", "write_files"]


class _Sparse:
    """A histogram's non-zero buckets only. A full counts array is ~188 KB (1 µs .. 1 h at 3
    digits); a run keeps up to 11 histograms per interval, thousands of intervals."""

    __slots__ = ("idx", "counts", "total", "min", "max")

    def __init__(self, idx: np.ndarray, counts: np.ndarray, total: int, lo: int, hi: int) -> None:
        self.idx, self.counts, self.total, self.min, self.max = idx, counts, total, lo, hi

    @classmethod
    def of_counts(cls, counts: np.ndarray, total: int, lo: int | None = None, hi: int | None = None) -> _Sparse:
        """From a full counts array; ``lo`` / ``hi`` None: the edges of the outermost buckets."""
        idx = np.flatnonzero(counts)
        if lo is None or hi is None:
            ref = _REF
            lo = ref.get_lowest_equivalent_value(ref.get_value_from_index(int(idx[0])))
            hi = ref.get_highest_equivalent_value(ref.get_value_from_index(int(idx[-1])))
        nz = counts[idx]
        # 4 bytes a count whenever they fit: an interval rarely holds 4 billion samples
        small = not len(nz) or int(nz.max()) <= np.iinfo(np.uint32).max
        return cls(idx.astype(np.int32), nz.astype(np.uint32 if small else np.uint64), total, lo, hi)

    @classmethod
    def of(cls, h: HdrHistogram) -> _Sparse:
        return cls.of_counts(_counts_view(h), h.total_count, h.min_value, h.max_value)

    def dense(self) -> HdrHistogram:
        h = new_histogram()
        _counts_view(h)[self.idx] = self.counts.astype(np.uint64)
        h.total_count, h.min_value, h.max_value = self.total, self.min, self.max
        return h

    def plus(self, other: _Sparse) -> _Sparse:
        full = np.zeros(_REF.counts_len, dtype=np.uint64)
        full[self.idx] += self.counts
        full[other.idx] += other.counts
        return _Sparse.of_counts(full, self.total + other.total, min(self.min, other.min), max(self.max, other.max))


_REF = new_histogram()  # bucket arithmetic only; never recorded into


class Interval:
    """One interval: ``start`` is a multiple of the interval length (unix s); ``length`` is
    the seconds of it that were measured (less for a run's first and last); ``counts`` the
    count deltas. Histograms (µs, :func:`~roombench.measure.metrics.new_histogram`
    settings) are kept sparse: ``histogram(name)`` builds one, ``histograms`` all of them."""

    __slots__ = ("start", "length", "counts", "_sparse")

    def __init__(self, start: float, length: float, histograms: dict[str, HdrHistogram] | None = None,
                 counts: dict[str, int] | None = None) -> None:
        self.start = start
        self.length = length
        self.counts: dict[str, int] = dict(counts or {})
        self._sparse: dict[str, _Sparse] = {}
        for name, h in (histograms or {}).items():
            self.set_histogram(name, h)

    def __repr__(self) -> str:
        return f"Interval(start={self.start}, length={self.length}, metrics={sorted(self._sparse)}, counts={self.counts})"

    @property
    def histograms(self) -> dict[str, HdrHistogram]:
        """Every non-empty histogram, built anew (a copy: change them with set_histogram)."""
        return {name: sp.dense() for name, sp in self._sparse.items()}

    def histogram(self, name: str) -> HdrHistogram | None:
        """One metric's histogram of this interval (a new object), None without samples."""
        sp = self._sparse.get(name)
        return sp.dense() if sp is not None else None

    def set_histogram(self, name: str, h: HdrHistogram) -> None:
        if h.total_count:
            self._sparse[name] = _Sparse.of(h)
        else:
            self._sparse.pop(name, None)

    def names(self) -> list[str]:
        """The metrics with samples in this interval."""
        return list(self._sparse)

    def add(self, other: Interval) -> None:
        """Fold another process's interval with the same start into this one."""
        self.length = max(self.length, other.length)
        for name, sp in other._sparse.items():
            mine = self._sparse.get(name)
            self._sparse[name] = (_Sparse(sp.idx.copy(), sp.counts.copy(), sp.total, sp.min, sp.max)
                                  if mine is None else mine.plus(sp))
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v

    def count(self, metric: str) -> int:
        """Samples of ``metric`` in this interval."""
        sp = self._sparse.get(metric)
        return sp.total if sp is not None else 0

    def drop_histograms(self) -> None:
        self._sparse = {}

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "length": self.length, "counts": dict(self.counts),
                "histograms": {n: _as_str(sp.dense().encode()) for n, sp in self._sparse.items()}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Interval:
        iv = cls(start=float(d["start"]), length=float(d["length"]),
                 counts={k: int(v) for k, v in d.get("counts", {}).items()})
        for name, blob in d.get("histograms", {}).items():
            h = new_histogram()
            add_histogram(h, HdrHistogram.decode(blob))
            iv.set_histogram(name, h)
        return iv


def slot(t: float, interval_s: float) -> float:
    """The start of the interval ``t`` falls in (a multiple of ``interval_s``)."""
    # the small epsilon keeps a tick exactly on a boundary (after float rounding) in the next slot
    return math.floor(t / interval_s + 1e-9) * interval_s


class IntervalLog:
    """Per-interval histograms and count deltas of one process (see the module docstring)."""

    def __init__(self, interval_s: float = 1.0, started: float | None = None) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be > 0")
        self.interval_s = interval_s
        self.intervals: list[Interval] = []
        self._last: float | None = started  # end of the last tick (unix s)
        self._first: float | None = started  # when measuring began
        # per metric: the histogram object and its counts when last ticked (a reset replaces the object)
        self._prev: dict[str, tuple[HdrHistogram, np.ndarray | None, int]] = {}
        self._prev_counts: dict[str, int] = {}

    def tick(self, now: float, metrics: Metrics, counts: dict[str, int],
             extra: dict[str, HdrHistogram] | None = None) -> Interval:
        """Close the interval ending at ``now`` (unix s): the samples recorded and the count
        deltas since the last tick. A tick inside the slot of the last interval (e.g. the
        final one at the end of the run) adds to that interval. ``extra``: histograms of
        this interval only that are not metrics (the generator's ``loop_lag``)."""
        begin = self._last if self._last is not None else now
        start = slot(begin, self.interval_s)
        sparse: dict[str, _Sparse] = {}
        metrics.flush()
        for name in METRICS:
            h = metrics.histogram(name)
            prev = self._prev.get(name)
            if prev is not None and prev[0] is h and prev[2] == h.total_count:
                continue  # nothing new
            cur = _counts_view(h)
            if prev is not None and prev[0] is h and prev[1] is not None:
                delta = cur - prev[1]
                n = h.total_count - prev[2]
            else:
                delta, n = cur.copy(), h.total_count
            self._prev[name] = (h, cur.copy(), h.total_count)
            if n:
                sparse[name] = _Sparse.of_counts(delta, n)
        for name, h in (extra or {}).items():
            if h.total_count:
                sparse[name] = _Sparse.of(h)
        deltas = {k: v - self._prev_counts.get(k, 0) for k, v in counts.items()}
        self._prev_counts = dict(counts)
        self._last = now
        if self._first is None:
            self._first = begin
        length = now - max(start, self._first)
        last = self.intervals[-1] if self.intervals else None
        iv = Interval(start, length, counts=deltas)
        iv._sparse = sparse
        if last is not None and last.start == start:
            last.add(iv)
            return last
        self.intervals.append(iv)
        return iv

    def drop_histograms(self) -> None:
        """End of a warm-up: the metrics forgot their samples, so do the intervals so far
        (their counts stay: the ledger does not forget)."""
        for iv in self.intervals:
            iv.drop_histograms()

    def assign_lost(self, lost_at: Iterable[tuple[float, int]]) -> None:
        """Replace every interval's ``lost`` by the pairs that stayed missing, by their
        message's intended send time (unix s; see the module docstring). A time before the
        first interval counts in the first, after the last in the last."""
        if not self.intervals:
            return
        starts = np.array([iv.start for iv in self.intervals])
        lost = np.zeros(len(starts), dtype=np.int64)
        for t, n in lost_at:
            i = int(np.searchsorted(starts, t, side="right")) - 1
            lost[max(i, 0)] += n
        for iv, n in zip(self.intervals, lost.tolist()):
            iv.counts["lost"] = n

    def to_json(self) -> dict[str, Any]:
        return {"interval_s": self.interval_s, "intervals": [iv.to_json() for iv in self.intervals]}


def _as_str(blob: bytes | str) -> str:
    return blob.decode("ascii") if isinstance(blob, bytes) else blob


def merge_intervals(logs: Iterable[Iterable[Interval]]) -> list[Interval]:
    """Several processes' intervals as one list: those with the same start added, sorted."""
    by_start: dict[float, Interval] = {}
    for log in logs:
        for iv in log:
            mine = by_start.get(iv.start)
            if mine is None:
                mine = by_start[iv.start] = Interval(iv.start, 0.0)
            mine.add(iv)
    return [by_start[s] for s in sorted(by_start)]


def intervals_from_json(data: Any) -> tuple[float, list[Interval]]:
    """Inverse of :meth:`IntervalLog.to_json`: (interval_s, intervals)."""
    return float(data["interval_s"]), [Interval.from_json(d) for d in data["intervals"]]


# -- files ------------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def hlog_text(metric: str, intervals: list[Interval]) -> str:
    """The HdrHistogram interval log of one metric (every interval, empty ones too, so a
    reader sees the whole time axis)."""
    buf = io.StringIO()
    writer = HistogramLogWriter(buf)
    base = intervals[0].start if intervals else 0.0
    writer.output_log_format_version()
    writer.output_comment(f"[roombench metric {metric}: values in microseconds, Interval_Max in milliseconds]")
    # hdrh's own output_start_time is broken (it passes ms to fromtimestamp): written here
    iso = datetime.fromtimestamp(base, timezone.utc).isoformat(" ")
    buf.write(f"#[StartTime: {base:.3f} (seconds since epoch), {iso}]\n")
    buf.write(f"#[BaseTime: {base:.3f} (seconds since epoch)]\n")
    writer.output_legend()
    for iv in intervals:
        h = iv.histogram(metric)
        blob = _as_str((h if h is not None else new_histogram()).encode())
        top = h.get_max_value() / MAX_VALUE_UNIT_RATIO if h is not None and h.total_count else 0.0
        # as HdrHistogram's Java writer does ("%.3f,%.3f,%.3f,%s"); hdrh's own writer floors the max to whole ms
        buf.write(f"{iv.start - base:.3f},{iv.length:.3f},{top:.3f},{blob}\n")
    return buf.getvalue()


def write_files(folder: str | Path, interval_s: float, intervals: list[Interval],
                metrics: Iterable[str] = METRICS) -> list[Path]:
    """``<metric>.hlog`` for every metric with samples, and intervals.json; atomically."""
    from roombench.measure.summary import write_json  # summary imports report, which imports us

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in metrics:
        if any(iv.count(metric) for iv in intervals):
            path = folder / f"{metric}{HLOG_SUFFIX}"
            _write_atomic(path, hlog_text(metric, intervals))
            written.append(path)
    path = folder / INTERVALS_FILE
    write_json(path, {"schema": SCHEMA, "interval_s": interval_s,
                      "intervals": [{"start": iv.start, "length": iv.length, "counts": iv.counts} for iv in intervals]})
    written.append(path)
    return written


def iter_hlog(path: str | Path) -> Iterator[tuple[float, HdrHistogram]]:
    """Each interval of an hlog file as (absolute start, unix s; histogram in µs), one at a time."""
    reader = HistogramLogReader(str(path), new_histogram())
    try:
        while (h := reader.get_next_interval_histogram()) is not None:
            mine = new_histogram()
            add_histogram(mine, h)
            yield h.get_start_time_stamp() / 1000.0, mine
    finally:
        reader.close()


def read_hlog(path: str | Path) -> list[tuple[float, HdrHistogram]]:
    """Every interval of an hlog file (see iter_hlog; each histogram is ~188 KB in memory)."""
    return list(iter_hlog(path))


def load_intervals(folder: str | Path) -> tuple[float, list[Interval]]:
    """A result folder's intervals: (interval_s, intervals with counts from intervals.json and
    histograms from the .hlog files). ReportError (one line) when there is no readable
    intervals.json."""
    from roombench.measure.summary import read_json

    folder = Path(folder)
    path = folder / INTERVALS_FILE
    if not path.exists():
        raise ReportError(f"{path}: no interval log (a run by an older roombench?)")
    try:
        data = read_json(path)
    except RoombenchError as exc:  # read_json's UsageError: one line
        raise ReportError(str(exc)) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ReportError(f"{path}: not a {SCHEMA} file")
    try:
        interval_s = float(data["interval_s"])
        intervals = [Interval(float(d["start"]), float(d["length"]), {}, {k: int(v) for k, v in d["counts"].items()})
                     for d in data["intervals"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"{path}: broken {SCHEMA} file: {type(exc).__name__}: {exc}") from None
    by_start = {round(iv.start, 3): iv for iv in intervals}
    for hlog in sorted(folder.glob(f"*{HLOG_SUFFIX}")):
        metric = hlog.name[: -len(HLOG_SUFFIX)]
        for start, h in iter_hlog(hlog):
            iv = by_start.get(round(start, 3))
            if iv is not None:
                iv.set_histogram(metric, h)
    return interval_s, intervals
