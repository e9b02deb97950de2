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

import orjson

from roombench.wire import frames, packets
from roombench.exceptions import ProtocolError
from roombench.transport.handshake import Endpoint, socketio_endpoint
from roombench.transport.base import AckCallback
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
_dumps = orjson.dumps


_event_prefix = functools.lru_cache(maxsize=16)(packets.event_prefix)  # one bytes per namespace


class LeanTransport(FramedTransport):
    """The fast Socket.IO transport; constructor arguments as :class:`~roombench.transport.base.Transport`."""

    SESSION = "Socket.IO"
    CONNECT_STAGE = "the Engine.IO / Socket.IO connect"
    HANDSHAKE_HINT = "if this is a plain WebSocket server, use --transport ws"

    __slots__ = ("_ns", "_p42", "_known", "_fast")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ns = self.profile.namespace
        self._p42 = _event_prefix(self._ns)
        self._known = self.profile.wire_events
        self._fast = self._ns == "/"  # the byte-prefix fast paths assume no namespace

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
        if self._send_frame(conn, conn.writer.text(b"%b%d%b" % (self._p42, aid, _dumps(args)))):
            return True
        acks.pending.pop(aid, None)
        return False

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
                    if len(p) <= _PARSED_MAX:
                        key = bytes(p[2:])
                        data = _PARSED.get(key)
                        if data is None:
                            data = _PARSED[key] = _loads(key)
                            if len(_PARSED) > 512:
                                _PARSED.clear()
                    else:  # hashing a big payload costs about what parsing it does
                        data = _loads(p[2:])
                    # the str check first: a list or dict as the name is unhashable (fuzz)
                    if type(data) is list and data and type(data[0]) is str and data[0] in self._known:
                        self.handlers.on_event(data[0], data[1] if len(data) > 1 else None)
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
                            entry[0](args[0] if args else None, None)
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
            if data[0] not in self._known:
                raise ProtocolError(f"unknown event {data[0]!r}")
            self.handlers.on_event(data[0], data[1] if len(data) > 1 else None)
        elif t == packets.ACK:
            self._on_ack(aid, data[0] if data else None)  # type: ignore[arg-type]
        else:
            self._on_session_packet(conn, t, data)

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
            self._send(conn, packets.encode_connect(self._ns, self._endpoint.auth if self._endpoint else None))
        elif t == packets.CONNECT:
            self._session_up(conn, str((data or {}).get("sid", "")))
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
