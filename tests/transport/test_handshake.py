"""handshake: the TCP connect shortcut and its fallback, on real loopback sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from gevent import socket as gsocket

from roombench.exceptions import ConnectFailed
from roombench.transport.handshake import LOOPBACK_SOURCES, Endpoint, _connect, _tcp


def _endpoint(port: int) -> Endpoint:
    return Endpoint(f"ws://127.0.0.1:{port}/", "127.0.0.1", port, False, "", {}, None)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    srv = gsocket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    yield srv
    srv.close()


def test_connect_on_loopback_is_connected_at_once(listener: socket.socket) -> None:
    sock = gsocket.socket()
    sock.settimeout(5)
    _connect(sock, listener.getsockname())
    peer, _ = listener.accept()
    sock.sendall(b"ping")
    assert peer.recv(4) == b"ping"
    sock.close()
    peer.close()


def test_connect_still_in_progress_waits_and_times_out() -> None:
    # A listener whose accept queue is full drops new SYNs: the connect stays in progress,
    # so the shortcut must fall back to waiting, bounded by the socket's timeout.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    held = []
    try:
        for _ in range(3):  # fill the queue (its length is backlog + 1 on Linux)
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(srv.getsockname())
            held.append(c)
        time.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(ConnectFailed, match="timed out"):
            _tcp(_endpoint(srv.getsockname()[1]), timeout=0.5)
        assert 0.4 < time.monotonic() - started < 3.0
    finally:
        for c in held:
            c.close()
        srv.close()


def test_refused_connect_names_the_port() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    srv.close()  # nobody listens there now
    with pytest.raises(ConnectFailed, match=f"connection refused by 127.0.0.1:{port}"):
        _tcp(_endpoint(port), timeout=2)


def _sources(listener: socket.socket, n: int) -> list[str]:
    """The source address of each of ``n`` connects through ``_tcp`` to ``listener``."""
    port, out = listener.getsockname()[1], []
    for _ in range(n):
        sock = _tcp(_endpoint(port), timeout=5)
        peer, (addr, _) = listener.accept()
        assert sock.getsockname()[0] == addr
        out.append(addr)
        peer.close()
        sock.close()
    return out


def test_loopback_connects_rotate_over_source_addresses(listener: socket.socket,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # past ~14,000 connections from one address to one port, Linux searches its whole port
    # range on every connect (1-2 ms of CPU each): several loopback sources keep it cheap
    monkeypatch.delenv("ROOMBENCH_LOOPBACK_SOURCES", raising=False)
    got = _sources(listener, 2 * LOOPBACK_SOURCES)
    assert set(got) == {f"127.0.0.{i}" for i in range(1, LOOPBACK_SOURCES + 1)}
    assert got[:LOOPBACK_SOURCES] == got[LOOPBACK_SOURCES:]  # in turn, each as often


def test_one_loopback_source_when_the_env_says_so(listener: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOMBENCH_LOOPBACK_SOURCES", "1")
    assert set(_sources(listener, 4)) == {"127.0.0.1"}
    monkeypatch.setenv("ROOMBENCH_LOOPBACK_SOURCES", "3")
    assert len(set(_sources(listener, 6))) == 3


def test_a_bad_loopback_sources_setting_is_one_clear_line(listener: socket.socket,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROOMBENCH_LOOPBACK_SOURCES", "lots")
    with pytest.raises(ConnectFailed, match="ROOMBENCH_LOOPBACK_SOURCES must be a whole number from 1 to 254"):
        _tcp(_endpoint(listener.getsockname()[1]), timeout=2)
