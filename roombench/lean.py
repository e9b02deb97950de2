"""The lean transport: websocket-client for the opening handshake, our own framing after it.

One greenlet per connection reads into a preallocated buffer, parses every complete
frame it holds and calls the handlers inline; sends go straight to the socket. Ack
deadlines and ping timeouts of all transports in the process are checked by one
sweeper greenlet (:data:`SWEEPER`), not a timer per message.
"""

from __future__ import annotations

import socket as _socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import gevent
import orjson
import websocket
from gevent import socket as gsocket
from gevent.event import Event
from gevent.lock import Semaphore

from . import codec
from .exceptions import ConnectFailed, ProtocolError
from .protocol import Profile
from .transport import AckCallback, Transport

__all__ = ["LeanTransport", "AckTable", "Endpoint", "endpoint", "open_websocket", "SWEEPER", "SWEEP_INTERVAL"]

#: seconds between two sweeps of ack deadlines and ping timeouts
SWEEP_INTERVAL = 0.25
# bytearray(n) touches every page, so this is resident memory per connection: 64 KiB
# holds ~300 typical messages per recv and keeps 5000 connections at ~320 MB
_BUF_SIZE = 64 * 1024
_LINGER_0 = struct.pack("ii", 1, 0)
_now = time.monotonic
_loads = orjson.loads
_dumps = orjson.dumps


@dataclass(frozen=True)
class Endpoint:
    """Where and how to open the WebSocket for a base URL, profile and token."""

    #: the full ws:// or wss:// URL of the Engine.IO handshake
    ws_url: str
    host: str
    port: int
    secure: bool
    #: the base URL's own query plus the token when it goes in the query ("" for none)
    query: str
    headers: dict[str, str]
    #: the Socket.IO CONNECT payload, None for none
    auth: dict[str, Any] | None

    @property
    def base_url(self) -> str:
        """http(s)://host:port/ with the query: what python-socketio's connect() takes."""
        netloc = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.secure else 'http'}://{netloc}:{self.port}/" + (
            f"?{self.query}" if self.query else ""
        )


