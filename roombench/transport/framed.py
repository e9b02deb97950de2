"""One WebSocket with our own framing: what the lean and the plain transport share.

websocket-client does the opening handshake only. After it, the connection's socket joins
the process's :data:`~roombench.transport.poller.POLLER` (one greenlet and one epoll set for every
connection); when it is readable, one ``recv_into`` fills the process's shared receive
buffer, every complete frame is parsed out and each text message goes to the subclass
inline (no queue, no greenlet per message or per connection); sends go straight to the
socket. The subclass (:class:`~roombench.transport.socketio.LeanTransport` for Socket.IO,
:class:`~roombench.transport.plainws.PlainWsTransport` for the JSON envelope) knows its text
payloads, its connect step and its :meth:`~roombench.transport.base.Transport.emit`; this
module knows frames, ping/pong control frames, reconnect backoff, drop and close.

Sockets gevent does not hand us raw (TLS) keep a reader greenlet of their own, as does
every connection while it connects and when ``ROOMBENCH_READER=greenlet`` is set.
"""

from __future__ import annotations

import socket as _socket
from abc import abstractmethod
from typing import Any

import gevent
from gevent.event import Event
from gevent.lock import Semaphore

from roombench.wire import frames as wsframes
from roombench.transport.acks import SWEEPER, AckTable
from roombench.exceptions import ConnectFailed, ConnectTimeout, ProtocolError, Refused
from roombench.transport.conn import _BUF_SIZE, _SHARED, _SHARED_VIEW, _USE_POLLER, Conn, _now
from roombench.transport.handshake import Endpoint, connect_websocket
from roombench.transport.poller import POLLER
from roombench.transport.base import Transport

__all__ = ["FramedTransport", "Conn", "Refused"]  # Conn and Refused re-exported for callers


