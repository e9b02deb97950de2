"""The "py-foreign" server: an independent server that follows the contract its own way.

It behaves like the foreign servers roombench meets in the wild, to keep the generator
honest about them (profile: ``roombench/wire/profiles/foreign-example.toml``):

- users are named by the server, from the socket id: a reconnect gives a new name, and
  whatever user id the client offers is ignored;
- the ``send_message`` ack goes out before the fan-out (the sender's own copy comes second);
- message ids are opaque strings (``m-<hex>``), ordered only by the server;
- the REST backfill wants ``X-Access-Token: <token>``, and answers
  ``{"data": {"items": [...]}, "next": <cursor or null>}`` one page at a time;
- timestamps are milliseconds.

Built from the reference server's pieces like :mod:`roombench.servers.renamed`: its
:class:`~roombench.servers.renamed.RenamingServer` puts the profile's names on the wire, and
the reference handlers, store and REST app are subclassed where this server differs.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import socketio

from roombench.servers.reference import (MAX_LIMIT, Faults, Message, RoomStore, _error, _is_str, _json,
                                         _LiveHandlers)
from roombench.servers.renamed import ProfileRest, RenamingServer
from roombench.wire.profile import PROFILES_DIR, Profile, load_profile

__all__ = ["ForeignStore", "create_app", "DEFAULT_PROFILE_PATH"]

DEFAULT_PROFILE_PATH = PROFILES_DIR / "foreign-example.toml"


def create_app(token: str | None = None, profile_path: str | Path = DEFAULT_PROFILE_PATH,
               int_ids: bool = False) -> socketio.ASGIApp:
    """Build the foreign server (an ASGI app); ``token`` is required on connect (in the
    auth payload) and as ``X-Access-Token`` on the backfill. ``int_ids``: ids 1, 2, 3… per
    channel instead of strings (to test one habit at a time)."""
    profile = load_profile(profile_path)
    store = ForeignStore(int_ids)
    sio = RenamingServer(profile, async_mode="asgi", cors_allowed_origins="*", transports=["websocket"],
                         logger=False, engineio_logger=False)
    _ForeignHandlers(sio, store, token, Faults())
    rest = _ForeignRest(profile, store, token)
    return socketio.ASGIApp(sio, other_asgi_app=rest, socketio_path=profile.path.strip("/"),
                            on_startup=partial(store.start, sio), on_shutdown=store.close)


class ForeignStore(RoomStore):
    """In-memory messages with opaque string ids; order is insertion order per channel."""

    def __init__(self, int_ids: bool = False) -> None:
        super().__init__()
        self.int_ids = int_ids
        self._lists: dict[str, list[Message]] = {}
        self._index: dict[str, dict[str, int]] = {}  # channel -> id -> position

    async def append(self, channel_id: str, sender_id: str, content: str, temp_id: str) -> Message:
        messages = self._lists.setdefault(channel_id, [])
        new_id: Any = len(messages) + 1 if self.int_ids else f"m-{uuid.uuid4().hex[:16]}"
        message = {"id": new_id, "channel_id": channel_id, "sender_id": sender_id,
                   "content": content, "temp_id": temp_id, "ts": int(time.time() * 1000)}
        self._index.setdefault(channel_id, {})[message["id"]] = len(messages)
        messages.append(message)
        return message

    async def last_id(self, channel_id: str) -> str | None:
        messages = self._lists.get(channel_id)
        return messages[-1]["id"] if messages else None

    async def after(self, channel_id: str, after: Any, limit: int) -> list[Message]:
        """At most ``limit`` messages after the one with id ``after`` ("" or unknown: from the start)."""
        messages = self._lists.get(channel_id, [])
        position = self._index.get(channel_id, {}).get(self._key(after))
        start = 0 if position is None else position + 1
        return messages[start : start + limit]

    def _key(self, message_id: Any) -> Any:
        """An id as the index holds it (a query string's "5" is id 5 under int ids)."""
        if self.int_ids and isinstance(message_id, str) and message_id.isdigit():
            return int(message_id)
        return message_id

    def more_after(self, channel_id: str, message_id: Any) -> bool:
        """True when the channel holds messages newer than ``message_id``."""
        position = self._index.get(channel_id, {}).get(self._key(message_id))
        return position is not None and position + 1 < len(self._lists.get(channel_id, []))


class _ForeignHandlers(_LiveHandlers):
    """The reference handlers, but the server names users and acks before it fans out."""

    def __init__(self, sio: socketio.AsyncServer, store: RoomStore, token: str | None, faults: Faults) -> None:
        super().__init__(sio, store, token, faults)
        # one consumer keeps every channel's fan-out in store order, after the acks
        self._outbox: asyncio.Queue[tuple[str, Message]] | None = None

    async def connect(self, sid: str, environ: dict, auth: Any = None) -> None:
        auth = auth if isinstance(auth, dict) else {}
        if self.token is not None and auth.get("token") != self.token:
            raise socketio.exceptions.ConnectionRefusedError("invalid token")
        self.users[sid] = f"u-{sid}"  # our own name for the user: the client's is ignored

    async def send_message(self, sid: str, data: Any = None) -> dict[str, Any]:
        if not _is_str(data, "channel_id", "content", "temp_id"):
            return _error('send_message needs {"channel_id", "content", "temp_id"}, all strings')
        message = await self.store.append(data["channel_id"], self.users.get(sid, sid), data["content"],
                                          data["temp_id"])
        if self._outbox is None:
            self._outbox = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._fan_out_loop(self._outbox))
        self._outbox.put_nowait((sid, message))  # delivered after this ack is on its way
        return {"id": message["id"], "temp_id": message["temp_id"]}

    async def _fan_out_loop(self, outbox: asyncio.Queue[tuple[str, Message]]) -> None:
        while True:
            sid, message = await outbox.get()
            await self.sio.emit("new_message", message, room=message["channel_id"])

    async def mark_read(self, sid: str, data: Any = None) -> dict[str, str] | None:
        message_id = data.get("message_id") if isinstance(data, dict) else None
        if not _is_str(data, "channel_id") or type(message_id) not in (str, int):
            return _error('mark_read needs {"channel_id": <string>, "message_id": <id>}')
        event = {"channel_id": data["channel_id"], "message_id": data["message_id"],
                 "user_id": self.users.get(sid, sid)}
        await self.sio.emit("message_read", event, room=data["channel_id"])
        return None