def endpoint(url: str, profile: Profile, token: str | None, auth_extra: dict[str, Any]) -> Endpoint:
    """Resolve ``url`` (http/https/ws/wss; its path is ignored) into an :class:`Endpoint`.

    Raises ConnectFailed with one line when the URL cannot name a server.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConnectFailed(f"bad server URL {url!r}: {exc}; expected http://host:port") from None
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise ConnectFailed(f"bad server URL {url!r}: expected http://host:port or https://host:port")
    secure = parts.scheme in ("https", "wss")
    host = parts.hostname
    port = port or (443 if secure else 80)
    query = parts.query
    headers: dict[str, str] = {}
    auth: dict[str, Any] | None = dict(auth_extra) or None
    if token is not None:
        if profile.token_in == "query":
            query += ("&" if query else "") + "token=" + quote(token, safe="")
        elif profile.token_in == "header":
            headers["Authorization"] = f"Bearer {token}"
        else:
            auth = {profile.field("token"): token, **auth_extra}
    netloc = f"[{host}]" if ":" in host else host
    path = "/" + profile.path.strip("/") + "/"
    ws_url = f"{'wss' if secure else 'ws'}://{netloc}:{port}{path}?EIO=4&transport=websocket"
    ws_url += f"&{query}" if query else ""
    return Endpoint(ws_url, host, port, secure, query, headers, auth)


def open_websocket(ep: Endpoint, timeout: float) -> Any:
    """TCP connect (a gevent socket, patched or not) and WebSocket upgrade; the raw socket.

    Raises ConnectFailed naming what failed: DNS, refused, HTTP status of the handshake.
    """
    where = f"{ep.host}:{ep.port}"
    try:
        sock = gsocket.create_connection((ep.host, ep.port), timeout=timeout)
    except _socket.gaierror as exc:
        raise ConnectFailed(f"cannot resolve host {ep.host!r}: {exc.strerror}") from None
    except ConnectionRefusedError:
        raise ConnectFailed(f"connection refused by {where}: is the server running?") from None
    except OSError as exc:
        raise ConnectFailed(f"cannot connect to {where}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        if ep.secure:
            from gevent import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=ep.host)
        ws = websocket.WebSocket(enable_multithread=False, skip_utf8_validation=True)
        ws.connect(ep.ws_url, socket=sock, header=ep.headers, timeout=timeout,
                   redirect_limit=0, suppress_origin=True)
    except websocket.WebSocketBadStatusException as exc:
        sock.close()
        status = f"HTTP {exc.status_code} {exc.status_message or ''}".rstrip()
        raise ConnectFailed(f"WebSocket handshake with {ep.ws_url} refused: {status}") from None
    except (websocket.WebSocketException, OSError) as exc:
        sock.close()
        raise ConnectFailed(f"WebSocket handshake with {ep.ws_url} failed: {exc}") from None
    except BaseException:  # a gevent.Timeout of the caller
        sock.close()
        raise
    sock.settimeout(None)
    return sock


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


class AckTable:
    """Pending acks, id -> (callback, deadline); every callback is called exactly once.

    ``on_error(kind, detail)`` hears about a callback that raised while being failed
    (timeout or disconnect), so one buggy callback cannot keep the others from running.
    """

    __slots__ = ("pending", "next_id", "timeout", "on_error")

    def __init__(self, timeout: float, on_error: Callable[[str, str], None]) -> None:
        self.pending: dict[int, tuple[AckCallback, float]] = {}
        self.next_id = 0
        self.timeout = timeout
        self.on_error = on_error

    def add(self, callback: AckCallback) -> int:
        """Register ``callback`` under a new ack id; its deadline is now + timeout."""
        aid = self.next_id
        self.next_id = aid + 1
        self.pending[aid] = (callback, _now() + self.timeout)
        return aid

    def resolve(self, aid: int, payload: Any) -> bool:
        """Call the callback of ``aid`` with ``payload``; False when the ack is late.

        Late means: already failed, or past its deadline (then it fails with "timeout"
        now, so the timeout is exact whatever the sweep interval).
        """
        entry = self.pending.pop(aid, None)
        if entry is None:
            return False
        if entry[1] < _now():
            self.fail(entry[0], "timeout")
            return False
        entry[0](payload, None)
        return True

    def expire(self, now: float) -> None:
        """Fail every ack whose deadline has passed with "timeout"."""
        pending = self.pending
        # deadlines grow with ids and dicts keep insertion order: stop at the first live one
        while pending:
            aid = next(iter(pending))
            if pending[aid][1] > now:
                return
            self.fail(pending.pop(aid)[0], "timeout")

    def fail_all(self, error: str) -> None:
        """Fail every pending ack with ``error``."""
        pending, self.pending = self.pending, {}
        for callback, _ in pending.values():
            self.fail(callback, error)

    def fail(self, callback: AckCallback, error: str) -> None:
        """Call ``callback`` with ``error``; a raising callback is reported, not raised."""
        try:
            callback(None, error)
        except Exception as exc:  # noqa: BLE001 - report it, then fail the next one
            self.on_error("handler_error", f"ack callback ({error}): {type(exc).__name__}: {exc}")


class _Sweeper:
    """One greenlet per process that runs every registered sweep ``SWEEP_INTERVAL`` apart.

    It exists only while something is registered, so a process with no open transports
    has no sweeper greenlet.
    """

    def __init__(self) -> None:
        self._jobs: dict[int, Callable[[float], None]] = {}
        self._glet: gevent.Greenlet | None = None

    def add(self, key: object, job: Callable[[float], None]) -> None:
        self._jobs[id(key)] = job
        if self._glet is None or self._glet.dead:
            self._glet = gevent.spawn(self._run)

    def discard(self, key: object) -> None:
        self._jobs.pop(id(key), None)
        glet = self._glet
        if not self._jobs and glet is not None and glet is not gevent.getcurrent():
            self._glet = None
            glet.kill(block=False)

    def _run(self) -> None:
        while self._jobs:
            gevent.sleep(SWEEP_INTERVAL)
            now = _now()
            for job in list(self._jobs.values()):
                try:
                    job(now)
                except Exception:  # noqa: BLE001 - a callback's bug must not stop the sweeps
                    pass


SWEEPER = _Sweeper()


class _Refused(ConnectFailed):
    """The server answered our CONNECT with CONNECT_ERROR (44)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"server refused the connection: {message}")
        self.message = message


class _Conn:
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


