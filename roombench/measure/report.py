"""One generator process's result of a run, typed, shipped as versioned JSON, mergeable.

Schema history (``schema`` key of :meth:`ProcessReport.to_json`):
  roombench.report/1 — first version; ``interval_s`` and ``intervals`` (per-interval
  histograms and count deltas, :mod:`roombench.measure.intervals`) added later, optional
  when reading (an older worker's report has none).

Workers ship ``to_json()`` to the master; the master reads them back with ``from_json``
and merges them with :meth:`ProcessReport.merge`, which, as pyperf does before merging
runs, first checks that they come from the same run (scenario, profile, target).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from roombench.chat.ledger import LedgerCounts
from roombench.exceptions import ReportError, ReportMismatch
from roombench.measure.intervals import Interval, merge_intervals
from roombench.measure.metrics import Metrics, add_histogram, new_histogram, percentiles

SCHEMA = "roombench.report/1"
READABLE = (SCHEMA,)
#: counters of server events each generator process observes itself (a server restart):
#: merged by max, since a sum would count one restart once per process
MAX_COUNTERS = ("server_resets",)

__all__ = ["ProcessReport", "SCHEMA"]


@dataclass
class ProcessReport:
    """What one process (or, merged, several) measured in one run.

    ``wall_s`` is the longest process's measured time, ``cpu_s`` the sum of their CPU,
    ``cpu_max_fraction`` the busiest process's CPU share of a core.
    """

    target: str
    scenario: dict[str, Any]
    profile: dict[str, Any]
    metrics: Metrics
    loop_lag: HdrHistogram  # event-loop lag samples, µs
    ledger: LedgerCounts
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: dict[str, str] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)
    users: int = 0
    started: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    processes: int = 1
    cpu_max_fraction: float | None = None  # None: this process's cpu_s / wall_s
    #: reconnect-storm clusters, plain dicts (measure/storms.py); merged by concatenation
    storms: list[dict[str, Any]] = field(default_factory=list)
    interval_s: float = 1.0
    #: per-interval histograms and count deltas (starts aligned: processes' intervals line up)
    intervals: list[Interval] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.cpu_max_fraction is None:
            self.cpu_max_fraction = self.cpu_s / max(self.wall_s, 1e-9)

    @property
    def loop_lag_p99_ms(self) -> float:
        """The event-loop lag's 99th percentile in ms (0 without samples)."""
        h = self.loop_lag
        return percentiles(h, [99.0])[99.0] / 1000.0 if h.total_count else 0.0

    # -- JSON ---------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """Plain JSON/msgpack-able dict (histograms HDR-encoded), with the schema version."""
        lag = self.loop_lag.encode()
        return {
            "schema": SCHEMA,
            "target": self.target,
            "scenario": self.scenario,
            "profile": self.profile,
            "metrics": self.metrics.encode(),
            "loop_lag": lag.decode("ascii") if isinstance(lag, bytes) else lag,
            "ledger": self.ledger.to_dict(),
            "errors": dict(self.errors),
            "error_samples": dict(self.error_samples),
            "counters": dict(self.counters),
            "users": self.users,
            "started": self.started,
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "processes": self.processes,
            "cpu_max_fraction": self.cpu_max_fraction,
            "storms": self.storms,
            "interval_s": self.interval_s,
            "intervals": [iv.to_json() for iv in self.intervals],
        }

    @classmethod
    def from_json(cls, data: Any) -> ProcessReport:
        """Inverse of :meth:`to_json`; ReportError for an unknown schema or a broken report."""
        schema = data.get("schema") if isinstance(data, dict) else None
        if schema not in READABLE:
            raise ReportError(f"not a roombench process report this version can read (schema {schema!r}; "
                              f"readable: {', '.join(READABLE)}): mixed roombench versions?")
        try:
            return cls(
                target=data["target"], scenario=data["scenario"], profile=data["profile"],
                metrics=Metrics.decode(data["metrics"]), loop_lag=_decoded(data["loop_lag"]),
                ledger=LedgerCounts.from_dict(data["ledger"]), errors=Counter(data["errors"]),
                error_samples=dict(data["error_samples"]), counters=Counter(data["counters"]),
                users=data["users"], started=data["started"], wall_s=data["wall_s"], cpu_s=data["cpu_s"],
                processes=data["processes"], cpu_max_fraction=data["cpu_max_fraction"],
                storms=list(data.get("storms", [])),
                interval_s=float(data.get("interval_s", 1.0)),
                intervals=[Interval.from_json(d) for d in data.get("intervals", [])])
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportError(f"broken {schema} process report: {type(exc).__name__}: {exc}") from None

    # -- merging ------------------------------------------------------------------------

    @classmethod
    def merge(cls, reports: list[ProcessReport]) -> ProcessReport:
        """Combine reports of one run: histograms merged, counts added, CPU summed.

        Raises ReportMismatch (one line) when they are not of the same run, ReportError
        when there are none."""
        if not reports:
            raise ReportError("no process reports to merge")
        first = reports[0]
        for r in reports[1:]:
            _check_same_run(first, r)
        metrics, lag = Metrics(), new_histogram()
        errors: Counter[str] = Counter()
        counters: Counter[str] = Counter()
        samples: dict[str, str] = {}
        for r in reports:
            metrics.merge(r.metrics)
            add_histogram(lag, r.loop_lag)
            errors.update(r.errors)
            counters.update(r.counters)
            samples = {**r.error_samples, **samples}  # the first process's sample of a kind wins
        for key in MAX_COUNTERS:  # a fact every process observes alike: the most any one saw
            if key in counters:
                counters[key] = max(r.counters.get(key, 0) for r in reports)
        return cls(
            target=first.target, scenario=first.scenario, profile=first.profile, metrics=metrics, loop_lag=lag,
            ledger=LedgerCounts.sum(r.ledger for r in reports), errors=errors, error_samples=samples,
            counters=counters, users=sum(r.users for r in reports), started=min(r.started for r in reports),
            wall_s=max(r.wall_s for r in reports), cpu_s=sum(r.cpu_s for r in reports),
            processes=sum(r.processes for r in reports),
            cpu_max_fraction=max(r.cpu_max_fraction or 0.0 for r in reports),
            storms=[s for r in reports for s in r.storms],
            interval_s=first.interval_s, intervals=merge_intervals(r.intervals for r in reports))


