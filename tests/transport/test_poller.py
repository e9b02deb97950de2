"""The process-wide poller of established connections (socket pairs, no server)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import gevent
import pytest

from roombench.transport.poller import Poller, available

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
