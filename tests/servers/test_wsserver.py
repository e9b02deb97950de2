"""The ws server's send path without a network: a slow client never holds up the others."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from roombench.servers.wsserver import _Peer

pytestmark = pytest.mark.timeout(10)


class FakeSend:
    """An ASGI send that writes at once until ``block()``, then waits like a paused transport."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.writable = asyncio.Event()
        self.writable.set()

    async def __call__(self, message: dict[str, Any]) -> None:
        await self.writable.wait()
        self.sent.append(message["text"])


def test_post_writes_at_once_and_queues_in_order_behind_a_blocked_send() -> None:
    async def scenario() -> None:
        slow_send, fast_send = FakeSend(), FakeSend()
        slow, fast = _Peer(slow_send, "s", "u1"), _Peer(fast_send, "f", "u2")  # type: ignore[arg-type]
        slow.post("a")
        assert slow_send.sent == ["a"] and slow.drainer is None  # written inline, no task
        slow_send.writable.clear()
        for text in ("b", "c", "d"):
            slow.post(text)  # returns at once although the send is stuck
            fast.post(text)
        assert fast_send.sent == ["b", "c", "d"]  # the other peer did not wait
        assert slow_send.sent == ["a"] and slow.drainer is not None
        slow_send.writable.set()
        await asyncio.wait_for(slow.drainer, 1.0)
        assert slow_send.sent == ["a", "b", "c", "d"] and slow.drainer is None and slow.backlog is None
        slow.post("e")  # back to inline writes
        assert slow_send.sent[-1] == "e"

    asyncio.run(scenario())


def test_post_to_a_gone_client_is_dropped_quietly() -> None:
    async def gone(message: dict[str, Any]) -> None:
        raise OSError("client disconnected")

    async def scenario() -> None:
        peer = _Peer(gone, "g", "u")  # type: ignore[arg-type]
        peer.post("x")
        assert peer.backlog is None and peer.drainer is None

    asyncio.run(scenario())
