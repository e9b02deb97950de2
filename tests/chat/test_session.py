"""ChatSession's closed loop (--window) against the reference server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import gevent
import pytest
from gevent import socket as gsocket

from roombench.generator import Generator, run_for
from roombench.chat.scenario import Scenario
from roombench.exceptions import UsageError

from tests.helpers import REF_TOKEN

pytestmark = pytest.mark.timeout(60)

# rate=0.01: were the closed loop not in charge, hardly anything would be sent
CLOSED = Scenario(token=REF_TOKEN, rate=0.01, window=2, room_size=2, typing_every=0, read_every=0,
                  reconnect_delay=0.1, reconnect_delay_max=0.5, drain=3.0, ack_timeout=3.0)


def _run_watching_window(host: str, scenario: Scenario, users: int, duration: float) -> tuple[dict[str, Any], int]:
    """run_for, plus the most unconfirmed messages any session held at once (sampled)."""
    gen = Generator(host, scenario)
    most = 0

    def watch() -> None:
        nonlocal most
        while not gen.finished:
            most = max([most, *(s.in_flight for s in list(gen.sessions.values()))])
            gevent.sleep(0.001)

    watcher = gevent.spawn(watch)
    report = run_for(gen, users, duration)
    watcher.kill()
    return report, most


@pytest.mark.parametrize("ack", ["callback", "echo"])
def test_closed_loop_keeps_the_window_full_and_no_fuller(ref_server: Any, ack: str) -> None:
    report, most = _run_watching_window(ref_server.url, replace(CLOSED, ack=ack), users=4, duration=1.5)
    c = report["ledger"]
    assert c["sent"] > 200  # the open loop would have sent ~0
    assert c["acked"] == c["sent"]
    assert c["delivered_live"] == c["expected"] == c["sent"]  # rooms of 2: one other member
    assert most == CLOSED.window  # full: a refill sends until the window is, not one message
    assert report["errors"] == {}


def test_closed_loop_refills_after_drops(ref_server: Any) -> None:
    scenario = replace(CLOSED, drop_every=0.5, window=1)
    report, most = _run_watching_window(ref_server.url, scenario, users=2, duration=3.0)
    c = report["ledger"]
    assert report["counters"]["forced_drops"] >= 3
    assert most <= 1
    assert c["lost"] == 0
    # every user went on sending after its reconnects: far more than one window per drop
    assert c["sent"] > 20 * report["counters"]["forced_drops"]


def test_a_send_whose_own_copy_came_counts_acked_when_its_ack_dies_with_the_connection(
        server_factory: Any) -> None:
    # the ack is held back 2 s, the echo is not: drop in between. The server had the message
    # (its echo said so), so the failed ack counts acked at once, not left to a backfill
    server = server_factory(token=REF_TOKEN, faults={"ack_delay_ms": 2000})
    gen = Generator(server.url, replace(CLOSED, window=1, room_size=1, reconnect_delay=30.0,
                                        reconnect_delay_max=30.0))
    session = gen.new_session()
    try:
        session.run()
        assert session.in_flight == 1
        (temp_id,) = gen.ledger._records
        with gevent.Timeout(5):
            while not gen.ledger.server_has(temp_id):  # its echo came
                gevent.sleep(0.01)
        session.transport.drop()
        with gevent.Timeout(5):
            while session.in_flight:  # the ack failed: "disconnected"
                gevent.sleep(0.01)
        counts = gen.ledger.counts()
        assert (counts.acked, counts.ack_errors, counts.voided) == (1, 0, 0)
        assert not session.disconnected_sends
    finally:
        gen.finish()


def test_window_must_not_be_negative() -> None:
    from roombench.exceptions import UsageError

    with pytest.raises(UsageError, match="--window"):
        replace(CLOSED, window=-1).validate()


def test_read_receipt_send_times_stay_bounded(ref_server: Any) -> None:
    # every message followed by a read receipt: ~2,000/s at 20k users once grew the
    # generator's table of receipt send times by one entry each, never removed
    scenario = replace(CLOSED, rate=25.0, window=0, room_size=4, read_every=1)
    gen = Generator(ref_server.url, scenario)
    sizes: list[int] = []

    def watch() -> None:
        while not gen.stopping:
            sizes.append(len(gen.read_sent))
            gevent.sleep(0.05)

    watcher = gevent.spawn(watch)
    report = run_for(gen, 4, 2.5)
    watcher.kill()
    from roombench.measure.metrics import Metrics

    copies = Metrics.decode(report["metrics"]).summary()["read_receipt"]["count"]
    assert copies > 3 * 150  # receipts went out and each reached the 3 other members
    # entries leave once every member has its copy: what is held is what is in flight
    assert max(sizes) < 30, sizes[-10:]
    assert report["errors"] == {}


def test_signals_older_than_the_horizon_are_evicted_and_counted() -> None:
    from collections import Counter

    from roombench.chat.signals import SentSignals

    counters: Counter[str] = Counter()
    sent = SentSignals(horizon=1.0, counters=counters, expired_key="expired", cap=5)
    sent.sent("a", 0.0, copies=2)
    assert sent.received("a") == 0.0 and len(sent) == 1  # one copy still awaited
    assert sent.received("a") == 0.0 and len(sent) == 0  # both came: gone
    sent.sent("b", 0.0, copies=1)  # never answered
    sent.sent("c", 0.5, copies=0)  # a room without other members: nothing to await
    sent.sent("d", 1.5, copies=1)  # "b" is now older than the horizon
    assert len(sent) == 1 and sent.received("b") is None and counters["expired"] == 1
    for i in range(10):  # the cap holds whatever the horizon
        sent.sent(i, 1.5, copies=1)
    assert len(sent) == 5 and counters["expired"] == 7


@pytest.mark.parametrize("ack", ["callback", "echo"])
def test_one_refill_fills_the_whole_window_across_the_users_rooms(ref_server: Any, ack: str) -> None:
    # a refill sends until the window is full, each message to the next of the user's rooms:
    # send() says whether a message went out, and the loop goes on while it did
    gen = Generator(ref_server.url, replace(CLOSED, ack=ack, window=3, room_size=1, rooms_per_user=2))
    session = gen.new_session()
    try:
        session.run()  # connects, joins, hands the schedule over: the first refill is done now
        assert session.in_flight == 3
        # a record starts with its room; [3] is its sender, [6] whether its ack is settled
        rooms = [rec[0] for rec in gen.ledger._records.values() if rec[3] == session.no and not rec[6]]
        assert sorted(rooms) == sorted([session.rooms[0], session.rooms[1], session.rooms[0]])
        assert session.send(session.rooms[0], 0.0, 3) is True
        session.transport.drop()
        assert session.send(session.rooms[0], 0.0, 4) is False  # not connected: nothing went out
    finally:
        gen.finish()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """The URL of a server that accepts TCP and never answers the WebSocket upgrade (a real
    socket on loopback)."""
    silent = gsocket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        yield f"http://127.0.0.1:{silent.getsockname()[1]}"
    finally:
        silent.close()


def test_connect_timeout_bounds_each_connect_attempt(silent_server: str) -> None:
    scenario = replace(CLOSED, connect_timeout=0.3, reconnect_delay=5.0, reconnect_delay_max=5.0, drain=0.0)
    report = run_for(Generator(silent_server, scenario), 1, 1.5)
    assert report["errors"].get("connect_failed", 0) >= 1  # with the default 10 s it would not fail in 1.5 s
    assert "timed out after 0.3 s" in report["error_samples"]["connect_failed"]


def test_connect_timeout_must_be_positive() -> None:
    with pytest.raises(UsageError, match="--connect-timeout must be > 0"):
        replace(CLOSED, connect_timeout=0).validate()


def test_a_connect_the_run_ended_is_cancelled_not_a_connect_failure(silent_server: str) -> None:
    gen = Generator(silent_server, replace(CLOSED, connect_timeout=0.5))
    session = gen.new_session()
    connecting = gevent.spawn(session.start)
    gevent.sleep(0.1)
    session.close()  # the user (or the run) ends while its connect waits
    assert connecting.get(timeout=5) is False
    assert "connect_failed" not in gen.errors
    assert gen.counters["connects_cancelled"] == 1
