"""The plain WebSocket room server ("ws"): the contract's events in a JSON envelope.

The reference server's semantics (rooms per connection, per-channel ids, join ack
``{ok, last_id}``, send ack ``{id, temp_id}``, fan-out to every member including the
sender, typing to the others, read receipts to the room, the same :class:`Faults`) on a raw
ASGI websocket endpoint at :data:`WS_PATH` instead of python-socketio; the envelope is
docs/PROTOCOL.md's "Plain WebSocket variant". The REST backfill and ``/healthz`` are the
reference server's own ASGI handler and :class:`RoomStore`, imported, not copied.

Like the reference module, this one *is* the contract, so it spells the wire names itself
and shares no code with the generator.
"""

from __future__ import annotations

import asyncio
import secrets
import types
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any
from urllib.parse import parse_qs

import orjson

from roombench.servers.reference import Faults, Message, Receive, RoomStore, Scope, Send, _RestApp

__all__ = ["Faults", "create_app", "WS_PATH", "REFUSED_CODE", "PING_INTERVAL_MS", "PING_TIMEOUT_MS"]

WS_PATH = "/ws"
#: the close code after a refused connect (4000-4999 are the application's; 401 as in HTTP)
REFUSED_CODE = 4401
# uvicorn's ws_ping_interval / ws_ping_timeout defaults, which `python -m roombench.servers` keeps:
# announced in "connected" so that clients know when a silent connection is dead
PING_INTERVAL_MS = 20000
PING_TIMEOUT_MS = 20000


def create_app(token: str | None = None, faults: Faults | None = None) -> _App:
    """Build the plain WebSocket server as an ASGI app (run it with uvicorn).

    ``token``: when set, the handshake must carry ``?token=<token>`` (or ``Authorization:
    Bearer <token>``) and REST requests ``Authorization: Bearer <token>``.
    ``faults``: deliberate misbehaviour, as for the reference server.
    """
    faults = faults or Faults()
    store = RoomStore()
    return _App(_Hub(store, faults), _RestApp(store, token, faults), token)


def _envelope(event: str, data: Any) -> str:
    return orjson.dumps({"event": event, "data": data}).decode()


def _is_str(payload: Any, *keys: str) -> bool:
    return isinstance(payload, dict) and all(isinstance(payload.get(k), str) for k in keys)


def _every(k: int, message_id: int) -> bool:
    return k > 0 and message_id % k == 0


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], waiting_on: Any) -> Generator[Any, Any, Any]:
    """Finish ``coro``, which was stepped by hand and is suspended on ``waiting_on``, in the
    awaiting task (what ``asyncio.Task(..., eager_start=True)`` does on Python 3.12+)."""
    while True:
        try:
            value = yield waiting_on
        except BaseException as exc:  # cancelled while it waited: it gets to clean up
            try:
                waiting_on = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                waiting_on = coro.send(value)
            except StopIteration as stop:
                return stop.value


#: ASGI's ``send`` as uvicorn implements it, an ``async def``: each call is a coroutine,
#: which :meth:`_Peer.post` steps by hand (a bare Awaitable could not be)
_CoroSend = Callable[[Message], Coroutine[Any, Any, None]]


class _Peer:
    """One client connection: its ASGI ``send``, who it is, its rooms, its send backlog."""

    __slots__ = ("send", "sid", "user_id", "rooms", "backlog", "drainer")

    def __init__(self, send: _CoroSend, sid: str, user_id: str) -> None:
        self.send = send
        self.sid = sid
        self.user_id = user_id
        self.rooms: set[str] = set()
        self.backlog: deque[str] | None = None
        self.drainer: asyncio.Future[None] | None = None

    def post(self, text: str) -> None:
        """Send ``text`` without waiting: a fan-out never stalls on one slow client.

        uvicorn's send writes at once unless the client's socket is backed up; only then
        does it suspend, and only then does this peer get a task that finishes that send
        and the ones queued behind it, in order.
        """
        if self.backlog is not None:
            self.backlog.append(text)
            return
        coro = self.send({"type": "websocket.send", "text": text})
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return  # written: nearly always
        except Exception:  # noqa: BLE001 - gone; its receive loop sees the disconnect
            return
        self.backlog = deque()
        self.drainer = asyncio.ensure_future(self._drain(coro, waiting_on))

    async def _drain(self, coro: Coroutine[Any, Any, Any], waiting_on: Any) -> None:
        try:
            await _resume(coro, waiting_on)
            while self.backlog:
                await self.send({"type": "websocket.send", "text": self.backlog.popleft()})
        except Exception:  # noqa: BLE001, S110 - gone; its receive loop sees the disconnect
            pass
        finally:
            self.backlog = None
            self.drainer = None


