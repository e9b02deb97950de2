"""The yardstick: the cheapest Socket.IO client this machine allows in Python (ack and rate modes).

    BENCH_USERS=50 BENCH_CTL=ctl.json ... python -m bench.generators.raw_client --url http://127.0.0.1:PORT

Not a load generator: no gevent, no Locust, no ledger, no histograms (a list of latencies
sorted once at the end), no reconnects. One process, blocking sequential connects, then
non-blocking sockets on one ``select.epoll``. Per connection: WebSocket upgrade to
``/socket.io/?EIO=4&transport=websocket``, Engine.IO open, ``40{"token": ...}``, join
``r<i>``; then a closed loop: ``send_message`` with ack id n, on ``43<n>[...]`` record
send -> ack latency and send the next (``BENCH_MODE=ack``), or, with ``BENCH_MODE=rate``,
an open loop: every connection sends ``BENCH_RATE`` messages/s on a fixed schedule (a
timer heap in the same epoll loop), latency from the intended send time. The server's
``new_message`` echo is parsed and counted. Engine.IO pings are answered. Its CPU per ack is what any Python client on this
machine pays at least: the floor the other tools' figures are read against.

Marks: the protocol of marks.py (before, ready, start, end), without greenlets.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import heapq
import json
import math
import os
import select
import socket
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import orjson

from bench.generators.marks import emit, expected_users, rss

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MASK = b"\x00\x00\x00\x00"  # a zero key is valid (RFC 6455 5.3) and makes masking a no-op
_loads = orjson.loads
_clock = time.perf_counter


def frame(payload: bytes) -> bytes:
    """One masked client text frame."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + _MASK + payload


def parse(buf: bytearray, limit: int = 1 << 30) -> tuple[list[tuple[int, bytes]], int]:
    """Up to ``limit`` complete server frames at the start of ``buf`` (opcode, payload) and
    the bytes they took."""
    out: list[tuple[int, bytes]] = []
    pos, size = 0, len(buf)
    while size - pos >= 2 and len(out) < limit:
        n = buf[pos + 1] & 0x7F  # server frames are unmasked
        head = 2
        if n == 126:
            if size - pos < 4:
                break
            n, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
        elif n == 127:
            if size - pos < 10:
                break
            n, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
        if size - pos < head + n:
            break
        out.append((buf[pos] & 0x0F, bytes(buf[pos + head:pos + head + n])))
        pos += head + n
    return out, pos


class Conn:
    """One connection: its socket, receive buffer and closed-loop state."""

    __slots__ = ("sock", "buf", "i", "room", "k", "sent_at", "pending")

    def __init__(self, sock: socket.socket, i: int) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.i = i
        self.room = f"r{i}"
        self.k = 1  # the last ack id used (1: the join)
        self.sent_at = 0.0
        self.pending: dict[int, float] = {}  # rate mode: ack id -> intended send time


def _packet(c: Conn) -> bytes:
    """Blocking: the next Engine.IO packet (text frame payload), pings answered on the way."""
    while True:
        frames, used = parse(c.buf, 1)  # one at a time: what follows stays in the buffer
        if frames:
            del c.buf[:used]
            op, payload = frames[0]
            if op == 8:
                raise ConnectionError("server closed the WebSocket")
            if payload == b"2":
                c.sock.sendall(frame(b"3"))
            elif op == 1:
                return payload
            continue
        data = c.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        c.buf += data


