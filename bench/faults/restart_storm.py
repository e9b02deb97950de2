"""A run against a server SIGKILLed and restarted on its port every few seconds (issue 10).

Prints how long the run took against its deadline (duration + drain), the restarts done
against ``server_resets``, out_of_order, lost, and how many lost pairs the last server
still holds (must be 0: only what a server really lost may count as lost).
Run: ``python -m bench.faults.restart_storm [--duration 30] [--every 4] [--users 20]``.
Not a test; bounded by --duration (+ drain + reconciliation).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

from roombench.chat.backfill import BackfillClient  # noqa: E402
from roombench.chat.scenario import Scenario  # noqa: E402
from roombench.generator import Generator, run_report  # noqa: E402
from roombench.servers import ServerProcess, start_server  # noqa: E402
from roombench.servers.process import free_port  # noqa: E402
from roombench.wire.profile import DEFAULT_PROFILE  # noqa: E402

TOKEN = "bench-token"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--every", type=float, default=4.0, help="seconds between SIGKILLs")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--variant", default="py", help="a one-process in-memory variant (py, node)")
    args = ap.parse_args()
    scenario = Scenario(token=TOKEN, rate=2.0, room_size=5, typing_every=0, read_every=0,
                        reconnect_delay=0.1, reconnect_delay_max=0.5, drain=3.0, ack_timeout=2.0)
    port = free_port()
    servers: list[ServerProcess] = [start_server(args.variant, port=port, token=TOKEN)]
    restarts = 0

    def storm(gen: Generator) -> None:
        nonlocal restarts
        while True:
            gevent.sleep(args.every)
            if gen.stopping:
                return
            os.kill(servers[-1].pid, signal.SIGKILL)
            servers[-1].stop()  # reaps it
            servers.append(start_server(args.variant, port=port, token=TOKEN))
            restarts += 1

    gen = Generator(servers[0].url, scenario)
    t0 = time.monotonic()
    killer = gevent.spawn(storm, gen)
    try:
        report = run_report(gen, args.users, args.duration)
        elapsed = time.monotonic() - t0
        killer.kill()
        rest = BackfillClient(servers[-1].url, DEFAULT_PROFILE, TOKEN)
        rooms = {room for no in gen.sessions for room in gen.rooms_for(no)}
        held = {m["temp_id"] for room in rooms for m in rest.after(room, 0, time.monotonic() + 10)}
    finally:
        killer.kill()
        for server in servers:
            server.stop()
    c = report.ledger
    lost_held = sum(1 for _, temp_id in gen.ledger.unreceived() if temp_id in held)
    spawn = args.users / 100.0
    print(f"run took {elapsed:.1f} s; deadline {args.duration + scenario.drain:.1f} s "
          f"(+ {spawn:.1f} s connecting users)")
    print(f"restarts {restarts}  server_resets {report.counters.get('server_resets', 0)}  "
          f"disconnected {report.errors.get('disconnected', 0)}")
    print(f"sent {c.sent}  expected {c.expected}  delivered_live {c.delivered_live}  recovered {c.recovered}  "
          f"lost {c.lost}  out_of_order {c.out_of_order}  duplicates {c.duplicates}  voided {c.voided}")
    print(f"lost pairs the last server still holds: {lost_held} (must be 0)")
    print(f"errors: {dict(report.errors)}")


if __name__ == "__main__":
    main()