# One receive buffer for the whole process: a connection copies the incomplete frame at
# the end of a read out of it (rare: a frame cut by the TCP stream) before any handler
# runs, so no greenlet switch can ever find another connection's bytes in it. 64 KiB
# holds ~300 typical messages per recv; per-connection buffers would cost 64 KiB of
# resident memory for each of 20,000 idle connections.
class FramedTransport(Transport):
    """A :class:`~roombench.transport.base.Transport` over one WebSocket with our own framing.

    Subclasses implement ``emit``, :meth:`_make_endpoint` and :meth:`_on_text` (the hot
    path: one text message), call :meth:`_session_up` / :meth:`_refuse` from it, and may
    override :meth:`_goodbye`. The class attributes below name their protocol in messages.
    """

    #: what is connected once the session is up, for messages ("Socket.IO")
    SESSION = "the session"
    #: the connect step after the WebSocket handshake, for timeout messages
    CONNECT_STAGE = "the session connect"
    #: appended to a failed WebSocket handshake: which other transport may fit the server
    HANDSHAKE_HINT = ""
    #: True when WebSocket ping frames are the heartbeat (they push the ping deadline on)
    WS_HEARTBEAT = False

    __slots__ = ("_acks", "_endpoint", "_conn", "_live", "_runner", "_closing", "_ever_connected")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks = AckTable(self.ack_timeout, self._report)
        self._endpoint: Endpoint | None = None  # only while (re)connecting
        self._conn: Conn | None = None  # current connection, live or being established
        self._live: Conn | None = None  # the connection while the session is up (then connected is True)
        #: the greenlet that owns the connection: a TLS reader, or the one reconnecting after a loss
        self._runner: gevent.Greenlet | None = None
        self._closing = False
        self._ever_connected = False

    # ------------------------------------------------------------------ for subclasses

    @abstractmethod
    def _make_endpoint(self) -> Endpoint:
        """The endpoint of ``self.url`` for this protocol; raises ConnectFailed."""

    @abstractmethod
    def _on_text(self, conn: Conn, payload: wsframes.Payload) -> None:
        """One text message from the server (called inline by the reader); must not raise."""

    def _goodbye(self, conn: Conn) -> bytes:
        """The frames close() sends on a live connection: by default a close frame."""
        return conn.writer.close(1000)

    def _session_up(self, conn: Conn, sid: str) -> None:
        """The session on ``conn`` is established: emit() works, on_connect is called."""
        conn.sid = sid
        self._live, self.connected = conn, True
        again, self._ever_connected = self._ever_connected, True
        self.handlers.on_connect(again)

    def _refuse(self, conn: Conn, message: str) -> None:
        """The server refused the connect with ``message``: connect() raises Refused."""
        conn.refused = message
        self._abort(conn, f"server refused the connection: {message}")

    # ------------------------------------------------------------------ Transport

    def connect(self) -> None:
        """Connect (blocking cooperatively); raises ConnectFailed. See Transport.connect."""
        if self._conn is not None and not self._closing:
            raise ConnectFailed("connect() called on a transport that is already connected")
        self._endpoint = self._make_endpoint()
        self._closing = False
        SWEEPER.add(self, self._acks, self._check_ping)
        try:
            conn = self._establish()
        except BaseException:
            SWEEPER.discard(self)
            self._conn = None
            raise
        self._start_reading(conn)
        self._endpoint = None  # built again for a reconnect: ~0.5 KB less per idle connection

    def drop(self) -> None:
        """Reset the TCP connection without a close frame; the reconnect loop takes over."""
        conn = self._conn
        if conn is not None:
            self._abort(conn, "connection dropped by drop()")

    def close(self) -> None:
        """Say goodbye, stop reconnecting, fail pending acks, end greenlets."""
        if self._closing:
            return
        self._closing = True
        conn, live, runner = self._conn, self._live, self._runner
        polled = live is not None and live.watched
        self._live, self.connected = None, False
        self._runner = None
        if live is not None:
            self._say_goodbye(live)
            if polled and not live.lost and gevent.getcurrent() is not POLLER.greenlet:
                live.ended = Event()  # the poller sees the server's close and EOF
                live.ended.wait(1.0)
        self._acks.fail_all("disconnected")
        SWEEPER.discard(self)
        if runner is not None and runner is not gevent.getcurrent():
            # a TLS reader sees the server's close and EOF and ends; a stuck one is killed
            if live is not None and not polled:
                runner.join(timeout=1.0)
            if not runner.dead:
                runner.kill(block=True, timeout=1.0)
        if conn is not None:
            conn.unwatch()
            conn.sock.close()

    # ------------------------------------------------------------------ connecting

    def _establish(self) -> Conn:
        """TCP + WebSocket handshake + the session's connect step, within the timeout."""
        ep = self._endpoint
        assert ep is not None
        timeout = self.connect_timeout
        stage = "the TCP connect / WebSocket handshake"
        sock = None
        try:
            with gevent.Timeout(timeout) as deadline:
                try:
                    sock, early = connect_websocket(ep, timeout, self.HANDSHAKE_HINT)
                    stage = self.CONNECT_STAGE
                    conn = self._conn = Conn(sock, self)
                    conn.pending = early  # the server's first frames may come with its answer
                    reason = self._read(conn, until_connected=True)
                except gevent.Timeout as exc:
                    if exc is not deadline:
                        raise
                    raise ConnectTimeout(f"timed out after {timeout:g} s during {stage} to {self.url}",
                                         "handshake" if sock is None else "session") from None
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        if conn.refused is not None:
            raise Refused(conn.refused)
        if reason is not None:
            raise ConnectFailed(f"connection to {self.url} lost before {self.SESSION} connected: {reason}")
        return conn

    def _start_reading(self, conn: Conn) -> None:
        """Hand an established connection to the poller (or, for TLS, a greenlet of its own)."""
        if _USE_POLLER and conn.raw is not None:
            conn.watched = True
            POLLER.add(conn.fd, conn)
        else:
            self._runner = gevent.spawn(self._read_until_lost, conn)

    def _read_until_lost(self, conn: Conn) -> None:
        self._on_loss(conn, self._read(conn) or "connection lost")

    def _on_loss(self, conn: Conn, reason: str) -> None:
        """``conn`` is gone (once per connection): report it and reconnect, in a greenlet of
        its own, so the loss never runs inside another connection's callback."""
        if conn.lost:
            return
        conn.lost = True
        conn.unwatch()
        if self._live is conn:
            self._live, self.connected = None, False
        if conn.ended is not None:
            conn.ended.set()
        self._runner = gevent.spawn(self._after_loss, conn, reason)

    def _after_loss(self, conn: Conn, reason: str) -> None:
        """Report the loss, then reconnect with backoff until connected or closed."""
        self._lost(conn, reason)
        if self._closing or not self.reconnect.enabled:
            return
        attempt = 0
        while True:
            gevent.sleep(self.reconnect.backoff(attempt))
            attempt += 1
            if self._closing:
                return
            try:
                self._endpoint = self._make_endpoint()
                conn = self._establish()
            except Refused as exc:
                self._report("connect_error", exc.message)
                continue
            except ConnectFailed as exc:
                self._report("connect_error", f"reconnect failed: {exc}")
                continue
            if self._closing:  # close() ran while we connected: it could not see this one
                conn.sock.close()
                return
            self._start_reading(conn)
            self._endpoint = None
            return

    def _lost(self, conn: Conn, reason: str) -> None:
        was_live = conn.sid is not None
        self._live, self.connected = None, False
        conn.sock.close()
        self._acks.fail_all("disconnected")
        if was_live and not self._closing:
            try:
                self.handlers.on_disconnect(reason)
            except Exception as exc:  # noqa: BLE001 - never let a handler kill the reader
                self._report("handler_error", f"on_disconnect: {type(exc).__name__}: {exc}")

    def _say_goodbye(self, conn: Conn) -> None:
        """The goodbye frames, then half-close so the reader sees the server's close."""
        with gevent.Timeout(1.0, False):
            if self._send_frame(conn, self._goodbye(conn)):
                try:
                    conn.sock.shutdown(_socket.SHUT_WR)
                except OSError:
                    pass

    # ------------------------------------------------------------------ the hot path

    def _read(self, conn: Conn, until_connected: bool = False) -> str | None:
        """Wait, read and dispatch in this greenlet until the connection is lost (returns
        why); with ``until_connected`` also return None as soon as the session is up."""
        wait, readable = (conn.sock._wait, conn.sock._read_event) if conn.raw is not None else (None, None)
        if conn.pending:  # frames that came with the handshake's answer
            reason = self._consume(conn, read=False)
            if reason is not None or (until_connected and conn.sid is not None):
                return reason
        while True:
            if conn.abort_reason is not None:  # aborted before this greenlet first ran: its watcher is gone
                return conn.abort_reason
            if wait is not None:
                try:
                    wait(readable)
                except OSError as exc:  # closed by another greenlet (drop, abort)
                    return conn.abort_reason or f"socket error: {exc}"
            reason = self._consume(conn)
            if reason is not None:
                return reason
            if until_connected and conn.sid is not None:
                return None

    def _consume(self, conn: Conn, read: bool = True) -> str | None:
        """One ``recv_into`` (after the pending partial frame) into the shared buffer, parse,
        dispatch. None to go on (also when there was nothing to read), else why it is lost.
        ``read=False``: only what is pending."""
        pending = conn.pending
        p = len(pending)
        buf, view = (_SHARED, _SHARED_VIEW) if conn.own_buf is None else (conn.own_buf, memoryview(conn.own_buf))
        if p:
            if p > _BUF_SIZE // 2:  # a frame larger than half the buffer: a private one, twice its size
                buf = bytearray(2 * p)
                view = memoryview(buf)
            view[:p] = pending
        n = 0
        if read:
            try:
                raw = conn.raw
                n = raw.recv_into(view[p:]) if raw is not None else conn.sock.recv_into(view[p:])
            except BlockingIOError:  # nothing there after all (a spurious wake-up)
                return None
            except (OSError, ValueError) as exc:  # ValueError: a TLS socket closed under its reader
                return conn.abort_reason or f"socket error: {exc}"
            if not n:
                return conn.abort_reason or "connection closed by the server (EOF)"
        end = p + n
        try:
            frames, used = conn.parser.parse(buf, end)
        except ProtocolError as exc:
            self._report("protocol_error", str(exc))
            self._abort(conn, f"unreadable WebSocket frame: {exc}")
            return conn.abort_reason
        # copied out before any handler runs: a handler that yields lets others use the buffer
        conn.pending = bytes(view[used:end]) if used < end else b""
        on_text = self._on_text
        for op, payload in frames:
            if op == 1:
                on_text(conn, payload)
            else:
                self._on_control(conn, op, payload)
        if conn.abort_reason is not None or self._closing:
            return conn.abort_reason or "closed"
        return None

    def _on_control(self, conn: Conn, op: int, payload: wsframes.Payload) -> None:
        if op == wsframes.OP_PING:
            if self.WS_HEARTBEAT:
                conn.ping_deadline = _now() + conn.ping_window
            self._send_frame(conn, conn.writer.pong(payload))
        elif op == wsframes.OP_CLOSE:
            try:
                code, why = wsframes.parse_close_payload(payload)
            except ProtocolError:
                code, why = None, "malformed close frame"
            self._send_frame(conn, conn.writer.close(1000))
            self._abort(conn, f"server closed the WebSocket (code {code}{': ' + why if why else ''})")
        elif op == wsframes.OP_BINARY:
            self._report("protocol_error", f"unexpected binary WebSocket message ({len(payload)} bytes)")

    def _send(self, conn: Conn, packet: bytes) -> bool:
        return self._send_frame(conn, conn.writer.text(packet))

    def _send_frame(self, conn: Conn, frame: bytes | memoryview) -> bool:
        """sendall, with frames of concurrent greenlets never interleaved.

        The common case is one syscall that takes the whole frame: nothing can come between,
        so it needs no flag. A flag instead of a lock for the rest (a gevent Semaphore costs
        ~0.5 us here): only when a send is blocked mid-frame do other senders queue on the lock.
        """
        raw = conn.raw
        if raw is not None and not conn.busy:  # the syscall itself; gevent waits only when it must
            try:
                sent = raw.send(frame)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._abort(conn, f"send failed: {exc}")
                return False
            if sent == len(frame):
                return True
            frame = memoryview(frame)[sent:]  # the rest waits for buffer space, flagged
        if conn.busy:
            return self._send_queued(conn, frame)
        conn.busy = True
        try:
            # send, not sendall: gevent's sendall makes a getsockopt syscall per call
            sent = conn.sock.send(frame) if raw is None else 0
            if sent < len(frame):
                conn.sock.sendall(memoryview(frame)[sent:])
            return True
        except OSError as exc:
            self._abort(conn, f"send failed: {exc}")
            return False
        finally:
            conn.busy = False
            if conn.waiting:
                assert conn.idle is not None
                conn.idle.set()

    def _send_queued(self, conn: Conn, frame: bytes | memoryview) -> bool:
        if conn.wlock is None:
            conn.wlock, conn.idle = Semaphore(), Event()
        assert conn.idle is not None
        with conn.wlock:
            while conn.busy:
                conn.waiting += 1
                conn.idle.clear()
                conn.idle.wait()
                conn.waiting -= 1
            return self._send_frame(conn, frame)

    def _abort(self, conn: Conn, reason: str) -> None:
        """Reset the connection; emit() returns False from now on, the loss is reported."""
        if self._live is conn:
            self._live, self.connected = None, False
        polled = conn.watched
        conn.abort(reason)
        if polled:  # the poller never sees a closed descriptor: report the loss here
            self._on_loss(conn, conn.abort_reason or reason)

    def _check_ping(self, now: float) -> None:
        """Run by :data:`SWEEPER`: abort a connection the server stopped pinging."""
        conn = self._live
        if conn is not None and now > conn.ping_deadline:
            self._abort(conn, "ping timeout: no ping from the server within pingInterval + pingTimeout")

    def _report(self, kind: str, detail: str) -> None:
        try:
            self.handlers.on_error(kind, detail)
        except Exception:  # noqa: BLE001, S110 - the error channel itself failed; nothing left to tell
            pass
