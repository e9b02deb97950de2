"""The reference room server: the wire contract of docs/PROTOCOL.md, in memory, in one process.

One python-socketio ``AsyncServer`` (Socket.IO v5 / Engine.IO v4, websocket only) for the
live events, plus a tiny raw ASGI app for the REST backfill and ``/healthz``. No web
framework: the REST surface is two routes and a framework would only add latency to the
thing being benchmarked.

:class:`Faults` turns the server into a deliberately *bad* server, exactly and
deterministically, so tests can prove that the generator's ledger notices.

The wire names below are the contract's own names. The generator never spells them (it asks
:mod:`roombench.wire.profile`); this module *is* the contract, so spelling them here is the point,
and it shares no code with the generator (see docs/ARCHITECTURE.md, "servers/").
"""

from __future__ import annotations

import asyncio
import random
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, unquote_to_bytes

import orjson
import socketio

__all__ = ["Faults", "RoomStore", "create_app", "MAX_LIMIT", "DEFAULT_LIMIT"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

Message = dict[str, Any]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Faults:
    """Deliberate, deterministic misbehaviour for testing the generator's checks.

    ``drop_live_every``: when K > 0, every message whose per-channel id is a multiple of K
    is not fanned out live to anyone but its sender (it is still stored, acked, and echoed
    to the sender if the sender is in the room) — lost live, recoverable by backfill.
    ``backfill_empty``: the REST backfill always answers ``[]``.
    ``ack_delay_ms``: every ``send_message`` ack is held back this long (the live fan-out
    is not delayed).
    ``duplicate_every``: every message whose id is a multiple of K is fanned out twice.
    ``garbage_every``: after every K-th message, a malformed ``new_message`` (a bare
    string) goes to the room.
    ``backfill_status``: the REST backfill answers this HTTP status (e.g. 500) with no body.
    ``backfill_garbage``: the REST backfill answers 200 with a body that is not JSON.
    ``backfill_stall_s``: the REST backfill waits this long before it answers.
    ``backfill_huge_items``: the REST backfill answers its page plus this many made-up
    messages (~105 bytes each, streamed: 1_000_000 is ~100 MB whatever the ``limit``).
    ``ack_jitter_ms``: every ``send_message`` ack is held back a random 0..J ms after its
    fan-out (seeded: the same run twice is the same), so acks of one socket, handled
    concurrently, leave in another order than their messages were stored and fanned out.
    ``reorder_every``: every K-th message of each sender in a channel is fanned out live
    only after that sender's next message there (every member, the sender too, gets
    the two swapped; the acks stay in order).
    ``backfill_fail_first``: the first N backfill requests answer HTTP 503 (a server
    still starting, or shedding load): a client that asks again a moment later gets them.

    The last six are the python servers' only: ``reorder_every`` and ``ack_jitter_ms`` need
    this module's live handlers (py, py-renamed), the backfill ones its
    ``/channels/{id}/messages`` route (py, ws); node refuses them by name.
    """

    drop_live_every: int = 0
    backfill_empty: bool = False
    ack_delay_ms: float = 0.0
    duplicate_every: int = 0
    garbage_every: int = 0
    backfill_status: int = 0
    backfill_garbage: bool = False
    backfill_stall_s: float = 0.0
    backfill_huge_items: int = 0
    reorder_every: int = 0
    ack_jitter_ms: float = 0.0
    backfill_fail_first: int = 0

    def __post_init__(self) -> None:
        for name in ("backfill_huge_items", "reorder_every", "backfill_fail_first"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if not isinstance(self.ack_jitter_ms, (int, float)) or not 0 <= self.ack_jitter_ms <= 60_000:
            raise ValueError(f"ack_jitter_ms must be a number of ms in 0..60000, got {self.ack_jitter_ms!r}")
        if not isinstance(self.backfill_stall_s, (int, float)) or not 0 <= self.backfill_stall_s <= 3600:
            raise ValueError(f"backfill_stall_s must be a number of seconds in 0..3600, got {self.backfill_stall_s!r}")
        if not isinstance(self.drop_live_every, int) or self.drop_live_every < 0:
            raise ValueError(f"drop_live_every must be an int >= 0, got {self.drop_live_every!r}")
        if not isinstance(self.ack_delay_ms, (int, float)) or self.ack_delay_ms < 0:
            raise ValueError(f"ack_delay_ms must be a number >= 0, got {self.ack_delay_ms!r}")

    def drops(self, message_id: int) -> bool:
        """True when this message's live fan-out to the other members is to be lost."""
        return self.drop_live_every > 0 and message_id % self.drop_live_every == 0


@dataclass
class _Channel:
    messages: list[Message] = field(default_factory=list)
    next_id: int = 1


class RoomStore:
    """All messages of all channels, in memory; ids are 1, 2, 3… per channel.

    The live handlers and the REST app only use the async methods below, so a shared store
    (:class:`roombench.servers.redis_store.RedisRoomStore`) can stand in for this one.
    """

    #: True for a store that fans every stored message out itself (a shared store must, so
    #: that all processes deliver a channel's messages in id order); the handlers then don't.
    publishes = False

    def __init__(self) -> None:
        self._channels: dict[str, _Channel] = {}

    async def start(self, sio: socketio.AsyncServer) -> None:
        """Called once at app startup, before the server answers anything."""

    async def close(self) -> None:
        """Called once at app shutdown."""

    async def append(self, channel_id: str, sender_id: str, content: str, temp_id: str) -> Message:
        """Store a message under the channel's next id and return it."""
        channel = self._channels.get(channel_id)
        if channel is None:
            channel = self._channels[channel_id] = _Channel()
        message = {
            "id": channel.next_id,
            "channel_id": channel_id,
            "sender_id": sender_id,
            "content": content,
            "temp_id": temp_id,
            "ts": time.time(),
        }
        channel.next_id += 1
        channel.messages.append(message)
        return message

    async def last_id(self, channel_id: str) -> int | None:
        """The newest id in the channel, or None when it has no messages (or does not exist)."""
        channel = self._channels.get(channel_id)
        if channel is None or not channel.messages:
            return None
        return channel.messages[-1]["id"]

    async def after(self, channel_id: str, after: int, limit: int) -> list[Message]:
        """At most ``limit`` messages with id > ``after``, in id order."""
        channel = self._channels.get(channel_id)
        if channel is None:
            return []
        start = bisect_right(channel.messages, after, key=lambda m: m["id"])
        return channel.messages[start : start + limit]


def create_app(
    token: str | None = None,
    faults: Faults | None = None,
    store: RoomStore | None = None,
    client_manager: socketio.AsyncManager | None = None,
) -> socketio.ASGIApp:
    """Build the reference server as an ASGI app (run it with uvicorn).

    ``token``: when set, Socket.IO connects must carry ``auth={"token": token}`` and REST
    requests ``Authorization: Bearer <token>``. ``faults``: see :class:`Faults`.
    ``store`` (default: a new in-memory :class:`RoomStore`) and ``client_manager`` (default:
    python-socketio's in-process one) let several processes share rooms and messages.
    """
    faults = faults or Faults()
    store = store if store is not None else RoomStore()
    sio = socketio.AsyncServer(
        client_manager=client_manager,
        async_mode="asgi",
        cors_allowed_origins="*",
        transports=["websocket"],
        logger=False,
        engineio_logger=False,
    )
    _LiveHandlers(sio, store, token, faults)
    rest = _RestApp(store, token, faults)
    return socketio.ASGIApp(
        sio, other_asgi_app=rest, socketio_path="socket.io",
        on_startup=partial(store.start, sio), on_shutdown=store.close,
    )


def _error(message: str) -> dict[str, str]:
    return {"error": message}


def _is_str(payload: Any, *keys: str) -> bool:
    return isinstance(payload, dict) and all(isinstance(payload.get(k), str) for k in keys)


class _LiveHandlers:
    """The Socket.IO side: one method per contract event, registered on the AsyncServer."""

    EVENTS = ("connect", "disconnect", "join", "leave", "send_message", "typing", "mark_read")

    def __init__(
        self, sio: socketio.AsyncServer, store: RoomStore, token: str | None, faults: Faults
    ) -> None:
        self.sio = sio
        self.store = store
        self.token = token
        self.faults = faults
        self.ack_delay = faults.ack_delay_ms / 1000.0
        # reorder_every: (channel, sender's sid) -> the message held back until that sender's next one there
        self.held: dict[tuple[str, str], Message] = {}
        self.sent_by: dict[tuple[str, str], int] = {}
        self.jitter = random.Random(0)
        # sid -> user_id; a plain dict is cheaper than get_session() on every event
        self.users: dict[str, str] = {}
        for event in self.EVENTS:
            sio.on(event, getattr(self, event))

    async def connect(self, sid: str, environ: dict, auth: Any = None) -> None:
        auth = auth if isinstance(auth, dict) else {}
        if self.token is not None and auth.get("token") != self.token:
            raise socketio.exceptions.ConnectionRefusedError("invalid token")
        user_id = auth.get("user_id")
        self.users[sid] = user_id if isinstance(user_id, str) and user_id else sid

    async def disconnect(self, sid: str, *reason: Any) -> None:
        self.users.pop(sid, None)

    async def join(self, sid: str, data: Any = None) -> dict[str, Any]:
        if not _is_str(data, "room"):
            return _error('join needs {"room": <string>}')
        await self.sio.enter_room(sid, data["room"])
        return {"ok": True, "last_id": await self.store.last_id(data["room"])}

    async def leave(self, sid: str, data: Any = None) -> dict[str, Any]:
        if not _is_str(data, "room"):
            return _error('leave needs {"room": <string>}')
        await self.sio.leave_room(sid, data["room"])
        return {"ok": True}

    async def send_message(self, sid: str, data: Any = None) -> dict[str, Any]:
        if not _is_str(data, "channel_id", "content", "temp_id"):
            return _error('send_message needs {"channel_id", "content", "temp_id"}, all strings')
        channel_id = data["channel_id"]
        sender = self.users.get(sid, sid)
        message = await self.store.append(channel_id, sender, data["content"], data["temp_id"])
        if not self.store.publishes:  # a shared store fans out itself, in id order
            await self._fan_out(sid, message)
        if self.ack_delay:
            await asyncio.sleep(self.ack_delay)
        if self.faults.ack_jitter_ms:
            await asyncio.sleep(self.jitter.uniform(0, self.faults.ack_jitter_ms) / 1000.0)
        return {"id": message["id"], "temp_id": message["temp_id"]}

    async def _fan_out(self, sid: str, message: Message) -> None:
        channel_id = message["channel_id"]
        if self.faults.reorder_every and self._reorders(channel_id, sid):
            self.held[(channel_id, sid)] = message
        elif not self.faults.drops(message["id"]):
            await self.sio.emit("new_message", message, room=channel_id)
            held = self.held.pop((channel_id, sid), None)
            if held is not None:
                await self.sio.emit("new_message", held, room=channel_id)
            if _every(self.faults.duplicate_every, message["id"]):
                await self.sio.emit("new_message", message, room=channel_id)
            if _every(self.faults.garbage_every, message["id"]):
                await self.sio.emit("new_message", "garbage", room=channel_id)
        elif channel_id in self.sio.rooms(sid):
            await self.sio.emit("new_message", message, to=sid)

    def _reorders(self, channel_id: str, sid: str) -> bool:
        """reorder_every: whether this is the K-th, 2K-th... message of ``sid`` in the channel."""
        key = (channel_id, sid)
        n = self.sent_by[key] = self.sent_by.get(key, 0) + 1
        return n % self.faults.reorder_every == 0

    async def typing(self, sid: str, data: Any = None) -> dict[str, str] | None:
        if not _is_str(data, "channel"):
            return _error('typing needs {"channel": <string>}')
        event = {"channel": data["channel"], "user_id": self.users.get(sid, sid)}
        await self.sio.emit("user_typing", event, room=data["channel"], skip_sid=sid)
        return None

    async def mark_read(self, sid: str, data: Any = None) -> dict[str, str] | None:
        message_id = data.get("message_id") if isinstance(data, dict) else None
        # bool is an int subclass; a read marker of True is not a message id
        if not _is_str(data, "channel_id") or type(message_id) is not int:
            return _error('mark_read needs {"channel_id": <string>, "message_id": <int>}')
        user_id = self.users.get(sid, sid)
        event = {"channel_id": data["channel_id"], "message_id": message_id, "user_id": user_id}
        await self.sio.emit("message_read", event, room=data["channel_id"])
        return None


class _BadRequest(Exception):
    pass


def _int_param(query: dict[str, list[str]], name: str, default: int) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        return int(values[-1])
    except ValueError:
        raise _BadRequest(f"{name} must be an integer, got {values[-1]!r}") from None


class _RestApp:
    """The plain-HTTP side: ``GET /healthz`` and ``GET /channels/{id}/messages``."""

    def __init__(self, store: RoomStore, token: str | None, faults: Faults) -> None:
        self.store = store
        self.faults = faults
        self.auth = None if token is None else b"Bearer " + token.encode()
        self.backfills_failed = 0  # of faults.backfill_fail_first

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            # a websocket to any path but /socket.io/: refuse the handshake (HTTP 403)
            await receive()
            await send({"type": "websocket.close", "code": 1008})
            return
        if self.faults.backfill_huge_items and self._is_messages(scope) and self._authorized(scope):
            await self._huge(scope, receive, send)
            return
        status, body, content_type = await self.route(scope)
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        if status == 405:
            headers.append((b"allow", b"GET"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def route(self, scope: Scope) -> tuple[int, bytes, bytes]:
        """Answer one request: (status, body, content type)."""
        # raw_path keeps %2F apart from "/", so a channel id may contain a slash
        raw = scope.get("raw_path") or scope["path"].encode()
        parts = raw.split(b"?", 1)[0].split(b"/")
        if parts == [b"", b"healthz"]:
            return self._only_get(scope) or (200, b"ok", b"text/plain; charset=utf-8")
        if len(parts) == 4 and parts[1] == b"channels" and parts[2] and parts[3] == b"messages":
            channel_id = unquote_to_bytes(parts[2]).decode("utf-8", "replace")
            return self._only_get(scope) or await self.messages(scope, channel_id)
        return _json(404, _error("not found"))

    @staticmethod
    def _only_get(scope: Scope) -> tuple[int, bytes, bytes] | None:
        if scope["method"] == "GET":
            return None
        return _json(405, _error("method not allowed; use GET"))

    def _authorized(self, scope: Scope) -> bool:
        return self.auth is None or dict(scope["headers"]).get(b"authorization") == self.auth

    @staticmethod
    def _is_messages(scope: Scope) -> bool:
        parts = (scope.get("raw_path") or scope["path"].encode()).split(b"?", 1)[0].split(b"/")
        return scope["type"] == "http" and len(parts) == 4 and parts[1] == b"channels" and parts[3] == b"messages"

    async def _huge(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Fault backfill_huge_items: the real page, then that many made-up messages,
        streamed in chunks until done or the client goes away."""
        await receive()  # the (empty) request body; the next receive() is the disconnect
        gone = asyncio.ensure_future(receive())
        status, page, _ = await self.route(scope)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        try:
            if status != 200:
                await send({"type": "http.response.body", "body": page})
                return
            await send({"type": "http.response.body", "body": page[:-1], "more_body": True})
            n, block = self.faults.backfill_huge_items, 10_000
            sep = b"," if page != b"[]" else b""
            for start in range(0, n, block):
                if gone.done():
                    return
                junk = [{"id": 10**12 + i, "channel_id": "junk", "sender_id": "junk", "content": "x",
                         "temp_id": f"junk-{i}", "ts": 0.0} for i in range(start, min(n, start + block))]
                await send({"type": "http.response.body", "body": sep + orjson.dumps(junk)[1:-1], "more_body": True})
                sep = b","
                await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": b"]"})
        finally:
            gone.cancel()

    async def messages(self, scope: Scope, channel_id: str) -> tuple[int, bytes, bytes]:
        """The backfill: messages with id > after, in id order, at most limit."""
        if not self._authorized(scope):
            return _json(401, _error("missing or invalid bearer token"))
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            after = _int_param(query, "after", 0)
            limit = _int_param(query, "limit", DEFAULT_LIMIT)
            if after < 0 or limit < 1:
                raise _BadRequest("after must be >= 0 and limit >= 1")
        except _BadRequest as exc:
            return _json(400, _error(str(exc)))
        if self.backfills_failed < self.faults.backfill_fail_first:
            self.backfills_failed += 1
            return _json(503, _error("starting up, try again"))
        if self.faults.backfill_stall_s:
            await asyncio.sleep(self.faults.backfill_stall_s)
        if self.faults.backfill_status:
            return self.faults.backfill_status, b"", b"text/plain"
        if self.faults.backfill_garbage:
            return 200, b"<html>not json", b"text/html"
        if self.faults.backfill_empty:
            return _json(200, [])
        return _json(200, await self.store.after(channel_id, after, min(limit, MAX_LIMIT)))


def _every(k: int, message_id: int) -> bool:
    return k > 0 and message_id % k == 0


def _json(status: int, payload: Any) -> tuple[int, bytes, bytes]:
    return status, orjson.dumps(payload), b"application/json"

