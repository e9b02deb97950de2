"""One WebSocket with our own framing: what the lean and the plain transport share.

websocket-client does the opening handshake only. After it, one greenlet per connection
reads into a preallocated buffer, parses every complete frame it holds and hands each
text message to the subclass inline (no queue, no greenlet per message); sends go
straight to the socket. The subclass (:class:`~roombench.lean.LeanTransport` for
Socket.IO, :class:`~roombench.wsplain.PlainWsTransport` for the JSON envelope) knows its
text payloads, its connect step and its :meth:`~roombench.transport.Transport.emit`; this
module knows frames, ping/pong control frames, reconnect backoff, drop and close.
"""

from __future__ import annotations

import socket as _socket
import struct
import time
from abc import abstractmethod
from typing import Any

import gevent
from gevent import socket as gsocket
from gevent.event import Event
from gevent.lock import Semaphore

from . import codec
from .acks import SWEEPER, AckTable
from .exceptions import ConnectFailed, ProtocolError
from .handshake import Endpoint, open_websocket
from .transport import Transport

__all__ = ["FramedTransport", "Conn", "Refused"]

# bytearray(n) touches every page, so this is resident memory per connection: 64 KiB
# holds ~300 typical messages per recv and keeps 5000 connections at ~320 MB
_BUF_SIZE = 64 * 1024
_LINGER_0 = struct.pack("ii", 1, 0)
_now = time.monotonic


def _wait_first(sock: Any) -> tuple[Any, Any, Any]:
    """(raw recv_into, wait, read watcher) of a plain gevent socket, else (None, None, None).

    gevent's recv_into tries the syscall first and waits on EAGAIN: after a batch is
    handled the buffer is nearly always drained, so that costs a failed syscall and a
    raised exception per wake-up. Waiting first skips both (measured: ~10 us per ack on
    the 2-core test VM). These are gevent internals, so anything unexpected (an SSL
    socket, another gevent) falls back to the public recv_into.
    """
    raw = getattr(sock, "_sock", None)
    wait = getattr(sock, "_wait", None)
    readable = getattr(sock, "_read_event", None)
    if type(sock) is not gsocket.socket or raw is None or wait is None or readable is None:
        return None, None, None
    return raw.recv_into, wait, readable


class Refused(ConnectFailed):
    """The server answered our connect with a refusal (Socket.IO 44, plain connect_error)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"server refused the connection: {message}")
        self.message = message


class Conn:
    """One WebSocket connection's state; a reconnect makes a new one."""

    __slots__ = ("sock", "writer", "parser", "buf", "end", "busy", "waiting", "idle", "wlock",
                 "sid", "ping_deadline", "ping_window", "abort_reason", "refused")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.writer = codec.FrameWriter()
        self.parser = codec.FrameParser()
        self.buf = bytearray(_BUF_SIZE)
        self.end = 0
        # a sendall that blocks mid-frame must not let another greenlet interleave its frame
        self.busy = False
        self.waiting = 0
        self.idle = Event()
        self.wlock = Semaphore()
        #: set once the session is up (Socket.IO CONNECT, plain "connected")
        self.sid: str | None = None
        self.ping_deadline = float("inf")
        self.ping_window = float("inf")
        self.abort_reason: str | None = None
        self.refused: str | None = None

    def abort(self, reason: str) -> None:
        """Reset the TCP connection (RST, no close frame); the reader notices."""
        if self.abort_reason is None:
            self.abort_reason = reason
        try:
            self.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, _LINGER_0)
        except OSError:
            pass
        self.sock.close()