def connect(host: str, port: int, i: int, token: str, timeout: float) -> Conn:
    """Connect, upgrade, open the Socket.IO session and join room r<i> (blocking)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: %s:%d\r\n"
                 b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n" % (host.encode(), port, key))
    c = Conn(sock, i)
    while b"\r\n\r\n" not in c.buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed during the upgrade")
        c.buf += data
    head, _, rest = bytes(c.buf).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if not status.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"upgrade answered {status!r}")
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    if accept not in head:
        raise ConnectionError("bad Sec-WebSocket-Accept")
    c.buf = bytearray(rest)
    if not _packet(c).startswith(b"0{"):
        raise ConnectionError("no Engine.IO open packet")
    sock.sendall(frame(b"40" + orjson.dumps({"token": token})))
    answer = _packet(c)
    if not answer.startswith(b"40"):
        raise ConnectionError(f"Socket.IO connect refused: {answer[:200]!r}")
    sock.sendall(frame(b'421["join",{"room":"%s"}]' % c.room.encode()))
    answer = _packet(c)
    if not answer.startswith(b"431["):
        raise ConnectionError(f"join not acked: {answer[:200]!r}")
    return c


class Loop:
    """The closed (or, with ``rate`` > 0, open) loop over every connection, and its counters."""

    def __init__(self, conns: list[Conn], size: int, rate: float = 0.0) -> None:
        self.conns = {c.sock.fileno(): c for c in conns}
        self.interval = 1.0 / rate if rate > 0 else 0.0
        now = _clock()
        # rate mode: (intended send time, fd), phases spread over one interval
        self.due: list[tuple[float, int]] = [(now + self.interval * j / max(1, len(conns)), fd)
                                             for j, fd in enumerate(self.conns)] if rate > 0 else []
        heapq.heapify(self.due)
        self.content = b"x" * size
        self.acks = 0
        self.echoes = 0
        self.lat: list[float] = []
        self.errors: dict[str, int] = {}
        self.poller = select.epoll()
        for fd, c in self.conns.items():
            c.sock.setblocking(False)
            self.poller.register(fd, select.EPOLLIN)

    def reset(self) -> None:
        self.acks = self.echoes = 0
        self.lat.clear()
        self.errors = {}

    def error(self, name: str) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1

    def send(self, c: Conn, intended: float = 0.0) -> None:
        c.k += 1
        if intended:
            c.pending[c.k] = intended
        payload = b'42%d["send_message",{"channel_id":"%s","content":"%s","temp_id":"%d-%d"}]' % (
            c.k, c.room.encode(), self.content, c.i, c.k)
        data = frame(payload)
        c.sent_at = _clock()
        try:  # small frames, at most a few in flight per connection: the send buffer cannot be full
            if c.sock.send(data) != len(data):
                self.error("short_send")
        except OSError:
            self.error("send_error")  # the recv side drops the connection

    def drop(self, fd: int, why: str) -> None:
        self.poller.unregister(fd)
        self.conns.pop(fd).sock.close()
        self.error(why)

    def _send_due(self, timeout: float) -> float:
        """Rate mode: send every message whose time has come; the poll timeout until the next."""
        due, conns, interval, now = self.due, self.conns, self.interval, _clock()
        while due and due[0][0] <= now:
            t, fd = due[0]
            c = conns.get(fd)
            if c is None:  # dropped: its schedule ends
                heapq.heappop(due)
                continue
            self.send(c, t)
            heapq.heapreplace(due, (t + interval, fd))
        return min(timeout, max(0.0, due[0][0] - now)) if due else timeout

    def run(self, timeout: float) -> None:
        """Serve whatever arrives within ``timeout`` s: one recv per ready socket."""
        if self.interval:
            timeout = self._send_due(timeout)
        conns, lat, loads, clock, closed = self.conns, self.lat, _loads, _clock, not self.interval  # locals: the hot path
        for fd, _ in self.poller.poll(timeout):
            c = conns[fd]
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                self.drop(fd, "recv_error")
                continue
            if not data:
                self.drop(fd, "closed")
                continue
            buf = c.buf
            buf += data
            frames, used = parse(buf)
            if used:
                del buf[:used]
            for op, payload in frames:
                if op != 1:
                    if op == 8:
                        self.drop(fd, "ws_close")
                        break
                    continue
                if payload.startswith(b"43"):
                    if closed:
                        lat.append(clock() - c.sent_at)
                    body = payload.index(b"[")
                    ack = loads(payload[body:])
                    if closed:
                        if int(payload[2:body]) != c.k or not isinstance(ack[0], dict) or "error" in ack[0]:
                            self.error("bad_ack")
                        self.acks += 1
                        self.send(c)
                        continue
                    intended = c.pending.pop(int(payload[2:body]), None)
                    if intended is None or not isinstance(ack[0], dict) or "error" in ack[0]:
                        self.error("bad_ack")
                    else:
                        lat.append(clock() - intended)
                    self.acks += 1
                elif payload.startswith(b"42"):
                    if loads(payload[2:])[0] == "new_message":
                        self.echoes += 1
                elif payload == b"2":
                    c.sock.send(frame(b"3"))
                elif payload.startswith(b"41"):
                    self.drop(fd, "disconnected")
                    break

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.lat)
        n = len(lat)

        def at(q: float) -> float:
            return 1000 * lat[min(n - 1, max(0, math.ceil(q * n) - 1))] if n else 0.0

        return {"acks": self.acks, "deliveries": 0, "echoes": self.echoes, "errors": dict(self.errors),
                "lat": {"ack": {"n": n, "p50_ms": at(0.5), "p99_ms": at(0.99)},
                        "fanout": {"n": 0, "p50_ms": 0, "p99_ms": 0}}}


def _window(path: str) -> tuple[float, float] | None:
    try:
        with open(path) as f:
            w = json.load(f)
        return float(w["start"]), float(w["end"])
    except (OSError, ValueError, KeyError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="http://host:port of the Socket.IO server")
    a = p.parse_args(argv)
    mode = os.environ.get("BENCH_MODE", "ack")
    if mode not in ("ack", "rate"):
        raise SystemExit(f"raw_client.py runs BENCH_MODE=ack or rate, not {mode!r}")
    rate = float(os.environ.get("BENCH_RATE", "1")) if mode == "rate" else 0.0
    url = urlsplit(a.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    token = os.environ.get("BENCH_TOKEN", "")
    expected = expected_users()
    t0 = time.time()
    emit("before", rss=rss())
    deadline = t0 + float(os.environ.get("BENCH_READY_TIMEOUT", "60"))
    conns: list[Conn] = []
    connect_errors = 0
    for i in range(expected):
        left = deadline - time.time()
        if left <= 0:
            break
        try:
            conns.append(connect(host, port, i, token, min(10.0, left)))
        except OSError as exc:  # ConnectionError and socket.timeout are OSErrors
            connect_errors += 1
            print(f"raw_client: connection {i}: {exc}", file=sys.stderr)
    loop = Loop(conns, int(os.environ.get("BENCH_SIZE", "64")), rate)
    if not rate:
        for c in conns:  # the load runs from ready on, as roombench's users' does
            loop.send(c)
    emit("ready", connected=len(conns), expected=expected, rss=rss(), t_begin=t0)

    ctl, give_up, next_check = os.environ["BENCH_CTL"], time.time() + 120, 0.0
    window: tuple[float, float] | None = None
    while window is None:  # keep serving (pings, the loop) while run.py decides the window
        now = time.time()
        if now > give_up:
            return 1
        if now >= next_check:
            window, next_check = _window(ctl), now + 0.05
        loop.run(0.05)
    start, end = window
    while (now := time.time()) < start:
        loop.run(min(0.05, start - now))
    loop.reset()
    emit("start")
    while (now := time.time()) < end:
        loop.run(min(0.05, end - now))
    out = loop.summary()
    if connect_errors:
        out["errors"]["connect"] = connect_errors
    emit("end", **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
