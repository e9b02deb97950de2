"""Micro-benchmark of the Python work per ack: one closed-loop session without the network.

A real :class:`~roombench.chat.session.ChatSession` on a real lean transport, generator,
ledger and histograms; only the socket is replaced: its sends are counted, not written,
and what the Node server would answer (the sender's ``new_message`` echo, then the ack)
is handed to the transport's receive path as the parsed frames the poller would hand it.
So the figure is the interpreter's work per ack that the generator adds on top of the
two syscalls (one send, one recv) every Python client pays (``bench/generators`` measures
those too, on a real server); it moves only when the hot path's code does, which makes it
the quick A/B for a hot-path change before the slower, noisier end-to-end one.

    python -m bench.micro.bench_hotpath [--n 100000] [--repeats 5] [--sessions 1,50,1000]
    python -m bench.micro.bench_hotpath --instructions [--sessions 1]
    python -m bench.micro.bench_hotpath --fanout 10,100 [--rooms 10]

Prints ns per ack (best of the repeats) and, for scale, a bare loop of the same frames
through orjson (what python-raw does per ack). ``--sessions 1,50,1000`` serves that many
sessions round-robin, as the poller does its connections: the cost per ack grows with them
(each ack touches a dozen objects of its session, which stop fitting in the CPU's caches).
Not a test; bounded to a few seconds per session count.

``--fanout 10,100`` times the fan-out path instead: in rooms of that size one member sends,
every member gets the server's new_message and the sender its ack; ns per delivery (the
copies to the others), the way the generator benchmark's fan-out suite divides its CPU.
In rooms of 10 it is ~2.4 us, against 15-19 us per delivery end to end (fan-out suite at
30,000/s): the rest is the receive itself (one recv per ~1.7 frames, whose kernel side
sends the TCP ACK) and the poller around it, not the ledger, session or histograms.

``--instructions`` counts instead of timing: the loop runs under valgrind's callgrind
twice (3,000 and 6,000 acks after the same set-up) and the difference is the instructions
per ack, the same figure in every run whatever else the machine does (hash seed, ledger
prefix and BLAS threads fixed), so a hot-path change of 1 % shows, where timings on this
shared machine move 5-20 % from run to run. It counts instructions, not cache misses:
the cost of many sessions' cold objects is the timed ``--sessions`` figure's to show.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from typing import Any  # noqa: E402

import orjson  # noqa: E402
from gevent import socket as gsocket  # noqa: E402

from roombench.chat.scenario import Scenario  # noqa: E402
from roombench.generator import Generator  # noqa: E402
from roombench.transport.conn import Conn  # noqa: E402
from roombench.wire.frames import FrameParser  # noqa: E402
from roombench.wire.profile import DEFAULT_PROFILE  # noqa: E402

MAX_N = 1_000_000
MAX_SESSIONS = 5_000  # a socket pair each: within the open-file limit


class _Sink:
    """The socket's raw side: sends succeed at once and are only counted (the last one kept)."""

    def __init__(self) -> None:
        self.sent = 0
        self.last = b""

    def send(self, frame: bytes) -> int:
        self.sent += 1
        self.last = frame
        return len(frame)


#: --instructions: acks in the shorter and the longer of the two counted runs
_COUNT_RUNS = (3000, 6000)


def _generator(room_size: int = 1, window: int = 1) -> Any:
    # window 0: an open loop at one message in ~12 days, so the clock never sends by itself
    sc = Scenario(room_size=room_size, rate=1.0 if window else 1e-6, window=window, ack="callback", size=64,
                  typing_every=0, read_every=0, transport="lean", token="t")
    return Generator("http://127.0.0.1:9", sc, DEFAULT_PROFILE)


def _session(gen: Any, keep: list[Any]) -> tuple[Any, Any, _Sink]:
    """A joined closed-loop session of ``gen`` (window 1, a room of one, acks by callback);
    its socket pair goes into ``keep`` (only the sends are replaced)."""
    session = gen.new_session()
    tr = session.transport
    a, b = gsocket.socketpair()
    keep += [a, b]
    conn = Conn(a, tr)
    sink = conn.raw = _Sink()
    tr._conn = conn
    tr._session_up(conn, "sid")  # on_connect: the join goes out with ack id 0
    tr._on_text(conn, b'430[{"ok":true,"last_id":0}]')
    session.run()  # hands the schedule over; window 1: the first message goes out now
    return session, conn, sink


