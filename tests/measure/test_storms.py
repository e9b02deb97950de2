"""Reconnect storms (measure/storms.py): detection, merging across processes, and a real
storm — the impairment proxy resetting every connection of a `roombench run` at once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from roombench.measure.storms import StormTracker, format_storms, summarize

pytestmark = pytest.mark.timeout(90)


def _tracker(users: int) -> StormTracker:
    return StormTracker(lambda: users)


def _storms(tracker: StormTracker, users: int) -> list[dict[str, object]]:
    clusters = tracker.to_json()
    return summarize(clusters, users, min((c["start"] for c in clusters), default=0.0))


def test_all_users_dropped_at_once_is_one_storm_until_all_are_whole() -> None:
    t = _tracker(6)
    for u in range(6):
        t.note_drop(u, 10.0 + u * 0.01)
    for u in range(6):
        t.note_rejoined(u, 10.5 + u * 0.1)
    t.note_backfill(2, 30)
    for u in range(6):
        t.note_whole(u, 11.0 + u * 0.1)
    t.note_backfill(2, 99)  # after every user is whole: not the storm's load
    [storm] = _storms(t, 6)
    assert storm["users_dropped"] == 6 and storm["not_whole_at_end"] == 0
    assert storm["start_s"] == 0.0
    assert storm["all_rejoined_s"] == pytest.approx(1.0, abs=1e-3)  # the last rejoin at 11.0
    assert storm["all_whole_s"] == pytest.approx(1.5, abs=1e-3)  # the last whole at 11.5
    assert storm["whole_max_s"] == pytest.approx(1.45, abs=1e-3)  # user 5: dropped 10.05, whole 11.5
    assert storm["whole_p50_s"] == pytest.approx(1.18, abs=1e-3)  # user 2: 10.02 -> 11.2
    assert (storm["backfill_requests"], storm["backfill_items"]) == (2, 30)
    assert format_storms([storm]) == ("storms: 1  @0.0s 6 dropped, all rejoined in 1.00 s, whole in 1.50 s "
                                      "(p50 1.18, max 1.45), backfill 2 req / 30 items")


def test_a_user_never_whole_again_is_counted_and_the_storm_never_ends() -> None:
    t = _tracker(5)
    for u in range(5):
        t.note_drop(u, 1.0)
    for u in range(4):
        t.note_whole(u, 2.0)
    [storm] = _storms(t, 5)
    assert storm["not_whole_at_end"] == 1 and storm["all_whole_s"] is None
    assert "1 never whole" in (format_storms([storm]) or "")


def test_drops_spread_out_or_too_few_are_no_storm() -> None:
    spread = _tracker(6)
    for u in range(6):
        spread.note_drop(u, 2.0 * u)  # 2 s apart: the window is 1 s
        spread.note_whole(u, 2.0 * u + 0.5)
    assert _storms(spread, 6) == []
    few = _tracker(4)  # every user, but fewer than MIN_USERS
    for u in range(4):
        few.note_drop(u, 1.0)
    assert _storms(few, 4) == []
    half = _tracker(12)  # 5 of 12: under half
    for u in range(5):
        half.note_drop(u, 1.0)
    assert _storms(half, 12) == []
    assert format_storms([]) is None


def test_a_user_whole_before_the_storm_is_seen_still_counts() -> None:
    t = _tracker(6)
    t.note_drop(0, 1.0)
    t.note_rejoined(0, 1.1)
    t.note_whole(0, 1.2)  # a fast rejoin, before the others drop
    for u in range(1, 6):
        t.note_drop(u, 1.5)
    for u in range(1, 6):
        t.note_rejoined(u, 1.9)
        t.note_whole(u, 2.0)
    [storm] = _storms(t, 6)
    assert storm["users_dropped"] == 6 and storm["not_whole_at_end"] == 0
    assert storm["whole_p50_s"] == pytest.approx(0.5, abs=1e-3)
    assert storm["all_rejoined_s"] == pytest.approx(0.9, abs=1e-3)


def test_clusters_of_several_processes_merge_into_one_storm() -> None:
    # 3 users per process: neither passes MIN_USERS alone, the run's storm is of 6
    a, b = _tracker(3), _tracker(3)
    for t, base in ((a, 0), (b, 100)):
        for u in range(3):
            t.note_drop(base + u, 5.0)
            t.note_whole(base + u, 6.0)
    clusters = a.to_json() + b.to_json()
    started = min(c["start"] for c in clusters) - 5.0
    [storm] = summarize(clusters, 6, started)
    assert storm["users_dropped"] == 6 and storm["start_s"] == pytest.approx(5.0, abs=0.01)
    assert summarize(a.to_json(), 3, started) == []


def test_storms_ride_the_process_report_and_merge() -> None:
    from roombench.chat.ledger import LedgerCounts
    from roombench.measure.metrics import Metrics, new_histogram
    from roombench.measure.report import ProcessReport

    t = _tracker(6)
    for u in range(6):
        t.note_drop(u, 1.0)
    r = ProcessReport(target="x", scenario={}, profile={}, metrics=Metrics(), loop_lag=new_histogram(),
                      ledger=LedgerCounts(), users=6, storms=t.to_json())
    back = ProcessReport.from_json(orjson.loads(orjson.dumps(r.to_json())))
    assert back.storms == r.storms and len(back.storms) == 1
    assert len(ProcessReport.merge([back, back]).storms) == 2
    old = r.to_json()
    del old["storms"]  # a report of before storms still loads
    assert ProcessReport.from_json(old).storms == []


@pytest.mark.timeout(120)
def test_a_proxy_reset_of_every_connection_is_one_storm_and_nothing_is_lost(tmp_path: Path) -> None:
    users, duration = 6, 8
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "roombench.cli", "run", "--users", str(users), "--spawn-rate", "50",
                          "--duration", str(duration), "--room-size", "3", "--rate", "5", "--drain", "3",
                          "--reconnect-delay", "0.5", "--impair", "reset-all@3s", "--out", str(tmp_path),
                          "--slo", "lost==0"], capture_output=True, text=True, timeout=100)
    took = time.monotonic() - started
    assert res.returncode == 0, res.stdout + res.stderr
    s = orjson.loads((tmp_path / "summary.json").read_bytes())
    [storm] = s["storms"]
    assert storm["users_dropped"] == users and storm["not_whole_at_end"] == 0
    assert storm["all_whole_s"] is not None and 0 < storm["all_rejoined_s"] <= storm["all_whole_s"] < 3
    assert 2.5 < storm["start_s"] < 4.5
    assert storm["backfill_requests"] >= users
    assert s["delivery"]["lost"] == 0 and s["errors"] == {"disconnected": users}
    assert s["metadata"]["impair"]["proxy"]["resets"] >= users
    assert "storms: 1  @" in res.stdout
    assert took < duration + 20, took  # Locust's start and stop included; not stretched by the storm
