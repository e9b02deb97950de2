"""Both transports against the real reference server: the same behaviour is the point."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import gevent
import gevent.event
import pytest

from roombench.wire import frames, packets
from roombench.exceptions import ConnectFailed, UsageError
from roombench.wire.profile import DEFAULT_PROFILE, Profile
from roombench.servers import ServerProcess, free_port, start_server
from roombench.transport.base import Transport

from roombench.transport.registry import make_transport

from tests.helpers import (ACK_DELAY_MS, FAST_RECONNECT, REF_TOKEN, Acks, Recorder, ScriptedPeer,
                      check_ack_timeout_fires_once_and_late_ack_is_reported,
                      check_an_ack_failed_while_its_send_waits_makes_emit_true,
                      check_close_fails_pending_acks_and_leaves_no_greenlets,
                      check_new_message_reaches_both_members, check_sends_are_acked_with_id_and_temp_id,
                      check_unknown_event_is_a_protocol_error, join, new_room as room, send, wait_until)

pytestmark = [pytest.mark.timeout(30), pytest.mark.parametrize("kind", ["lean", "compat"])]


@pytest.fixture(scope="module")
def slow_server() -> Iterator[ServerProcess]:
    """A reference server that holds every send_message ack back ACK_DELAY_MS."""
    with start_server("py", token=REF_TOKEN, faults={"ack_delay_ms": ACK_DELAY_MS}) as server:
        yield server


@pytest.fixture
def make(transports: Callable[..., tuple[Transport, Recorder]]) -> Callable[..., tuple[Transport, Recorder]]:
    """Build transports: ``make(url, kind=kind, ...)``; all are closed at teardown."""
    return transports


# ---------------------------------------------------------------------- connecting


def test_connect_with_good_token(kind: str, ref_server: ServerProcess, make: Any) -> None:
    transport, rec = make(ref_server.url, kind=kind)
    assert not transport.connected
    assert transport.emit("join", {"room": "x"}) is False  # not connected: nothing sent
    transport.connect()
    assert transport.connected and rec.connects == [False]
    transport.close()
    assert not transport.connected and rec.disconnects == []
    assert transport.emit("join", {"room": "x"}) is False


def test_wrong_token_is_refused(kind: str, ref_server: ServerProcess, make: Any) -> None:
    transport, rec = make(ref_server.url, kind=kind, token="wrong")
    with pytest.raises(ConnectFailed, match="server refused the connection: invalid token"):
        transport.connect()
    assert not transport.connected and rec.connects == []


def test_refused_port_fails_fast(kind: str, make: Any) -> None:
    transport, _ = make(f"http://127.0.0.1:{free_port()}", kind=kind)
    started = time.monotonic()
    with pytest.raises(ConnectFailed, match="refused"):
        transport.connect()
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("url", ["htp://x", "http://", "http://127.0.0.1:99999", "no url at all", ""])
def test_bad_url_fails_with_one_clear_message(kind: str, url: str, make: Any) -> None:
    transport, _ = make(url, kind=kind)
    with pytest.raises((ConnectFailed, UsageError), match="bad server URL"):
        transport.connect()


def test_unknown_transport_kind(kind: str) -> None:
    with pytest.raises(UsageError, match="unknown transport 'x': use lean or compat"):
        make_transport("x", "http://127.0.0.1:1", DEFAULT_PROFILE, Recorder().handlers)


def test_on_connect_can_emit_on_every_connect(kind: str, ref_server: ServerProcess, make: Any) -> None:
    # sessions re-join their rooms from on_connect, on the first connect and every reconnect
    transport, rec = make(ref_server.url, kind=kind, reconnect=FAST_RECONNECT)
    joins = Acks()
    rec.handlers.on_connect = lambda again: transport.emit(DEFAULT_PROFILE.event("join"), {"room": room()}, joins)
    transport.connect()
    assert wait_until(lambda: len(joins.calls) == 1)
    transport.drop()
    assert wait_until(lambda: len(joins.calls) == 2, timeout=5.0)
    assert joins.calls == [({"ok": True, "last_id": None}, None)] * 2


# ---------------------------------------------------------------------- events and acks


def test_join_ack_payload(kind: str, ref_server: ServerProcess, make: Any) -> None:
    transport, rec = make(ref_server.url, kind=kind)
    transport.connect()
    assert join(transport, room()) == [({"ok": True, "last_id": None}, None)]
    assert rec.errors == []


def test_send_message_ack_has_id_and_temp_id(kind: str, ref_server: ServerProcess, make: Any) -> None:
    transport, rec = make(ref_server.url, kind=kind)
    transport.connect()
    channel = room()
    join(transport, channel)
    check_sends_are_acked_with_id_and_temp_id(transport, channel)


def test_new_message_reaches_both_members(kind: str, ref_server: ServerProcess, make: Any) -> None:
    (alice, rec_a), (bob, rec_b) = make(ref_server.url, kind=kind), make(ref_server.url, kind=kind)
    channel, _ = check_new_message_reaches_both_members(alice, rec_a, bob, rec_b)
    bob.emit(DEFAULT_PROFILE.event("typing"), {"channel": channel})
    assert wait_until(lambda: bool(rec_a.of(DEFAULT_PROFILE.event("user_typing"))))
    assert rec_b.of(DEFAULT_PROFILE.event("user_typing")) == []  # not to the typist
    assert rec_a.errors == [] and rec_b.errors == []


def test_ack_timeout_fires_once_and_late_ack_is_reported(kind: str, slow_server: ServerProcess, make: Any) -> None:
    check_ack_timeout_fires_once_and_late_ack_is_reported(partial(make, slow_server.url, kind=kind))


def test_an_ack_failed_while_its_send_waits_makes_emit_true(kind: str, server_factory: Any, make: Any) -> None:
    if kind == "compat":
        pytest.skip("python-socketio queues the packet for its writer: compat's emit never waits")
    server = server_factory("py", token=REF_TOKEN)
    check_an_ack_failed_while_its_send_waits_makes_emit_true(partial(make, server.url, kind=kind), server)


def test_ack_after_its_deadline_is_a_timeout_even_before_the_sweep(kind: str, slow_server: ServerProcess,
                                                                   make: Any) -> None:
    # the deadline passes 50 ms before the ack arrives, well inside one sweep interval
    transport, rec = make(slow_server.url, kind=kind, ack_timeout=ACK_DELAY_MS / 1000 - 0.05)
    transport.connect()
    ack = Acks()
    assert send(transport, room(), "t", ack)
    assert wait_until(lambda: bool(ack.calls) and bool(rec.errors), timeout=3.0)
    gevent.sleep(0.3)
    assert ack.calls == [(None, "timeout")] and [k for k, _ in rec.errors] == ["late_ack"]


# ---------------------------------------------------------------------- losing the connection


def test_drop_fails_pending_acks_and_reconnects(kind: str, slow_server: ServerProcess, make: Any) -> None:
    transport, rec = make(slow_server.url, kind=kind, reconnect=FAST_RECONNECT)
    transport.connect()
    pending = Acks()
    assert send(transport, room(), "t", pending)
    transport.drop()
    assert wait_until(lambda: bool(pending.calls), timeout=3.0)
    assert pending.calls == [(None, "disconnected")]
    assert wait_until(lambda: rec.connects == [False, True], timeout=5.0), rec.connects
    assert len(rec.disconnects) == 1
    assert transport.connected
    assert join(transport, room()) == [({"ok": True, "last_id": None}, None)]
    gevent.sleep(ACK_DELAY_MS / 1000 + 0.2)  # the dropped send's ack can never arrive now
    assert pending.calls == [(None, "disconnected")] and len(rec.disconnects) == 1


def test_close_fails_pending_acks_and_leaves_no_greenlets(kind: str, slow_server: ServerProcess, make: Any) -> None:
    check_close_fails_pending_acks_and_leaves_no_greenlets(partial(make, slow_server.url, kind=kind))


def test_close_stops_reconnecting(kind: str, ref_server: ServerProcess, make: Any) -> None:
    transport, rec = make(ref_server.url, kind=kind, reconnect=FAST_RECONNECT)
    transport.connect()
    transport.drop()
    assert wait_until(lambda: len(rec.disconnects) == 1, timeout=3.0)
    connects = list(rec.connects)  # python-socketio may have reconnected already (its jitter is in seconds)
    transport.close()
    gevent.sleep(1.0)  # several backoff periods
    assert rec.connects == connects and not transport.connected and len(rec.disconnects) == 1



def test_handshake_refusal_names_the_http_status(kind: str, ref_server: ServerProcess, make: Any) -> None:
    transport, _ = make(ref_server.url, kind=kind, profile=Profile(path="/not-socket-io/"))
    with pytest.raises(ConnectFailed, match="HTTP 403"):
        transport.connect()


def test_unknown_event_is_a_protocol_error(kind: str, ref_server: ServerProcess, make: Any) -> None:
    check_unknown_event_is_a_protocol_error(partial(make, ref_server.url, kind=kind))


# ---------------------------------------------------------------------- a scripted server
# What the reference server never does on its own (ping early, send garbage, fragment,
# close, refuse a reconnect) comes from conftest.scripted.


def test_ping_is_answered_with_pong(kind: str, scripted: Any, make: Any) -> None:
    answers: list[bytes] = []

    def script(peer: ScriptedPeer, n: int) -> None:
        peer.accept()
        peer.send(packets.PING_PACKET)
        answers.append(peer.recv())
        peer.hold()

    transport, rec = make(scripted(script), kind=kind)
    transport.connect()
    assert wait_until(lambda: bool(answers))
    assert answers == [packets.PONG_PACKET] and rec.disconnects == [] and rec.errors == []


def test_no_ping_in_time_disconnects_and_reconnects(kind: str, scripted: Any, make: Any) -> None:
    def pinger(peer: ScriptedPeer) -> None:
        while True:
            gevent.sleep(0.15)
            peer.send(packets.PING_PACKET)

    def script(peer: ScriptedPeer, n: int) -> None:
        peer.accept(ping_interval_ms=200, ping_timeout_ms=100)
        pings = gevent.spawn(pinger, peer) if n else None  # the first connection gets none
        peer.hold()
        if pings is not None:
            pings.kill()

    transport, rec = make(scripted(script), kind=kind, reconnect=FAST_RECONNECT)
    transport.connect()
    assert wait_until(lambda: rec.connects == [False, True], timeout=5.0), (rec.connects, rec.errors)
    assert len(rec.disconnects) == 1
    gevent.sleep(0.8)  # with pings, the second connection stays up
    assert transport.connected and len(rec.disconnects) == 1


def test_malformed_packets_are_reported_and_the_connection_survives(kind: str, scripted: Any, make: Any) -> None:
    new_message = DEFAULT_PROFILE.event("new_message")
    big = packets.encode_event(new_message, {"id": 3, "content": "x" * 70000})

    def script(peer: ScriptedPeer, n: int) -> None:
        peer.accept()
        peer.send(b"42[oops")
        peer.send(b'42["' + new_message.encode() + b'",{"id":1}]')
        first, rest = b'42["' + new_message.encode() + b'",', b'{"id":2}]'
        peer.sock.sendall(frames.encode_frame(frames.OP_TEXT, first, None, fin=False)
                          + frames.encode_frame(frames.OP_PING, b"", None)
                          + frames.encode_frame(frames.OP_CONT, rest, None))
        peer.send(big)
        peer.hold()

    transport, rec = make(scripted(script), kind=kind)
    transport.connect()
    assert wait_until(lambda: len(rec.events) == 3), rec.events
    assert [data["id"] for data in rec.of(new_message)] == [1, 2, 3]
    assert len(rec.of(new_message)[2]["content"]) == 70000
    assert [k for k, _ in rec.errors] == ["protocol_error"]
    assert transport.connected and rec.disconnects == []


@pytest.mark.parametrize("ending", ["close frame", "engine close", "namespace disconnect"])
def test_server_ending_the_session_leads_to_a_reconnect(kind: str, ending: str, scripted: Any, make: Any) -> None:
    def script(peer: ScriptedPeer, n: int) -> None:
        peer.accept()
        if n == 0:
            if ending == "close frame":
                peer.send(frames.close_payload(1001, "going away"), frames.OP_CLOSE)
            elif ending == "engine close":
                peer.send(packets.CLOSE_PACKET)
            else:
                peer.send(packets.encode_disconnect())
        peer.hold(3.0)

    transport, rec = make(scripted(script), kind=kind, reconnect=FAST_RECONNECT)
    transport.connect()
    assert wait_until(lambda: rec.connects == [False, True], timeout=5.0), (rec.connects, rec.disconnects)
    assert len(rec.disconnects) == 1
    if kind == "lean" and ending == "close frame":
        assert rec.disconnects == ["server closed the WebSocket (code 1001: going away)"]


def test_refused_reconnect_is_reported_and_retried(kind: str, scripted: Any, make: Any) -> None:
    def script(peer: ScriptedPeer, n: int) -> None:
        if n == 1:  # the first reconnect attempt is refused
            peer.open()
            peer.send(packets.encode_connect_error("come back later"))
            peer.hold(1.0)
            return
        peer.accept()
        if n == 0:
            peer.send(packets.encode_disconnect())
        peer.hold(3.0)

    transport, rec = make(scripted(script), kind=kind, reconnect=FAST_RECONNECT)
    transport.connect()
    assert wait_until(lambda: rec.connects == [False, True], timeout=5.0), (rec.connects, rec.errors)
    assert ("connect_error", "come back later") in rec.errors


def test_parse_cache_steps_aside_while_no_payload_repeats_and_serves_fan_out(kind: str, scripted: Any, make: Any) -> None:
    if kind != "lean":
        pytest.skip("the parse cache is the lean transport's")
    from roombench.transport import socketio

    new_message = DEFAULT_PROFILE.event("new_message")
    kept = socketio._PARSED_KEPT
    done = gevent.event.Event()

    def script(peer: ScriptedPeer, n: int) -> None:
        peer.accept()
        for i in range(kept + 10):  # rooms of one: every payload is new
            peer.send(packets.encode_event(new_message, {"id": i}))
        peer.send(b'42["' + new_message.encode() + b'",{"id":"mark"}]')
        done.wait(5)
        for i in range(kept + 10):  # a fan-out: each payload arrives again and again
            for _ in range(3):
                peer.send(packets.encode_event(new_message, {"id": -i}))
        peer.hold()

    socketio._CACHE[:] = [0, 0]
    socketio._PARSED.clear()
    transport, rec = make(scripted(script), kind=kind)
    transport.connect()
    assert wait_until(lambda: len(rec.events) == kept + 11)
    skipping = socketio._CACHE[1]
    socketio._CACHE[:] = [0, 0]  # as after the skipped stretch: the cache is tried again
    done.set()
    assert wait_until(lambda: len(rec.events) == kept + 11 + 3 * (kept + 10))
    # a generation without hits sets the cache aside; one of repeats keeps it on
    assert skipping > 0 and socketio._CACHE[1] == 0, (skipping, socketio._CACHE)
    ids = [data["id"] for _, data in rec.events]
    assert ids[:kept + 11] == [*range(kept + 10), "mark"] and ids[kept + 11:] == [-i for i in range(kept + 10) for _ in range(3)]
    assert rec.errors == []