def _decoded(blob: str) -> HdrHistogram:
    h = new_histogram()
    add_histogram(h, HdrHistogram.decode(blob))
    return h


def _check_same_run(a: ProcessReport, b: ProcessReport) -> None:
    """ReportMismatch naming what differs between two reports' run metadata."""
    if a.target != b.target:
        raise ReportMismatch(f"cannot merge process reports of different runs: target {a.target!r} vs {b.target!r}")
    keys = sorted(k for k in a.scenario.keys() | b.scenario.keys() if a.scenario.get(k) != b.scenario.get(k))
    if keys:
        k = keys[0]
        raise ReportMismatch(f"cannot merge process reports of different runs: scenario {k} "
                             f"{a.scenario.get(k)!r} vs {b.scenario.get(k)!r}")
    # "source" is where the profile file was read: another machine may keep it elsewhere
    pa, pb = ({k: v for k, v in p.items() if k != "source"} for p in (a.profile, b.profile))
    if pa != pb:
        raise ReportMismatch(f"cannot merge process reports of different runs: profile {a.profile.get('name')!r} "
                             f"vs {b.profile.get('name')!r} (their names or settings differ)")
    if a.interval_s != b.interval_s:
        raise ReportMismatch(f"cannot merge process reports with different intervals: {a.interval_s:g} s vs "
                             f"{b.interval_s:g} s")
