"""Engine.IO v4 / Socket.IO v5 packets without I/O: bytes in, bytes out; JSON through orjson.

Anything we cannot parse raises :class:`~roombench.exceptions.ProtocolError` naming what was wrong.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from roombench.exceptions import ProtocolError

# Engine.IO v4 packet types (one decimal digit on the wire)
OPEN, CLOSE, PING, PONG, MESSAGE, UPGRADE, NOOP = range(7)
# Socket.IO v5 packet types, numbered as their two-character wire prefix "4<type>"
CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR, BINARY_EVENT, BINARY_ACK = range(40, 47)

#: an ack id is a counter; no client issues more than 2**64 of them
_MAX_ACK_DIGITS = 20

PING_PACKET = b"2"
PONG_PACKET = b"3"
CLOSE_PACKET = b"1"


# -------------------------------------------------------------------------- packets


class Packet(NamedTuple):
    """A decoded packet.

    ``type`` is an Engine.IO type (OPEN..NOOP) or, for Engine.IO messages, a Socket.IO
    type (CONNECT..BINARY_ACK). ``data`` is the JSON payload (EVENT/ACK: the argument
    list, event name first for EVENT), the text after the type for PING/PONG, or None.
    """

    type: int
    namespace: str = "/"
    ack_id: int | None = None
    data: Any = None


def _ns(namespace: str) -> bytes:
    # the default namespace is implicit; others are written "/ns," before ack id / JSON
    return b"" if namespace == "/" else namespace.encode() + b","


def encode_connect(namespace: str = "/", auth: dict[str, Any] | None = None) -> bytes:
    """``40{auth}`` or ``40/ns,{auth}``."""
    return b"40" + _ns(namespace) + (orjson.dumps(auth) if auth is not None else b"")


def encode_disconnect(namespace: str = "/") -> bytes:
    """``41`` or ``41/ns,``."""
    return b"41" + _ns(namespace)


def event_prefix(namespace: str = "/") -> bytes:
    """What every EVENT packet on ``namespace`` starts with (before ack id and JSON)."""
    return b"42" + _ns(namespace)


def encode_event(event: str, data: Any = None, ack_id: int | None = None, namespace: str = "/") -> bytes:
    """``42<ackid>["event",data]``; data None sends the event without arguments."""
    args = [event] if data is None else [event, data]
    aid = b"" if ack_id is None else b"%d" % ack_id
    return event_prefix(namespace) + aid + orjson.dumps(args)


def encode_ack(ack_id: int, data: Any = None, namespace: str = "/") -> bytes:
    """``43<ackid>[data]``; data None acknowledges without arguments."""
    args = [] if data is None else [data]
    return b"43" + _ns(namespace) + b"%d" % ack_id + orjson.dumps(args)


def encode_connect_error(message: str, namespace: str = "/") -> bytes:
    """``44{"message":...}`` (what a server sends to refuse a connect)."""
    return b"44" + _ns(namespace) + orjson.dumps({"message": message})


def encode_open(sid: str, ping_interval_ms: int = 25000, ping_timeout_ms: int = 20000) -> bytes:
    """The Engine.IO open packet ``0{...}`` a server sends first."""
    return b"0" + orjson.dumps({"sid": sid, "upgrades": [], "pingInterval": ping_interval_ms,
                                "pingTimeout": ping_timeout_ms, "maxPayload": 1000000})


def _loads(raw: bytes | bytearray | memoryview, what: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        text = bytes(raw[:60]).decode("utf-8", "replace")
        raise ProtocolError(f"invalid JSON in {what} packet ({exc}): {text!r}") from None


def decode_packet(p: bytes | bytearray) -> Packet:
    """Decode one Engine.IO packet (one WebSocket text message)."""
    if not p:
        raise ProtocolError("empty Engine.IO packet")
    e = p[0] - 0x30
    if e == MESSAGE:
        return _decode_socketio(p)
    if e == OPEN:
        return Packet(OPEN, data=_decode_open(p))
    if 0 < e <= NOOP:
        return Packet(e, data=bytes(p[1:]).decode("utf-8", "replace") or None)
    raise ProtocolError(f"unknown Engine.IO packet type {chr(p[0])!r} in {bytes(p[:40])!r}")


def _decode_open(p: bytes | bytearray) -> dict[str, Any]:
    data = _loads(p[1:], "Engine.IO OPEN")
    if not isinstance(data, dict) or not {"sid", "pingInterval", "pingTimeout"} <= data.keys():
        raise ProtocolError(f"Engine.IO OPEN packet lacks sid/pingInterval/pingTimeout: {bytes(p[:80])!r}")
    return data


_NAMES = {CONNECT: "CONNECT", DISCONNECT: "DISCONNECT", EVENT: "EVENT", ACK: "ACK",
          CONNECT_ERROR: "CONNECT_ERROR", BINARY_EVENT: "BINARY_EVENT", BINARY_ACK: "BINARY_ACK"}


def _decode_socketio(p: bytes | bytearray) -> Packet:
    n = len(p)
    if n < 2:
        raise ProtocolError("Engine.IO message without a Socket.IO packet type")
    t = 40 + p[1] - 0x30
    name = _NAMES.get(t)
    if name is None:
        raise ProtocolError(f"unknown Socket.IO packet type {chr(p[1])!r} in {bytes(p[:40])!r}")
    i = 2
    if t in (BINARY_EVENT, BINARY_ACK):  # "<attachments>-" before the rest
        dash = p.find(b"-", i)
        if dash < 0 or not p[i:dash].isdigit():
            raise ProtocolError(f"{name} packet without an attachment count: {bytes(p[:40])!r}")
        i = dash + 1
    namespace = "/"
    if i < n and p[i] == 0x2F:  # "/"
        comma = p.find(b",", i)
        stop = n if comma < 0 else comma
        namespace = bytes(p[i:stop]).decode("utf-8", "replace")
        i = stop + 1
    j = i
    while j < n and 0x30 <= p[j] <= 0x39:
        j += 1
    if j - i > _MAX_ACK_DIGITS:  # int() of thousands of digits raises ValueError (and is slow)
        raise ProtocolError(f"{name} packet with a {j - i}-digit ack id: {bytes(p[:40])!r}")
    ack_id = int(p[i:j]) if j > i else None
    data = _loads(p[j:], name) if j < n else None
    return Packet(t, namespace, ack_id, _check_data(t, name, ack_id, data, p))


def _check_data(t: int, name: str, ack_id: int | None, data: Any, p: bytes | bytearray) -> Any:
    if t == EVENT or t == BINARY_EVENT:
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            raise ProtocolError(f"{name} packet needs a JSON array starting with the event name: {bytes(p[:80])!r}")
    elif t == ACK or t == BINARY_ACK:
        if ack_id is None:
            raise ProtocolError(f"{name} packet without an ack id: {bytes(p[:80])!r}")
        if not isinstance(data, list):
            raise ProtocolError(f"{name} packet needs a JSON array of arguments: {bytes(p[:80])!r}")
    elif t == CONNECT and data is not None and not isinstance(data, dict):
        raise ProtocolError(f"CONNECT packet payload is not a JSON object: {bytes(p[:80])!r}")
    return data


def connect_error_message(data: Any) -> str:
    """The human message of a CONNECT_ERROR payload (v5 object or legacy string)."""
    if isinstance(data, dict):
        return str(data.get("message", data))
    return "no reason given" if data is None else str(data)


# ------------------------------------------------------ connection state recovery
# socket.io >= 4.6 with ``connectionStateRecovery``: the server's CONNECT reply carries
# ``{"sid", "pid"}`` (pid: the private session id, only when recovery is on); every EVENT it
# sends without an ack id carries the packet's offset (a string) as its last argument; a
# client reconnects with ``{"pid", "offset"}`` merged into its auth payload. ACK packets and
# events with an ack id are never recoverable and carry no offset. (socket.io's
# lib/socket.ts constructor and _onconnect, socket.io-adapter's SessionAwareAdapter,
# socket.io-client's Socket._sendConnectPacket / emitEvent / onconnect.)


def recovery_auth(auth: dict[str, Any] | None, pid: str | None, offset: str | None) -> dict[str, Any] | None:
    """The CONNECT payload with recovery: ``{pid, offset, **auth}`` (the auth keys win, as in
    socket.io-client's ``Object.assign({pid, offset}, auth)``); ``offset`` None is left out,
    as JSON leaves out the client's ``undefined``. No pid: ``auth`` unchanged."""
    if pid is None:
        return auth
    out: dict[str, Any] = {"pid": pid}
    if offset is not None:
        out["offset"] = offset
    if auth:
        out.update(auth)
    return out


def split_offset(args: list[Any]) -> tuple[list[Any], str | None]:
    """(the event's arguments without the offset, the offset) of a recoverable EVENT's
    argument list (event name first). The offset is the last argument when it is a string
    after the name; call this only on a session whose CONNECT reply had a pid."""
    if len(args) > 1 and type(args[-1]) is str:
        return args[:-1], args[-1]
    return args, None
