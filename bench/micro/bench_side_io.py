"""What a busy generator does to the I/O of its other greenlets: REST fetch time under load.

The connection poller holds the process's one loop while it reads (and, between reads,
waits in its own epoll set). Everything else a generator does runs in other greenlets:
the REST backfill after a reconnect, connects, Locust's messages. Their latency is
measured too (backfill time is one of the run's figures), so the poller must not add to
it. This starts the Node reference server, loads it through one generator (``--users``
connections, open loop, ``--rate`` messages per second each, rooms of one) and, beside
that load in the same process, fetches one room's history over REST every 20 ms on a
kept-alive connection, as a backfill does. It prints the fetch time's percentiles with
and without the load, the generator's loop lag and its CPU per ack.

    python -m bench.micro.bench_side_io [--users 50] [--rate 100] [--duration 6]

Not a test; bounded (``--duration`` up to 60 s). An A/B of a poller change runs it from
both checkouts in turn (``PYTHONPATH=<worktree> python -m bench.micro.bench_side_io``).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import numpy as np  # noqa: E402

from roombench.chat.backfill import BackfillClient  # noqa: E402
from roombench.chat.scenario import Scenario  # noqa: E402
from roombench.generator import Generator, run_report  # noqa: E402
from roombench.measure.metrics import percentiles  # noqa: E402
from roombench.servers import start_server  # noqa: E402
from roombench.wire.profile import DEFAULT_PROFILE  # noqa: E402

TOKEN = "bench-side-io"  # noqa: S105 - a loopback server's throwaway token
FETCH_EVERY_S = 0.02


def _fetches(url: str, seconds: float) -> list[float]:
    """ms per REST fetch of one room (kept-alive connection), one every FETCH_EVERY_S."""
    client = BackfillClient(url, DEFAULT_PROFILE, TOKEN)
    took: list[float] = []
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.perf_counter()
            client.after("side-io", 0, time.monotonic() + 5)
            took.append(1000 * (time.perf_counter() - t))
            gevent.sleep(FETCH_EVERY_S)
    finally:
        client.close()
    return took[1:]  # the first opens the connection


def _line(name: str, took: list[float]) -> str:
    p = np.percentile(took, [50, 90, 99]) if took else [float("nan")] * 3
    return f"{name:>14}: REST fetch p50 {p[0]:.2f}  p90 {p[1]:.2f}  p99 {p[2]:.2f}  max {max(took, default=0):.2f} ms  (n={len(took)})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--rate", type=float, default=100.0, help="messages per second per user")
    p.add_argument("--duration", type=float, default=6.0)
    a = p.parse_args()
    if not (1 <= a.users <= 2000 and 0 < a.rate <= 1000 and 1 <= a.duration <= 60):
        p.error("--users 1-2000, --rate 0-1000, --duration 1-60")
    with start_server("node", token=TOKEN) as server:
        print(_line("idle", _fetches(server.url, min(a.duration, 3.0))))
        sc = Scenario(token=TOKEN, room_size=1, rate=a.rate, typing_every=0, read_every=0, drain=1.0)
        gen = Generator(server.url, sc, DEFAULT_PROFILE)
        side = gevent.spawn_later(1.0, _fetches, server.url, a.duration - 1.5)  # after the ramp
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        report = run_report(gen, a.users, a.duration, spawn_rate=1000)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        took = side.get(timeout=10)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    acked = report.ledger.acked
    lag = percentiles(report.loop_lag, [50.0, 99.0])
    print(_line(f"{a.users}x{a.rate:g}/s", took))
    print(f"{'':>14}  {acked / a.duration:,.0f} acks/s, {1e6 * cpu / max(acked, 1):.1f} µs CPU per ack "
          f"(fetches included), loop lag p50 {lag[50.0] / 1000:.2f} p99 {lag[99.0] / 1000:.2f} ms, "
          f"errors {dict(report.errors) or 0}")


if __name__ == "__main__":
    main()