class LeanTransport(Transport):
    """The fast transport; constructor arguments as :class:`~roombench.transport.Transport`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks = AckTable(self.ack_timeout, self._report)
        self._ns = self.profile.namespace
        self._p42 = codec.event_prefix(self._ns)
        self._known = frozenset(self.profile.events.values())
        self._fast = self._ns == "/"  # the byte-prefix fast paths assume no namespace
        self._endpoint: Endpoint | None = None
        self._conn: _Conn | None = None  # current connection, live or being established
        self._live: _Conn | None = None  # the connection while Socket.IO is connected
        self._runner: gevent.Greenlet | None = None
        self._closing = False
        self._ever_connected = False

    @property
    def connected(self) -> bool:
        """True while the Socket.IO session is established."""
        return self._live is not None

    def connect(self) -> None:
        """Connect (blocking cooperatively); raises ConnectFailed. See Transport.connect."""
        if self._runner is not None:
            raise ConnectFailed("connect() called on a transport that is already connected")
        self._endpoint = endpoint(self.url, self.profile, self.token, self.auth_extra)
        self._closing = False
        SWEEPER.add(self, self._sweep)
        try:
            conn = self._establish()
        except BaseException:
            SWEEPER.discard(self)
            raise
        self._runner = gevent.spawn(self._run, conn)

    def emit(self, event: str, data: Any, ack: AckCallback | None = None) -> bool:
        """Send an event; see Transport.emit. False (ack never called) when not connected."""
        conn = self._live
        if conn is None:
            return False
        args = [event] if data is None else [event, data]
        if ack is None:
            return self._send_frame(conn, conn.writer.text(self._p42 + _dumps(args)))
        acks = self._acks  # AckTable.add, inlined: this is the hot path
        aid = acks.next_id
        acks.next_id = aid + 1
        acks.pending[aid] = (ack, _now() + self.ack_timeout)
        if self._send_frame(conn, conn.writer.text(self._p42 + b"%d" % aid + _dumps(args))):
            return True
        acks.pending.pop(aid, None)
        return False

    def drop(self) -> None:
        """Reset the TCP connection without a close frame; the reconnect loop takes over."""
        conn = self._conn
        if conn is not None:
            self._abort(conn, "connection dropped by drop()")

    def close(self) -> None:
        """Send 41 and a close frame, stop reconnecting, fail pending acks, end greenlets."""
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

    def _establish(self) -> _Conn:
        """TCP + WebSocket handshake + Engine.IO open + Socket.IO connect, within the timeout."""
        ep = self._endpoint
        assert ep is not None
        timeout = self.connect_timeout
        stage = "the TCP connect / WebSocket handshake"
        sock = None
        try:
            with gevent.Timeout(timeout) as deadline:
                try:
                    sock = open_websocket(ep, timeout)
                    stage = "the Engine.IO / Socket.IO connect"
                    conn = self._conn = _Conn(sock)
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
            raise _Refused(conn.refused)
        if reason is not None:
            raise ConnectFailed(f"connection to {self.url} lost before Socket.IO connected: {reason}")
        return conn

    def _run(self, conn: _Conn) -> None:
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
                except _Refused as exc:
                    self._report("connect_error", exc.message)
                except ConnectFailed as exc:
                    self._report("connect_error", f"reconnect failed: {exc}")

    def _lost(self, conn: _Conn, reason: str) -> None:
        was_live = conn.sid is not None
        self._live = None
        conn.sock.close()
        self._acks.fail_all("disconnected")
        if was_live and not self._closing:
            try:
                self.handlers.on_disconnect(reason)
            except Exception as exc:  # noqa: BLE001 - never let a handler kill the reader
                self._report("handler_error", f"on_disconnect: {type(exc).__name__}: {exc}")

    def _say_goodbye(self, conn: _Conn) -> None:
        """41 and a close frame, then half-close so the reader sees the server's close."""
        with gevent.Timeout(1.0, False):
            if self._send_frame(conn, conn.writer.text(codec.encode_disconnect(self._ns)) + conn.writer.close(1000)):
                try:
                    conn.sock.shutdown(_socket.SHUT_WR)
                except OSError:
                    pass

    # ------------------------------------------------------------------ the hot path

    def _read(self, conn: _Conn, until_connected: bool = False) -> str | None:
        """Read and dispatch until the connection is lost (returns why).

        With ``until_connected`` it also returns None as soon as Socket.IO is connected.
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

    def _on_text(self, conn: _Conn, p: codec.Payload) -> None:
        """One Engine.IO packet. Events and acks on the default namespace take the short
        way (prefix by bytes, one orjson call); everything else goes through the codec."""
        try:
            if self._fast:
                head = p[:3]
                if head == b"42[":
                    data = _loads(p[2:])
                    if type(data) is list and data and data[0] in self._known:
                        self.handlers.on_event(data[0], data[1] if len(data) > 1 else None)
                        return
                elif head[:2] == b"43":
                    i = p.find(b"[", 2)
                    if i > 2 and p[2:i].isdigit():
                        args = _loads(p[i:])
                        entry = self._acks.pending.pop(int(p[2:i]), None)
                        if entry is not None and entry[1] >= _now():  # AckTable.resolve, inlined
                            entry[0](args[0] if args else None, None)
                        else:
                            if entry is not None:
                                self._acks.fail(entry[0], "timeout")
                            self._report("late_ack", f"ack {int(p[2:i])} arrived after its timeout")
                        return
            self._on_packet(conn, *codec.decode_packet(p))
        except ProtocolError as exc:
            self._report("protocol_error", str(exc))
        except orjson.JSONDecodeError as exc:
            self._report("protocol_error", f"invalid JSON ({exc}): {bytes(p[:60])!r}")
        except Exception as exc:  # noqa: BLE001 - a handler's bug must not kill the reader
            self._report("handler_error", f"{type(exc).__name__}: {exc}")

    def _on_packet(self, conn: _Conn, t: int, ns: str, aid: int | None, data: Any) -> None:
        if t >= codec.CONNECT and ns != self._ns:
            raise ProtocolError(f"packet type {t} for namespace {ns!r}; we connected {self._ns!r}")
        if t == codec.EVENT:
            if data[0] not in self._known:
                raise ProtocolError(f"unknown event {data[0]!r}")
            self.handlers.on_event(data[0], data[1] if len(data) > 1 else None)
        elif t == codec.ACK:
            self._on_ack(aid, data[0] if data else None)  # type: ignore[arg-type]
        else:
            self._on_session_packet(conn, t, data)

    def _on_ack(self, aid: int, payload: Any) -> None:
        if not self._acks.resolve(aid, payload):  # the slow-path twin of _on_text's ack
            self._report("late_ack", f"ack {aid} arrived after its timeout")

    def _on_session_packet(self, conn: _Conn, t: int, data: Any) -> None:
        """Everything but events and acks: rare, so clarity over speed."""
        if t == codec.PING:
            conn.ping_deadline = _now() + conn.ping_window
            self._send(conn, codec.PONG_PACKET + (data or "").encode())
        elif t == codec.OPEN:
            conn.ping_window = (data["pingInterval"] + data["pingTimeout"]) / 1000.0
            conn.ping_deadline = _now() + conn.ping_window
            self._send(conn, codec.encode_connect(self._ns, self._endpoint.auth if self._endpoint else None))
        elif t == codec.CONNECT:
            conn.sid = str((data or {}).get("sid", ""))
            self._live = conn
            again, self._ever_connected = self._ever_connected, True
            self.handlers.on_connect(again)
        elif t == codec.CONNECT_ERROR:
            message = codec.connect_error_message(data)
            if conn.sid is None:
                conn.refused = message
                self._abort(conn, f"server refused the connection: {message}")
            else:
                self._report("protocol_error", f"CONNECT_ERROR on a connected session: {message}")
        elif t == codec.DISCONNECT:
            self._abort(conn, "server disconnected the Socket.IO session (41)")
        elif t == codec.CLOSE:
            self._abort(conn, "server closed the Engine.IO session (1)")
        elif t in (codec.BINARY_EVENT, codec.BINARY_ACK):
            raise ProtocolError("binary Socket.IO packets are not supported")
        elif t not in (codec.NOOP, codec.PONG):
            raise ProtocolError(f"unexpected Engine.IO packet type {t}")

    def _on_control(self, conn: _Conn, op: int, payload: codec.Payload) -> None:
        if op == codec.OP_PING:
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

    def _send(self, conn: _Conn, packet: bytes) -> bool:
        return self._send_frame(conn, conn.writer.text(packet))

    def _send_frame(self, conn: _Conn, frame: bytes) -> bool:
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

    def _send_queued(self, conn: _Conn, frame: bytes) -> bool:
        with conn.wlock:
            while conn.busy:
                conn.waiting += 1
                conn.idle.clear()
                conn.idle.wait()
                conn.waiting -= 1
            return self._send_frame(conn, frame)

    def _abort(self, conn: _Conn, reason: str) -> None:
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