def _frames(session: Any, n: int, first_id: int) -> list[tuple[bytes, bytes]]:
    """The server's answers to the session's next ``n`` sends: (echo, ack) payloads."""
    ledger, room = session.gen.ledger, session.rooms[0]
    prefix = ledger.prefix
    k0 = int(next(t for t, r in ledger._records.items() if r[3] == session.no)[len(prefix):])
    content = "x" * 64
    out = []
    for i in range(n):
        temp_id, msg_id = f"{prefix}{k0 + i}", first_id + i
        msg = {"id": msg_id, "channel_id": room, "sender_id": session.user_id, "content": content,
               "temp_id": temp_id, "created_at": 1765100000.123}
        echo = b'42["new_message",' + orjson.dumps(msg) + b"]"
        ack = b"43%d[" % (i + 1) + orjson.dumps({"id": msg_id, "temp_id": temp_id}) + b"]"
        out.append((echo, ack))
    return out


def bench_session(n: int, sessions: int = 1, run: int | None = None) -> float:
    """ns per ack through ``sessions`` sessions of one generator served round-robin, as the
    poller serves its connections (echo, then ack, then the next send; ``n`` acks in all,
    or only the first ``run`` of them after the same set-up)."""
    gen, keep = _generator(), []
    if run is not None:  # counted under callgrind: the same temp_ids (and hashes) every run
        gen.ledger.prefix = "5f3a9c1e-"
    made = [_session(gen, keep) for _ in range(sessions)]
    per = max(1, n // sessions)
    # one message at a time from each session in turn: [(on_text, conn, echo, ack), ...]; the
    # payloads as the parser hands them (bytearrays) and made in the order they are used, as
    # reads into the one receive buffer are: not each session's apart (that measures cache misses
    # on the benchmark's own data)
    script = [(s.transport._on_text, conn, bytearray(echo), bytearray(ack))
              for steps in zip(*(_frames(s, per, 1) for s, _, _ in made))
              for (s, conn, _), (echo, ack) in zip(made, steps)]
    if run is not None:
        script = script[:run]
    t0 = time.perf_counter_ns()
    for on_text, conn, echo, ack in script:
        on_text(conn, echo)
        on_text(conn, ack)
    dt = time.perf_counter_ns() - t0
    acked, sent = gen.ledger.counts().acked, sum(sink.sent for _, _, sink in made)
    if acked != len(script) or sent != len(script) + 2 * sessions or gen.errors:  # each: the join, the first send
        raise SystemExit(f"bench_hotpath: the loop did not run as meant: acked {acked}, sent {sent}, "
                         f"errors {dict(gen.errors)}")
    for sock in keep:
        sock.close()
    return dt / len(script)


def bench_fanout(n: int, room_size: int, rooms: int) -> float:
    """ns per delivery in ``rooms`` rooms of ``room_size``, served in turn: one member sends
    (members take turns), every member gets the server's new_message (the sender's own copy
    among them), then the sender its ack; all of it timed, divided by the deliveries (the
    copies to the others), as the generator benchmark's fan-out suite divides its CPU."""
    gen, keep = _generator(room_size, window=0), []
    made = [_session(gen, keep) for _ in range(room_size * rooms)]
    by_room: dict[str, list[Any]] = {}
    for member in made:
        by_room.setdefault(member[0].rooms[0], []).append(member)
    groups = list(by_room.values())
    if len(groups) != rooms or any(len(g) != room_size for g in groups):
        raise SystemExit(f"bench_hotpath: rooms came out as {[len(g) for g in groups]}, not {rooms} of {room_size}")
    content = "x" * 64
    messages = max(1, n // max(1, room_size - 1))
    clock, elapsed = time.perf_counter_ns, 0
    for i in range(messages):
        group = groups[i % rooms]
        s, _, sink = group[(i // rooms) % room_size]
        room = s.rooms[0]
        t0 = clock()
        if not s.send(room, time.perf_counter(), i):
            raise SystemExit("bench_hotpath: a send did not go out")
        elapsed += clock() - t0
        ((_, packet),), _ = FrameParser().parse(sink.last)  # 42<ack id>["send_message",{...}]
        start = packet.index(b"[")
        aid, sent = int(packet[2:start]), orjson.loads(packet[start:])
        msg = {"id": i + 1, "channel_id": room, "sender_id": s.user_id, "content": content,
               "temp_id": sent[1]["temp_id"], "created_at": 1765100000.123}
        copy = b'42["new_message",' + orjson.dumps(msg) + b"]"
        payloads = [(m[0].transport._on_text, m[1], bytearray(copy)) for m in group]
        ack = bytearray(b"43%d[" % aid + orjson.dumps({"id": i + 1, "temp_id": msg["temp_id"]}) + b"]")
        sender_conn = s.transport._live
        t0 = clock()
        for on_text, conn, payload in payloads:
            on_text(conn, payload)
        s.transport._on_text(sender_conn, ack)
        elapsed += clock() - t0
    c = gen.ledger.counts()
    if c.delivered_live != messages * (room_size - 1) or c.acked != messages or gen.errors:
        raise SystemExit(f"bench_hotpath: the fan-out loop did not run as meant: delivered {c.delivered_live}, "
                         f"acked {c.acked}, errors {dict(gen.errors)}")
    for sock in keep:
        sock.close()
    return elapsed / (messages * (room_size - 1))


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


def _instructions(valgrind: str, sessions: int, run: int) -> int:
    """Instructions callgrind counts for the whole process running ``run`` of 6,000 acks."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1"}
    cmd = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m",
           "bench.micro.bench_hotpath", "--_count", f"{sessions},{run}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    found = re.search(r"refs:\s+([\d,]+)", done.stderr)
    if done.returncode or found is None:
        raise SystemExit(f"bench_hotpath: callgrind run failed (exit {done.returncode}): "
                         f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return int(found.group(1).replace(",", ""))


def count_instructions(sessions: int) -> float:
    """Instructions per ack: the difference of two callgrind runs with the same set-up."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("bench_hotpath: --instructions needs valgrind (apt-get install valgrind)", file=sys.stderr)
        raise SystemExit(2)
    short, long = _COUNT_RUNS
    with ThreadPoolExecutor(2) as pool:  # the two runs side by side: counts do not depend on load
        few, many = pool.map(lambda run: _instructions(valgrind, sessions, run), (short, long))
    return (many - few) / (long - short)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="acks per measurement")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sessions", default="1", help="comma-separated session counts, served round-robin")
    p.add_argument("--fanout", metavar="ROOM_SIZES",
                   help="comma-separated room sizes: ns per fan-out delivery instead of per ack (--rooms rooms each)")
    p.add_argument("--rooms", type=int, default=10, help="--fanout: rooms served in turn (default 10)")
    p.add_argument("--instructions", action="store_true",
                   help="count instructions per ack under callgrind instead of timing (repeatable)")
    p.add_argument("--_count", help=argparse.SUPPRESS)  # one callgrind run: "sessions,acks"
    a = p.parse_args()
    if a._count:
        sessions, run = (int(x) for x in a._count.split(","))
        bench_session(_COUNT_RUNS[-1], sessions, run)
        return
    n = max(1000, min(a.n, MAX_N))
    try:
        counts = [max(1, min(int(x), MAX_SESSIONS)) for x in a.sessions.split(",") if x.strip()]
    except ValueError:
        p.error(f"--sessions takes comma-separated integers, got {a.sessions!r}")
    if a.fanout:
        try:
            sizes = [int(x) for x in a.fanout.split(",") if x.strip()]
        except ValueError:
            p.error(f"--fanout takes comma-separated integers, got {a.fanout!r}")
        rooms = max(1, a.rooms)
        if not sizes or min(sizes) < 2 or max(sizes) * rooms > MAX_SESSIONS:
            p.error(f"--fanout: room sizes of 2 or more, at most {MAX_SESSIONS} sessions in all (--rooms {rooms})")
        for m in sizes:
            per = min(bench_fanout(n, m, rooms) for _ in range(max(1, a.repeats)))
            print(f"fan-out (lean, ledger, HDR), rooms of {m:3d} x {rooms}: {per:7.0f} ns per delivery")
        return
    if a.instructions:
        for k in counts:
            print(f"session (lean, ledger, HDR), {k:5d} session(s): {count_instructions(k):7.0f} instructions per ack")
        return
    bare = min(bench_bare(n) for _ in range(max(1, a.repeats)))
    for k in counts:
        session = min(bench_session(n, k) for _ in range(max(1, a.repeats)))
        print(f"session (lean, ledger, HDR), {k:5d} session(s): {session:7.0f} ns per ack  (/ bare = {session / bare:.2f})")
    print(f"bare parse + send build                   : {bare:7.0f} ns per ack")


if __name__ == "__main__":
    main()