class FramedTransport(Transport):
    """A :class:`~roombench.transport.Transport` over one WebSocket with our own framing.

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks = AckTable(self.ack_timeout, self._report)
        self._endpoint: Endpoint | None = None
        self._conn: Conn | None = None  # current connection, live or being established
        self._live: Conn | None = None  # the connection while the session is up
        self._runner: gevent.Greenlet | None = None
        self._closing = False
        self._ever_connected = False

    # ------------------------------------------------------------------ for subclasses

    @abstractmethod
    def _make_endpoint(self) -> Endpoint:
        """The endpoint of ``self.url`` for this protocol; raises ConnectFailed."""

    @abstractmethod
    def _on_text(self, conn: Conn, payload: codec.Payload) -> None:
        """One text message from the server (called inline by the reader); must not raise."""

    def _goodbye(self, conn: Conn) -> bytes:
        """The frames close() sends on a live connection: by default a close frame."""
        return conn.writer.close(1000)

    def _session_up(self, conn: Conn, sid: str) -> None:
        """The session on ``conn`` is established: emit() works, on_connect is called."""
        conn.sid = sid
        self._live = conn
        again, self._ever_connected = self._ever_connected, True
        self.handlers.on_connect(again)

    def _refuse(self, conn: Conn, message: str) -> None:
        """The server refused the connect with ``message``: connect() raises Refused."""
        conn.refused = message
        self._abort(conn, f"server refused the connection: {message}")

    # ------------------------------------------------------------------ Transport

    @property
    def connected(self) -> bool:
        """True while the session is established."""
        return self._live is not None

    def connect(self) -> None:
        """Connect (blocking cooperatively); raises ConnectFailed. See Transport.connect."""
        if self._runner is not None:
            raise ConnectFailed("connect() called on a transport that is already connected")
        self._endpoint = self._make_endpoint()
        self._closing = False
        SWEEPER.add(self, self._sweep)
        try:
            conn = self._establish()
        except BaseException:
            SWEEPER.discard(self)
            raise
        self._runner = gevent.spawn(self._run, conn)

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
        self._live = None
        self._runner = None
        if live is not None:
            self._say_goodbye(live)
        self._acks.fail_all("disconnected")
        SWEEPER.discard(self)
        if runner is not None and runner is not gevent.getcurrent():
            # the reader sees the server's close and EOF and ends; a stuck one is killed
            if live is not None:
                runner.join(timeout=1.0)
            if not runner.dead:
                runner.kill(block=True, timeout=1.0)
        if conn is not None:
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
                    sock = open_websocket(ep, timeout, self.HANDSHAKE_HINT)
                    stage = self.CONNECT_STAGE
                    conn = self._conn = Conn(sock)
                    reason = self._read(conn, until_connected=True)
                except gevent.Timeout as exc:
                    if exc is not deadline:
                        raise
                    raise ConnectFailed(f"timed out after {timeout:g} s during {stage} to {self.url}") from None
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        if conn.refused is not None:
            raise Refused(conn.refused)
        if reason is not None:
            raise ConnectFailed(f"connection to {self.url} lost before {self.SESSION} connected: {reason}")
        return conn

    def _run(self, conn: Conn) -> None:
        """The connection's greenlet: read until lost, report it, reconnect, repeat."""
        while True:
            reason = self._read(conn)
            self._lost(conn, reason or "connection lost")
            if self._closing or not self.reconnect.enabled:
                return
            attempt = 0
            while True:
                gevent.sleep(self.reconnect.backoff(attempt))
                attempt += 1
                if self._closing:
                    return
                try:
                    conn = self._establish()
                    break
                except Refused as exc:
                    self._report("connect_error", exc.message)
                except ConnectFailed as exc:
                    self._report("connect_error", f"reconnect failed: {exc}")

    def _lost(self, conn: Conn, reason: str) -> None:
        was_live = conn.sid is not None
        self._live = None
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
        """Read and dispatch until the connection is lost (returns why).

        With ``until_connected`` it also returns None as soon as the session is up.
        """
        recv_into = conn.sock.recv_into
        raw_recv_into, wait, readable = _wait_first(conn.sock)
        parse = conn.parser.parse
        on_text = self._on_text
        buf = conn.buf
        view = memoryview(buf)
        end = conn.end
        try:
            while True:
                try:
                    if wait is None:
                        n = recv_into(view[end:])
                    else:
                        wait(readable)
                        n = raw_recv_into(view[end:])
                except BlockingIOError:  # a spurious wake-up
                    continue
                except OSError as exc:
                    return conn.abort_reason or f"socket error: {exc}"
                if not n:
                    return conn.abort_reason or "connection closed by the server (EOF)"
                end += n
                try:
                    frames, used = parse(buf, end)
                except ProtocolError as exc:
                    self._report("protocol_error", str(exc))
                    self._abort(conn, f"unreadable WebSocket frame: {exc}")
                    return conn.abort_reason
                if used:
                    end -= used
                    if end:
                        view[:end] = view[used : used + end]
                elif end == len(buf):  # one frame larger than the buffer: grow it
                    view.release()
                    buf.extend(bytes(len(buf)))
                    view = memoryview(buf)
                conn.end = end
                for op, payload in frames:
                    if op == 1:
                        on_text(conn, payload)
                    else:
                        self._on_control(conn, op, payload)
                if conn.abort_reason is not None or self._closing:
                    return conn.abort_reason or "closed"
                if until_connected and conn.sid is not None:
                    return None
        finally:
            view.release()

    def _on_control(self, conn: Conn, op: int, payload: codec.Payload) -> None:
        if op == codec.OP_PING:
            if self.WS_HEARTBEAT:
                conn.ping_deadline = _now() + conn.ping_window
            self._send_frame(conn, conn.writer.pong(payload))
        elif op == codec.OP_CLOSE:
            try:
                code, why = codec.parse_close_payload(payload)
            except ProtocolError:
                code, why = None, "malformed close frame"
            self._send_frame(conn, conn.writer.close(1000))
            self._abort(conn, f"server closed the WebSocket (code {code}{': ' + why if why else ''})")
        elif op == codec.OP_BINARY:
            self._report("protocol_error", f"unexpected binary WebSocket message ({len(payload)} bytes)")

    def _send(self, conn: Conn, packet: bytes) -> bool:
        return self._send_frame(conn, conn.writer.text(packet))

    def _send_frame(self, conn: Conn, frame: bytes) -> bool:
        """sendall, with frames of concurrent greenlets never interleaved.

        A flag instead of a lock on the fast path (a gevent Semaphore costs ~0.5 us here):
        only when a sendall is blocked mid-frame do other senders queue on the lock.
        """
        if conn.busy:
            return self._send_queued(conn, frame)
        conn.busy = True
        try:
            # send, not sendall: gevent's sendall makes a getsockopt syscall per call
            sent = conn.sock.send(frame)
            if sent < len(frame):
                conn.sock.sendall(memoryview(frame)[sent:])
            return True
        except OSError as exc:
            self._abort(conn, f"send failed: {exc}")
            return False
        finally:
            conn.busy = False
            if conn.waiting:
                conn.idle.set()

    def _send_queued(self, conn: Conn, frame: bytes) -> bool:
        with conn.wlock:
            while conn.busy:
                conn.waiting += 1
                conn.idle.clear()
                conn.idle.wait()
                conn.waiting -= 1
            return self._send_frame(conn, frame)

    def _abort(self, conn: Conn, reason: str) -> None:
        """Reset the connection; emit() returns False from now on, the reader reports it."""
        if self._live is conn:
            self._live = None
        conn.abort(reason)

    def _sweep(self, now: float) -> None:
        """Run by :data:`SWEEPER`: expire acks, abort a connection the server stopped pinging."""
        if self._acks.pending:
            self._acks.expire(now)
        conn = self._live
        if conn is not None and now > conn.ping_deadline:
            self._abort(conn, "ping timeout: no ping from the server within pingInterval + pingTimeout")

    def _report(self, kind: str, detail: str) -> None:
        try:
            self.handlers.on_error(kind, detail)
        except Exception:  # noqa: BLE001, S110 - the error channel itself failed; nothing left to tell
            pass
