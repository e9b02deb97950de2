"""The Locust child's interval files: .hlog + intervals.json beside summary.json, live.json."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hdrh.log import HistogramLogReader

from roombench.locust.live import LIVE_SCHEMA, LiveMaster, merge_snapshots
from roombench.measure.intervals import IntervalLog, load_intervals
from roombench.measure.metrics import Metrics, new_histogram

T0 = 1_700_000_000.0


def _snap(start: float, acked: int, ack_s: float, users: int = 5) -> dict[str, Any]:
    log, m = IntervalLog(1.0, started=start), Metrics()
    for _ in range(acked):
        m.record("ack", ack_s)
    iv = log.tick(start + 1, m, {"acked": acked, "delivered_live": 2 * acked})
    return {"started": T0, "users": users, "connected": users - 1, "interval": iv.to_json(),
            "totals": {"acked": acked, "lost": 0}, "overdue": 1, "cpu_fraction": 0.25}


def test_live_merges_every_workers_interval_before_writing(tmp_path: Path) -> None:
    master = LiveMaster(tmp_path / "live.json")
    assert not master.add("w1", _snap(T0 + 3, 10, 0.002), workers=2)
    assert not (tmp_path / "live.json").exists()  # half an interval would show half the rate
    assert master.add("w2", _snap(T0 + 3, 30, 0.200), workers=2)
    live = orjson.loads((tmp_path / "live.json").read_bytes())
    assert live["schema"] == LIVE_SCHEMA
    assert (live["users"], live["connected"], live["overdue"]) == (10, 8, 2)
    assert live["interval"]["start"] == T0 + 3 and live["interval"]["acks_per_s"] == 40.0
    assert live["interval"]["deliveries_per_s"] == 80.0
    assert 190 < live["interval"]["p99_ms"]["ack"] < 210 and live["interval"]["p99_ms"]["fanout"] is None
    assert live["totals"] == {"acked": 40, "lost": 0}
    assert not master.add("w1", _snap(T0 + 3, 1, 0.1), workers=2)  # that interval is written already


@pytest.mark.parametrize("late,flagged", [(1, False), (2, True)])
def test_live_flags_a_lagging_generator_not_one_hiccup(late: int, flagged: bool) -> None:
    snap = _snap(T0, 1, 0.001)
    lag = new_histogram()
    for v in [1_000] * (20 - late) + [80_000] * late:  # an interval's 20 probes
        lag.record_value(v)
    from roombench.measure.intervals import Interval
    iv = Interval.from_json(snap["interval"])
    iv.set_histogram("loop_lag", lag)
    snap["interval"] = iv.to_json()
    live = merge_snapshots([snap], now=T0 + 2)
    assert live["saturated"] is flagged and live["loop_lag_p99_ms"] == pytest.approx(80, rel=0.01)
    assert live["elapsed_s"] == 2.0


@pytest.mark.timeout(120)
def test_run_with_two_processes_writes_hlogs_that_add_up_to_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "roombench.cli", "run", "--users", "6", "--spawn-rate", "50",
                          "--duration", "3", "--room-size", "3", "--rate", "5", "--drain", "3", "--drop-every", "1",
                          "--reconnect-delay", "0.1", "--processes", "2", "--out", str(out), "--quiet"],
                         capture_output=True, text=True, timeout=110)
    assert res.returncode == 0, res.stdout + res.stderr
    s = orjson.loads((out / "summary.json").read_bytes())
    assert s["metadata"]["generator"]["processes"] == 2
    for metric in ("ack", "fanout", "connect", "reconnect"):
        reader = HistogramLogReader(str(out / f"{metric}.hlog"), new_histogram())
        total = 0
        while (h := reader.get_next_interval_histogram()) is not None:
            total += h.get_total_count()
        reader.close()
        assert total == s["latency_ms"][metric]["count"] > 0, metric
    interval_s, ivs = load_intervals(out)
    assert interval_s == 1.0 and len(ivs) >= 3
    for key in ("sent", "acked", "delivered_live", "recovered", "lost", "forced_drops"):
        assert sum(iv.counts.get(key, 0) for iv in ivs) == s["delivery"][key], key
    live = orjson.loads((out / "live.json").read_bytes())
    assert live["schema"] == LIVE_SCHEMA and live["users"] == 6 and live["totals"]["sent"] > 0
