"""Both transports against the real reference server: the same behaviour is the point."""

from __future__ import annotations

import base64
import gc
import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from gevent.server import StreamServer
from greenlet import greenlet

from roombench import codec
from roombench.exceptions import ConnectFailed, UsageError
from roombench.protocol import DEFAULT_PROFILE, Profile
from roombench.servers import ServerProcess, free_port, start_server
from roombench.transport import Handlers, ReconnectPolicy, Transport, make_transport

REF_TOKEN = "secret"  # the token of conftest.ref_server

pytestmark = [pytest.mark.timeout(30), pytest.mark.parametrize("kind", ["lean", "compat"])]

FAST_RECONNECT = ReconnectPolicy(delay=0.1, delay_max=0.5, jitter=0.2)
ACK_DELAY_MS = 800


class Recorder:
    """Handlers that write down every call."""

    def __init__(self) -> None:
        self.connects: list[bool] = []
        self.disconnects: list[str] = []
        self.events: list[tuple[str, Any]] = []
        self.errors: list[tuple[str, str]] = []
        self.handlers = Handlers(on_connect=self.connects.append, on_disconnect=self.disconnects.append,
                                 on_event=lambda e, d: self.events.append((e, d)),
                                 on_error=lambda k, d: self.errors.append((k, d)))

    def of(self, event: str) -> list[Any]:
        return [data for name, data in self.events if name == event]


class Acks:
    """An ack callback that keeps every call, to prove 'exactly once'."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, str | None]] = []

    def __call__(self, payload: Any, error: str | None) -> None:
        self.calls.append((payload, error))


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.01)
    return True


def live_greenlets() -> set[int]:
    return {id(g) for g in gc.get_objects()
            if isinstance(g, greenlet) and not g.dead and g.parent is not None}


@pytest.fixture(scope="module")
def slow_server() -> Iterator[ServerProcess]:
    """A reference server that holds every send_message ack back ACK_DELAY_MS."""
    with start_server("py", token=REF_TOKEN, faults={"ack_delay_ms": ACK_DELAY_MS}) as server:
        yield server


@pytest.fixture
def make(request: pytest.FixtureRequest) -> Iterator[Callable[..., tuple[Transport, Recorder]]]:
    """Build transports of the test's kind; all are closed at teardown."""
    made: list[Transport] = []

    def build(url: str, *, kind: str, token: str | None = REF_TOKEN, profile: Profile = DEFAULT_PROFILE,
              **kwargs: Any) -> tuple[Transport, Recorder]:
        recorder = Recorder()
        transport = make_transport(kind, url, profile, recorder.handlers, token=token, **kwargs)
        made.append(transport)
        return transport, recorder

    yield build
    for transport in made:
        transport.close()


def room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


def send(transport: Transport, channel: str, temp_id: str, ack: Acks) -> bool:
    data = {"channel_id": channel, "content": "hello", "temp_id": temp_id}
    return transport.emit(DEFAULT_PROFILE.event("send_message"), data, ack)


def join(transport: Transport, channel: str) -> Any:
    ack = Acks()
    assert transport.emit(DEFAULT_PROFILE.event("join"), {"room": channel}, ack)
    assert wait_until(lambda: bool(ack.calls))
    return ack.calls


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
    first, second = Acks(), Acks()
    assert send(transport, channel, "t-1", first) and send(transport, channel, "t-2", second)
    assert wait_until(lambda: bool(first.calls and second.calls))
    assert first.calls == [({"id": 1, "temp_id": "t-1"}, None)]
    assert second.calls == [({"id": 2, "temp_id": "t-2"}, None)]
    assert join(transport, channel) == [({"ok": True, "last_id": 2}, None)]


