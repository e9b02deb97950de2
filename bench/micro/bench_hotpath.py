"""Micro-benchmark of the Python work per ack: one closed-loop session without the network.

A real :class:`~roombench.chat.session.ChatSession` on a real lean transport, generator,
ledger and histograms; only the socket is replaced: its sends are counted, not written,
and what the Node server would answer (the sender's ``new_message`` echo, then the ack)
is handed to the transport's receive path as the parsed frames the poller would hand it.
So the figure is the interpreter's work per ack that the generator adds on top of the
two syscalls (one send, one recv) every Python client pays (``bench/generators`` measures
those too, on a real server); it moves only when the hot path's code does, which makes it
the quick A/B for a hot-path change before the slower, noisier end-to-end one.

    python -m bench.micro.bench_hotpath [--n 100000] [--repeats 5]

Prints ns per ack (best of the repeats) and, for scale, a bare loop of the same frames
through orjson (what python-raw does per ack). Not a test; bounded to a few seconds.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import orjson  # noqa: E402
from gevent import socket as gsocket  # noqa: E402

from roombench.chat.scenario import Scenario  # noqa: E402
from roombench.generator import Generator  # noqa: E402
from roombench.transport.conn import Conn  # noqa: E402
from roombench.wire.profile import DEFAULT_PROFILE  # noqa: E402

MAX_N = 1_000_000


class _Sink:
    """The socket's raw side: sends succeed at once and are only counted."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, frame: bytes) -> int:
        self.sent += 1
        return len(frame)


def _session(n: int) -> tuple[Any, Any, Any, _Sink]:
    """A joined closed-loop session (window 1, a room of one, acks by callback)."""
    sc = Scenario(room_size=1, rate=1.0, window=1, ack="callback", size=64, typing_every=0, read_every=0,
                  transport="lean", token="t")
    gen = Generator("http://127.0.0.1:9", sc, DEFAULT_PROFILE)
    session = gen.new_session()
    tr = session.transport
    a, _b = gsocket.socketpair()
    conn = Conn(a, tr)
    sink = conn.raw = _Sink()
    tr._conn = conn
    tr._session_up(conn, "sid")  # on_connect: the join goes out with ack id 0
    tr._on_text(conn, b'430[{"ok":true,"last_id":0}]')
    session.run()  # hands the schedule over; window 1: the first message goes out now
    return gen, session, conn, sink


def _frames(session: Any, n: int, first_id: int) -> list[tuple[bytes, bytes]]:
    """The server's answers to the session's next ``n`` sends: (echo, ack) payloads."""
    ledger, room = session.gen.ledger, session.rooms[0]
    prefix, k0 = ledger.prefix, int(next(iter(session.unconfirmed))[len(ledger.prefix):])
    content = "x" * 64
    out = []
    for i in range(n):
        temp_id, msg_id = f"{prefix}{k0 + i}", first_id + i
        msg = {"id": msg_id, "channel_id": room, "sender_id": session.user_id, "content": content,
               "temp_id": temp_id, "created_at": 1765100000.123}
        echo = b'42["new_message",' + orjson.dumps(msg) + b"]"
        ack = b"43%d[" % (i + 1) + orjson.dumps({"id": msg_id, "temp_id": temp_id}) + b"]"
        out.append((bytearray(echo), bytearray(ack)))  # as the parser hands them: slices of a bytearray
    return out


def bench_session(n: int) -> float:
    """ns per ack through the session (echo, then ack, then the next send)."""
    gen, session, conn, sink = _session(n)
    frames = _frames(session, n, 1)
    on_text = session.transport._on_text
    t0 = time.perf_counter_ns()
    for echo, ack in frames:
        on_text(conn, echo)
        on_text(conn, ack)
    dt = time.perf_counter_ns() - t0
    acked = gen.ledger.counts().acked
    if acked != n or sink.sent != n + 2 or gen.errors:  # the join and the first send, then one per ack
        raise SystemExit(f"bench_hotpath: the loop did not run as meant: acked {acked}, sent {sink.sent}, "
                         f"errors {dict(gen.errors)}")
    return dt / n


def bench_bare(n: int) -> float:
    """ns per ack for the yardstick's work: parse both frames, note the latency, build the next send."""
    frames = [(b'42["new_message",{"id":%d,"temp_id":"t%d","content":"%s"}]' % (i, i, b"x" * 64),
               b'43%d[{"id":%d}]' % (i, i)) for i in range(n)]
    lat: list[float] = []
    loads, clock = orjson.loads, time.perf_counter
    t0 = time.perf_counter_ns()
    for echo, ack in frames:
        loads(echo[2:])
        loads(ack[ack.index(b"["):])
        lat.append(clock() - t0)
        _ = b'\x81\xfe\x00\x00\x00\x00' + b'42["send_message",' + orjson.dumps({"c": "r", "t": len(lat)}) + b"]"
    return (time.perf_counter_ns() - t0) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    n = max(1000, min(a.n, MAX_N))
    session = min(bench_session(n) for _ in range(max(1, a.repeats)))
    bare = min(bench_bare(n) for _ in range(max(1, a.repeats)))
    print(f"session (lean, ledger, HDR): {session:7.0f} ns per ack")
    print(f"bare parse + send build    : {bare:7.0f} ns per ack  (session / bare = {session / bare:.2f})")


if __name__ == "__main__":
    main()
