"""handshake: the TCP connect shortcut and its fallback, on real loopback sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from gevent import socket as gsocket

from roombench.exceptions import ConnectFailed
from roombench.transport.handshake import Endpoint, _connect, _tcp


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
