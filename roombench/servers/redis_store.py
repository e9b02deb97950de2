"""The ``py-redis`` variant: the reference app in several processes that share one Redis.

Each process is the reference server of :mod:`roombench.servers.reference` with two parts
swapped in:

* python-socketio's ``AsyncRedisManager`` as the client manager, so an event emitted to a
  room on one process (``user_typing``, ``message_read``) reaches the room's members on
  every process;
* :class:`RedisRoomStore` instead of the in-memory store: per channel a counter (``INCR``)
  and a sorted set scored by id, so the join ack's ``last_id`` and the REST backfill are
  the same on every process and ``after``/``limit`` is one ``ZRANGEBYSCORE`` (O(log n + limit)).

``new_message`` does not go through the manager: one Lua script assigns the id, stores the
message and ``PUBLISH``-es it, atomically. Redis runs scripts one at a time and delivers a
channel's publications in order, so every process sees a channel's messages in id order and
hands them to its own sockets from one listener task (``emit(..., ignore_queue=True)``).
Going through the manager would assign the id and publish in two steps, and a message could
overtake a lower id from another process — out of order for the client, and a lower id
missed live right before a drop would never be backfilled (``after`` the higher one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
import redis.asyncio as aioredis
import socketio

from roombench.servers.reference import Message, RoomStore
from roombench.servers.reference import create_app as create_reference_app

__all__ = ["RedisRoomStore", "create_app", "DEFAULT_REDIS_URL"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_PREFIX = "roombench:"

# KEYS: counter, sorted set. ARGV: pub/sub channel, the message's JSON object without its id.
# The id goes first by string surgery, so the bytes stored and published are the same and
# nothing is re-encoded (cjson would also round the float ts to 14 digits).
_APPEND = """
local id = redis.call('INCR', KEYS[1])
local message = '{"id":' .. string.format('%d', id) .. ',' .. string.sub(ARGV[2], 2)
redis.call('ZADD', KEYS[2], id, message)
redis.call('PUBLISH', ARGV[1], message)
return id
"""

_log = logging.getLogger(__name__)


class RedisRoomStore(RoomStore):
    """Messages in Redis, shared by every process of the variant; see the module docstring."""

    publishes = True

    def __init__(self, url: str = DEFAULT_REDIS_URL, prefix: str = _PREFIX) -> None:
        self.url = url
        self.prefix = prefix
        self.pubsub_channel = prefix + "new_message"
        self.redis = aioredis.Redis.from_url(url)
        self._append = self.redis.register_script(_APPEND)
        self._listener: asyncio.Task[None] | None = None
        self._pubsub: Any = None

    def _keys(self, channel_id: str) -> tuple[str, str]:
        return f"{self.prefix}seq:{channel_id}", f"{self.prefix}messages:{channel_id}"

    async def start(self, sio: socketio.AsyncServer) -> None:
        """Subscribe before the server is ready, then fan out publications to local sockets."""
        self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self.pubsub_channel)
        self._listener = asyncio.create_task(self._listen(sio))

    async def close(self) -> None:
        """Stop the listener and close the Redis connections."""
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        if self._pubsub is not None:
            await self._pubsub.aclose()
        await self.redis.aclose()

    async def _listen(self, sio: socketio.AsyncServer) -> None:
        try:
            # one task, one subscription: local delivery keeps Redis's (= id) order
            async for item in self._pubsub.listen():
                if item["type"] != "message":
                    continue
                message = orjson.loads(item["data"])
                await sio.emit("new_message", message, room=message["channel_id"], ignore_queue=True)
        except asyncio.CancelledError:
            raise
        except Exception:  # a dead listener is a dead server: say so loudly
            _log.exception("py-redis: the new_message listener stopped")
            raise

    async def append(self, channel_id: str, sender_id: str, content: str, temp_id: str) -> Message:
        """Store the message under the channel's next id and publish it, in one step."""
        message = {
            "channel_id": channel_id,
            "sender_id": sender_id,
            "content": content,
            "temp_id": temp_id,
            "ts": time.time(),
        }
        body = orjson.dumps(message)
        message_id = await self._append(keys=self._keys(channel_id), args=[self.pubsub_channel, body])
        return {"id": int(message_id), **message}

    async def last_id(self, channel_id: str) -> int | None:
        """The newest id in the channel (the counter moves with the set), or None."""
        value = await self.redis.get(self._keys(channel_id)[0])
        return None if value is None else int(value)

    async def after(self, channel_id: str, after: int, limit: int) -> list[Message]:
        """At most ``limit`` messages with id > ``after``, in id order."""
        items = await self.redis.zrangebyscore(
            self._keys(channel_id)[1], f"({after}", "+inf", start=0, num=limit
        )
        messages = []
        for item in items:
            # without withscores (and decode_responses) every member is the JSON bytes the
            # script stored; redis-py's return type also covers (member, score) pairs
            assert isinstance(item, bytes), item
            messages.append(orjson.loads(item))
        return messages


def create_app(token: str | None = None, redis_url: str = DEFAULT_REDIS_URL) -> socketio.ASGIApp:
    """One process of the ``py-redis`` variant as an ASGI app; every process gets the same
    ``redis_url``. ``token`` as for :func:`roombench.servers.reference.create_app`."""
    manager = socketio.AsyncRedisManager(redis_url)
    return create_reference_app(token, store=RedisRoomStore(redis_url), client_manager=manager)
