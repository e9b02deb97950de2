"""CPU per TCP connect to one loopback server as the connections held grow: one source
address against several (``roombench.transport.handshake``'s rotation).

A child process listens and holds every connection it accepts; this process connects
through the generator's own ``_tcp`` (a gevent socket, the loopback shortcut) and holds
them too, and prints its CPU (user + system, ``time.process_time``) per connect for each
block of connects. Linux gives ``connect()`` the even half of its ephemeral ports first
and then searches the whole range on every call, so with one source address the cost
jumps past ~14,000 connections; with the rotation it should stay flat.

    python -m bench.micro.bench_connect [--connections 19000] [--sources 1,8]

Bounded: at most 19,000 connections (each process holds one descriptor per connection,
under the 20,000 open-file limit) and a 120 s deadline for each source setting.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

from roombench.transport.handshake import Endpoint, _tcp

MAX_CONNECTIONS = 19_000
BLOCK = 2_000
DEADLINE_S = 120.0

_HOLDER = """
import socket, sys, time
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(4096)
print(ls.getsockname()[1], flush=True)
ls.settimeout(30); held = []
end = time.monotonic() + {deadline}
while len(held) < {n} and time.monotonic() < end:
    try:
        held.append(ls.accept()[0])
    except socket.timeout:
        break
sys.stdin.read()  # hold them until the benchmark closes our stdin
"""


def run(n: int, sources: int) -> list[tuple[int, float]]:
    """(connections held, µs of CPU per connect over the last block) for ``n`` connects."""
    os.environ["ROOMBENCH_LOOPBACK_SOURCES"] = str(sources)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER.format(n=n, deadline=DEADLINE_S)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    socks, out = [], []
    try:
        port = int(holder.stdout.readline())  # type: ignore[union-attr]
        ep = Endpoint(f"ws://127.0.0.1:{port}/", "127.0.0.1", port, False, "", {}, None)
        end = time.monotonic() + DEADLINE_S
        t0 = time.process_time()
        while len(socks) < n and time.monotonic() < end:
            socks.append(_tcp(ep, 5.0))
            if len(socks) % BLOCK == 0 or len(socks) == n:
                t = time.process_time()
                out.append((len(socks), 1e6 * (t - t0) / (len(socks) - (out[-1][0] if out else 0))))
                t0 = t
    finally:
        for s in socks:
            s.close()
        holder.kill()
        holder.wait(timeout=10)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=MAX_CONNECTIONS)
    p.add_argument("--sources", default="1,8", help="comma-separated loopback source counts to compare")
    a = p.parse_args()
    try:
        settings = [int(x) for x in a.sources.split(",") if x.strip()]
    except ValueError:
        p.error(f"--sources takes comma-separated integers, got {a.sources!r}")
    if not settings or not all(1 <= s <= 254 for s in settings):
        p.error("--sources: each from 1 to 254")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = max(BLOCK, min(a.connections, MAX_CONNECTIONS, hard - 500))
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n + 500)), hard))
    results = {s: run(n, s) for s in settings}
    print(f"µs of CPU per connect, by connections held ({', '.join(f'{s} source(s)' for s in settings)}):")
    for i, (held, _) in enumerate(results[settings[0]]):
        cells = "  ".join(f"{results[s][i][1]:8.1f}" if i < len(results[s]) else "       –" for s in settings)
        print(f"{held:7,d}  {cells}")


if __name__ == "__main__":
    main()