def test_new_message_reaches_both_members(kind: str, ref_server: ServerProcess, make: Any) -> None:
    (alice, rec_a), (bob, rec_b) = make(ref_server.url, kind=kind), make(ref_server.url, kind=kind)
    alice.connect()
    bob.connect()
    channel = room()
    join(alice, channel)
    join(bob, channel)
    ack = Acks()
    send(alice, channel, "from-alice", ack)
    event = DEFAULT_PROFILE.event("new_message")
    assert wait_until(lambda: bool(rec_a.of(event) and rec_b.of(event) and ack.calls))
    message = rec_b.of(event)[0]
    assert rec_a.of(event) == [message]
    assert message["id"] == ack.calls[0][0]["id"] and message["temp_id"] == "from-alice"
    assert message["channel_id"] == channel and message["content"] == "hello"
    bob.emit(DEFAULT_PROFILE.event("typing"), {"channel": channel})
    assert wait_until(lambda: bool(rec_a.of(DEFAULT_PROFILE.event("user_typing"))))
    assert rec_b.of(DEFAULT_PROFILE.event("user_typing")) == []  # not to the typist
    assert rec_a.errors == [] and rec_b.errors == []


def test_ack_timeout_fires_once_and_late_ack_is_reported(kind: str, slow_server: ServerProcess, make: Any) -> None:
    transport, rec = make(slow_server.url, kind=kind, ack_timeout=0.2)
    transport.connect()
    ack = Acks()
    started = time.monotonic()
    assert send(transport, room(), "t", ack)
    assert wait_until(lambda: bool(ack.calls), timeout=2.0)
    assert ack.calls == [(None, "timeout")]
    assert 0.15 < time.monotonic() - started < ACK_DELAY_MS / 1000
    assert wait_until(lambda: bool(rec.errors), timeout=3.0)
    assert [kind_ for kind_, _ in rec.errors] == ["late_ack"]
    assert ack.calls == [(None, "timeout")]  # still exactly once


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
    before = live_greenlets()
    transport, rec = make(slow_server.url, kind=kind, reconnect=FAST_RECONNECT)
    transport.connect()
    pending = Acks()
    assert send(transport, room(), "t", pending)
    transport.close()
    assert pending.calls == [(None, "disconnected")]
    assert not transport.connected and rec.disconnects == []
    assert wait_until(lambda: live_greenlets() <= before, timeout=5.0), live_greenlets() - before
    gevent.sleep(ACK_DELAY_MS / 1000 + 0.2)
    assert pending.calls == [(None, "disconnected")] and rec.errors == []


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
    # a profile without user_typing makes the server's user_typing an unknown event
    events = {k: v for k, v in DEFAULT_PROFILE.events.items() if k != "user_typing"}
    (alice, rec_a), (bob, _) = [make(ref_server.url, kind=kind, profile=Profile(events=events)) for _ in "ab"]
    alice.connect()
    bob.connect()
    channel = room()
    join(alice, channel)
    join(bob, channel)
    bob.emit(DEFAULT_PROFILE.event("typing"), {"channel": channel})
    assert wait_until(lambda: bool(rec_a.errors))
    assert rec_a.errors == [("protocol_error", "unknown event 'user_typing'")]
    assert alice.connected and rec_a.events == []


# ---------------------------------------------------------------------- a scripted server
# What the reference server never does on its own (ping early, send garbage, fragment,
# close, refuse a reconnect) comes from this one: a real WebSocket over loopback, one
# script per accepted connection.

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Peer:
    """The server side of one scripted connection."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.parser = codec.FrameParser()
        self.pending: list[bytes] = []
        self.buf = bytearray()

    def handshake(self) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("client went away during the handshake")
            request += chunk
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self.sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")

    def send(self, payload: bytes, opcode: int = codec.OP_TEXT) -> None:
        self.sock.sendall(codec.encode_frame(opcode, payload, None))

    def recv(self) -> bytes:
        """The next text message from the client (its pongs and acks)."""
        while not self.pending:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("client closed")
            self.buf += chunk
            frames, used = self.parser.parse(self.buf)
            del self.buf[:used]
            self.pending += [bytes(p) for op, p in frames if op == codec.OP_TEXT]
        return self.pending.pop(0)

    def open(self, ping_interval_ms: int = 25000, ping_timeout_ms: int = 20000) -> bytes:
        """Engine.IO open, read the client's CONNECT; returns that CONNECT packet."""
        self.send(codec.encode_open("sid", ping_interval_ms, ping_timeout_ms))
        return self.recv()

    def accept(self, **open_args: int) -> None:
        assert self.open(**open_args).startswith(b"40")
        self.send(b'40{"sid":"s"}')

    def hold(self, seconds: float = 10.0) -> None:
        """Keep the connection open until the client closes it (answering its close frame,
        as a real server does) or ``seconds`` pass."""
        self.sock.settimeout(seconds)
        try:
            while chunk := self.sock.recv(65536):
                self.buf += chunk
                frames, used = self.parser.parse(self.buf)
                del self.buf[:used]
                if any(op == codec.OP_CLOSE for op, _ in frames):
                    self.send(codec.close_payload(1000), codec.OP_CLOSE)
                    return
        except OSError:
            pass


