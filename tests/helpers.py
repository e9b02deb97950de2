"""Helpers shared by the test modules; the fixtures built on them are in conftest.py."""

from __future__ import annotations

import base64
import gc
import hashlib
import shutil
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent
import pytest
import socketio
import websocket
from greenlet import greenlet

from roombench.wire import frames as wsframes, packets
from roombench.wire.profile import DEFAULT_PROFILE, Profile
from roombench.transport.base import Callbacks, ReconnectPolicy, Transport

REF_TOKEN = "secret"  # the token of conftest.ref_server, and of the servers the tests start
SERVER_EVENTS = ("new_message", "user_typing", "message_read")
FAST_RECONNECT = ReconnectPolicy(delay=0.1, delay_max=0.5, jitter=0.2)
ACK_DELAY_MS = 800  # what the "slow" servers hold every send_message ack back


def new_room() -> str:
    """A channel name no other test uses (servers live for a module or the session)."""
    return f"room-{uuid.uuid4().hex[:8]}"


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate``; whether it came true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.01)
    return True


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate``; fail the test if it does not come true within ``timeout`` seconds."""
    assert wait_until(predicate, timeout), "timed out waiting"


@contextmanager
def busy_port() -> Iterator[int]:
    """A loopback port that something is listening on, for as long as the block runs."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        yield blocker.getsockname()[1]


# ---------------------------------------------------------------------- python-socketio clients


class Peer:
    """A python-socketio client (websocket transport) that records every server event it receives."""

    def __init__(self, url: str, user_id: str | None = None, token: str = REF_TOKEN) -> None:
        self.got: dict[str, list[Any]] = defaultdict(list)
        self.client = socketio.Client(reconnection=False)
        for event in SERVER_EVENTS:
            self.client.on(event, self._recorder(event))
        auth = {"token": token} if user_id is None else {"token": token, "user_id": user_id}
        self.client.connect(url, auth=auth, transports=["websocket"], wait_timeout=5)

    def _recorder(self, event: str) -> Callable[[Any], None]:
        return lambda data: self.got[event].append(data)

    def call(self, event: str, data: Any) -> Any:
        return self.client.call(event, data, timeout=5)

    def ids(self, event: str = "new_message") -> list[int]:
        return [m["id"] for m in self.got[event]]


def raw_socket(url: str) -> websocket.WebSocket:
    """A bare WebSocket to a Socket.IO server's Engine.IO endpoint; its open packet is still unread."""
    ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    return websocket.create_connection(ws_url, timeout=5)


def check_a_wrong_token_is_refused(url: str, open_raw: Callable[[], websocket.WebSocket]) -> None:
    """A Socket.IO server refuses a wrong token: python-socketio cannot connect, and a raw
    CONNECT gets a CONNECT_ERROR (``open_raw()``: a raw socket with the open packet read)."""
    with pytest.raises(socketio.exceptions.ConnectionError):
        Peer(url, "mallory", token="wrong")
    ws = open_raw()
    try:
        ws.send('40{"token":"wrong"}')
        assert ws.recv() == '44{"message":"invalid token"}'
    finally:
        ws.close()


# ---------------------------------------------------------------------- roombench transports


class Recorder:
    """Handlers that write down every call."""

    def __init__(self) -> None:
        self.connects: list[bool] = []
        self.disconnects: list[str] = []
        self.events: list[tuple[str, Any]] = []
        self.errors: list[tuple[str, str]] = []
        self.handlers = Callbacks(on_connect=self.connects.append, on_disconnect=self.disconnects.append,
                                 on_event=lambda e, d: self.events.append((e, d)),
                                 on_error=lambda k, d: self.errors.append((k, d)))

    def of(self, event: str) -> list[Any]:
        return [data for name, data in self.events if name == event]


class Acks:
    """An ack callback that keeps every call, to prove 'exactly once'."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, str | None]] = []

    def __call__(self, _: Any, payload: Any, error: str | None) -> None:
        self.calls.append((payload, error))


def live_greenlets() -> set[int]:
    return {id(g) for g in gc.get_objects()
            if isinstance(g, greenlet) and not g.dead and g.parent is not None}


def send(transport: Transport, channel: str, temp_id: str, ack: Acks | None = None, content: str = "hello") -> bool:
    data = {"channel_id": channel, "content": content, "temp_id": temp_id}
    return transport.emit(DEFAULT_PROFILE.event("send_message"), data, ack)


def join(transport: Transport, channel: str) -> Any:
    ack = Acks()
    assert transport.emit(DEFAULT_PROFILE.event("join"), {"room": channel}, ack)
    assert wait_until(lambda: bool(ack.calls))
    return ack.calls


# ---------------------------------------------------------------------- checks every transport kind passes
# test_transport.py (lean and compat, on the reference server) and test_wsplain.py (ws, on the
# ws server) hold every transport to the same behaviour; these are the checks they share.
# ``build(**make_transport_kwargs) -> (transport, recorder)`` makes one of the test's kind, on its server.

Build = Callable[..., tuple[Transport, Recorder]]


def check_sends_are_acked_with_id_and_temp_id(transport: Transport, channel: str) -> None:
    """Two sends to ``channel`` (joined, still empty) are acked with ids 1 and 2."""
    first, second = Acks(), Acks()
    assert send(transport, channel, "t-1", first) and send(transport, channel, "t-2", second)
    assert wait_until(lambda: bool(first.calls and second.calls))
    assert first.calls == [({"id": 1, "temp_id": "t-1"}, None)]
    assert second.calls == [({"id": 2, "temp_id": "t-2"}, None)]
    assert join(transport, channel) == [({"ok": True, "last_id": 2}, None)]


def check_new_message_reaches_both_members(alice: Transport, rec_a: Recorder, bob: Transport,
                                           rec_b: Recorder) -> tuple[str, dict[str, Any]]:
    """Both connect and join a new room; alice's message reaches both. Returns (room, message)."""
    alice.connect()
    bob.connect()
    channel = new_room()
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
    return channel, message