class _Hub:
    """Rooms and the contract's events: one method per client event, returning the ack payload."""

    def __init__(self, store: RoomStore, faults: Faults) -> None:
        self.store = store
        self.faults = faults
        self.ack_delay = faults.ack_delay_ms / 1000.0
        self.rooms: dict[str, dict[str, _Peer]] = {}
        self.events = {"join": self.join, "leave": self.leave, "send_message": self.send_message,
                       "typing": self.typing, "mark_read": self.mark_read}

    async def on_text(self, peer: _Peer, text: str | None) -> None:
        """One client message: run its event, answer its ack id if it has one."""
        try:
            msg = orjson.loads(text) if text is not None else None
        except orjson.JSONDecodeError:
            msg = None
        if not isinstance(msg, dict):
            msg = {}
        event, aid = msg.get("event"), msg.get("ack")
        handler = self.events.get(event) if isinstance(event, str) else None
        if handler is None:
            # not an envelope, or not a contract event: nothing happens; an ack id gets told why
            answer: dict[str, Any] | None = {"error": 'expected {"event": <a contract event>, "data": ...}'}
        else:
            answer = await handler(peer, msg.get("data"))
        if type(aid) is not int:
            return
        reply = orjson.dumps({"ack": aid, "data": answer}).decode()
        if self.ack_delay and event == "send_message":
            asyncio.get_running_loop().call_later(self.ack_delay, peer.post, reply)
        else:
            peer.post(reply)

    def forget(self, peer: _Peer) -> None:
        """The peer disconnected: it leaves every room."""
        for room in peer.rooms:
            members = self.rooms.get(room)
            if members is not None:
                members.pop(peer.sid, None)
                if not members:
                    del self.rooms[room]
        peer.rooms.clear()

    def broadcast(self, room: str, text: str, skip: _Peer | None = None) -> None:
        """``text`` to every member of ``room`` but ``skip``."""
        for member in self.rooms.get(room, {}).values():
            if member is not skip:
                member.post(text)

    async def join(self, peer: _Peer, data: Any) -> dict[str, Any]:
        if not _is_str(data, "room"):
            return {"error": 'join needs {"room": <string>}'}
        room = data["room"]
        self.rooms.setdefault(room, {})[peer.sid] = peer
        peer.rooms.add(room)
        return {"ok": True, "last_id": await self.store.last_id(room)}

    async def leave(self, peer: _Peer, data: Any) -> dict[str, Any]:
        if not _is_str(data, "room"):
            return {"error": 'leave needs {"room": <string>}'}
        peer.rooms.discard(data["room"])
        members = self.rooms.get(data["room"])
        if members is not None:
            members.pop(peer.sid, None)
            if not members:
                del self.rooms[data["room"]]
        return {"ok": True}

    async def send_message(self, peer: _Peer, data: Any) -> dict[str, Any]:
        if not _is_str(data, "channel_id", "content", "temp_id"):
            return {"error": 'send_message needs {"channel_id", "content", "temp_id"}, all strings'}
        message = await self.store.append(data["channel_id"], peer.user_id, data["content"], data["temp_id"])
        self._fan_out(peer, message)
        return {"id": message["id"], "temp_id": message["temp_id"]}

    def _fan_out(self, peer: _Peer, message: Message) -> None:
        room, mid = message["channel_id"], message["id"]
        text = _envelope("new_message", message)
        if not self.faults.drops(mid):
            self.broadcast(room, text)
            if _every(self.faults.duplicate_every, mid):
                self.broadcast(room, text)
            if _every(self.faults.garbage_every, mid):
                self.broadcast(room, _envelope("new_message", "garbage"))
        elif room in peer.rooms:
            peer.post(text)

    async def typing(self, peer: _Peer, data: Any) -> dict[str, str] | None:
        if not _is_str(data, "channel"):
            return {"error": 'typing needs {"channel": <string>}'}
        event = {"channel": data["channel"], "user_id": peer.user_id}
        self.broadcast(data["channel"], _envelope("user_typing", event), skip=peer)
        return None

    async def mark_read(self, peer: _Peer, data: Any) -> dict[str, str] | None:
        message_id = data.get("message_id") if isinstance(data, dict) else None
        # bool is an int subclass; a read marker of True is not a message id
        if not _is_str(data, "channel_id") or type(message_id) is not int:
            return {"error": 'mark_read needs {"channel_id": <string>, "message_id": <int>}'}
        event = {"channel_id": data["channel_id"], "message_id": message_id, "user_id": peer.user_id}
        self.broadcast(data["channel_id"], _envelope("message_read", event))
        return None


class _App:
    """The ASGI entry: websockets on :data:`WS_PATH` are sessions; everything else is REST."""

    def __init__(self, hub: _Hub, rest: _RestApp, token: str | None) -> None:
        self.hub = hub
        self.rest = rest
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: _CoroSend) -> None:
        kind = scope["type"]
        if kind == "websocket" and scope["path"].rstrip("/") == WS_PATH:
            await self.session(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)
        else:  # HTTP, and websockets to other paths (refused with HTTP 403)
            await self.rest(scope, receive, send)

    async def session(self, scope: Scope, receive: Receive, send: _CoroSend) -> None:
        """One connection from handshake to disconnect."""
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if not self._authorized(scope, query):
            try:
                await send({"type": "websocket.send", "text": _envelope("connect_error", {"message": "invalid token"})})
                await send({"type": "websocket.close", "code": REFUSED_CODE, "reason": "invalid token"})
            except OSError:  # the client hung up on reading the refusal: fine
                pass
            return
        sid = secrets.token_urlsafe(12)
        peer = _Peer(send, sid, (query.get("user_id") or [""])[-1] or sid)
        peer.post(_envelope("connected", {"sid": sid, "pingInterval": PING_INTERVAL_MS,
                                          "pingTimeout": PING_TIMEOUT_MS}))
        try:
            while True:
                message = await receive()
                if message["type"] != "websocket.receive":
                    return  # websocket.disconnect
                await self.hub.on_text(peer, message.get("text"))
        finally:
            self.hub.forget(peer)
            if peer.drainer is not None:
                peer.drainer.cancel()

    def _authorized(self, scope: Scope, query: dict[str, list[str]]) -> bool:
        if self.token is None:
            return True
        if (query.get("token") or [""])[-1] == self.token:
            return True
        return dict(scope.get("headers", [])).get(b"authorization") == b"Bearer " + self.token.encode()


async def _lifespan(receive: Receive, send: Send) -> None:
    # nothing to start or stop (the store is in memory); answering keeps uvicorn quiet
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