@pytest.fixture
def scripted() -> Iterator[Callable[..., str]]:
    """scripted(script) -> URL of a server running ``script(peer, n)`` for the n-th connection."""
    servers: list[StreamServer] = []

    def start(script: Callable[[Peer, int], None]) -> str:
        count = [0]

        def handle(sock: Any, _addr: Any) -> None:
            n, count[0] = count[0], count[0] + 1
            peer = Peer(sock)
            try:
                peer.handshake()
                script(peer, n)
            except (OSError, ConnectionError):
                pass

        server = StreamServer(("127.0.0.1", 0), handle)
        server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.stop(timeout=1)


def test_ping_is_answered_with_pong(kind: str, scripted: Any, make: Any) -> None:
    answers: list[bytes] = []

    def script(peer: Peer, n: int) -> None:
        peer.accept()
        peer.send(codec.PING_PACKET)
        answers.append(peer.recv())
        peer.hold()

    transport, rec = make(scripted(script), kind=kind)
    transport.connect()
    assert wait_until(lambda: bool(answers))
    assert answers == [codec.PONG_PACKET] and rec.disconnects == [] and rec.errors == []


def test_no_ping_in_time_disconnects_and_reconnects(kind: str, scripted: Any, make: Any) -> None:
    def pinger(peer: Peer) -> None:
        while True:
            gevent.sleep(0.15)
            peer.send(codec.PING_PACKET)

    def script(peer: Peer, n: int) -> None:
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
    big = codec.encode_event(new_message, {"id": 3, "content": "x" * 70000})

    def script(peer: Peer, n: int) -> None:
        peer.accept()
        peer.send(b"42[oops")
        peer.send(b'42["' + new_message.encode() + b'",{"id":1}]')
        first, rest = b'42["' + new_message.encode() + b'",', b'{"id":2}]'
        peer.sock.sendall(codec.encode_frame(codec.OP_TEXT, first, None, fin=False)
                          + codec.encode_frame(codec.OP_PING, b"", None)
                          + codec.encode_frame(codec.OP_CONT, rest, None))
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
    def script(peer: Peer, n: int) -> None:
        peer.accept()
        if n == 0:
            if ending == "close frame":
                peer.send(codec.close_payload(1001, "going away"), codec.OP_CLOSE)
            elif ending == "engine close":
                peer.send(codec.CLOSE_PACKET)
            else:
                peer.send(codec.encode_disconnect())
        peer.hold(3.0)

    transport, rec = make(scripted(script), kind=kind, reconnect=FAST_RECONNECT)
    transport.connect()
    assert wait_until(lambda: rec.connects == [False, True], timeout=5.0), (rec.connects, rec.disconnects)
    assert len(rec.disconnects) == 1
    if kind == "lean" and ending == "close frame":
        assert rec.disconnects == ["server closed the WebSocket (code 1001: going away)"]


def test_refused_reconnect_is_reported_and_retried(kind: str, scripted: Any, make: Any) -> None:
    def script(peer: Peer, n: int) -> None:
        if n == 1:  # the first reconnect attempt is refused
            peer.open()
            peer.send(codec.encode_connect_error("come back later"))
            peer.hold(1.0)
            return
        peer.accept()
        if n == 0:
            peer.send(codec.encode_disconnect())
        peer.hold(3.0)

    transport, rec = make(scripted(script), kind=kind, reconnect=FAST_RECONNECT)
    transport.connect()
    assert wait_until(lambda: rec.connects == [False, True], timeout=5.0), (rec.connects, rec.errors)
    assert ("connect_error", "come back later") in rec.errors
