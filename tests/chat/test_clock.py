"""The process's one send loop: every session's schedule in one greenlet."""

from __future__ import annotations

import time
from collections import Counter

import gevent

from roombench.chat.clock import BATCH, SendClock
from roombench.generator import Generator, run_report
from roombench.chat.scenario import Scenario
from roombench.servers import ServerProcess
from tests.conftest import REF_TOKEN


class _Behind:
    """A session behind its schedule: each turn catches up ``gap`` seconds of it."""

    def __init__(self, log: list[str], name: str, turns: int, due: float = 0.0, gap: float = 1.0) -> None:
        self.log, self.name, self.turns, self.due, self.gap = log, name, turns, due, gap

    def step(self) -> float | None:
        self.log.append(self.name)
        self.turns -= 1
        self.due += self.gap
        return None if self.turns == 0 else self.due


def test_a_backlogged_session_takes_turns_with_the_others() -> None:
    log: list[str] = []
    clock = SendClock(lambda: False, lambda kind, detail: None)
    t = time.perf_counter()
    clock.add(_Behind(log, "late", 50, t - 50.0), t - 50.0)  # 50 s behind: 50 turns to catch up
    clock.add(_Behind(log, "a", 3, t - 45.0), t - 45.0)
    clock.add(_Behind(log, "b", 3, t - 45.0), t - 45.0)
    gevent.sleep(0.05)
    # the most-behind goes first, but not for all its 50 turns: once its next due time
    # passes the others', they get theirs (earliest intended time first)
    assert log.count("late") == 50 and log.index("a") <= 6 and log.index("b") <= 7, log[:12]
    assert len(clock) == 0


def test_a_failing_session_is_counted_and_the_rest_go_on() -> None:
    errors: Counter[str] = Counter()
    log: list[str] = []

    class Broken:
        def step(self) -> float | None:
            raise KeyError("boom")

    clock = SendClock(lambda: False, lambda kind, detail: errors.update([kind]))
    t = time.perf_counter()
    clock.add(Broken(), t)
    clock.add(_Behind(log, "ok", 3), t)
    gevent.sleep(0.05)
    assert errors == Counter({"send_loop_error": 1}) and log == ["ok"] * 3


def test_an_earlier_session_wakes_a_sleeping_clock() -> None:
    log: list[str] = []
    clock = SendClock(lambda: False, lambda kind, detail: None)
    clock.add(_Behind(log, "far", 1), time.perf_counter() + 30.0)  # the clock sleeps ~30 s
    gevent.sleep(0.01)
    clock.add(_Behind(log, "soon", 1), time.perf_counter())
    gevent.sleep(0.05)
    assert log == ["soon"]


def test_sessions_send_from_the_clock_not_their_own_greenlets(ref_server: ServerProcess) -> None:
    sc = Scenario(token=REF_TOKEN, rate=20.0, room_size=5, typing_every=0, read_every=0, drain=1.0)
    gen = Generator(ref_server.url, sc)
    assert gen.clock is not None
    report = run_report(gen, users=10, duration=1.5)
    # 10 users x 20/s x 1.5 s sent, every one of them acked, though each user's own
    # greenlet returned as soon as its schedule was handed to the clock
    assert 240 <= report.ledger.sent <= 360, report.ledger
    assert report.ledger.acked == report.ledger.sent and report.ledger.lost == 0
    assert BATCH >= 1


def test_a_new_runs_first_session_sends_though_the_poller_is_parked(ref_server: ServerProcess) -> None:
    # a run whose users connect, then stay silent: the poller parks on reads alone; the
    # next run's clock must wake it for its first sends, not wait for a read (a ping: 25 s)
    sc = Scenario(token=REF_TOKEN, rate=20.0, room_size=2, typing_every=0, read_every=0, drain=1.0)
    first = Generator(ref_server.url, sc)
    run_report(first, users=2, duration=0.5)
    idle = Generator(ref_server.url, sc)
    held = idle.new_session()
    held.start()  # connected and joined: the poller has a connection and nothing to read
    gevent.sleep(0.2)
    second = Generator(ref_server.url, sc)
    report = run_report(second, users=2, duration=1.0)
    held.close()
    assert report.ledger.sent >= 20, report.ledger
