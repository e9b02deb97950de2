"""The lean transport: Socket.IO v5 / Engine.IO v4 over our own WebSocket framing.

:class:`~roombench.transport.framed.FramedTransport` owns the connection (handshake, buffered
reads, sends, reconnects, drop/close); this module adds the Engine.IO open / Socket.IO
connect step and the packets. Events and acks on the default namespace take a fast path
(prefix by bytes, one orjson call); everything else goes through :mod:`roombench.wire.packets`.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import gevent
import orjson

from roombench.wire import frames, packets
from roombench.exceptions import ProtocolError
from roombench.transport.handshake import Endpoint, socketio_endpoint
from roombench.transport.base import AckCallback, Recovery
from roombench.transport.framed import Conn, FramedTransport

__all__ = ["LeanTransport"]

_now = time.monotonic
_loads = orjson.loads
#: event payload bytes -> parsed, shared by every connection of the process: a room's
#: fan-out brings the same bytes to each member here, and parsing them once per process
#: instead of once per member saves ~7 % of the CPU per delivery (rooms of 100, measured).
#: Handlers must therefore never modify an event's payload.
_PARSED: dict[bytes, Any] = {}
_PARSED_MAX = 4096
#: payloads kept per generation (the cache is cleared when it holds more)
_PARSED_KEPT = 512
#: [hits in this generation, events left to parse without the cache]: when every payload
#: is new (rooms of one: only the sender's own echo), copying and hashing each one for the
#: cache costs ~0.3 us per event for nothing, so the cache is left alone for a while
_CACHE = [0, 0]
#: events parsed without the cache after a generation with too few hits
_CACHE_SKIP = 16384
_dumps = orjson.dumps


#: event name -> b'["name"' (the start of an emit's args array)
_EVENT_HEAD: dict[str, bytes] = {}


def _event_head(event: str) -> bytes:
    head = b"[" + _dumps(event)
    if len(_EVENT_HEAD) < 64:  # the profile's few names; anything else is encoded each time
        _EVENT_HEAD[event] = head
    return head


_event_prefix = functools.lru_cache(maxsize=16)(packets.event_prefix)  # one bytes per namespace


class LeanTransport(FramedTransport):
    """The fast Socket.IO transport; constructor arguments as :class:`~roombench.transport.base.Transport`."""

    SESSION = "Socket.IO"
    CONNECT_STAGE = "the Engine.IO / Socket.IO connect"
    HANDSHAKE_HINT = "if this is a plain WebSocket server, use --transport ws"

    __slots__ = ("_ns", "_p42", "_known", "_fast", "_pid", "_offset", "_sent_pid", "_sent_offset",
                 "_replayed", "_down_until")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ns = self.profile.namespace
        self._p42 = _event_prefix(self._ns)
        self._known = self.profile.wire_events
        self._fast = self._ns == "/"  # the byte-prefix fast paths assume no namespace
        # connection state recovery (socket.io >= 4.6), as socket.io-client does it:
        #: the private session id of the server's last CONNECT reply; None = recovery off
        self._pid: str | None = None
        #: the offset of the last recoverable event received (None: none yet in this session)
        self._offset: str | None = None
        #: what the CONNECT of the connection being established carried
        self._sent_pid: str | None = None
        self._sent_offset: str | None = None
        self._replayed = 0  # events received between our recovery CONNECT and its reply
        self._down_until = 0.0  # drop_for: no reconnect before this monotonic time

    def emit(self, event: str, data: Any, ack: AckCallback | None = None, arg: Any = None) -> bool:
        """Send an event; see Transport.emit. False (ack never called) when not connected."""
        conn = self._live
        if conn is None:
            return False
        # the args array built as bytes around the event name's JSON, encoded once per process
        head = _EVENT_HEAD.get(event) or _event_head(event)
        if ack is None:
            args = head + b"]" if data is None else b"%b,%b]" % (head, _dumps(data))
            return self._send_frame(conn, conn.writer.text(self._p42 + args))
        acks = self._acks  # AckTable.add, inlined: this is the hot path
        aid = acks.next_id
        acks.next_id = aid + 1
        acks.pending[aid] = (ack, _now() + self.ack_timeout, arg)
        packet = (b"%b%d%b]" % (self._p42, aid, head) if data is None
                  else b"%b%d%b,%b]" % (self._p42, aid, head, _dumps(data)))  # one formatting: one copy
        if self._send_frame(conn, conn.writer.text(packet)):
            return True
        return acks.send_failed(aid)

    def drop_for(self, seconds: float) -> None:
        """Drop, and let no reconnect attempt start for ``seconds`` (see :meth:`_establish`)."""
        self._down_until = _now() + seconds
        self.drop()

    def _establish(self) -> Conn:
        # the reconnect loop's every attempt comes here: a drop_for outage waits out its rest
        wait = self._down_until - _now()
        if wait > 0:
            gevent.sleep(wait)
        return super()._establish()

    def _make_endpoint(self) -> Endpoint:
        return socketio_endpoint(self.url, self.profile, self.token, self.auth_extra)

    def _goodbye(self, conn: Conn) -> bytes:
        """41 (Socket.IO disconnect), then the close frame."""
        return conn.writer.text(packets.encode_disconnect(self._ns)) + conn.writer.close(1000)

    # ------------------------------------------------------------------ the hot path

    def _on_text(self, conn: Conn, p: frames.Payload) -> None:
        """One Engine.IO packet. Events and acks on the default namespace take the short
        way (prefix by bytes, one orjson call); everything else goes through the codec."""
        try:
            # the prefix by byte values ("4" = 52, "2" = 50, "[" = 91, "3" = 51): no slices
            if self._fast and len(p) > 2 and p[0] == 52:
                kind = p[1]
                if kind == 50 and p[2] == 91:
                    skip = _CACHE[1]
                    if skip:  # the cache earned too little lately: parse without it
                        _CACHE[1] = skip - 1
                        data = _loads(p[2:])
                    elif len(p) <= _PARSED_MAX:
                        key = bytes(p)  # the whole packet: one copy (p[2:] would be two)
                        data = _PARSED.get(key)
                        if data is None:
                            data = _PARSED[key] = _loads(key[2:])
                            if len(_PARSED) > _PARSED_KEPT:
                                _PARSED.clear()
                                # fewer than 1 in 8 of a generation's payloads came again: skip a while
                                _CACHE[1] = _CACHE_SKIP if _CACHE[0] < _PARSED_KEPT // 8 else 0
                                _CACHE[0] = 0
                        else:
                            _CACHE[0] += 1
                    else:  # hashing a big payload costs about what parsing it does
                        data = _loads(p[2:])
                    # the str check first: a list or dict as the name is unhashable (fuzz)
                    if type(data) is list and data and type(data[0]) is str and data[0] in self._known:
                        n = len(data)
                        if self._pid is not None and n > 1 and type(data[-1]) is str:
                            self._got_offset(data[-1])  # recovery: the offset never reaches the handlers
                            n -= 1
                        self.handlers.on_event(data[0], data[1] if n > 1 else None)
                        return
                elif kind == 51:
                    i = p.find(b"[", 2)
                    digits = p[2:i]
                    if i > 2 and digits.isdigit():
                        if i > 22:  # int() of thousands of digits raises ValueError (or takes long)
                            raise ProtocolError(f"ack id of {i - 2} digits: {bytes(p[:40])!r}")
                        args = _loads(p[i:])
                        aid = int(digits)
                        entry = self._acks.pending.pop(aid, None)
                        if entry is not None and entry[1] >= _now():  # AckTable.answer, inlined
                            entry[0](entry[2], args[0] if args else None, None)
                        else:
                            self._acks.miss(aid, entry)  # late or unknown, counted once
                        return
            self._on_packet(conn, *packets.decode_packet(p))
        except ProtocolError as exc:
            self._report("protocol_error", str(exc))
        except orjson.JSONDecodeError as exc:
            self._report("protocol_error", f"invalid JSON ({exc}): {bytes(p[:60])!r}")
        except Exception as exc:  # noqa: BLE001 - a handler's bug must not kill the reader
            self._report("handler_error", f"{type(exc).__name__}: {exc}")

    def _on_packet(self, conn: Conn, t: int, ns: str, aid: int | None, data: Any) -> None:
        if t >= packets.CONNECT and ns != self._ns:
            raise ProtocolError(f"packet type {t} for namespace {ns!r}; we connected {self._ns!r}")
        if t == packets.EVENT:
            if aid is None and self._pid is not None:  # an event with an ack id carries no offset
                data, offset = packets.split_offset(data)
                if offset is not None:
                    self._got_offset(offset)
            if data[0] not in self._known:
                raise ProtocolError(f"unknown event {data[0]!r}")
            self.handlers.on_event(data[0], data[1] if len(data) > 1 else None)
        elif t == packets.ACK:
            self._on_ack(aid, data[0] if data else None)  # type: ignore[arg-type]
        else:
            self._on_session_packet(conn, t, data)

    def _got_offset(self, offset: str) -> None:
        self._offset = offset
        if self.replaying:
            self._replayed += 1

    def _recovery_outcome(self, pid: Any) -> None:
        """Read the CONNECT reply's pid as socket.io-client's onconnect does: recovered when
        it is the pid we sent. Sets ``recovery`` (on reconnects) before on_connect runs."""
        pid = pid if isinstance(pid, str) and pid else None
        sent_pid, sent_offset = self._sent_pid, self._sent_offset
        recovered = pid is not None and pid == sent_pid and sent_offset is not None
        if self._ever_connected:
            if recovered:
                self.recovery = Recovery(True, None, self._replayed)
            else:
                reason = ("not_tried" if not self.recover else "unsupported" if pid is None or sent_pid is None
                          else "no_offset" if sent_offset is None else "expired")
                self.recovery = Recovery(False, reason, self._replayed)
        if not recovered:
            # a new session: the old offset means nothing in it (socket.io-client keeps it, and
            # a later reconnect may then replay from a point this session never saw)
            self._offset = None
        self._pid = pid
        self.replaying = False

    def _on_ack(self, aid: int, payload: Any) -> None:
        self._acks.answer(aid, payload)  # the slow-path twin of _on_text's ack

    def _on_session_packet(self, conn: Conn, t: int, data: Any) -> None:
        """Everything but events and acks: rare, so clarity over speed."""
        if t == packets.PING:
            conn.ping_deadline = _now() + conn.ping_window
            self._send(conn, packets.PONG_PACKET + (data or "").encode())
        elif t == packets.OPEN:
            conn.ping_window = (data["pingInterval"] + data["pingTimeout"]) / 1000.0
            conn.ping_deadline = _now() + conn.ping_window
            auth = self._endpoint.auth if self._endpoint else None
            # without --recovery csr|auto we are a client that does not implement recovery
            pid = self._pid if self.recover else None
            self._sent_pid, self._sent_offset = pid, self._offset if pid is not None else None
            # the server replays what we missed before its CONNECT reply (socket.ts constructor)
            self.replaying = self._sent_offset is not None
            self._replayed = 0
            self._send(conn, packets.encode_connect(self._ns, packets.recovery_auth(auth, pid, self._sent_offset)))
        elif t == packets.CONNECT:
            data = data or {}
            self._recovery_outcome(data.get("pid"))
            self._session_up(conn, str(data.get("sid", "")))
        elif t == packets.CONNECT_ERROR:
            message = packets.connect_error_message(data)
            if conn.sid is None:
                self._refuse(conn, message)
            else:
                self._report("protocol_error", f"CONNECT_ERROR on a connected session: {message}")
        elif t == packets.DISCONNECT:
            self._abort(conn, "server disconnected the Socket.IO session (41)")
        elif t == packets.CLOSE:
            self._abort(conn, "server closed the Engine.IO session (1)")
        elif t in (packets.BINARY_EVENT, packets.BINARY_ACK):
            raise ProtocolError("binary Socket.IO packets are not supported")
        elif t not in (packets.NOOP, packets.PONG):
            raise ProtocolError(f"unexpected Engine.IO packet type {t}")
