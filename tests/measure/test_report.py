"""ProcessReport: the typed process result, its versioned JSON, and merging of one run's reports."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import orjson
import pytest

from roombench.chat.ledger import LedgerCounts
from roombench.chat.scenario import Scenario
from roombench.exceptions import ReportError, ReportMismatch, RoombenchError
from roombench.measure.metrics import Metrics, add_values, new_histogram
from roombench.measure.report import SCHEMA, ProcessReport
from roombench.measure.summary import build_summary
from roombench.wire.profile import DEFAULT_PROFILE


def report(users: int = 2, cpu_s: float = 1.0, wall_s: float = 4.0, lag_us: tuple[int, ...] = (100, 200),
           **overrides: Any) -> ProcessReport:
    metrics = Metrics()
    for ms in (1.0, 2.0, 3.0):
        metrics.record("ack", ms / 1000)
    lag = new_histogram()
    add_values(lag, np.array(lag_us, dtype=np.int64))
    fields: dict[str, Any] = dict(
        target="http://127.0.0.1:1", scenario=Scenario().to_dict(), profile=DEFAULT_PROFILE.to_dict(),
        metrics=metrics, loop_lag=lag, ledger=LedgerCounts(sent=3, acked=3), users=users, started=100.0,
        wall_s=wall_s, cpu_s=cpu_s)
    fields.update(overrides)
    r = ProcessReport(**fields)
    r.errors["connect_failed"] = 1
    r.error_samples["connect_failed"] = "refused"
    r.counters["forced_drops"] = 2
    return r


def test_json_round_trip_keeps_everything() -> None:
    r = report()
    wire = orjson.loads(orjson.dumps(r.to_json()))  # as it crosses to the master
    assert wire["schema"] == SCHEMA == "roombench.report/1"
    back = ProcessReport.from_json(wire)
    assert back.to_json() == r.to_json()
    assert back.metrics.summary() == r.metrics.summary()
    assert back.ledger == r.ledger and back.errors == r.errors and back.counters == r.counters
    assert back.loop_lag.total_count == 2 and back.loop_lag_p99_ms == r.loop_lag_p99_ms > 0
    assert back.cpu_max_fraction == pytest.approx(0.25)


@pytest.mark.parametrize("data", [{**report().to_json(), "schema": "roombench.report/99"}, {"metrics": {}}, [1]])
def test_unknown_schema_is_a_clear_error(data: Any) -> None:
    with pytest.raises(ReportError, match="not a roombench process report this version can read") as info:
        ProcessReport.from_json(data)
    assert "\n" not in str(info.value)


def test_broken_report_of_a_known_schema_is_a_clear_error() -> None:
    data = report().to_json()
    del data["ledger"]
    with pytest.raises(ReportError, match="broken roombench.report/1 process report: KeyError"):
        ProcessReport.from_json(data)


def test_merge_adds_counts_and_keeps_the_busiest_process() -> None:
    merged = ProcessReport.merge([report(users=2, cpu_s=1.0), report(users=3, cpu_s=3.0, lag_us=(50_000,))])
    assert merged.processes == 2 and merged.users == 5
    assert merged.metrics.summary()["ack"]["count"] == 6
    assert merged.ledger.sent == 6 and merged.errors["connect_failed"] == 2 and merged.counters["forced_drops"] == 4
    assert merged.cpu_s == 4.0 and merged.cpu_max_fraction == pytest.approx(0.75)
    assert merged.loop_lag.total_count == 3 and merged.loop_lag_p99_ms == pytest.approx(50.0, rel=0.01)
    again = ProcessReport.merge([merged, report()])  # merged reports merge again
    assert again.processes == 3 and again.users == 7


@pytest.mark.parametrize("other,needle", [
    ({"target": "http://127.0.0.1:2"}, "target"),
    ({"scenario": replace(Scenario(), rate=5.0).to_dict()}, "scenario rate 1.0 vs 5.0"),
    ({"profile": {**DEFAULT_PROFILE.to_dict(), "namespace": "/chat"}}, "profile"),
])
def test_reports_of_different_runs_do_not_merge(other: dict[str, Any], needle: str) -> None:
    with pytest.raises(ReportMismatch, match="cannot merge process reports of different runs") as info:
        ProcessReport.merge([report(), report(**other)])
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, RoombenchError)


def test_a_profile_read_from_elsewhere_still_merges() -> None:
    moved = {**DEFAULT_PROFILE.to_dict(), "source": "/elsewhere/default.toml"}
    assert ProcessReport.merge([report(), report(profile=moved)]).processes == 2


def test_nothing_to_merge() -> None:
    with pytest.raises(ReportError, match="no process reports to merge"):
        ProcessReport.merge([])


def test_summary_from_the_typed_report() -> None:
    merged = ProcessReport.merge([report(), report()])
    s = build_summary(merged, target=merged.target, scenario=merged.scenario)
    assert s["delivery"]["sent"] == 6 and s["delivery"]["forced_drops"] == 4
    assert s["errors"] == {"connect_failed": 2} and s["metadata"]["generator"]["processes"] == 2
    assert s["metadata"]["generator"]["cpu_pct"] == 50.0 and s["latency_ms"]["ack"]["count"] == 6
    orjson.dumps(s)  # plain JSON all through


@pytest.mark.parametrize("late,flagged", [(1, False), (2, True)])
def test_one_late_loop_probe_is_a_hiccup_two_are_saturation(late: int, flagged: bool) -> None:
    from roombench.measure.summary import saturation

    # 30 probes: a 1.5 s run's p99 is its single worst probe, so one 25 ms hiccup (a GC pass,
    # the core given away once) made an idle generator "saturated"
    r = report(lag_us=(300,) * (30 - late) + (25_000,) * late)
    assert r.loop_lag_p99_ms > 20
    reasons = saturation(r)
    assert bool(reasons) is flagged
    if flagged:
        assert reasons == [f"event-loop lag p99 {r.loop_lag_p99_ms:.1f} ms > 20 ms ({late} of 30 probes late)"]
