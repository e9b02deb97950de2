"""The process-wide poller of established connections (socket pairs, no server)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import gevent
import pytest
from gevent.monkey import get_original

from roombench.transport import poller as poller_module
from roombench.transport.poller import Poller, available

_busy_wait = get_original("time", "sleep")  # the tests run monkey-patched: this one never yields

pytestmark = [pytest.mark.timeout(10), pytest.mark.skipif(not available(), reason="needs epoll (Linux)")]


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for a, b in made:
        a.close()
        b.close()


def _pair(pairs: list[tuple[socket.socket, socket.socket]]) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    pairs.append((a, b))
    return a, b


def test_calls_each_readable_socket_until_drained(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    poller = Poller()
    got: dict[int, bytes] = {0: b"", 1: b""}
    socks = [_pair(pairs) for _ in range(2)]

    def reader(i: int) -> None:
        got[i] += socks[i][0].recv(3)  # less than is there: level-triggered, so called again

    for i, (a, _) in enumerate(socks):
        poller.add(a.fileno(), lambda i=i: reader(i))
    socks[0][1].sendall(b"hello")
    socks[1][1].sendall(b"world!")
    deadline = gevent.Timeout(2)
    with deadline:
        while got != {0: b"hello", 1: b"world!"}:
            gevent.sleep(0.01)
    for a, _ in socks:
        poller.discard(a.fileno())
    gevent.sleep(0.05)
    assert len(poller) == 0 and poller.greenlet is None  # the last one out ends the greenlet


def test_a_raising_callback_does_not_stop_the_others(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    poller = Poller()
    (bad, bad_peer), (good, good_peer) = _pair(pairs), _pair(pairs)
    seen: list[bytes] = []

    def boom() -> None:
        bad.recv(100)
        raise RuntimeError("a handler's bug")

    poller.add(bad.fileno(), boom)
    poller.add(good.fileno(), lambda: seen.append(good.recv(100)))
    bad_peer.sendall(b"x")
    good_peer.sendall(b"y")
    with gevent.Timeout(2):
        while not seen:
            gevent.sleep(0.01)
    assert seen == [b"y"]
    poller.discard(bad.fileno())
    poller.discard(good.fileno())


def test_discard_after_close_and_reuse_of_the_number(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    poller = Poller()
    a, _ = _pair(pairs)
    fd = a.fileno()
    poller.add(fd, lambda: None)
    a.close()
    poller.discard(fd)  # harmless: the kernel already dropped it from the set
    c, c_peer = _pair(pairs)
    seen: list[bytes] = []
    poller.add(c.fileno(), lambda: seen.append(c.recv(10)))  # may well reuse the number
    c_peer.sendall(b"z")
    with gevent.Timeout(2):
        while not seen:
            gevent.sleep(0.01)
    poller.discard(c.fileno())
    assert seen == [b"z"]


class _Due:
    """A Timers source: items due at given perf_counter times, run times recorded."""

    def __init__(self) -> None:
        self.due: list[float] = []
        self.ran: list[tuple[float, float, object]] = []  # (due, ran at, greenlet)

    def next_due(self) -> float:
        return min(self.due, default=float("inf"))

    def run_due(self) -> None:
        t = time.perf_counter()
        for d in sorted(x for x in self.due if x <= t):
            self.due.remove(d)
            self.ran.append((d, t, gevent.getcurrent()))


def test_timers_run_on_time_in_the_poller_greenlet_with_no_reads(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    poller = Poller()
    a, _ = _pair(pairs)
    poller.add(a.fileno(), lambda: None)  # registered, never readable: only the timer wakes it
    timers = poller.timers = _Due()
    t0 = time.perf_counter()
    timers.due = [t0 + 0.05, t0 + 0.1]
    poller.kick()
    gevent.sleep(0.3)
    assert [d for d, _, _ in timers.ran] == [t0 + 0.05, t0 + 0.1]
    assert all(0 <= ran - d < 0.05 and g is poller.greenlet for d, ran, g in timers.ran), timers.ran
    poller.discard(a.fileno())


def test_kick_wakes_a_poller_parked_for_a_later_timer(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    poller = Poller()
    a, _ = _pair(pairs)
    poller.add(a.fileno(), lambda: None)
    timers = poller.timers = _Due()
    t0 = time.perf_counter()
    timers.due = [t0 + 30.0]
    poller.kick()
    gevent.sleep(0.02)  # parked until t0 + 30
    timers.due.append(time.perf_counter() + 0.02)
    poller.kick()
    gevent.sleep(0.2)
    assert len(timers.ran) == 1 and timers.ran[0][1] - timers.ran[0][0] < 0.05, timers.ran
    poller.discard(a.fileno())


def test_kick_wakes_a_poller_parked_with_no_timers_at_all(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    poller = Poller()
    a, _ = _pair(pairs)
    poller.add(a.fileno(), lambda: None)
    gevent.sleep(0.02)  # parked on reads only: no timer source yet
    timers = poller.timers = _Due()  # a new run's clock arrives with work due now
    timers.due = [time.perf_counter()]
    poller.kick()
    gevent.sleep(0.1)
    assert len(timers.ran) == 1
    poller.discard(a.fileno())


def test_a_saturated_poller_lets_the_hubs_timers_run_within_its_share(
        pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    # a connection that is always readable (never drained) keeps poll(0) busy, as a closed
    # loop at saturation does: without sharing, the poller never parks and nobody else runs.
    # Its turns must turn the hub's loop: a sleep(0) there only ran the callbacks queued and
    # came back, and the timers waited for gevent's clock check every 50 callbacks (0.25 s)
    poller = Poller()
    a, b = _pair(pairs)
    b.sendall(b"x")
    started = time.perf_counter()

    def busy() -> None:
        _busy_wait(0.0002)  # work, no yield
        if time.perf_counter() - started > 3.0:
            poller.discard(a.fileno())  # bounded: ends the poller's loop either way

    poller.add(a.fileno(), busy)
    late: list[float] = []
    for _ in range(20):
        t = time.perf_counter()
        gevent.sleep(0.01)
        late.append(time.perf_counter() - t - 0.01)
    poller.discard(a.fileno())
    assert max(late) < poller_module.SHARE_S + 0.03, [round(x, 4) for x in late]


def test_a_greenlet_spinning_on_sleep_0_does_not_hold_a_saturated_pollers_reads(
        pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    # the poller's turn waits for an idle loop, which such a greenlet never lets happen:
    # the turn is bounded, so reads go on (about half the time, SHARE_S each)
    poller = Poller()
    a, b = _pair(pairs)
    b.sendall(b"x")
    calls = [0]

    def busy() -> None:
        calls[0] += 1
        _busy_wait(0.0002)

    poller.add(a.fileno(), busy)
    gevent.sleep(0.02)

    def spin() -> None:
        t = time.perf_counter()
        while time.perf_counter() - t < 0.5:
            gevent.sleep(0)

    spinner = gevent.spawn(spin)
    gevent.sleep(0)
    before = calls[0]
    spinner.join(3)
    poller.discard(a.fileno())
    assert calls[0] - before > 100, calls[0] - before  # ~1,200 here; 0 with an unbounded idle()


@pytest.mark.parametrize("after_park", [False, True])
def test_a_poller_waiting_between_reads_wakes_for_the_hubs_own_io(
        pairs: list[tuple[socket.socket, socket.socket]], monkeypatch: pytest.MonkeyPatch, after_park: bool) -> None:
    # Between reads the poller waits in its own epoll set, not in the hub (no hub round trip
    # per wake-up), for up to HUB_TURN_S. The hub's descriptor is in that set, so another
    # greenlet's socket is served when it is readable, not at the end of the wait. After an
    # idle park the hub held the poller's set (the kernel refuses the cycle back), and the
    # next reads must put the hub's descriptor in again.
    import os

    monkeypatch.setattr(poller_module, "HUB_TURN_S", 0.5)  # long: a late wake-up cannot pass
    poller = Poller()
    a, b = _pair(pairs)
    c, d = _pair(pairs)
    c.setblocking(True)  # another greenlet's socket: waits in the hub
    poller.add(a.fileno(), lambda: a.recv(64))
    if after_park:
        gevent.sleep(0.7)  # a whole turn without a read: parked in the hub
    b.sendall(b"x")  # a read: the poller waits in its own set from now on
    woke: list[float] = []
    wrote: list[float] = []

    def other() -> None:
        c.recv(1)
        woke.append(time.perf_counter())

    def writer() -> None:  # a thread: the hub cannot run this test's timers during the wait
        _busy_wait(0.1)
        wrote.append(time.perf_counter())
        os.write(d.fileno(), b"y")

    receiver = gevent.spawn(other)
    get_original("_thread", "start_new_thread")(writer, ())
    receiver.join(3)
    poller.discard(a.fileno())
    assert woke and wrote and woke[0] - wrote[0] < 0.1, (woke, wrote)


def test_a_zero_timeout_wait_runs_within_the_hubs_turn(
        pairs: list[tuple[socket.socket, socket.socket]], monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib3 checks a kept-alive connection with poll(0): a gevent.Timeout(0), whose timer
    # has priority -1. A turn that ended on a default-priority idle watcher ended before
    # that timer ran, and it waited for the next turn, up to HUB_TURN_S.
    from gevent.event import Event

    monkeypatch.setattr(poller_module, "HUB_TURN_S", 0.3)
    poller = Poller()
    a, b = _pair(pairs)
    poller.add(a.fileno(), lambda: a.recv(64))
    b.sendall(b"x")
    took: list[float] = []

    def zero_waits() -> None:
        t = time.perf_counter()
        for _ in range(3):
            Event().wait(timeout=0)
        took.append(time.perf_counter() - t)

    gevent.spawn(zero_waits).join(3)
    poller.discard(a.fileno())
    assert took and took[0] < 0.1, took
