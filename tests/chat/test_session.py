"""ChatSession's closed loop (--window) against the reference server on loopback."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import gevent
import pytest

from roombench.generator import Generator, run_for
from roombench.chat.scenario import Scenario

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
            most = max([most, *(len(s.unconfirmed) for s in list(gen.sessions.values()))])
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
    assert most <= CLOSED.window
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


def test_window_must_not_be_negative() -> None:
    from roombench.exceptions import UsageError

    with pytest.raises(UsageError, match="--window"):
        replace(CLOSED, window=-1).validate()
