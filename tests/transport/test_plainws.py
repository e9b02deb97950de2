"""The plain WebSocket transport against the real "ws" server, and the generator on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from typing import Any

import gevent
import orjson
import pytest
import websocket

from roombench.wire import frames as wsframes, packets
from roombench.exceptions import ConnectFailed
from roombench.generator import Generator, run_for
from roombench.wire.profile import DEFAULT_PROFILE, Profile
from roombench.chat.scenario import Scenario
from roombench.servers import ServerProcess, start_server
from roombench.transport.base import Transport
from roombench.transport.plainws import WS_PATH, plain_endpoint

from tests.helpers import (ACK_DELAY_MS, FAST_RECONNECT, Acks, Recorder, ScriptedPeer,
                      check_ack_timeout_fires_once_and_late_ack_is_reported,
                      check_an_ack_failed_while_its_send_waits_makes_emit_true,
                      check_close_fails_pending_acks_and_leaves_no_greenlets,
                      check_new_message_reaches_both_members, check_sends_are_acked_with_id_and_temp_id,
                      check_unknown_event_is_a_protocol_error, join, new_room as room, send, wait_until)

pytestmark = pytest.mark.timeout(30)

TOKEN = "secret"
EV = DEFAULT_PROFILE.event


@pytest.fixture(scope="module")
def ws_server() -> Iterator[ServerProcess]:
    with start_server("ws", token=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def slow_ws_server() -> Iterator[ServerProcess]:
    """A ws server that holds every send_message ack back ACK_DELAY_MS."""
    with start_server("ws", token=TOKEN, faults={"ack_delay_ms": ACK_DELAY_MS}) as server:
        yield server


@pytest.fixture
def make(transports: Callable[..., tuple[Transport, Recorder]]) -> Callable[..., tuple[Transport, Recorder]]:
    """Build plain transports (or another ``kind=``); all are closed at teardown."""
    return partial(transports, kind="ws", token=TOKEN)


# ---------------------------------------------------------------------- connecting


def test_endpoint_puts_token_and_user_id_in_the_query() -> None:
    ep = plain_endpoint("http://127.0.0.1:8000/ignored?x=1", DEFAULT_PROFILE, "t k", {"user_id": "alice"})
    assert ep.ws_url == "ws://127.0.0.1:8000/ws?x=1&user_id=alice&token=t+k" and ep.headers == {}
    header = plain_endpoint("https://[::1]:9", Profile(token_in="header"), "tk", {})
    assert header.ws_url == f"wss://[::1]:9{WS_PATH}" and header.headers == {"Authorization": "Bearer tk"}


def test_profile_ws_path_is_the_path_on_the_wire(ws_server: ServerProcess, make: Any) -> None:
    chat = replace(DEFAULT_PROFILE, ws_path="/rt/chat")
    assert plain_endpoint("http://h:1", chat, None, {}).ws_url == "ws://h:1/rt/chat"
    transport, _ = make(ws_server.url, profile=chat)  # the ws server listens on /ws only
    with pytest.raises(ConnectFailed, match=r"handshake with ws://127\.0\.0\.1:\d+/rt/chat\?.* refused: HTTP 40\d"):
        transport.connect()
    explicit, rec = make(ws_server.url, profile=replace(DEFAULT_PROFILE, ws_path="/ws"))
    explicit.connect()
    assert rec.connects == [False]


def test_connect_with_good_token(ws_server: ServerProcess, make: Any) -> None:
    transport, rec = make(ws_server.url)
    assert transport.emit(EV("join"), {"room": "x"}) is False  # not connected: nothing sent
    transport.connect()
    assert transport.connected and rec.connects == [False]
    transport.close()
    assert not transport.connected and rec.disconnects == [] and rec.errors == []


def test_wrong_token_is_refused(ws_server: ServerProcess, make: Any) -> None:
    transport, rec = make(ws_server.url, token="wrong")
    with pytest.raises(ConnectFailed, match="^server refused the connection: invalid token$"):
        transport.connect()
    assert not transport.connected and rec.connects == []


def test_socketio_transport_on_the_ws_server_says_use_ws(ws_server: ServerProcess, make: Any) -> None:
    transport, _ = make(ws_server.url, kind="lean")
    with pytest.raises(ConnectFailed, match="HTTP 403.*; if this is a plain WebSocket server, use --transport ws"):
        transport.connect()


def test_ws_transport_on_a_socketio_server_says_use_lean(ref_server: ServerProcess, make: Any) -> None:
    transport, _ = make(ref_server.url)
    with pytest.raises(ConnectFailed, match="HTTP 403.*; if this is a Socket.IO server, use --transport lean"):
        transport.connect()


def test_user_id_from_the_query_is_the_sender_id(ws_server: ServerProcess, make: Any) -> None:
    transport, rec = make(ws_server.url, auth_extra={"user_id": "alice"})
    transport.connect()
    channel = room()
    join(transport, channel)
    assert send(transport, channel, "t-1")
    assert wait_until(lambda: bool(rec.of(EV("new_message"))))
    assert rec.of(EV("new_message"))[0]["sender_id"] == "alice"


# ---------------------------------------------------------------------- events and acks


def test_join_and_send_acks(ws_server: ServerProcess, make: Any) -> None:
    transport, rec = make(ws_server.url)
    transport.connect()
    channel = room()
    assert join(transport, channel) == [({"ok": True, "last_id": None}, None)]
    check_sends_are_acked_with_id_and_temp_id(transport, channel)
    bad = Acks()
    assert transport.emit(EV("join"), {"rooom": channel}, bad)
    assert wait_until(lambda: bool(bad.calls))
    assert bad.calls == [({"error": 'join needs {"room": <string>}'}, None)]
    assert rec.errors == []


def test_fan_out_typing_and_read_receipts(ws_server: ServerProcess, make: Any) -> None:
    (alice, rec_a), (bob, rec_b) = make(ws_server.url), make(ws_server.url)
    channel, message = check_new_message_reaches_both_members(alice, rec_a, bob, rec_b)
    bob.emit(EV("typing"), {"channel": channel})
    bob.emit(EV("mark_read"), {"channel_id": channel, "message_id": message["id"]})
    assert wait_until(lambda: bool(rec_a.of(EV("user_typing")) and rec_b.of(EV("message_read"))))
    assert rec_b.of(EV("user_typing")) == []  # not to the typist
    assert rec_a.of(EV("message_read")) == rec_b.of(EV("message_read"))  # the reader's own included
    assert rec_a.errors == [] and rec_b.errors == []


def test_unknown_event_is_a_protocol_error(ws_server: ServerProcess, make: Any) -> None:
    check_unknown_event_is_a_protocol_error(partial(make, ws_server.url))


def test_a_member_that_stops_reading_does_not_stall_the_others(ws_server: ServerProcess, make: Any) -> None:
    channel = room()
    url = plain_endpoint(ws_server.url, DEFAULT_PROFILE, TOKEN, {}).ws_url
    stalled = websocket.create_connection(url, timeout=5)
    try:
        stalled.send(orjson.dumps({"event": EV("join"), "data": {"room": channel}, "ack": 0}).decode())
        assert b'"ack":0' in stalled.recv().encode() + stalled.recv().encode()  # connected, then the ack
        transport, rec = make(ws_server.url, ack_timeout=10.0)
        transport.connect()
        join(transport, channel)
        acks = Acks()
        big = "x" * 50_000  # 150 of them: far more than the stalled socket's buffers hold
        for i in range(150):
            assert send(transport, channel, f"t-{i}", acks, content=big)
            gevent.sleep(0)
        assert wait_until(lambda: len(acks.calls) == 150, timeout=15.0), len(acks.calls)
        assert all(error is None for _, error in acks.calls)
        assert wait_until(lambda: len(rec.of(EV("new_message"))) == 150, timeout=5.0)
    finally:
        stalled.close()


# ---------------------------------------------------------------------- timeouts, drops, close


def test_ack_timeout_fires_once_and_late_ack_is_reported(slow_ws_server: ServerProcess, make: Any) -> None:
    check_ack_timeout_fires_once_and_late_ack_is_reported(partial(make, slow_ws_server.url))


def test_an_ack_failed_while_its_send_waits_makes_emit_true(server_factory: Any, make: Any) -> None:
    server = server_factory("ws", token=TOKEN)
    check_an_ack_failed_while_its_send_waits_makes_emit_true(partial(make, server.url), server)


def test_drop_fails_pending_acks_and_reconnects(slow_ws_server: ServerProcess, make: Any) -> None:
    transport, rec = make(slow_ws_server.url, reconnect=FAST_RECONNECT)
    joins = Acks()
    rec.handlers.on_connect = lambda again: (rec.connects.append(again),
                                             transport.emit(EV("join"), {"room": room()}, joins))
    transport.connect()
    assert wait_until(lambda: len(joins.calls) == 1)
    pending = Acks()
    assert send(transport, room(), "t", pending)
    transport.drop()
    assert wait_until(lambda: bool(pending.calls), timeout=3.0)
    assert pending.calls == [(None, "disconnected")]
    assert wait_until(lambda: rec.connects == [False, True] and len(joins.calls) == 2, timeout=5.0), rec.connects
    assert len(rec.disconnects) == 1 and transport.connected
    assert joins.calls == [({"ok": True, "last_id": None}, None)] * 2  # on_connect can emit, every time
    gevent.sleep(ACK_DELAY_MS / 1000 + 0.2)  # the dropped send's ack can never arrive now
    assert pending.calls == [(None, "disconnected")] and len(rec.disconnects) == 1


def test_close_fails_pending_acks_and_leaves_no_greenlets(slow_ws_server: ServerProcess, make: Any) -> None:
    check_close_fails_pending_acks_and_leaves_no_greenlets(partial(make, slow_ws_server.url))


# ---------------------------------------------------------------------- a scripted server


def connected(**data: Any) -> bytes:
    return orjson.dumps({"event": "connected", "data": {"sid": "s", **data}})


def test_ws_pings_are_the_heartbeat(scripted: Any, make: Any) -> None:
    pongs: list[bytes] = []

    def pinger(peer: ScriptedPeer) -> None:
        while True:
            gevent.sleep(0.15)
            peer.send(b"hb", wsframes.OP_PING)

    def script(peer: ScriptedPeer, n: int) -> None:
        peer.send(connected(pingInterval=200, pingTimeout=100))
        pings = gevent.spawn(pinger, peer) if n else None  # the first connection gets none
        peer.sock.settimeout(3.0)
        while chunk := peer.sock.recv(65536):
            peer.buf += chunk
            frames, used = peer.parser.parse(peer.buf)
            del peer.buf[:used]
            pongs.extend(bytes(p) for op, p in frames if op == wsframes.OP_PONG)
        if pings is not None:
            pings.kill()

    transport, rec = make(scripted(script), reconnect=FAST_RECONNECT)
    transport.connect()
    assert wait_until(lambda: rec.connects == [False, True], timeout=5.0), (rec.connects, rec.errors)
    assert rec.disconnects[0].startswith("ping timeout")
    gevent.sleep(0.8)  # with pings (answered with pongs), the second connection stays up
    assert transport.connected and len(rec.disconnects) == 1 and pongs and set(pongs) == {b"hb"}


def test_malformed_envelopes_are_reported_and_the_connection_survives(scripted: Any, make: Any) -> None:
    new = EV("new_message")

    def script(peer: ScriptedPeer, n: int) -> None:
        peer.send(connected())
        for bad in (b"{oops", b"[1,2]", b'{"data":1}', b'{"ack":"x"}', b'{"event":"connected","data":{}}'):
            peer.send(bad)
        peer.send(orjson.dumps({"event": new, "data": {"id": 1}}))
        peer.hold()

    transport, rec = make(scripted(script))
    transport.connect()
    assert wait_until(lambda: len(rec.events) == 1), rec.events
    assert rec.of(new) == [{"id": 1}]
    assert [kind for kind, _ in rec.errors] == ["protocol_error"] * 5
    assert transport.connected and rec.disconnects == []


def test_an_engine_io_server_on_the_path_is_named(scripted: Any, make: Any) -> None:
    def script(peer: ScriptedPeer, n: int) -> None:
        peer.send(packets.encode_open("sid"))
        peer.hold(3.0)

    transport, _ = make(scripted(script))
    with pytest.raises(ConnectFailed, match="not a JSON envelope.*use --transport lean"):
        transport.connect()


def test_refusal_by_close_code_alone(scripted: Any, make: Any) -> None:
    def script(peer: ScriptedPeer, n: int) -> None:
        peer.send(wsframes.close_payload(4401, "invalid token"), wsframes.OP_CLOSE)
        peer.hold(3.0)

    transport, _ = make(scripted(script))
    with pytest.raises(ConnectFailed, match=r"lost before the plain WebSocket session connected: .*code 4401"):
        transport.connect()


# ---------------------------------------------------------------------- the generator on it

FAST = Scenario(token=TOKEN, transport="ws", rate=10, room_size=4, typing_every=3, read_every=3,
                reconnect_delay=0.1, reconnect_delay_max=0.5, drain=3, ack_timeout=3.0)


@pytest.mark.timeout(60)
def test_generator_on_a_healthy_ws_server_delivers_everything(ws_server: ServerProcess) -> None:
    report = run_for(Generator(ws_server.url, FAST), 4, 2.0)
    c = report["ledger"]
    assert c["sent"] > 50 and c["acked"] == c["sent"]
    assert c["expected"] == 3 * c["sent"] == c["delivered_live"]
    assert (c["lost"], c["duplicates"], c["out_of_order"], c["unexpected"], c["ack_timeouts"]) == (0, 0, 0, 0, 0)
    assert report["errors"] == {}


@pytest.mark.timeout(60)
def test_generator_forced_drops_are_backfilled(ws_server: ServerProcess) -> None:
    report = run_for(Generator(ws_server.url, replace(FAST, drop_every=0.6)), 4, 3.0)
    c = report["ledger"]
    assert report["counters"]["forced_drops"] >= 4
    assert c["lost"] == 0 and c["recovered"] > 0 and c["duplicates"] == 0
    assert c["delivered_live"] + c["recovered"] == c["expected"]


@pytest.mark.timeout(60)
def test_generator_catches_a_ws_server_that_drops_live_deliveries(server_factory: Any) -> None:
    server = server_factory("ws", token=TOKEN, faults={"drop_live_every": 3})
    c = run_for(Generator(server.url, FAST), 4, 2.0)["ledger"]
    missed = (c["acked"] // 3) * 3  # every 3rd id in the one room, 3 other members each
    assert c["live_missed"] == missed > 0 and c["recovered"] == missed and c["lost"] == 0