def check_unknown_event_is_a_protocol_error(build: Build) -> None:
    # a profile without user_typing makes the server's user_typing an unknown event
    events = {k: v for k, v in DEFAULT_PROFILE.events.items() if k != "user_typing"}
    (alice, rec_a), (bob, _) = [build(profile=Profile(events=events)) for _ in "ab"]
    alice.connect()
    bob.connect()
    channel = new_room()
    join(alice, channel)
    join(bob, channel)
    bob.emit(DEFAULT_PROFILE.event("typing"), {"channel": channel})
    assert wait_until(lambda: bool(rec_a.errors))
    assert rec_a.errors == [("protocol_error", "unknown event 'user_typing'")]
    assert alice.connected and rec_a.events == []


def check_ack_timeout_fires_once_and_late_ack_is_reported(build: Build) -> None:
    """``build`` is on a server that holds every send_message ack back ACK_DELAY_MS."""
    transport, rec = build(ack_timeout=0.2)
    transport.connect()
    ack = Acks()
    started = time.monotonic()
    assert send(transport, new_room(), "t", ack)
    assert wait_until(lambda: bool(ack.calls), timeout=2.0)
    assert ack.calls == [(None, "timeout")]
    assert 0.15 < time.monotonic() - started < ACK_DELAY_MS / 1000
    assert wait_until(lambda: bool(rec.errors), timeout=3.0)
    assert [kind for kind, _ in rec.errors] == ["late_ack"]
    assert ack.calls == [(None, "timeout")]  # still exactly once


def check_an_ack_failed_while_its_send_waits_makes_emit_true(build: Build, server: Any) -> None:
    """``server`` is the caller's own (it is paused). emit's False promises the callback is
    never called: an ack that timed out while its frame waited for buffer space was called,
    so when the send then fails, emit must say True (a caller that counts awaited acks would
    otherwise count it twice)."""
    transport, _ = build(ack_timeout=0.3)
    transport.connect()
    ack = Acks()
    server.pause()  # it reads nothing: 64 MB fit in no socket buffers (tcp_rmem's max is 32 MB here)
    sender = gevent.spawn(send, transport, new_room(), "t", ack, content="x" * 64_000_000)
    assert wait_until(lambda: bool(ack.calls), timeout=5.0)  # the sweeper timed it out
    assert ack.calls == [(None, "timeout")] and not sender.dead  # ... while the send still waits
    transport.drop()
    assert sender.get(timeout=5.0) is True
    assert ack.calls == [(None, "timeout")]


def check_close_fails_pending_acks_and_leaves_no_greenlets(build: Build) -> None:
    """``build`` is on a server that holds every send_message ack back ACK_DELAY_MS."""
    before = live_greenlets()
    transport, rec = build(reconnect=FAST_RECONNECT)
    transport.connect()
    pending = Acks()
    assert send(transport, new_room(), "t", pending)
    transport.close()
    assert pending.calls == [(None, "disconnected")]
    assert not transport.connected and rec.disconnects == []
    assert wait_until(lambda: live_greenlets() <= before, timeout=5.0), live_greenlets() - before
    gevent.sleep(ACK_DELAY_MS / 1000 + 0.2)
    assert pending.calls == [(None, "disconnected")] and rec.errors == []


# ---------------------------------------------------------------------- a scripted server
# What the real servers never do on their own (ping early, send garbage, fragment, close,
# refuse a reconnect) comes from conftest.scripted: a real WebSocket over loopback, one
# script per accepted connection, talking through a ScriptedPeer.

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class ScriptedPeer:
    """The server side of one scripted connection."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.parser = wsframes.FrameParser()
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

    def send(self, payload: bytes, opcode: int = wsframes.OP_TEXT) -> None:
        self.sock.sendall(wsframes.encode_frame(opcode, payload, None))

    def recv(self) -> bytes:
        """The next text message from the client (its pongs and acks)."""
        while not self.pending:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("client closed")
            self.buf += chunk
            frames, used = self.parser.parse(self.buf)
            del self.buf[:used]
            self.pending += [bytes(p) for op, p in frames if op == wsframes.OP_TEXT]
        return self.pending.pop(0)

    def open(self, ping_interval_ms: int = 25000, ping_timeout_ms: int = 20000) -> bytes:
        """Engine.IO open, read the client's CONNECT; returns that CONNECT packet."""
        self.send(packets.encode_open("sid", ping_interval_ms, ping_timeout_ms))
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
                if any(op == wsframes.OP_CLOSE for op, _ in frames):
                    self.send(wsframes.close_payload(1000), wsframes.OP_CLOSE)
                    return
        except OSError:
            pass


def need_node() -> None:
    """Skip the calling test when Node.js is missing: the node variants cannot run."""
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed (`node` is not on PATH): the node variants cannot run")


@contextmanager
def csr_node(max_ms: int, token: str = REF_TOKEN) -> Iterator[Any]:
    """The node-csr variant with ``maxDisconnectionDuration = max_ms`` (given by its environment)."""
    from roombench.servers import start_server
    from roombench.servers.variants import CSR_MAX_ENV

    need_node()
    mp = pytest.MonkeyPatch()
    mp.setenv(CSR_MAX_ENV, str(max_ms))
    try:
        with start_server("node-csr", token=token) as server:
            yield server
    finally:
        mp.undo()
