"""--abort-on-fail: the proofs that an SLO can no longer hold, and a real run stopped early."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from roombench.bench.abort import AbortWatch
from roombench.measure.metrics import add_values, new_histogram
from roombench.measure.summary import parse_slo

from tests.helpers import REF_TOKEN


def watch(*slos: str, **kw: Any) -> AbortWatch:
    args: dict[str, Any] = {"users": 10, "rate": 10.0, "run_s": 10.0, "room_size": 5, "warmup": 0.0,
                            "ack_timeout_ms": 10_000.0, "closed_loop": False, **kw}
    return AbortWatch([parse_slo(s) for s in slos], **args)


def live(start: float, ack_ms: list[float] | None = None, **totals: int) -> dict[str, Any]:
    iv: dict[str, Any] = {"start": start, "length": 1.0, "acks_per_s": len(ack_ms or []), "p99_ms": {}}
    if ack_ms:
        h = new_histogram()
        add_values(h, (np.asarray(ack_ms) * 1000).astype(np.int64))
        iv["histograms"] = {"ack": h.encode().decode()}
        iv["p99_ms"] = {"ack": float(np.percentile(ack_ms, 99))}
    return {"schema": "roombench.live/1", "elapsed_s": start + 3.0, "interval": iv, "totals": totals}


def test_growing_counts_abort_once_past_the_limit() -> None:
    w = watch("ack_timeouts==0", "lost==0")
    assert w.update(live(1, lost=50)) is None  # lost so far is in flight: never a proof
    assert w.update(live(2, ack_timeouts=1)) is not None
    assert w.failed is not None and w.failed.expr == "ack_timeouts==0"
    assert "only grows" in (w.reason or "")
    assert watch("ack_timeouts<3").update(live(1, ack_timeouts=2)) is None
    assert watch("ack_timeouts>=3").update(live(1, ack_timeouts=0)) is None  # may still get there


def test_p99_bound_aborts_only_once_the_final_p99_cannot_come_back() -> None:
    # n_max = 10 users x (10/s x 10 s + 2) = 1020 acks: p99 < 50 fails for good past 11.2 over 50 ms
    w = watch("ack.p99<50")
    assert w.update(live(1, [10.0] * 95 + [80.0] * 5)) is None  # 5 known over
    assert w.update(live(1, [10.0] * 95 + [80.0] * 5)) is None  # the same interval again: not counted twice
    assert w.update(live(2, [10.0] * 94 + [80.0] * 6)) is None  # 11: not yet more than 11.2
    reason = w.update(live(3, [10.0] * 99 + [80.0]))
    assert reason is not None and "at least 12 ack samples are over 50 ms" in reason and "at most 1020" in reason
    # p50 needs half of n_max over the bound
    assert watch("ack.p50<50").update(live(1, [80.0] * 100)) is None


def test_no_abort_in_warmup_closed_loop_or_without_proof() -> None:
    assert watch("ack.p99<50", warmup=10.0).update(live(1, [80.0] * 100)) is None
    assert watch("ack.p99<50", closed_loop=True).update(live(1, [80.0] * 100)) is None
    assert watch("ack.p99<50").update(live(1, [49.0] * 1000)) is None
    # timeouts count as samples over the bound (recorded at >= the timeout)
    assert watch("ack.p99<50", ack_timeout_ms=200).update(live(1, ack_timeouts=12)) is not None


@pytest.mark.timeout(90)
@pytest.mark.parametrize("slo,ack_timeout", [("ack_timeouts==0", "0.1"), ("ack.p99<100", "10")])
def test_run_stops_early_writes_everything_and_fails(tmp_path: Path, server_factory: Any, slo: str,
                                                     ack_timeout: str) -> None:
    """A 60 s run whose acks are all late (a 300 ms ack delay: timeouts with a 0.1 s timeout,
    every ack over 100 ms otherwise) stops in seconds."""
    server = server_factory("py", token=REF_TOKEN, faults={"ack_delay_ms": 300})
    out = tmp_path / "run"
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "roombench.cli", "run", "--host", server.url, "--token", REF_TOKEN,
                          "--users", "4", "--spawn-rate", "50", "--duration", "60", "--room-size", "2",
                          "--rate", "5", "--ack-timeout", ack_timeout, "--drain", "1", "--out", str(out), "--quiet",
                          "--slo", slo, "--abort-on-fail", "--junit", str(tmp_path / "j.xml")],
                         capture_output=True, text=True, timeout=80, check=False)
    took = time.monotonic() - t0
    assert res.returncode == 1, res.stdout + res.stderr
    assert took < 30, took
    assert f"aborting: {slo} can no longer hold" in res.stderr
    s = orjson.loads((out / "summary.json").read_bytes())
    assert s["metadata"]["aborted"]["slo"] == slo
    assert [(v["slo"], v["ok"]) for v in s["slo"]] == [(slo, False)]
    assert s["latency_ms"]["ack"]["count"] > 0  # what was measured is kept
    assert (out / "ack.hlog").exists()
    assert b"abort-on-fail" in (tmp_path / "j.xml").read_bytes()


def test_abort_on_fail_without_an_slo_is_a_usage_error(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "roombench.cli", "run", "--abort-on-fail", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--abort-on-fail needs an --slo" in res.stderr and len(res.stderr.strip().splitlines()) == 1
