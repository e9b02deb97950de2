"""The plain WebSocket transport: the contract's events in a JSON envelope, no Socket.IO.

Every text message is one JSON object (docs/PROTOCOL.md, "Plain WebSocket variant"):
``{"event": name, "data": payload}`` for events, ``{"event": name, "data": payload,
"ack": n}`` for an event that wants an answer, ``{"ack": n, "data": payload}`` for that
answer. The token and the user id travel in the handshake URL's query; the session is up
when the server's ``connected`` message arrives. WebSocket ping/pong control frames are
the heartbeat. Everything else (framing, reconnects, drop/close, ack deadlines) is
:class:`~roombench.transport.framed.FramedTransport`'s, shared with the lean Socket.IO transport.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

import orjson

from roombench.wire import frames, packets
from roombench.transport.handshake import Endpoint, split_url
from roombench.wire.profile import DEFAULT_PROFILE, Profile
from roombench.transport.base import AckCallback
from roombench.transport.framed import Conn, FramedTransport

__all__ = ["PlainWsTransport", "plain_endpoint", "WS_PATH", "CONNECTED", "CONNECT_ERROR"]

#: the path of the WebSocket endpoint on the server
WS_PATH = DEFAULT_PROFILE.ws_path  # the default; a profile's ws_path overrides it
#: the envelope's own events (not the contract's: a profile does not rename them)
CONNECTED = "connected"
CONNECT_ERROR = "connect_error"

_now = time.monotonic
_loads = orjson.loads
_dumps = orjson.dumps


def plain_endpoint(url: str, profile: Profile, token: str | None, auth_extra: dict[str, Any]) -> Endpoint:
    """The plain endpoint of ``url`` (its path is ignored; the profile's ``ws_path``, /ws by
    default, is used): ``ws://host:port/ws?token=…&user_id=…``.

    The token goes in the query under the profile's name for it, or in an
    ``Authorization: Bearer`` header when the profile says ``token_in = "header"``;
    ``auth_extra`` (the user id) always goes in the query. Raises ConnectFailed for a bad URL.
    """
    secure, host, port, query = split_url(url)
    headers: dict[str, str] = {}
    params = {key: str(value) for key, value in auth_extra.items()}
    if token is not None:
        name, value = profile.socket_token(token)
        if profile.token_in == "header":
            headers[name] = value
        else:
            params[name] = value
    if params:
        query += ("&" if query else "") + urlencode(params)
    netloc = f"[{host}]" if ":" in host else host
    ws_url = f"{'wss' if secure else 'ws'}://{netloc}:{port}/{profile.ws_path.lstrip('/')}" + (f"?{query}" if query else "")
    return Endpoint(ws_url, host, port, secure, query, headers, None)


class PlainWsTransport(FramedTransport):
    """The plain WebSocket transport; constructor arguments as :class:`~roombench.transport.base.Transport`."""

    SESSION = "the plain WebSocket session"
    CONNECT_STAGE = f'the wait for the server\'s "{CONNECTED}" message'
    HANDSHAKE_HINT = "if this is a Socket.IO server, use --transport lean or compat"
    WS_HEARTBEAT = True

    __slots__ = ("_known",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._known = self.profile.wire_events

    def emit(self, event: str, data: Any, ack: AckCallback | None = None, arg: Any = None) -> bool:
        """Send an event; see Transport.emit. False (ack never called) when not connected."""
        conn = self._live
        if conn is None:
            return False
        if ack is None:
            return self._send_frame(conn, conn.writer.text(_dumps({"event": event, "data": data})))
        acks = self._acks  # AckTable.add, inlined: this is the hot path
        aid = acks.next_id
        acks.next_id = aid + 1
        acks.pending[aid] = (ack, _now() + self.ack_timeout, arg)
        if self._send_frame(conn, conn.writer.text(_dumps({"event": event, "data": data, "ack": aid}))):
            return True
        return acks.send_failed(aid)

    def _make_endpoint(self) -> Endpoint:
        return plain_endpoint(self.url, self.profile, self.token, self.auth_extra)

    # ------------------------------------------------------------------ the hot path

    def _on_text(self, conn: Conn, p: frames.Payload) -> None:
        """One envelope: contract events and acks inline, the rest in :meth:`_on_other`."""
        try:
            msg = _loads(p)
            if type(msg) is dict:
                aid = msg.get("ack")
                if aid is None:
                    event = msg.get("event")
                    if type(event) is str and event in self._known:
                        self.handlers.on_event(event, msg.get("data"))
                        return
                elif type(aid) is int:
                    entry = self._acks.pending.pop(aid, None)
                    if entry is not None and entry[1] >= _now():  # AckTable.answer, inlined
                        entry[0](entry[2], msg.get("data"), None)
                    else:
                        self._acks.miss(aid, entry)  # late or unknown, counted once
                    return
            self._on_other(conn, msg, p)
        except orjson.JSONDecodeError as exc:
            self._not_an_envelope(conn, p, f"invalid JSON ({exc})")
        except Exception as exc:  # noqa: BLE001 - a handler's bug must not kill the reader
            self._report("handler_error", f"{type(exc).__name__}: {exc}")

    def _on_other(self, conn: Conn, msg: Any, p: frames.Payload) -> None:
        """Session messages and everything malformed: rare, so clarity over speed."""
        if type(msg) is not dict:
            self._not_an_envelope(conn, p, "not a JSON object")
            return
        event, data = msg.get("event"), msg.get("data")
        if "ack" in msg:
            self._report("protocol_error", f"ack id is not an integer: {bytes(p[:60])!r}")
        elif event == CONNECTED and conn.sid is None:
            data = data if isinstance(data, dict) else {}
            interval, timeout = data.get("pingInterval"), data.get("pingTimeout")
            if isinstance(interval, (int, float)) and isinstance(timeout, (int, float)):
                conn.ping_window = (interval + timeout) / 1000.0
                conn.ping_deadline = _now() + conn.ping_window
            self._session_up(conn, str(data.get("sid", "")))
        elif event == CONNECT_ERROR and conn.sid is None:
            self._refuse(conn, packets.connect_error_message(data))
        elif event in (CONNECTED, CONNECT_ERROR):
            self._report("protocol_error", f"{event!r} on a connected session: {bytes(p[:60])!r}")
        elif type(event) is str:
            self._report("protocol_error", f"unknown event {event!r}")
        else:
            self._report("protocol_error", f"envelope without an event name or ack id: {bytes(p[:60])!r}")

    def _not_an_envelope(self, conn: Conn, p: frames.Payload, why: str) -> None:
        if conn.sid is None:  # the first message already: the wrong kind of server
            self._abort(conn, f"the server's first message is {why}, not a JSON envelope: {bytes(p[:40])!r}; "
                              "if this is a Socket.IO server, use --transport lean or compat")
        else:
            self._report("protocol_error", f"{why}: {bytes(p[:60])!r}")
