"""Issue 10 point 5: a hostile backfill (huge, over the limit, stalling) cannot grow the
generator nor stretch the run; each is a counted error. Real reference servers with faults."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import gevent
import psutil  # a dependency of Locust
import pytest

from roombench.chat.backfill import RETRY_DELAYS, BackfillClient
from roombench.chat.scenario import Scenario
from roombench.exceptions import BackfillError, BackfillOversize
from roombench.generator import RECONCILE_S, Generator, run_report
from roombench.measure.report import ProcessReport
from roombench.wire.profile import DEFAULT_PROFILE

from tests.helpers import REF_TOKEN, Peer

pytestmark = pytest.mark.timeout(60)

# every 2nd live delivery dropped: the end-of-run reconciliation must fetch; forced drops:
# the rejoin backfills too
HOSTILE = Scenario(token=REF_TOKEN, rate=10.0, room_size=2, typing_every=0, read_every=0, drop_every=0.7,
                   reconnect_delay=0.1, reconnect_delay_max=0.3, drain=1.0, ack_timeout=2.0)
DURATION = 1.5
#: what "on time" allows beyond duration + drain + the reconciliation's budget (a loaded machine)
SLACK_S = 2.5
RSS_LIMIT = 300 * 1024 * 1024


def _timed_run(url: str) -> tuple[ProcessReport, float, int]:
    """(report, seconds the run took, peak RSS of this process sampled every 20 ms)."""
    me, peak = psutil.Process(), [0]
    gen = Generator(url, HOSTILE)

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], me.memory_info().rss)
            gevent.sleep(0.02)

    sampler = gevent.spawn(sample)
    t0 = time.monotonic()
    try:
        report = run_report(gen, 2, DURATION)
    finally:
        sampler.kill()
    return report, time.monotonic() - t0, peak[0]


def _on_time(elapsed: float) -> bool:
    return elapsed < DURATION + HOSTILE.drain + RECONCILE_S + SLACK_S


def test_a_100_mb_backfill_is_refused_at_max_bytes(server_factory: Any) -> None:
    # ~100 MB for limit=500: read to the 8 MiB cap, no further
    server = server_factory(token=REF_TOKEN, faults={"drop_live_every": 2, "backfill_huge_items": 1_000_000})
    report, elapsed, peak = _timed_run(server.url)
    assert report.errors["backfill_oversize"] >= 1
    assert peak < RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MB"
    assert _on_time(elapsed), elapsed
    assert report.ledger.lost == report.ledger.live_missed - report.ledger.recovered > 0  # true: never recovered


def test_max_bytes_is_read_from_the_profile(server_factory: Any, room: str) -> None:
    server = server_factory(token=REF_TOKEN, faults={"backfill_huge_items": 200})  # ~21 KB
    small = BackfillClient(server.url, replace(DEFAULT_PROFILE, backfill_max_bytes=16_384), REF_TOKEN)
    big = BackfillClient(server.url, DEFAULT_PROFILE, REF_TOKEN)
    with pytest.raises(BackfillOversize, match="max_bytes = 16384"):
        small.page(room, 0)
    assert len(big.page(room, 0)) == 200  # page() shows what the server sent (check judges it)


def test_items_beyond_the_limit_are_a_counted_error_and_not_merged(server_factory: Any) -> None:
    # the page plus 600 made-up items for limit=500: without the cap, paging would go on
    # after the made-up ids and the real messages of later pages would never be asked for
    server = server_factory(token=REF_TOKEN, faults={"drop_live_every": 2, "backfill_huge_items": 600})
    report, elapsed, _ = _timed_run(server.url)
    c = report.ledger
    assert report.errors["backfill_oversize"] >= 1
    assert c.lost == 0 and c.recovered > 0  # the real messages came first and were merged
    assert _on_time(elapsed), elapsed


def test_the_cap_keeps_only_limit_items(server_factory: Any, room: str) -> None:
    server = server_factory(token=REF_TOKEN, faults={"backfill_huge_items": 30})
    peer = Peer(server.url)
    try:
        peer.call("join", {"room": room})
        for i in range(5):
            peer.call("send_message", {"channel_id": room, "content": "x", "temp_id": f"t{i}"})
    finally:
        peer.client.disconnect()
    errors: list[str] = []
    rest = BackfillClient(server.url, replace(DEFAULT_PROFILE, backfill_limit=10), REF_TOKEN,
                          on_error=lambda kind, detail: errors.append(kind))
    items = rest.after(room, 0, time.monotonic() + 5)
    assert [m["temp_id"] for m in items[:5]] == [f"t{i}" for i in range(5)]
    assert len(items) == 10 and errors == ["backfill_oversize"]  # one page, cut at the limit, no more pages


def test_a_stalling_backfill_cannot_stretch_the_run(server_factory: Any) -> None:
    server = server_factory(token=REF_TOKEN, faults={"drop_live_every": 2, "backfill_stall_s": 20.0})
    report, elapsed, _ = _timed_run(server.url)
    assert _on_time(elapsed), elapsed  # on main: the 10 s request timeout after the drain
    assert report.errors["backfill_error"] >= 1
    assert report.ledger.lost == report.ledger.live_missed > 0  # not recovered, and said so


def _room_with_messages(url: str, room: str, n: int) -> None:
    peer = Peer(url)
    try:
        peer.call("join", {"room": room})
        for i in range(n):
            peer.call("send_message", {"channel_id": room, "content": "x", "temp_id": f"t{i}"})
    finally:
        peer.client.disconnect()


def test_a_page_refused_for_now_is_asked_again(server_factory: Any, room: str) -> None:
    # a server still starting answers 503 twice: the third ask gets the page, each retry counted
    server = server_factory(token=REF_TOKEN, faults={"backfill_fail_first": 2})
    _room_with_messages(server.url, room, 3)
    errors: list[str] = []
    rest = BackfillClient(server.url, DEFAULT_PROFILE, REF_TOKEN, on_error=lambda kind, detail: errors.append(kind))
    items = rest.after(room, 0, time.monotonic() + 5)
    assert [m["temp_id"] for m in items] == ["t0", "t1", "t2"]
    assert errors == ["backfill_retry", "backfill_retry"]


def test_retries_end_and_the_error_stands(server_factory: Any, room: str) -> None:
    server = server_factory(token=REF_TOKEN, faults={"backfill_fail_first": 100})
    errors: list[str] = []
    rest = BackfillClient(server.url, DEFAULT_PROFILE, REF_TOKEN, on_error=lambda kind, detail: errors.append(kind))
    t0 = time.monotonic()
    with pytest.raises(BackfillError) as info:
        rest.after(room, 0, time.monotonic() + 5)
    assert info.value.status == 503 and info.value.transient
    assert errors == ["backfill_retry"] * len(RETRY_DELAYS)
    assert time.monotonic() - t0 < sum(RETRY_DELAYS) + 2.5  # bounded: no retry loop until the deadline


def test_a_refused_connection_is_transient_and_a_500_is_not(server_factory: Any, room: str) -> None:
    from roombench.servers.process import free_port

    rest = BackfillClient(f"http://127.0.0.1:{free_port()}", DEFAULT_PROFILE, REF_TOKEN)
    with pytest.raises(BackfillError) as refused:
        rest.page(room, 0)
    assert refused.value.transient and refused.value.status is None
    broken = server_factory(token=REF_TOKEN, faults={"backfill_status": 500})
    errors: list[str] = []
    rest = BackfillClient(broken.url, DEFAULT_PROFILE, REF_TOKEN, on_error=lambda kind, detail: errors.append(kind))
    with pytest.raises(BackfillError) as failed:
        rest.after(room, 0, time.monotonic() + 5)
    assert failed.value.status == 500 and not failed.value.transient and errors == []  # a bug is not retried


def test_a_send_whose_ack_died_unsettled_is_settled_by_the_reconciliation(server_factory: Any, proxy: Any) -> None:
    # Every live fan-out to the other member is dropped (it waits for a fetch). The proxy
    # stalls both ways, then resets: sends in the stall never reached the server, acks of
    # the ones just before it never came back. Both users' rejoin backfills fail
    # (1 + retries 503s each), so only the end-of-run reconciliation can tell which sends
    # the server has (acked, their copies recovered) and which it never got (voided, not
    # lost). Before: those stayed "ack failed" and their copies counted as lost.
    attempts = 1 + len(RETRY_DELAYS)
    server = server_factory(token=REF_TOKEN, faults={"drop_live_every": 1, "backfill_fail_first": 2 * attempts})
    url, _ = proxy(server.url, "stall@1.5s:2s,reset-all@2.5s")
    scenario = Scenario(token=REF_TOKEN, rate=10.0, room_size=2, typing_every=0, read_every=0,
                        reconnect_delay=0.1, reconnect_delay_max=0.3, drain=2.0, ack_timeout=5.0)
    gen = Generator(url, scenario)
    report = run_report(gen, 2, 4.0)
    c = report.ledger
    assert report.errors["disconnected"] == 2 and report.errors["backfill_error"] == 2  # both rejoin fetches failed
    assert report.errors["backfill_retry"] == 2 * len(RETRY_DELAYS)
    assert c.voided > 0  # sent into the stall: never reached the server
    assert (c.lost, c.ack_errors) == (0, 0)
    assert c.acked + c.voided == c.sent and c.recovered == c.expected > 0
