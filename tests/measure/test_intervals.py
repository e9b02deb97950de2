"""Interval histograms: exact per-interval subtraction, aligned merging, .hlog files."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hdrh.log import HistogramLogReader

from roombench.chat.ledger import LedgerCounts
from roombench.chat.scenario import Scenario
from roombench.exceptions import ReportError
from roombench.measure.intervals import (
    IntervalLog, load_intervals, merge_intervals, read_hlog, slot, write_files,
)
from roombench.measure.metrics import Metrics, _counts_view, add_values, new_histogram, to_micros
from roombench.measure.report import ProcessReport

from tests.helpers import REF_TOKEN

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000.0  # an aligned unix time


def _hist_of(seconds: list[float]) -> Any:
    h = new_histogram()
    add_values(h, to_micros(np.array(seconds)))
    return h


def _log_with(batches: list[list[float]], start: float = T0 + 0.3, metric: str = "ack") -> IntervalLog:
    """One tick per batch, each at the next whole second."""
    log, m = IntervalLog(1.0, started=start), Metrics()
    for i, batch in enumerate(batches):
        for s in batch:
            m.record(metric, s)
        log.tick(slot(start, 1.0) + i + 1, m, {"acked": 10 * (i + 1)})
    return log


def test_each_interval_holds_exactly_its_own_samples() -> None:
    rng = np.random.default_rng(1)
    batches = [list(rng.lognormal(-5, 1, n)) for n in (500, 0, 1200, 3)]
    log = _log_with(batches)
    assert [iv.start for iv in log.intervals] == [T0, T0 + 1, T0 + 2, T0 + 3]
    assert [iv.length for iv in log.intervals] == pytest.approx([0.7, 1.0, 1.0, 1.0])
    for iv, batch in zip(log.intervals, batches):
        if not batch:
            assert "ack" not in iv.histograms
            continue
        h, want = iv.histograms["ack"], _hist_of(batch)
        assert h.total_count == len(batch)
        assert np.array_equal(_counts_view(h), _counts_view(want))
        assert h.get_value_at_percentile(99) == want.get_value_at_percentile(99)
        assert h.get_max_value() == want.get_highest_equivalent_value(want.get_max_value())
    assert [iv.counts["acked"] for iv in log.intervals] == [10, 10, 10, 10]  # deltas, not totals


def test_a_tick_in_the_last_slot_adds_to_that_interval() -> None:
    log, m = IntervalLog(1.0, started=T0 + 0.5), Metrics()
    m.record("ack", 0.01)
    log.tick(T0 + 1, m, {"acked": 1})
    m.record("ack", 0.02)
    m.record("ack", 0.03)
    log.tick(T0 + 1.4, m, {"acked": 3})  # e.g. the final tick after the drain
    assert len(log.intervals) == 2
    last = log.intervals[-1]
    assert (last.start, last.count("ack"), last.counts["acked"]) == (T0 + 1, 2, 2)
    assert last.length == pytest.approx(0.4)
    m.record("ack", 0.04)
    log.tick(T0 + 1.9, m, {"acked": 4})
    assert len(log.intervals) == 2 and last.count("ack") == 3 and last.counts["acked"] == 3
    assert last.length == pytest.approx(0.9)


def test_a_warmup_reset_restarts_the_subtraction() -> None:
    log, m = IntervalLog(1.0, started=T0), Metrics()
    for _ in range(5):
        m.record("ack", 0.01)
    log.tick(T0 + 1, m, {})
    m.reset()
    log.drop_histograms()
    m.record("ack", 0.02)
    log.tick(T0 + 2, m, {})
    assert [iv.count("ack") for iv in log.intervals] == [0, 1]
    assert sum(iv.count("ack") for iv in log.intervals) == m.histogram("ack").total_count


def test_workers_intervals_line_up_and_merge_exactly() -> None:
    a = _log_with([[0.001] * 3, [0.002] * 4], start=T0 + 0.2)
    b = _log_with([[0.005] * 7, [0.5], [0.01]], start=T0 + 0.9)
    merged = merge_intervals([a.intervals, b.intervals])
    assert [iv.start for iv in merged] == [T0, T0 + 1, T0 + 2]
    assert [iv.count("ack") for iv in merged] == [10, 5, 1]
    assert [iv.counts["acked"] for iv in merged] == [20, 20, 10]
    assert merged[0].length == pytest.approx(0.8)  # the longer-measured of the two
    assert merged[1].histograms["ack"].get_max_value() >= 500_000


def _report(log: IntervalLog, metrics: Metrics) -> ProcessReport:
    return ProcessReport(target="http://x", scenario={}, profile={}, metrics=metrics, loop_lag=new_histogram(),
                         ledger=LedgerCounts(), errors=Counter(), counters=Counter(), intervals=log.intervals)


def test_process_reports_carry_and_merge_the_intervals() -> None:
    reports = []
    for start, n in ((T0 + 0.1, 30), (T0 + 0.6, 50)):
        log, m = IntervalLog(1.0, started=start), Metrics()
        for i in range(n):
            m.record("fanout", 0.001 * (i + 1))
        log.tick(T0 + 1, m, {"delivered_live": n})
        reports.append(ProcessReport.from_json(_report(log, m).to_json()))  # as a worker ships it
    merged = ProcessReport.merge(reports)
    assert len(merged.intervals) == 1
    iv = merged.intervals[0]
    assert iv.count("fanout") == 80 == merged.metrics.histogram("fanout").total_count
    assert np.array_equal(_counts_view(iv.histograms["fanout"]), _counts_view(merged.metrics.histogram("fanout")))
    assert iv.counts == {"delivered_live": 80}


def test_an_older_report_without_intervals_still_reads() -> None:
    data = _report(IntervalLog(), Metrics()).to_json()
    del data["intervals"], data["interval_s"]
    assert ProcessReport.from_json(data).intervals == []


def test_lost_goes_to_the_interval_of_its_intended_send() -> None:
    log = _log_with([[0.01], [0.01], [0.01]], start=T0)
    log.assign_lost([(T0 + 1.5, 2), (T0 + 1.9, 1), (T0 + 2.2, 4), (T0 - 3, 1)])
    assert [iv.counts["lost"] for iv in log.intervals] == [1, 3, 4]


def test_hlog_files_read_back_with_hdrh_log_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    batches = [list(rng.lognormal(-4, 1, n)) for n in (100, 0, 250)]
    log = _log_with(batches)
    written = write_files(tmp_path, 1.0, log.intervals)
    assert sorted(p.name for p in written) == ["ack.hlog", "intervals.json"]
    # the hdrhistogram package's own reader, as another tool would read the file
    reader = HistogramLogReader(str(tmp_path / "ack.hlog"), new_histogram())
    counts, starts = [], []
    while (h := reader.get_next_interval_histogram()) is not None:
        counts.append(h.get_total_count())
        starts.append(h.get_start_time_stamp() / 1000.0)
    reader.close()
    assert counts == [100, 0, 250]
    assert starts == pytest.approx([T0, T0 + 1, T0 + 2])
    back = read_hlog(tmp_path / "ack.hlog")
    assert np.array_equal(_counts_view(back[2][1]), _counts_view(log.intervals[2].histograms["ack"]))
    interval_s, ivs = load_intervals(tmp_path)
    assert interval_s == 1.0 and [iv.count("ack") for iv in ivs] == [100, 0, 250]
    assert [iv.counts["acked"] for iv in ivs] == [10, 10, 10]


def test_load_intervals_of_a_folder_without_them_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no interval log"):
        load_intervals(tmp_path)


def test_a_real_run_intervals_add_up_to_its_totals(ref_server: Any) -> None:
    from roombench.generator import Generator, run_report

    sc = Scenario(token=REF_TOKEN, rate=10.0, room_size=3, drain=2.0, ack_timeout=2.0, interval=0.5,
                  drop_every=1.0, reconnect_delay=0.1, reconnect_delay_max=0.3)
    report = run_report(Generator(ref_server.url, replace(sc)), 3, 2.5)
    ivs = report.intervals
    assert len(ivs) >= 4
    assert all(iv.start % 0.5 == 0 for iv in ivs)
    starts = [iv.start for iv in ivs]
    assert starts == sorted(set(starts)) and all(iv.length > 0 for iv in ivs)
    for metric in ("ack", "fanout", "reconnect"):
        assert sum(iv.count(metric) for iv in ivs) == report.metrics.histogram(metric).total_count
    ledger = report.ledger.to_dict()
    for key in ("sent", "acked", "delivered_live", "recovered", "lost"):
        assert sum(iv.counts.get(key, 0) for iv in ivs) == ledger[key], key
    assert sum(iv.counts.get("forced_drops", 0) for iv in ivs) == report.counters["forced_drops"]
    assert sum(iv.count("loop_lag") for iv in ivs) == report.loop_lag.total_count


@pytest.mark.parametrize("backfill_empty", [True, False])
def test_lost_pairs_land_in_the_intervals_their_messages_were_sent_in(server_factory: Any,
                                                                      backfill_empty: bool) -> None:
    from roombench.generator import Generator, run_report

    # every 2nd live copy is withheld; the final reconcile's backfill returns nothing (all
    # lost) or all of them (none lost: the running "lost" rose every interval, then fell)
    server = server_factory(token=REF_TOKEN, faults={"drop_live_every": 2, "backfill_empty": backfill_empty})
    sc = Scenario(token=REF_TOKEN, rate=10.0, room_size=3, drain=1.0, ack_timeout=2.0, interval=0.5,
                  typing_every=0, read_every=0)
    report = run_report(Generator(server.url, sc), 3, 2.0)
    ivs = report.intervals
    lost = [iv.counts["lost"] for iv in ivs]
    assert sum(lost) == report.ledger.lost
    assert (report.ledger.lost > 0) == backfill_empty and (report.ledger.recovered > 0) != backfill_empty
    for iv in ivs:  # never more than the pairs its own sends expected, never negative
        assert 0 <= iv.counts["lost"] <= iv.counts.get("expected", 0), (iv.start, iv.counts)
    assert ivs[-1].counts.get("sent", 0) == 0 and lost[-1] == 0  # the drain sends nothing, so loses nothing


def test_intervals_keep_only_their_non_empty_buckets() -> None:
    import tracemalloc

    m, log = Metrics(), IntervalLog(1.0, started=T0)
    rng = np.random.default_rng(3)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(200):
        for s in rng.lognormal(-5, 1, 1000):
            m.record("ack", float(s))
        m.record("fanout", 0.001)
        log.tick(T0 + i + 1, m, {})
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # a full counts array is ~188 KB: 400 of them would be 75 MB
    assert grown < 8_000_000, grown
    assert sum(iv.count("ack") for iv in log.intervals) == m.histogram("ack").total_count == 200_000
