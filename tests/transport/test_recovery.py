"""Socket.IO connection state recovery in the lean transport.

The wire (the CONNECT payload with pid and offset, offsets stripped before the handlers,
events with an ack id carrying none) against a scripted server; each outcome (recovered,
expired, no offset yet, a server without recovery) against the real node servers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from roombench.servers import ServerProcess
from roombench.transport.base import Recovery, Transport
from roombench.wire import packets

from tests.helpers import (FAST_RECONNECT, REF_TOKEN, Acks, Recorder, ScriptedPeer, csr_node, join, need_node, send,
                           wait_for)

pytestmark = pytest.mark.timeout(30)

#: node-csr's maxDisconnectionDuration in these tests: short, so a drop can outlast it
MAX_MS = 1500

Build = Callable[..., tuple[Transport, Recorder]]


@pytest.fixture(scope="module")
def csr_server() -> Iterator[ServerProcess]:
    with csr_node(MAX_MS) as server:
        yield server


# ---------------------------------------------------------------------- packets


def test_recovery_auth_merges_pid_and_offset_under_the_auth_keys() -> None:
    auth = {"token": "t", "user_id": "u"}
    assert packets.recovery_auth(auth, None, "o") == auth  # no pid: no recovery
    assert packets.recovery_auth(auth, "P", None) == {"pid": "P", "token": "t", "user_id": "u"}
    assert packets.recovery_auth(auth, "P", "o") == {"pid": "P", "offset": "o", "token": "t", "user_id": "u"}
    assert packets.recovery_auth({"pid": "mine"}, "P", "o") == {"pid": "mine", "offset": "o"}  # as Object.assign
    assert packets.recovery_auth(None, "P", "o") == {"pid": "P", "offset": "o"}


def test_split_offset_takes_a_trailing_string_after_the_name() -> None:
    assert packets.split_offset(["new_message", {"id": 1}, "7"]) == (["new_message", {"id": 1}], "7")
    assert packets.split_offset(["ping_me", "7"]) == (["ping_me"], "7")
    assert packets.split_offset(["new_message", {"id": 1}]) == (["new_message", {"id": 1}], None)
    assert packets.split_offset(["new_message"]) == (["new_message"], None)


# ---------------------------------------------------------------------- the wire, scripted


def _script(connects: list[dict[str, Any]], second: Callable[[ScriptedPeer], None]) -> Callable[[ScriptedPeer, int], None]:
    """First connection: pid P1, two recoverable events, one with an ack id; the client drops.
    Later ones: ``second(peer)`` after the CONNECT packet is read into ``connects``."""
    def script(peer: ScriptedPeer, n: int) -> None:
        packet = peer.open()
        connects.append(orjson.loads(packet[2:]))
        if n == 0:
            peer.send(b'40{"sid":"s1","pid":"P1"}')
            peer.send(b'42["new_message",{"id":1},"off-1"]')
            peer.send(b'42["user_typing",{"channel":"r","user_id":"x"},"off-2"]')
            peer.send(b'427["new_message",{"id":5},"not-an-offset"]')  # an ack id: not recoverable
        else:
            second(peer)
        peer.hold(5.0)
    return script


def test_reconnect_sends_pid_and_last_offset_and_reads_recovered(scripted: Any, transports: Build) -> None:
    connects: list[dict[str, Any]] = []

    def recovered(peer: ScriptedPeer) -> None:
        peer.send(b'42["new_message",{"id":2},"off-3"]')  # the replay comes before the CONNECT reply
        peer.send(b'40{"sid":"s1","pid":"P1"}')

    url = scripted(_script(connects, recovered))
    t, rec = transports(url, kind="lean", reconnect=FAST_RECONNECT, auth_extra={"user_id": "u"})
    t.recover = True
    t.connect()
    wait_for(lambda: len(rec.events) == 3)
    t.drop()
    wait_for(lambda: rec.connects == [False, True])
    assert connects[0] == {"token": REF_TOKEN, "user_id": "u"}
    assert connects[1] == {"pid": "P1", "offset": "off-2", "token": REF_TOKEN, "user_id": "u"}
    # no offset reaches a handler; the event with an ack id keeps its arguments
    assert rec.events == [("new_message", {"id": 1}), ("user_typing", {"channel": "r", "user_id": "x"}),
                          ("new_message", {"id": 5}), ("new_message", {"id": 2})]
    assert t.recovery == Recovery(True, None, 1)
    assert not t.replaying


def test_a_new_pid_is_not_recovered_and_resets_the_offset(scripted: Any, transports: Build) -> None:
    connects: list[dict[str, Any]] = []

    def fresh(peer: ScriptedPeer) -> None:
        peer.send(b'40{"sid":"s2","pid":"P2"}')

    url = scripted(_script(connects, fresh))
    t, rec = transports(url, kind="lean", reconnect=FAST_RECONNECT)
    t.recover = True
    t.connect()
    wait_for(lambda: len(rec.events) == 3)
    t.drop()
    wait_for(lambda: rec.connects == [False, True])
    assert t.recovery == Recovery(False, "expired", 0)
    t.drop()  # nothing received in the new session: no offset to send
    wait_for(lambda: len(connects) == 3 and rec.connects == [False, True, True])
    assert connects[2] == {"pid": "P2", "token": REF_TOKEN}
    assert t.recovery == Recovery(False, "no_offset", 0)


def test_without_recover_the_reconnect_carries_no_pid(scripted: Any, transports: Build) -> None:
    connects: list[dict[str, Any]] = []
    url = scripted(_script(connects, lambda peer: peer.send(b'40{"sid":"s2","pid":"P2"}')))
    t, rec = transports(url, kind="lean", reconnect=FAST_RECONNECT)
    t.connect()
    wait_for(lambda: len(rec.events) == 3)
    assert rec.events[0] == ("new_message", {"id": 1})  # offsets are stripped all the same
    t.drop()
    wait_for(lambda: rec.connects == [False, True])
    assert connects[1] == {"token": REF_TOKEN}
    assert t.recovery == Recovery(False, "not_tried", 0)


# ---------------------------------------------------------------------- real node servers


def _pair(url: str, transports: Build, room: str) -> tuple[Transport, Recorder, Transport]:
    """alice (recovering) and bob (a plain sender), both joined to ``room``."""
    alice, rec = transports(url, kind="lean", reconnect=FAST_RECONNECT, auth_extra={"user_id": "alice"})
    alice.recover = True
    bob, _ = transports(url, kind="lean", reconnect=FAST_RECONNECT, auth_extra={"user_id": "bob"})
    alice.connect()
    bob.connect()
    join(alice, room)
    join(bob, room)
    return alice, rec, bob


def _send(bob: Transport, room: str, n: int) -> None:
    ack = Acks()
    assert send(bob, room, f"t-{n}", ack)
    wait_for(lambda: bool(ack.calls))
    assert ack.calls[0][1] is None


def _ids(rec: Recorder) -> list[int]:
    return [m["id"] for m in rec.of("new_message")]


def test_node_csr_recovers_rooms_and_replays_what_was_missed(csr_server: ServerProcess, transports: Build,
                                                             room: str) -> None:
    alice, rec, bob = _pair(csr_server.url, transports, room)
    _send(bob, room, 1)
    wait_for(lambda: _ids(rec) == [1])
    alice.drop_for(0.5)
    _send(bob, room, 2)
    _send(bob, room, 3)
    wait_for(lambda: rec.connects == [False, True])
    assert alice.recovery == Recovery(True, None, 2)
    assert _ids(rec) == [1, 2, 3]
    assert all(isinstance(m, dict) for m in rec.of("new_message"))  # no offset as the payload
    _send(bob, room, 4)  # no rejoin: the server restored the room
    wait_for(lambda: _ids(rec) == [1, 2, 3, 4])


def test_node_csr_drop_longer_than_max_disconnection_is_expired(csr_server: ServerProcess, transports: Build,
                                                                room: str) -> None:
    alice, rec, bob = _pair(csr_server.url, transports, room)
    _send(bob, room, 1)
    wait_for(lambda: _ids(rec) == [1])
    alice.drop_for(MAX_MS / 1000 + 1.0)
    _send(bob, room, 2)
    wait_for(lambda: rec.connects == [False, True], timeout=10)
    assert alice.recovery == Recovery(False, "expired", 0)
    assert _ids(rec) == [1]  # nothing replayed: the REST backfill's job


def test_node_csr_reconnect_before_any_event_has_no_offset(csr_server: ServerProcess, transports: Build,
                                                           room: str) -> None:
    alice, rec, _ = _pair(csr_server.url, transports, room)
    alice.drop()
    wait_for(lambda: rec.connects == [False, True])
    assert alice.recovery == Recovery(False, "no_offset", 0)


def test_node_without_recovery_is_unsupported(server_factory: Callable[..., ServerProcess], transports: Build,
                                              room: str) -> None:
    need_node()
    server = server_factory("node", token=REF_TOKEN)
    alice, rec, bob = _pair(server.url, transports, room)
    _send(bob, room, 1)
    wait_for(lambda: _ids(rec) == [1])
    alice.drop()
    wait_for(lambda: rec.connects == [False, True])
    assert alice.recovery == Recovery(False, "unsupported", 0)
