"""One WebSocket connection's state (:class:`Conn`) and the process's shared receive buffer.

A reconnect makes a new :class:`Conn`; :class:`~roombench.transport.framed.FramedTransport`
owns it and reads it through the process's poller.
"""

from __future__ import annotations

import os
import socket as _socket
import struct
import time
from typing import TYPE_CHECKING, Any

from gevent import socket as gsocket
from gevent.event import Event
from gevent.lock import Semaphore

from roombench.transport import poller
from roombench.transport.poller import POLLER
from roombench.wire import frames as wsframes

if TYPE_CHECKING:
    from roombench.transport.framed import FramedTransport

_BUF_SIZE = 64 * 1024
_SHARED = bytearray(_BUF_SIZE)
_SHARED_VIEW = memoryview(_SHARED)
_LINGER_0 = struct.pack("ii", 1, 0)
_now = time.monotonic
#: "greenlet": a reader greenlet per connection, as before the poller (for comparisons)
_USE_POLLER = poller.available() and os.environ.get("ROOMBENCH_READER", "poller") != "greenlet"


def _raw(sock: Any) -> Any:
    """The standard-library socket inside a plain gevent socket, else None.

    gevent's recv_into tries the syscall first and waits on EAGAIN: after a batch is
    handled the buffer is nearly always drained, so that costs a failed syscall and a
    raised exception per wake-up. Waiting first skips both (measured: ~10 us per ack on
    the 2-core test VM), and the raw calls skip gevent's wrappers. These are gevent
    internals, so anything unexpected (an SSL socket, another gevent) falls back to the
    public methods. (The raw socket, not its bound methods: two of those cost every idle
    connection 0.13 KB; looking them up per call costs ~40 ns.)
    """
    raw = getattr(sock, "_sock", None)
    if type(sock) is not gsocket.socket or raw is None or not hasattr(sock, "_wait") or not hasattr(
            sock, "_read_event"):
        return None
    return raw


class Conn:
    """One WebSocket connection's state; a reconnect makes a new one."""

    __slots__ = ("sock", "fd", "raw", "owner", "own_buf", "writer", "parser",
                 "pending", "busy", "waiting", "idle", "wlock", "sid", "ping_deadline", "ping_window",
                 "abort_reason", "refused", "watched", "lost", "ended")

    def __init__(self, sock: Any, owner: FramedTransport) -> None:
        self.sock = sock
        self.fd: int = sock.fileno()
        self.raw = _raw(sock)
        self.owner = owner
        # a TLS socket's recv_into waits with the buffer in hand: it cannot share one
        self.own_buf = bytearray(_BUF_SIZE) if self.raw is None else None
        self.writer = wsframes.shared_writer()
        self.parser = wsframes.FrameParser()
        #: the incomplete frame the last read ended with (copied out of the shared buffer)
        self.pending = b""
        # a send that blocks mid-frame must not let another greenlet interleave its frame;
        # the event and lock exist only once that happened (memory per idle connection)
        self.busy = False
        self.waiting = 0
        self.idle: Event | None = None
        self.wlock: Semaphore | None = None
        #: set once the session is up (Socket.IO CONNECT, plain "connected")
        self.sid: str | None = None
        self.ping_deadline = float("inf")
        self.ping_window = float("inf")
        self.abort_reason: str | None = None
        self.refused: str | None = None
        #: read by the POLLER (else by a greenlet); lost: its loss was handled; ended: close() waits on it
        self.watched = False
        self.lost = False
        self.ended: Event | None = None

    def __call__(self) -> None:
        """The poller's callback: the connection itself (a bound method would cost every
        idle connection 64 bytes): one read, every complete frame handled."""
        if self.lost:
            return
        owner = self.owner
        reason = owner._consume(self)
        if reason is not None:
            owner._on_loss(self, reason)

    def unwatch(self) -> None:
        """Leave the poller, before the socket closes: its descriptor number may be reused at once."""
        if self.watched:
            self.watched = False
            POLLER.discard(self.fd)

    def abort(self, reason: str) -> None:
        """Reset the TCP connection (RST, no close frame)."""
        if self.abort_reason is None:
            self.abort_reason = reason
        self.unwatch()
        try:
            self.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, _LINGER_0)
        except OSError:
            pass
        self.sock.close()