class _ForeignRest(ProfileRest):
    """``GET`` the profile's backfill URL with ``X-Access-Token``; cursor-paged, wrapped answers."""

    def __init__(self, profile: Profile, store: ForeignStore, token: str | None) -> None:
        super().__init__(profile, store, None, Faults())  # no Bearer check: the token is X-Access-Token
        self.foreign = store
        self.token = None if token is None else token.encode()

    async def answer_backfill(self, scope: dict[str, Any], channel: bytes,
                              query: dict[str, str]) -> tuple[int, bytes, bytes]:
        if scope["method"] != "GET":
            return _json(405, _error("method not allowed; use GET"))
        if self.token is not None and dict(scope["headers"]).get(b"x-access-token") != self.token:
            return _json(401, _error("missing or invalid X-Access-Token"))
        channel_id = unquote_to_bytes(channel).decode("utf-8", "replace")
        try:
            limit = min(int(query.get("limit") or 50), MAX_LIMIT)
        except ValueError:
            return _json(400, _error("limit must be an integer"))
        position = query.get("cursor") or query.get("after") or ""
        items = await self.foreign.after(channel_id, position, max(1, limit))
        nxt = items[-1]["id"] if items and self.foreign.more_after(channel_id, items[-1]["id"]) else None
        to_wire = self.profile.fields
        wire = [{to_wire.get(k, k): v for k, v in m.items()} for m in items]
        return _json(200, {"data": {"items": wire}, "next": nxt})
