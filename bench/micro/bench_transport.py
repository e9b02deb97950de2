"""Lean vs compat (vs ws) transport: acks/s and generator CPU per ack against the reference server.

Each of C connections joins a room of its own and runs a closed loop of send_message
with ack (the ack callback sends the next one), so every ack also brings the sender's
own new_message echo: one frame out, two in. CPU is this process's user + system time
(= time.process_time()) over the measured window, divided by the acks in it; the server
runs in its own process. System time includes the kernel's loopback TCP work on our sends.
Rounds alternate which transport goes first so drift on a shared machine hits both.
The ``ws`` transport (plain WebSocket) runs against the ``ws`` server variant, the others
against ``py``; both servers run for the whole benchmark.

    python -m bench.micro.bench_transport [--connections 50] [--duration 5] [--rounds 2] [--transports lean,compat,ws]
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402

from roombench.wire.profile import DEFAULT_PROFILE  # noqa: E402
from roombench.servers import ServerProcess, start_server  # noqa: E402
from roombench.transport.base import Callbacks, Transport  # noqa: E402
from roombench.transport.registry import make_transport  # noqa: E402

TOKEN = "secret"
MAX_DURATION = 60.0
MAX_CONNECTIONS = 1000


class _Loop:
    """One connection's closed loop: each ack sends the next message until stopped."""

    def __init__(self, transport_kind: str, url: str, index: int, stats: dict[str, int]) -> None:
        self.stats = stats
        self.index = index
        self.seq = 0
        self.running = False
        self.room = f"bench-{index}"
        handlers = Callbacks(on_connect=self._noop, on_disconnect=self._count_error,
                            on_event=self._on_event, on_error=self._count_error_kind)
        self.transport: Transport = make_transport(transport_kind, url, DEFAULT_PROFILE, handlers, token=TOKEN)
        self.in_flight = False

    def start(self) -> None:
        self.transport.connect()
        joined = gevent.event.Event()
        self.transport.emit(DEFAULT_PROFILE.event("join"), {"room": self.room}, lambda *_: joined.set())
        joined.wait(10)
        self.running = True
        self._send()

    def _send(self) -> None:
        self.seq += 1
        data = {"channel_id": self.room, "content": "benchmark message payload of modest size",
                "temp_id": f"{self.index}-{self.seq}"}
        self.in_flight = self.transport.emit(DEFAULT_PROFILE.event("send_message"), data, self._on_ack)

    def _on_ack(self, _: Any, payload: Any, error: str | None) -> None:
        self.in_flight = False
        if error is None:
            self.stats["acks"] += 1
        else:
            self.stats["errors"] += 1
        if self.running:
            self._send()

    def _on_event(self, event: str, data: Any) -> None:
        self.stats["events"] += 1

    def _noop(self, *_: Any) -> None:
        pass

    def _count_error(self, *_: Any) -> None:
        self.stats["errors"] += 1

    def _count_error_kind(self, kind: str, detail: str) -> None:
        self.stats["errors"] += 1


def run_round(kind: str, url: str, connections: int, duration: float) -> dict[str, float]:
    """One measured window for one transport kind; returns acks/s and µs of CPU per ack."""
    stats = {"acks": 0, "events": 0, "errors": 0}
    loops = [_Loop(kind, url, i, stats) for i in range(connections)]
    try:
        gevent.joinall([gevent.spawn(loop.start) for loop in loops], raise_error=True, timeout=60)
        gevent.sleep(min(1.0, duration / 4))  # warm-up, not measured
        acks0, (user0, sys0), wall0 = stats["acks"], _cpu(), time.perf_counter()
        gevent.sleep(duration)
        (user1, sys1), wall = _cpu(), time.perf_counter() - wall0
        acks, user, system = stats["acks"] - acks0, user1 - user0, sys1 - sys0
    finally:
        for loop in loops:
            loop.running = False
        deadline = time.monotonic() + 5
        while any(loop.in_flight for loop in loops) and time.monotonic() < deadline:
            gevent.sleep(0.05)
        for loop in loops:
            loop.transport.close()
    per_ack = 1e6 / max(acks, 1)
    return {"acks_per_s": acks / wall, "us_per_ack": (user + system) * per_ack, "user_us": user * per_ack,
            "sys_us": system * per_ack, "cpu_share": (user + system) / wall, "errors": stats["errors"]}


def _cpu() -> tuple[float, float]:
    """(user, system) CPU seconds of this process; their sum is time.process_time()."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def main() -> None:
    """Parse options, start the servers, alternate rounds, print a side-by-side table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured window")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--transports", default="lean,compat", help="comma-separated: lean, compat, ws")
    args = parser.parse_args()
    connections = max(1, min(args.connections, MAX_CONNECTIONS))
    duration = max(0.5, min(args.duration, MAX_DURATION))
    kinds = [k.strip() for k in args.transports.split(",") if k.strip()]
    results: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    servers: dict[str, ServerProcess] = {}
    try:
        for variant in dict.fromkeys(_variant(kind) for kind in kinds):
            server = servers[variant] = start_server(variant, token=TOKEN)
            print(f"server {server.variant} pid {server.pid} at {server.url}; "
                  f"{connections} connections, {duration:g} s windows, {args.rounds} rounds")
        for rnd in range(max(1, args.rounds)):
            order = kinds if rnd % 2 == 0 else kinds[::-1]
            for kind in order:
                r = run_round(kind, servers[_variant(kind)].url, connections, duration)
                results[kind].append(r)
                print(f"round {rnd + 1} {kind:7s} {r['acks_per_s']:9.0f} acks/s  "
                      f"{r['us_per_ack']:7.1f} µs CPU/ack (user {r['user_us']:.1f} + sys {r['sys_us']:.1f})  "
                      f"client CPU {r['cpu_share']:4.0%}  errors {r['errors']:.0f}")
    finally:
        for server in servers.values():
            server.stop()
    print("\nmedian over rounds:")
    print(f"{'transport':10s} {'acks/s':>9s} {'µs CPU/ack':>11s}")
    for kind, rs in results.items():
        print(f"{kind:10s} {statistics.median(r['acks_per_s'] for r in rs):9.0f} "
              f"{statistics.median(r['us_per_ack'] for r in rs):11.1f}")


def _variant(kind: str) -> str:
    """The server variant a transport kind talks to."""
    return "ws" if kind == "ws" else "py"


if __name__ == "__main__":
    main()
